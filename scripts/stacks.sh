# Sourced by setup.sh and lock.sh: the supported stacks (constraints/<stack>.txt), newest first, and
# how to find each one's Python.
STACKS=(py312-axolotl0.21 py311-axolotl0.19)

# stack_python py312-axolotl0.21 -> a working python3.12: PATH, then pyenv (whose shim for a version
# that is installed but not selected exists and fails, hence the check that it runs).
stack_python() {
    local version="${1%%-*}"; version="3.${version#py3}"
    local candidate
    for candidate in "$(command -v "python$version")" \
                     "$(pyenv prefix "$version" 2>/dev/null)/bin/python$version" \
                     "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/"python$version"; do
        if [[ -x "$candidate" ]] && "$candidate" -c 'import sys' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    echo "stacks.sh: python$version not found for stack $1 (install it, or put it on PATH)" >&2
    return 1
}

# The default stack: the newest one whose Python is here.
default_stack() {
    local stack
    for stack in "${STACKS[@]}"; do
        if stack_python "$stack" >/dev/null 2>&1; then
            [[ "$stack" == "${STACKS[0]}" ]] || echo "stacks.sh: python for ${STACKS[0]} not found; falling back to $stack" >&2
            echo "$stack"; return 0
        fi
    done
    echo "stacks.sh: no Python for any of ${STACKS[*]}" >&2
    return 1
}

# The venv of a stack: .venv for this machine's default stack, .venv-<stack> for another one.
stack_venv() {  # repo stack
    if [[ "$2" == "$(default_stack 2>/dev/null)" ]]; then echo "$1/.venv"; else echo "$1/.venv-$2"; fi
}
