#!/usr/bin/env bash
# README command 1: install, provision SmolLM2 offline, run the whole retrain flow, show status.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/r2w models pull
.venv/bin/r2w run --config demo "$@"
.venv/bin/r2w status --config demo
