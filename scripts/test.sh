#!/usr/bin/env bash
# README command 2: install, then run the default test suite (tiny model, real components).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
