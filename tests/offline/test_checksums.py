"""Checksums of offline store parts (``offline.checksums``): recorded at capture, a flipped byte refused
by the reader, the preflight and ``distill-data logits`` with one line naming the part and the command
that re-captures it (which restores the store); a store without checksums warns and is still read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill_plugin.generation.hf import HFBackend
from distill_plugin.offline import capture as cap
from distill_plugin.offline.checksums import CorruptStoreError, unrecorded_warning, verify_store
from distill_plugin.offline.collator import OfflineTopKCollator
from distill_plugin.offline.store import TopKStore, row_key
from distill_plugin.errors import SetupError
from distill_plugin.methods.stored import check_store_integrity

K = 8


@pytest.fixture(scope="module")
def examples(chat_jsonl, tokenizer):
    return cap.examples_from_jsonl(chat_jsonl, tokenizer, sequence_len=96)


def capture(out, teacher, tokenizer, examples, **kw):
    meta = cap.make_meta("tiny-teacher", tokenizer, K, 1.0, 96, teacher.config.vocab_size)
    return cap.capture(examples, HFBackend(teacher, chunk_positions=16), out, meta, progress=False, **kw)


def flip(path: Path, n: int = 64) -> None:
    """Invert ``n`` bytes in the middle of ``path`` (bit rot; the size stays)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def rows_of(store_dir, examples):
    store = TopKStore(store_dir)
    return {row_key(e.input_ids): store.get_by_ids(e.input_ids) for e in examples}


def test_every_part_has_its_checksum_and_a_flipped_byte_is_named(tmp_path, teacher, tokenizer, examples):
    capture(tmp_path, teacher, tokenizer, examples, rows_per_part=4)
    parts = sorted(p.name for p in tmp_path.glob("part-*.parquet"))
    recorded = json.loads((tmp_path / "meta.json").read_text())["checksums"]
    assert len(parts) == 3 and sorted(recorded) == parts
    assert verify_store(tmp_path).verified == parts
    intact = rows_of(tmp_path, examples)

    victim = tmp_path / parts[1]
    flip(victim)
    with pytest.raises(CorruptStoreError) as err:
        verify_store(tmp_path, workers=2)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{victim}: corrupt offline logits part (sha256 ")
    assert f"rm {victim} && distill-data logits" in line and "--shard 0/1" in line
    with pytest.raises(SetupError, match=rf"^distill.teacher_logits: {victim}: corrupt"):
        check_store_integrity(tmp_path)
    store = TopKStore(tmp_path)  # the reader refuses the part when it first decodes from it
    with pytest.raises(CorruptStoreError, match=parts[1]):
        for e in examples:
            store.get_by_ids(e.input_ids)

    # delete the part and capture again: only its rows are captured, after the highest part number
    victim.unlink()
    again = capture(tmp_path, teacher, tokenizer, examples, rows_per_part=4)
    assert again.rows == 4 and again.skipped == len(examples) - 4
    assert sorted(p.name for p in tmp_path.glob("part-*.parquet")) == [parts[0], parts[2], "part-s000of001-000003.parquet"]
    assert sorted(json.loads((tmp_path / "meta.json").read_text())["checksums"]) == sorted(
        p.name for p in tmp_path.glob("part-*.parquet"))  # the deleted part's entry is gone
    for key, row in rows_of(tmp_path, examples).items():
        np.testing.assert_array_equal(row.ids, intact[key].ids)
        np.testing.assert_array_equal(row.logprobs, intact[key].logprobs)


def test_truncated_part_is_named_with_its_sizes(tmp_path, teacher, tokenizer, examples):
    capture(tmp_path, teacher, tokenizer, examples)
    part = next(tmp_path.glob("part-*.parquet"))
    size = part.stat().st_size
    part.write_bytes(part.read_bytes()[: size // 2])  # an interrupted copy
    with pytest.raises(CorruptStoreError, match=rf"{size // 2} bytes where {size} were written"):
        verify_store(tmp_path)
    with pytest.raises(CorruptStoreError, match=part.name):  # the footer is gone: named when opened
        TopKStore(tmp_path)


def test_store_without_checksums_warns_and_is_read(tmp_path, teacher, tokenizer, examples, caplog):
    """A store written before checksums were recorded: every part unrecorded, one warning, targets served."""
    capture(tmp_path, teacher, tokenizer, examples[:6])
    meta = json.loads((tmp_path / "meta.json").read_text())
    del meta["checksums"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    check = verify_store(tmp_path)
    assert check.verified == [] and len(check.unrecorded) == 1
    assert "carries no checksums for 1 of its 1 part(s)" in unrecorded_warning(tmp_path, check)
    with caplog.at_level("WARNING", logger="axolotl.distill_plugin"):
        check_store_integrity(tmp_path)
    assert "carries no checksums" in caplog.text
    collator = OfflineTopKCollator(tokenizer, store_path=str(tmp_path),
                                   base_collator="transformers.DataCollatorForSeq2Seq")
    batch = collator([{"input_ids": e.input_ids, "labels": e.labels} for e in examples[:6]])
    assert np.isfinite(batch["teacher_topk_logprobs"][..., 0].numpy()).sum() == sum(int(e.mask.sum()) for e in examples[:6])
    # a resumed capture into the old store records checksums for its new parts only
    capture(tmp_path, teacher, tokenizer, examples)
    check = verify_store(tmp_path)
    assert len(check.unrecorded) == 1 and len(check.verified) == 1


def cli(*args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def test_cli_refuses_a_corrupt_part_and_its_command_recaptures_it(tmp_path, teacher_dir, chat_jsonl, examples):
    """``distill-data logits`` resuming into a store with a corrupt part: exit 2, one line; the command in
    that line (rm the part, capture the shard again) restores the store to the intact capture."""
    logits = [sys.executable, "-m", "data_prep.cli", "logits", str(chat_jsonl), "--teacher", str(teacher_dir),
              "-o", "store", "--top-k", str(K), "--sequence-len", "96"]
    first = cli(*logits, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    intact = rows_of(tmp_path / "store", examples)
    flip(next((tmp_path / "store").glob("part-*.parquet")))
    refused = cli(*logits, cwd=tmp_path)
    lines = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]  # (torch's import warnings aside)
    assert refused.returncode == 2 and len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    command = lines[0].split("re-capture only this part: ", 1)[1]
    assert command.startswith(f"rm {tmp_path / 'store'}/part-s000of001-000000.parquet && cd {tmp_path} && distill-data logits")
    redone = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert redone.returncode == 0, redone.stderr[-3000:]
    assert f"captured {len(examples)} rows" in redone.stdout
    assert verify_store(tmp_path / "store").verified
    for key, row in rows_of(tmp_path / "store", examples).items():
        np.testing.assert_array_equal(row.ids, intact[key].ids)
        np.testing.assert_array_equal(row.logprobs, intact[key].logprobs)
