"""Fault matrix, "train: stored" × corrupt input, through ``axolotl.cli.train``: a store with flipped
bytes stops the run before the model loads (one line naming the part and the re-capture command,
exit 2); the same store without checksums (written before they were recorded) warns and trains."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from axolotl_runs import OFFLINE_FULL_FINETUNE, SUBPROCESS_ENV, learning, run_axolotl_train, twin_of

pytestmark = pytest.mark.slow


def test_axolotl_refuses_a_flipped_store_and_trains_on_one_without_checksums(tmp_path, tiny_pair, arithmetic_data):
    from distill_plugin.offline.capture import capture_teacher

    teacher, student = tiny_pair
    store = tmp_path / "logits"
    recipe = twin_of("offline_topk_kd.yml", tmp_path / "offline.yml", student, arithmetic_data, teacher=teacher,
                     teacher_logits=store, output_dir=str(tmp_path / "out"), **OFFLINE_FULL_FINETUNE,
                     **learning(max_steps=3, save_steps=1000, distill={"ce_weight": 0.0, "teacher_dtype": None}))
    capture_teacher(teacher, store, config=recipe, k=16, progress=False)
    (part,) = store.glob("part-*.parquet")
    intact = part.read_bytes()
    flipped = bytearray(intact)
    flipped[len(intact) // 2:len(intact) // 2 + 64] = bytes(b ^ 0xFF for b in intact[len(intact) // 2:len(intact) // 2 + 64])
    part.write_bytes(bytes(flipped))

    proc = subprocess.run([sys.executable, "-m", "axolotl.cli.train", str(recipe)], cwd=tmp_path, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("distill_plugin: error:")]
    assert proc.returncode == 2 and len(lines) == 1, (proc.stdout + proc.stderr)[-4000:]
    assert f"distill.teacher_logits: {part}: corrupt offline logits part" in lines[0] and f"rm {part} && " in lines[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("checkpoint-*"))

    part.write_bytes(intact)
    meta = json.loads((store / "meta.json").read_text())
    del meta["checksums"]
    (store / "meta.json").write_text(json.dumps(meta))
    output, logs = run_axolotl_train(recipe, cwd=tmp_path)
    assert "carries no checksums for 1 of its 1 part(s)" in output and len(logs) == 3
    assert all(entry["kd_loss"] > 0 for entry in logs)
