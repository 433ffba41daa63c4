"""Teacher loading: frozen, once per process, 4/8-bit, and the same-tokenizer check."""

from __future__ import annotations

import pytest
import torch

from distill_plugin.args import DistillConfig
from distill_plugin.losses import KDSettings, online_kd_loss
from distill_plugin.modeling import final_hidden_states, output_head
from distill_plugin.teachers import check_same_tokenizer, load_teacher
from distill_plugin.testing.tiny import build_model, build_tokenizer

INPUTS = {"input_ids": torch.tensor([[5, 40, 41, 42, 43, 44, 45, 46, 47, 10]])}


def test_teacher_is_frozen_and_loaded_once(tiny_pair):
    teacher_path, _ = tiny_pair
    config = DistillConfig(teacher=str(teacher_path), teacher_dtype="float32")
    teacher = load_teacher(config, "cpu")
    assert load_teacher(config, "cpu") is teacher
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_teacher_gives_nearly_the_same_loss(tmp_path, bits):
    import bitsandbytes as bnb

    # bitsandbytes' CPU 4-bit kernel needs widths divisible by its block size (64).
    teacher_path = tmp_path / "teacher64"
    build_model(teacher_path, build_tokenizer(), hidden_size=64, seed=3)
    full = load_teacher(DistillConfig(teacher=str(teacher_path), teacher_dtype="float32"), "cpu")
    quant = load_teacher(
        DistillConfig(teacher=str(teacher_path), teacher_dtype="float32", **{f"teacher_load_in_{bits}bit": True}), "cpu"
    )
    layer = quant.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt)
    assert output_head(quant).weight.dtype == torch.float32  # lm_head stays unquantised
    torch.manual_seed(0)
    rows = torch.randn(INPUTS["input_ids"].shape[1], 32)
    w_s = torch.randn(full.config.vocab_size, 32) * 0.1
    with torch.no_grad():
        losses = [
            online_kd_loss(rows, w_s, final_hidden_states(t, INPUTS)[0], output_head(t).weight, settings=KDSettings()).loss
            for t in (full, quant)
        ]
    assert losses[1] == pytest.approx(losses[0].item(), rel=0.1)


def test_different_tokenizer_is_refused(tiny_pair, tmp_path):
    teacher_path, _ = tiny_pair
    other = build_tokenizer()
    other.add_tokens(["<extra_token>"])
    with pytest.raises(ValueError, match="distill.teacher: tokenizer"):
        check_same_tokenizer(other, str(teacher_path))
    check_same_tokenizer(build_tokenizer(), str(teacher_path))  # identical: no error


def test_padded_teacher_embeddings_are_accepted(tmp_path):
    """Same tokenizer, lm_head padded to a different size (151,936 vs 152,064 in Qwen2)."""
    tok = build_tokenizer()
    teacher = build_model(tmp_path / "t", tok, hidden_size=48, vocab_pad_to=320)
    student = build_model(tmp_path / "s", tok, hidden_size=32, vocab_pad_to=288)
    check_same_tokenizer(tok, str(tmp_path / "t"))
    with torch.no_grad():
        h_t = final_hidden_states(teacher, INPUTS)[0]
        h_s = final_hidden_states(student, INPUTS)[0]
        out = online_kd_loss(h_s, student.lm_head.weight, h_t, teacher.lm_head.weight, vocab_size=len(tok))
        t_logp = torch.log_softmax(teacher(**INPUTS).logits[0, :, : len(tok)], -1)
        s_logp = torch.log_softmax(student(**INPUTS).logits[0, :, : len(tok)], -1)
        expected = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
    torch.testing.assert_close(out.kd, expected, rtol=1e-4, atol=1e-6)


def test_teacher_device_overrides_the_students(tiny_pair):
    """`distill.teacher_device` wins over the device the trainer passes (the student's); the source
    then hands the loss rows and a head on the student's device, equal to the teacher's own."""
    from distill_plugin.signals import DenseLogits
    from distill_plugin.teachers import TeacherModelSource

    config = DistillConfig(teacher=str(tiny_pair[0]), teacher_dtype="float32", teacher_device="cpu")
    teacher = load_teacher(config, "meta")  # "meta" would hold no weights: proves it was not used
    assert output_head(teacher).weight.device.type == "cpu"
    mask = torch.ones(1, INPUTS["input_ids"].shape[1] - 1, dtype=torch.bool)
    signal = TeacherModelSource(teacher, 261, device="cpu").signals(INPUTS, mask)[DenseLogits]
    assert signal.rows.device.type == "cpu" and signal.head.weight is output_head(teacher).weight
    torch.testing.assert_close(signal.rows, final_hidden_states(teacher, INPUTS)[0, :-1])
