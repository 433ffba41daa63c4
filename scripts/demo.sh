#!/usr/bin/env bash
# The one command for a fresh machine: set up .venv (scripts/setup.sh, skipped when already done),
# then run the embedded demo, passing the arguments through:
#
#   scripts/demo.sh                 # the full demo, four seeds (~7 min on 2 free CPU cores), output in ./demo_out
#   scripts/demo.sh --quick         # two much smaller seeds
#   scripts/demo.sh --out /tmp/d    # python -m distill_plugin.demo --help for all options
#   STACK=py311-axolotl0.19 scripts/demo.sh   # another tested stack (scripts/setup.sh)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/stacks.sh"
venv="$(stack_venv "$repo" "${STACK:-$(default_stack)}")"
"$repo/scripts/setup.sh"
cd "$repo"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" WANDB_MODE="${WANDB_MODE:-disabled}" \
       AXOLOTL_DO_NOT_TRACK="${AXOLOTL_DO_NOT_TRACK:-1}" TOKENIZERS_PARALLELISM=false
exec "$venv/bin/python" -m distill_plugin.demo "$@"
