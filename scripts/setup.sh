#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with iclora, its test tools and Debian's chromium
# (for the gallery's browser test). Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch before the project: pip's find-links give the CPU wheel of 2.13.0 here; a bare "torch"
# requirement with no torch installed would pull the newest CUDA build (several GB).
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[dev]"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the gallery browser test will be skipped" >&2
  else
    echo "setup: chromium missing and not root; the gallery browser test will be skipped" >&2
  fi
fi
