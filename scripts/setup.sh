#!/usr/bin/env bash
# Create (if missing) and populate the virtual environment of one tested stack: the project (editable,
# with the dev extras) and the exact versions of its lock file constraints/<stack>.txt.
#
#   scripts/setup.sh                              # the default stack, into .venv
#   STACK=py311-axolotl0.19 scripts/setup.sh      # another stack, into .venv-py311-axolotl0.19
#   source scripts/setup.sh                       # same, and leaves the venv activated in this shell
#
# Stacks (scripts/stacks.sh): py312-axolotl0.21, the default when python3.12 is found (PATH or
# pyenv), and py311-axolotl0.19, the fallback. Idempotent: skips the install while the lock and
# pyproject.toml are unchanged; FORCE_INSTALL=1 forces it. TORCH_INDEX_URL=... adds an index for
# torch (e.g. PyTorch's CPU index, so pip does not pull the multi-GB CUDA build from PyPI).

_distill_setup() {
    set -euo pipefail
    local repo stack python venv lock stamp want
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    source "$repo/scripts/stacks.sh"
    stack="${STACK:-$(default_stack)}"
    lock="$repo/constraints/$stack.txt"
    [[ -f "$lock" ]] || { echo "setup.sh: no lock file $lock (stacks: ${STACKS[*]})" >&2; return 1; }
    python="$(stack_python "$stack")"
    venv="$(stack_venv "$repo" "$stack")"
    stamp="$venv/.distill_plugin_installed"
    want="$stack $(cat "$lock" "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)"

    # A venv of another Python (e.g. .venv from before the default stack moved to 3.12) is rebuilt.
    minor() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
    if [[ -x "$venv/bin/python" && "$(minor "$venv/bin/python")" != "$(minor "$python")" ]]; then
        echo "setup.sh: $venv has another Python than $python; recreating it"
        rm -rf "$venv"
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "setup.sh: creating $venv with $python (stack $stack)"
        "$python" -m venv "$venv"
    fi
    if [[ "${FORCE_INSTALL:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] &&
        "$venv/bin/python" -c "import torch, axolotl, distill_plugin, pytest" 2>/dev/null; then
        echo "setup.sh: $venv already has stack $stack; skipping installs"
        return 0
    fi
    echo "setup.sh: installing the project and stack $stack (pip install -c constraints/$stack.txt -e .[dev]); minutes on first use"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -c "$lock" -e "$repo[dev]" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
    "$venv/bin/python" -c "import torch, axolotl, distill_plugin; print('setup.sh: ok,', '$stack', 'torch', torch.__version__, 'axolotl', axolotl.__version__)"
    echo "$want" > "$stamp"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    _distill_setup
else
    # Sourced: install in a child bash (its set -e must neither be ignored nor kill the caller's
    # shell), then activate the environment in the caller's shell.
    bash "${BASH_SOURCE[0]}" && source "$(
        repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
        source "$repo/scripts/stacks.sh" && stack_venv "$repo" "${STACK:-$(default_stack)}")/bin/activate"
fi
