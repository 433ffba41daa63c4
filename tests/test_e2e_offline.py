"""Offline top-k KD end to end: capture from the tiny teacher, train through ``axolotl.cli.train``,
and check the student's KL to the teacher falls like it does with the online teacher."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from axolotl_runs import OFFLINE_FULL_FINETUNE, learning, run_axolotl_train, twin_of, write_recipe
from distill_plugin.demo.core import encode, heldout_losses
from distill_plugin.testing.addition import make_split
from distill_plugin.testing.tiny import build_model, build_tokenizer

pytestmark = pytest.mark.slow
COMMON = dict(max_steps=30, learning_rate=0.01, micro_batch_size=8, save_steps=1000)
# Twins of the online and the offline recipe, trained alike: KD only (ce_weight 0), T = 1, full fine-tune.
ONLINE = ("logit_kd_qwen2_1p5b.yml", {"kd_weight": 1.0, "ce_weight": 0.0, "temperature": 1.0})
OFFLINE = ("offline_topk_kd.yml", {"ce_weight": 0.0, "teacher_dtype": None})


@pytest.fixture(scope="module")
def sharp_pair(tmp_path_factory):
    """A teacher with peaked distributions (scaled lm_head) and a near-uniform random student."""
    root = tmp_path_factory.mktemp("sharp")
    tok = build_tokenizer()
    teacher = build_model(None, tok, hidden_size=48, seed=1)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(40.0)
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    build_model(root / "student", tok, hidden_size=32, seed=2)
    return root / "teacher", root / "student"


def recipe(tmp_path, name, which, student, data, teacher):
    """The twin of ``which`` (ONLINE or OFFLINE), its store at ``tmp_path/logits``, ``teacher`` online."""
    src, distill = which
    extra = OFFLINE_FULL_FINETUNE if which is OFFLINE else {}
    return twin_of(src, tmp_path / f"{name}.yml", student, data, teacher=teacher, teacher_logits=tmp_path / "logits",
                   output_dir=str(tmp_path / name), **extra, **learning(**COMMON, distill=distill))


def kl_to_teacher(student_dir, teacher_dir, rows) -> float:
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    with torch.no_grad():
        return heldout_losses(student, [encode(tok, r) for r in rows], tok.pad_token_id, teacher=teacher)["kl_to_teacher"]


def test_offline_topk_kd_tracks_online_kd(tmp_path, sharp_pair, arithmetic_data):
    from distill_plugin.offline.capture import capture_teacher

    teacher, student = sharp_pair
    offline = recipe(tmp_path, "offline", OFFLINE, student, arithmetic_data, teacher)
    # Tokenised by Axolotl's own dataset preparation, exactly as training will see it.
    stats = capture_teacher(teacher, tmp_path / "logits", config=offline, k=16, progress=False)
    assert stats.rows == 48
    online = recipe(tmp_path, "online", ONLINE, student, arithmetic_data, teacher)
    _, logs_offline = run_axolotl_train(offline, cwd=tmp_path)
    _, logs_online = run_axolotl_train(online, cwd=tmp_path)
    assert all("kd_loss" in e for e in logs_offline + logs_online)

    heldout = make_split(24, seed=99)
    before = kl_to_teacher(student, teacher, heldout)
    after_offline = kl_to_teacher(tmp_path / "offline", teacher, heldout)
    after_online = kl_to_teacher(tmp_path / "online", teacher, heldout)
    print(f"KL(teacher‖student) held-out: start {before:.3f}, online {after_online:.3f}, offline top-16 {after_offline:.3f}")
    assert after_online < 0.7 * before
    assert before - after_offline >= 0.7 * (before - after_online)


def test_offline_with_sample_packing(tmp_path, sharp_pair, arithmetic_data):
    """The offline collator wraps Axolotl's packing collator: targets follow the packed examples."""
    from distill_plugin.offline.capture import capture_teacher

    teacher, student = sharp_pair
    packed = recipe(tmp_path, "packed", OFFLINE, student, arithmetic_data, teacher)
    write_recipe(packed, packed, sample_packing=True, pad_to_sequence_len=True, micro_batch_size=1)
    capture_teacher(teacher, tmp_path / "logits", config=packed, k=16, progress=False)
    _, logs = run_axolotl_train(packed, cwd=tmp_path)
    first, last = logs[0]["kd_loss"], logs[-1]["kd_loss"]
    assert last < 0.5 * first, (first, last)


def test_offline_sampled_store_trains(tmp_path, sharp_pair, arithmetic_data):
    """``teacher_logits`` pointed at a sampled store (``--samples``): the same recipe trains through
    ``axolotl.cli.train`` on the unbiased estimate, and the student's KL to the teacher falls."""
    from distill_plugin.offline.capture import capture_teacher
    from distill_plugin.offline.store import read_meta

    teacher, student = sharp_pair
    sampled = recipe(tmp_path, "sampled", OFFLINE, student, arithmetic_data, teacher)
    capture_teacher(teacher, tmp_path / "logits", config=sampled, samples=12, seed=5, progress=False)
    assert read_meta(tmp_path / "logits").sampled
    _, logs = run_axolotl_train(sampled, cwd=tmp_path)
    assert all("kd_loss" in e for e in logs)
    heldout = make_split(24, seed=99)
    before, after = kl_to_teacher(student, teacher, heldout), kl_to_teacher(tmp_path / "sampled", teacher, heldout)
    print(f"KL(teacher‖student) held-out: start {before:.3f}, sampled store (12 draws) {after:.3f}")
    assert after < 0.7 * before
