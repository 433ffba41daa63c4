#!/usr/bin/env bash
# Create .venv and install the project with its pinned stack (idempotent; reinstalls when
# pyproject.toml changes). torch==2.13.0 goes first: a looser torch spec can pull a multi-GB CUDA
# build, while this pin resolves to the CPU wheel on CPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.distill_plugin_installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && python -c "import distill_plugin, data_prep, axolotl" 2>/dev/null; then
  echo "[setup] .venv is up to date"
  exit 0
fi
echo "[setup] installing torch==2.13.0 and the project (axolotl 0.19.0 stack); ~3 minutes"
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
echo "$want" > "$stamp"
echo "[setup] done"
