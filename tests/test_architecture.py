"""The architecture holds: imports point one way with no cycles, modules and functions stay short, and
stage entry points return types, not bare dicts. These fail on a regression, not only in review."""

from __future__ import annotations

import ast
import inspect
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curate", "train", "pipelines", "synthweb")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _sources():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "importlinter.cli"]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _copy_tree(dest: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    for src in _sources():
        target = dest / src.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)


@pytest.mark.parametrize(
    "module, upward",
    [
        ("curate/core/errors.py", "import pipelines.cli  # noqa\n"),  # the library imports the app
        ("curate/annotate/clip.py", "import train.models  # noqa\n"),  # curate imports train
        ("curate/core/schema.py", "import curate.download  # noqa\n"),  # core imports a stage
        ("train/models.py", "import train.checkpoint  # noqa\n"),  # the cycle issue 15 removed
    ],
)
def test_the_import_contracts_hold_and_catch_an_upward_import(tmp_path, module, upward):
    _copy_tree(tmp_path)
    ok = _lint_imports(tmp_path)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]
    path = tmp_path / module
    path.write_text(upward + path.read_text())
    broken = _lint_imports(tmp_path)
    assert broken.returncode != 0 and "BROKEN" in broken.stdout, broken.stdout[-3000:]


def test_modules_and_functions_are_short():
    long_modules, long_functions = [], []
    for path in _sources():
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{rel} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.name} ({n} lines)")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def _entry_points():
    import curate.annotate
    import curate.dedup.stage
    import curate.download
    import curate.filters
    import curate.shard
    import pipelines.build
    import train.api

    return [
        curate.download.download,
        curate.download.retry_failed,
        curate.download.read_manifest,
        curate.annotate.annotate,
        curate.annotate.summarise,
        curate.filters.filter_annotations,
        curate.filters.apply_filters,
        curate.dedup.stage.run_dedup,
        curate.shard.write_tiers,
        pipelines.build.build,
        pipelines.build.retier,
        train.api.train,
        train.api.evaluate,
    ]


@pytest.mark.parametrize("fn", _entry_points(), ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_stage_entry_points_return_types_not_bare_dicts(fn):
    ret = typing.get_type_hints(fn).get("return", inspect.Signature.empty)
    assert ret is not inspect.Signature.empty, "annotate the return type"
    for t in [ret, *typing.get_args(ret)]:
        assert t is not dict and typing.get_origin(t) is not dict, f"{fn.__name__} returns {ret}"
