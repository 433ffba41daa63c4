#!/usr/bin/env bash
# GPU check for issue #17 (FSDP2 / DeepSpeed ZeRO students): on one CUDA GPU, one process per engine,
# ZeRO-2, ZeRO-3 (needs `pip install deepspeed`) and FSDP2 (untied and tied student) must give the
# plain run's per-step loss, grad norm, kd_loss and ce_loss. Prints a table; exit 1 on a mismatch.
# Not run yet: no GPU was available when it was written (docs/scaling.md).
#
#   bash scripts/gpu_checks.sh [WORKDIR]        # default /tmp/distill_gpu_checks; ~5 min on one H100
#
# Run from the repository root in the environment the project is installed in (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_checks: no CUDA device visible')"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" scripts/gpu_checks.py "${1:-/tmp/distill_gpu_checks}"
