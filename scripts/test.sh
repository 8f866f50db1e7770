#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite plus ruff. CI calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports  # the layer and no-cycle contracts in pyproject.toml
.venv/bin/python -m pytest "$@"
