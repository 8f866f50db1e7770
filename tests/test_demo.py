"""`tiers demo` end to end at a tiny scale: the chain runs on the new study API and prints every
cell with its interval, every verdict and the fit's status (the README's demo output, small)."""

from __future__ import annotations

import logging

import pytest


@pytest.mark.slow
def test_demo_prints_intervals_verdicts_and_the_fit(ray_local, tmp_path, caplog):
    from pipelines.demo import DemoConfig, run_demo

    caplog.set_level(logging.INFO)
    cfg = DemoConfig(
        out=str(tmp_path / "demo"), n=300, seeds=(0, 1), budgets=(128, 256), filter_samples=128, port=0, progress=False
    )
    assert run_demo(cfg) == 0
    text = caplog.text
    assert "zero-shot top-1, mean [95% interval] per cell (seeds; repetition); chance 0.040" in text
    assert "(2 seeds; " in text and "verdicts: " in text and "comparisons" in text
    assert text.count("cannot rank: ") + text.count("decided: ") == 6  # 3 tiers, 2 budgets: 6 pairs
    assert "fit [default]: " in text and "report: " in text
    assert (tmp_path / "demo" / "study" / "report.html").is_file()
