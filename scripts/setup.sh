#!/usr/bin/env bash
# Create (if missing) and populate the project's virtual environment: .venv at the repository root.
#
#   scripts/setup.sh            # idempotent; skips the installs when the environment already works
#   source scripts/setup.sh     # same, and leaves .venv activated in the calling shell
#
# Installs torch==2.13.0 first (the exact pin resolves to the CPU build on CPU machines; a looser torch
# spec can pull a multi-GB CUDA build), then the project and its pinned axolotl 0.19.0 stack with the
# dev extras: pip install -e ".[dev]". Re-runs the installs whenever pyproject.toml changed.
# Override the interpreter with PYTHON=..., add a torch index with TORCH_INDEX_URL=... (e.g. a CUDA
# index on a GPU machine), force a reinstall with FORCE_INSTALL=1.

_distill_setup() {
    set -euo pipefail
    local repo python venv torch_index
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    python="${PYTHON:-python3.11}"
    venv="$repo/.venv"
    torch_index="${TORCH_INDEX_URL:-}"
    local stamp="$venv/.distill_plugin_installed" want
    want="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)"

    if [[ ! -x "$venv/bin/python" ]]; then
        command -v "$python" >/dev/null || { echo "setup.sh: $python not found (the project needs Python 3.11; set PYTHON=...)" >&2; return 1; }
        echo "setup.sh: creating $venv with $python"
        "$python" -m venv "$venv"
    fi
    # shellcheck disable=SC1091
    source "$venv/bin/activate"

    # One interpreter start (importing axolotl takes seconds): the stack imports and torch is 2.13.0.
    if [[ "${FORCE_INSTALL:-0}" != 1 ]] && [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && python -c "
import sys, torch, axolotl, distill_plugin, pytest
sys.exit(not torch.__version__.startswith('2.13.0'))" 2>/dev/null; then
        echo "setup.sh: $venv already has torch $(python -c 'import torch; print(torch.__version__)'), axolotl and distill_plugin; skipping installs"
        return 0
    fi
    python -m pip install -q --upgrade pip
    echo "setup.sh: installing torch==2.13.0${torch_index:+ from $torch_index}"
    if [[ -n "$torch_index" ]]; then
        python -m pip install -q "torch==2.13.0" --index-url "$torch_index"
    else
        python -m pip install -q "torch==2.13.0"
    fi
    echo "setup.sh: installing the project and its pinned dependencies (pip install -e .[dev]); ~3 minutes"
    python -m pip install -q -e "$repo[dev]"
    python -c "import torch, axolotl, distill_plugin; print('setup.sh: ok, torch', torch.__version__)"
    echo "$want" > "$stamp"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    _distill_setup
else
    # Sourced: install in a child bash (its set -e must neither be ignored nor kill the caller's
    # shell), then activate the environment in the caller's shell.
    bash "${BASH_SOURCE[0]}" && source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/activate"
fi
