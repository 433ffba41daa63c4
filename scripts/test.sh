#!/usr/bin/env bash
# The test command: installs what it needs (scripts/setup.sh), then runs the whole suite on CPU.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the fast tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled AXOLOTL_DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
exec python -m pytest tests -q -p no:cacheprovider --timeout 1200 "$@"
