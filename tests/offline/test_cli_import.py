"""``distill-data import-axolotl-kd``: an Axolotl-KD-format JSONL becomes a usable store."""

from __future__ import annotations

import json
import subprocess
import sys

from distill_plugin.offline import capture as cap
from distill_plugin.offline.store import TopKStore, read_meta
from offline_helpers import exact_topk


def test_cli_imports_axolotl_kd_jsonl(tmp_path, teacher, teacher_dir, tokenizer, chat_rows):
    examples = [cap.tokenize_row(r, tokenizer, 96) for r in chat_rows[:3]]
    path = tmp_path / "kd.jsonl"
    with path.open("w") as f:
        for row, e in zip(chat_rows, examples):  # vLLM prompt_logprobs: entry j describes token j+1
            ids, lps = exact_topk(teacher, e.input_ids, 4)
            f.write(json.dumps(dict(row, target_token_ids=ids[:-1].tolist(), logprobs=lps[:-1].tolist())) + "\n")
    cmd = [sys.executable, "-m", "data_prep.cli", "import-axolotl-kd", str(path), "-o", str(tmp_path / "store"),
           "--tokenizer", str(teacher_dir), "--temperature", "1.0", "--sequence-len", "96"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imported 3 rows" in proc.stdout
    store = TopKStore(tmp_path / "store")
    assert len(store) == 3 and read_meta(tmp_path / "store").k == 4
    for e in examples:
        assert (store.get_by_ids(e.input_ids).ids.shape[1]) == 4
