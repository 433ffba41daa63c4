"""Capturing hidden states: hooks on the mapped layers only, supervised rows only, the same states
as ``output_hidden_states=True``; the student keeps its graph (also under reentrant gradient
checkpointing) and the teacher source builds none."""

from __future__ import annotations

import pytest
import torch

from distill_plugin.hidden.capture import decoder_layers, hidden_rows
from distill_plugin.losses import supervised_mask
from distill_plugin.signals import HiddenStates
from distill_plugin.teachers import TeacherModelSource
from distill_plugin.testing.tiny import build_model, build_tokenizer


@pytest.fixture(scope="module")
def model():
    return build_model(None, build_tokenizer(), hidden_size=32, num_layers=4, seed=3)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (2, 12), generator=g)
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, :9] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_rows_match_output_hidden_states_at_the_supervised_positions(model):
    inputs = batch()
    mask = supervised_mask(inputs["labels"])
    final, layers = hidden_rows(model.eval(), inputs, mask, {0, 1, 3, 4})
    reference = model(input_ids=inputs["input_ids"], output_hidden_states=True).hidden_states
    assert set(layers) == {0, 1, 3, 4} and final.shape == (int(mask.sum()), 32)
    for index, rows in layers.items():
        torch.testing.assert_close(rows, reference[index][:, :-1][mask])  # shift: position t predicts t+1
    torch.testing.assert_close(final, reference[4][:, :-1][mask])


def test_only_the_mapped_layers_are_wrapped_and_restored(model):
    inputs, seen = batch(), []
    mask = supervised_mask(inputs["labels"])
    layers = decoder_layers(model)
    originals = list(layers)
    handle = model.model.norm.register_forward_pre_hook(lambda m, a: seen.append([type(l).__name__ for l in layers]))
    try:
        hidden_rows(model, inputs, mask, {2})
    finally:
        handle.remove()
    assert seen == [["Qwen2DecoderLayer", "Qwen2DecoderLayer", "_Recorder", "Qwen2DecoderLayer"]]
    assert all(a is b for a, b in zip(layers, originals))  # put back after the forward


@pytest.mark.parametrize("reentrant", [True, False])
def test_student_rows_keep_their_graph_under_gradient_checkpointing(reentrant):
    model = build_model(None, build_tokenizer(), hidden_size=32, num_layers=3, seed=4).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    inputs = batch(1)
    inputs["input_ids"].requires_grad_(False)
    model.enable_input_require_grads()
    _, layers = hidden_rows(model, inputs, supervised_mask(inputs["labels"]), {1, 2})
    layers[1].pow(2).sum().backward()
    first, last = decoder_layers(model)[0].mlp.up_proj.weight.grad, decoder_layers(model)[2].mlp.up_proj.weight.grad
    assert first is not None and first.abs().sum() > 0  # layer 0 feeds hidden state 1
    assert last is None or last.abs().sum() == 0  # layer 2 comes after it


def test_teacher_source_delivers_hidden_states_without_graph(model):
    source = TeacherModelSource(model, logits=False)
    assert source.produces == ()
    source.request_hidden({4, 2})
    assert source.produces == (HiddenStates,)
    inputs = batch()
    signals = source.signals(inputs, supervised_mask(inputs["labels"]))
    assert set(signals) == {HiddenStates} and set(signals[HiddenStates].layers) == {2, 4}
    assert all(not rows.requires_grad for rows in signals[HiddenStates].layers.values())
