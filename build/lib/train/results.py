"""What a run returns: the training summary (``RUN/summary.json``) and the evaluation report (``RUN/eval.json``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

TASKS = ("zeroshot", "retrieval", "linear_probe")
# The headline numbers of each task, as the flat ``<task>_<metric>`` keys studies record.
HEADLINES = {
    "zeroshot": ("top1", "top5"),
    "retrieval": ("mean_r1", "i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"),
    "linear_probe": ("top1",),
}


@dataclass(frozen=True)
class TrainSummary:
    """A finished run: the compute it spent and how, written last (its presence marks the run done)."""

    steps: int
    samples_seen: int
    global_batch: int
    world_size: int
    tier: str
    tier_samples: int
    repetition: float  # samples seen / tier size
    train_seconds: float
    samples_per_s: float
    final_loss: float
    skipped: int  # undecodable samples skipped by the loader
    resumed_from: int | None
    config_hash: str
    code_version: str
    eval: dict[str, float] = field(default_factory=dict)  # headline eval numbers, when the config names sets

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not self.eval:
            d.pop("eval")
        return d

    @classmethod
    def from_dict(cls, data: dict) -> TrainSummary:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class EvalReport:
    """Results by task and dataset name (``results[task][name]`` -> metrics and how they were made)."""

    model: str  # the open_clip local dir evaluated
    step: int | None  # its training step
    code_version: str
    results: dict[str, dict[str, dict]] = field(default_factory=dict)

    def get(self, task: str, name: str) -> dict | None:
        return self.results.get(task, {}).get(name)

    def to_dict(self) -> dict:
        return {"model": self.model, "step": self.step, "code_version": self.code_version, **self.results}

    @classmethod
    def from_dict(cls, data: dict) -> EvalReport:
        results = {t: dict(data[t]) for t in TASKS if t in data}
        return cls(data.get("model", ""), data.get("step"), data.get("code_version", ""), results)

    def headlines(self, names: dict[str, str] | None = None) -> dict[str, float]:
        """The named (else first) dataset of each task as flat ``<task>_<metric>`` numbers."""
        names = names or {}
        out = {}
        for task, fields in HEADLINES.items():
            results = self.results.get(task) or {}
            name = names.get(task) or next(iter(results), None)
            if name in results:
                out.update({f"{task}_{f}": results[name][f] for f in fields})
        if "retrieval_mean_r1" in out:
            out["retrieval_r1_mean"] = out.pop("retrieval_mean_r1")
        return out
