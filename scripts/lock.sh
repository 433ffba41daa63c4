#!/usr/bin/env bash
# Regenerate the lock files constraints/<stack>.txt (exact versions CI and scripts/setup.sh install)
# from pyproject.toml + constraints/<stack>.in, with pip-compile (pip-tools) run by each stack's Python.
#
#   scripts/lock.sh                      # every stack
#   scripts/lock.sh py311-axolotl0.19    # one stack
#
# The machine's pip configuration is ignored so the locks name plain PyPI releases (a local
# torch+cpu wheel still satisfies torch==2.13.0 when setup.sh installs).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/stacks.sh"
cd "$repo"
for stack in "${@:-${STACKS[@]}}"; do
    python="$(stack_python "$stack")" || exit 1
    tools="$(mktemp -d)/venv"
    "$python" -m venv "$tools"
    "$tools/bin/pip" install -q pip-tools
    echo "lock.sh: $stack with $python"
    env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="scripts/lock.sh $stack" \
        "$tools/bin/pip-compile" -q --strip-extras --no-emit-index-url --no-emit-find-links --extra dev \
        -o "constraints/$stack.txt" pyproject.toml "constraints/$stack.in"
    rm -rf "$(dirname "$tools")"
done
