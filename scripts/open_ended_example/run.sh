#!/usr/bin/env bash
# The open-ended pipeline end to end on CPU, the worked example of docs/data_prep.md:
#   generate (a scripted teacher behind a real OpenAI-compatible server on 127.0.0.1)
#   -> judge (an LLM judge on the same server: its verdicts scripted, the requests, retries and
#      strict parsing real; then the same data scored by a tiny, randomly initialised reward model)
#   -> filter (score threshold, teacher pass rate, top half per prompt) -> export (Parquet, 20% eval).
# The server is tests/data_prep/openai_server.py --scripted (needs fastapi + uvicorn: the dev extra).
# Its teacher samples one of 7 canned answers per request (seeded by the request, so reruns agree);
# the judge rates each kind of answer (9, 6, 1, 4, or an ambiguous "between [[3]] and [[6]]").
# Usage: bash scripts/open_ended_example/run.sh [OUT]   (default runs/open_ended; ~1 min)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-runs/open_ended}
rm -rf "$OUT" && mkdir -p "$OUT"
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
python "$ROOT/tests/data_prep/openai_server.py" unused --port "$PORT" --scripted "$HERE/script.json" --fail-first 2 \
    > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER' EXIT
until curl -s "http://127.0.0.1:$PORT/stats" > /dev/null; do sleep 0.5; done
URL="http://127.0.0.1:$PORT/v1"

python -m distill_plugin.testing.tiny --out "$OUT/tiny" > /dev/null   # the student's tokenizer
python -c "import sys; from distill_plugin.testing.tiny import build_reward_model as b; b(sys.argv[1])" "$OUT/tiny/reward_model"

distill-data generate "$HERE/prompts.jsonl" -o "$OUT/gen" --backend openai --base-url "$URL" --model teacher \
    --suffix '' -n 4 --max-retries 3
distill-data judge "$OUT/gen" -o "$OUT/judged" --judge-model judge --backend openai --base-url "$URL" --max-retries 3
distill-data filter "$OUT/judged" -o "$OUT/kept" --no-require-think --min-score 5 --pass-rate 0.25:0.75 \
    --top-fraction 0.5 --top-scope prompt
distill-data export "$OUT/kept" -o "$OUT/data" --select highest_score --split 0.2 --format parquet \
    --shard-size 2KB --tokenizer "$OUT/tiny/student"
# the same generations scored by a reward model instead (a real forward pass; random weights)
distill-data judge "$OUT/gen" -o "$OUT/judged_rm" --reward-model "$OUT/tiny/reward_model"
python - "$OUT" <<'PY'
import sys
from datasets import load_dataset
out = sys.argv[1]
ds = load_dataset("parquet", data_files={"train": f"{out}/data/train-*.parquet", "eval": f"{out}/data/eval-*.parquet"})
print({k: v.num_rows for k, v in ds.items()})
PY
