"""How much a piece of work grows a process's peak memory, measured in a fresh Python process (VmHWM)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")

_PEAK = """
def _peak_mb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) >> 10

_before = _peak_mb()
"""


def peak_growth_mb(setup: str, work: str, *args) -> int:
    """MB a fresh process's peak RSS grows by while it runs ``work``, after ``setup`` (Python source, run
    first and not measured; ``sys.argv[1:]`` are ``args``). Run from the project root."""
    code = setup + _PEAK + work + "\nprint(_peak_mb() - _before)\n"
    cmd = [sys.executable, "-c", code, *map(str, args)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.split()[-1])
