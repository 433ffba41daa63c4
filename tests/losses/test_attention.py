"""Attention transfer (``losses.attention``, ``methods.attention``): values and gradients against a
plain float64 reference (grouped heads, padding, masked rows), the capture on real tiny models
(only the mapped layers, gradient checkpointing), the refusals, and one run through
``axolotl.cli.train`` (the recipe's twin)."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch

from distill_plugin.args import DistillConfig
from distill_plugin.errors import SetupError
from distill_plugin.losses.attention import AttentionTerm, attention_kl_maps, check_heads, key_mask, query_rows
from distill_plugin.signals import AttentionMaps, OutputHead, StudentRows

REPO = Path(__file__).resolve().parents[2]


def reference(student, teacher, labels, attention_mask, pairs):
    """Σ over supervised rows (b, t: labels[b, t+1] ≠ −100) of (1/P) Σ_pairs (1/H_s) Σ_h KL(p̄ ‖ q) over the
    keys k ≤ t with attention_mask[b, k] = 1; p̄ = the mean of student head h's g teacher heads. float64
    loops, written from the definition."""
    total = torch.zeros((), dtype=torch.float64)
    batch, length = labels.shape
    for s, t in pairs:
        q_maps, p_maps = student[s].double(), teacher[t].double()
        heads, g = q_maps.shape[1], p_maps.shape[1] // q_maps.shape[1]
        for b in range(batch):
            for pos in range(length - 1):
                if labels[b, pos + 1] == -100:
                    continue
                for h in range(heads):
                    p = sum(p_maps[b, h * g + j, pos] for j in range(g)) / g
                    q = q_maps[b, h, pos]
                    for k in range(pos + 1):
                        if attention_mask[b, k] and p[k] > 0:
                            total = total + p[k] * (torch.log(p[k]) - torch.log(q[k])) / heads / len(pairs)
    return total


def eager_maps(scores, attention_mask):
    """softmax over keys of scores + the eager additive mask (causal and padding: finfo.min)."""
    length = scores.shape[-1]
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, None] & (attention_mask[:, None, None, :] != 0)
    return torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), dim=-1)


def batch(seed=0, length=9):
    """Two rows: right padding (last 2) and left padding (first 3), prompts unsupervised."""
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[0, -2:] = 0
    attention_mask[1, :3] = 0
    labels = torch.randint(0, 50, (2, length), generator=generator)
    labels[0, :3], labels[0, -2:] = -100, -100  # prompt, padding
    labels[1, :5] = -100
    return labels, attention_mask, generator


@pytest.mark.parametrize("student_heads, teacher_heads", [(4, 4), (2, 6), (1, 3)])
def test_values_and_gradients_match_the_float64_reference(student_heads, teacher_heads):
    labels, attention_mask, generator = batch()
    length, pairs = labels.shape[1], ((0, 1), (1, 0))
    scores = {layer: torch.randn(2, student_heads, length, length, generator=generator, requires_grad=True) for layer in (0, 1)}
    teacher = {layer: eager_maps(3 * torch.randn(2, teacher_heads, length, length, generator=generator), attention_mask)
               for layer in (0, 1)}
    mask = labels[:, 1:] != -100
    keys = key_mask(mask, attention_mask)

    student = {layer: eager_maps(s, attention_mask) for layer, s in scores.items()}
    value = attention_kl_maps([student[s] for s, _ in pairs], [query_rows(teacher[t], mask) for _, t in pairs], mask, keys)
    value.backward()
    grads = {layer: s.grad.clone() for layer, s in scores.items()}

    for s in scores.values():
        s.grad = None
    expected = reference({layer: eager_maps(s.double(), attention_mask) for layer, s in scores.items()}, teacher,
                         labels, attention_mask, pairs)
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() > 0.1  # not a trivially zero comparison
    for layer, s in scores.items():
        torch.testing.assert_close(grads[layer], s.grad, rtol=1e-4, atol=1e-7)
        assert s.grad.abs().sum() > 0


def test_the_term_is_the_weighted_sum_and_counts_only_supervised_rows_and_real_keys():
    labels, attention_mask, generator = batch(seed=1)
    length = labels.shape[1]
    student = {0: eager_maps(torch.randn(2, 2, length, length, generator=generator), attention_mask)}
    teacher_maps = eager_maps(torch.randn(2, 4, length, length, generator=generator), attention_mask)
    mask = labels[:, 1:] != -100
    signal = AttentionMaps({3: query_rows(teacher_maps, mask)}, mask, key_mask(mask, attention_mask))
    term = AttentionTerm(((0, 3),), lambda: student, weight=0.5)
    rows = StudentRows(torch.zeros(int(mask.sum()), 4), torch.zeros(int(mask.sum()), dtype=torch.long), OutputHead(torch.zeros(8, 4)))
    out = term(rows, signal)
    expected = reference(student, {3: teacher_maps}, labels, attention_mask, ((0, 3),))
    assert out.sums.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.objective.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    assert [c.name for c in term.components] == ["attention"]
    # a change at an unsupervised row or at a padded key changes nothing
    student[0][0, :, 1] = torch.softmax(torch.randn(2, length, generator=generator), -1)  # row 1: its next label is -100
    assert term(rows, signal).sums.item() == pytest.approx(out.sums.item(), rel=1e-6)


def test_keys_are_causal_and_not_padding():
    labels, attention_mask, _ = batch()
    mask = labels[:, 1:] != -100
    keys = key_mask(mask, attention_mask)
    batch_index, position = mask.nonzero(as_tuple=True)
    for row, (b, t) in enumerate(zip(batch_index.tolist(), position.tolist())):
        assert keys[row].tolist() == [k <= t and bool(attention_mask[b, k]) for k in range(labels.shape[1])]


def test_heads_that_do_not_group_are_refused():
    assert check_heads(4, 12) == 3
    for student, teacher in ((4, 6), (8, 4)):
        with pytest.raises(ValueError, match=rf"teacher's {teacher} attention heads are not a multiple of the student's {student}"):
            check_heads(student, teacher)


# --- the capture on real models -------------------------------------------------------------------

def tiny(heads, hidden, layers, seed, attn="eager", sharpness=6.0):
    """A tiny Qwen2 whose queries are scaled by ``sharpness``: peaked attention, an O(1) KL (random
    initialisation gives near-uniform maps, whose KL is ~1e-3 and all float32 cancellation)."""
    from distill_plugin.testing.tiny import build_model, build_tokenizer

    model = build_model(None, build_tokenizer(), hidden_size=hidden, num_layers=layers, num_heads=heads, seed=seed)
    model.set_attn_implementation(attn)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight *= sharpness * (1 + seed)
    return model


def assembled(student, teacher, **distill):
    from distill_plugin import methods
    from distill_plugin.testing.tiny import build_tokenizer

    config = DistillConfig(teacher="in-memory", attention_weight=1.0, **distill)
    setup = methods.Setup(config, build_tokenizer(), student, "cpu", teacher_model=teacher.eval().requires_grad_(False))
    return config, methods.teacher_source(config, setup), methods.loss_terms(config, setup)


def tiny_batch(length=10):
    labels, attention_mask, generator = batch(seed=2, length=length)
    input_ids = torch.randint(3, 60, labels.shape, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def attention_objective(student, source, terms, inputs):
    """The trainer's path (``trainer.student_objective`` inside the student's forward), the attention term only."""
    from distill_plugin.losses.chunked import supervised_mask
    from distill_plugin.modeling import inside_forward, model_inputs
    from distill_plugin.trainer import student_objective

    mask = supervised_mask(inputs["labels"])
    signals = source.signals(inputs, mask)
    term = [t for t in terms if isinstance(t, AttentionTerm)]
    fn = partial(student_objective, model=student, labels=inputs["labels"], mask=mask, terms=term, signals=signals)
    return inside_forward(student, fn, **model_inputs(inputs))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_captured_maps_give_the_reference_loss_and_gradients(checkpointing):
    """Student 2 heads × 2 layers, teacher 4 heads × 4 layers (groups of 2): the term on the probes'
    captures equals the float64 reference on ``output_attentions``, values and student gradients."""
    student, teacher = tiny(2, 32, 2, seed=2), tiny(4, 48, 4, seed=1)
    if checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.train()
    _, source, terms = assembled(student, teacher, attention_layers="uniform:2")
    (term,) = [t for t in terms if isinstance(t, AttentionTerm)]
    assert term.pairs == ((0, 1), (1, 3))
    hooked = lambda model: [len(layer.self_attn._forward_hooks) for layer in model.model.layers]
    assert hooked(student) == [1, 1] and hooked(teacher) == [0, 1, 0, 1]  # only the mapped layers

    inputs = tiny_batch()
    objective, sums = attention_objective(student, source, terms, inputs)
    objective.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad()

    model_in = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        teacher_maps = teacher(**model_in, output_attentions=True).attentions
    student_maps = student(**model_in, output_attentions=True).attentions
    expected = reference(dict(enumerate(student_maps)), dict(enumerate(teacher_maps)), inputs["labels"],
                         inputs["attention_mask"], term.pairs)
    expected.backward()
    assert sums.item() == pytest.approx(expected.item(), rel=1e-5) and expected.item() > 0.1
    assert set(grads) == {n for n, p in student.named_parameters() if p.grad is not None}
    for name, param in student.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-3, atol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "q_proj" in n)


def test_the_term_alone_pulls_the_student_attention_to_the_teacher():
    """Twenty Adam steps on the attention term only: the KL falls (the gradient reaches q/k projections)."""
    student, teacher = tiny(2, 32, 2, seed=2), tiny(4, 48, 4, seed=1)
    student.train()
    _, source, terms = assembled(student, teacher, attention_layers="uniform:2")
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    inputs, values = tiny_batch(), []
    for _ in range(20):
        objective, sums = attention_objective(student, source, terms, inputs)
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        values.append(sums.item())
    assert values[-1] < 0.2 * values[0], values


def test_teacher_maps_are_taken_once_per_teacher_forward():
    """The attention source reads what the online source's teacher forward left: twice is an error."""
    from distill_plugin.losses.chunked import supervised_mask

    _, source, _ = assembled(tiny(2, 32, 2, seed=2), tiny(4, 48, 4, seed=1))
    inputs = tiny_batch()
    mask = supervised_mask(inputs["labels"])
    (maps,) = [s for kind, s in source.signals(inputs, mask).items() if kind is AttentionMaps]
    # the supervised rows only, the teacher's 4 heads already averaged to the student's 2 at capture
    assert list(maps.layers) == [3] and maps.layers[3].shape == (int(mask.sum()), 2, inputs["labels"].shape[1])
    with pytest.raises(RuntimeError, match="the teacher's layer 3 did not run on this batch"):
        source.sources[-1].signals(inputs, mask)


def test_reentrant_checkpointing_is_refused_at_the_step():
    student, teacher = tiny(2, 32, 2, seed=2), tiny(4, 48, 4, seed=1)
    student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    student.train()
    _, source, terms = assembled(student, teacher)
    with pytest.raises(RuntimeError, match="carry no gradient"):
        attention_objective(student, source, terms, tiny_batch())


@pytest.mark.parametrize("student_args, teacher_args, needle", [
    ((4, 32, 2, 2), (6, 48, 4, 1), "teacher's 6 attention heads are not a multiple of the student's 4"),
    ((2, 32, 2, 2, "sdpa"), (4, 48, 4, 1), "the student runs attention 'sdpa'"),
    ((2, 32, 2, 2), (4, 48, 4, 1, "sdpa"), "the teacher runs attention 'sdpa'"),
])
def test_models_that_cannot_transfer_attention_are_refused(student_args, teacher_args, needle):
    with pytest.raises(ValueError, match=needle):
        assembled(tiny(*student_args), tiny(*teacher_args))


def test_layer_maps_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"distill.attention_layers: pair \[2, 0\] is out of range"):
        assembled(tiny(2, 32, 2, 2), tiny(4, 48, 4, 1), attention_layers=[[2, 0]])
    with pytest.raises(ValueError, match="distill.attention_layers: uniform:3 asks for 3 pairs"):
        assembled(tiny(2, 32, 2, 2), tiny(4, 48, 4, 1), attention_layers="uniform:3")


# --- configuration refusals (one line naming the key) ---------------------------------------------

def raw(**top):
    return {"base_model": "Qwen/Qwen2.5-0.5B", "plugins": ["distill_plugin.DistillPlugin"],
            "distill": {"teacher": "Qwen/Qwen2.5-7B", "attention_weight": 1.0, **top.pop("distill", {})}, **top}


@pytest.mark.parametrize("top, needle", [
    ({"flash_attention": True}, "`flash_attention: true` never returns the attention probabilities"),
    ({"attn_implementation": "flash_attention_2"}, "`attn_implementation: flash_attention_2`: flash attention never forms them"),
    ({"attn_implementation": "sdpa"}, "`attn_implementation: sdpa`: sdpa does not return them"),
    ({"sdp_attention": True}, "`sdp_attention: true`"),
    ({}, "`attn_implementation` is unset"),
    ({"attn_implementation": "eager", "distill": {"teacher_attn_implementation": "sdpa"}}, "distill.teacher_attn_implementation"),
    ({"attn_implementation": "eager", "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": True}},
     "use_reentrant: false"),
])
def test_configs_that_cannot_capture_attention_are_refused(top, needle):
    from distill_plugin.preflight import check_raw_config

    with pytest.raises(SetupError, match="distill.") as info:
        check_raw_config(raw(**top))
    message = str(info.value)
    assert needle in message and "\n" not in message, message


@pytest.mark.parametrize("distill, needle", [
    ({"attention_layers": "uniform:0"}, "distill.attention_layers: expected"),
    ({"attention_weight": 0.0, "attention_layers": "last:2"}, "distill.attention_layers has no effect without `attention_weight` > 0"),
    ({"teacher": None, "teacher_logits": "store/"}, "needs the online `teacher`"),
    ({"cross_tokenizer": "uld"}, "distill.attention_weight: the teacher's attention runs over its own tokens"),
])
def test_distill_keys_that_make_no_sense_are_refused(distill, needle):
    with pytest.raises(ValueError, match=needle.replace("`", ".")):
        DistillConfig(**{"teacher": "t", "attention_weight": 1.0, **distill})


def test_explicit_pairs_survive_axolotls_loader():
    """YAML's [[s, t], ...] validates, and the block Axolotl's loader hands back validates again (the
    plugin re-reads it), for attention_layers and hidden_layers alike."""
    import yaml
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault({**raw(attn_implementation="eager"), **yaml.safe_load("""
micro_batch_size: 1
num_epochs: 1
learning_rate: 1.0e-5
output_dir: out
sequence_len: 512
datasets: [{path: data.jsonl, type: chat_template}]
""")})
    cfg["distill"].update(yaml.safe_load("{attention_layers: [[0, 1], [1, 3]], hidden_weight: 1.0, hidden_layers: [[1, 2]]}"))
    prepare_plugins(cfg)
    again = DistillConfig.model_validate(dict(validate_config(cfg)["distill"]))
    assert again.attention_layers == [(0, 1), (1, 3)] and again.hidden_layers == [(1, 2)]


def test_eager_configs_pass():
    from distill_plugin.preflight import check_raw_config

    for top in ({"attn_implementation": "eager"}, {"eager_attention": True},
                {"attn_implementation": "eager", "gradient_checkpointing": True}):
        assert check_raw_config(raw(**top)).attention_weight == 1.0


# --- end to end ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_recipe_twin_trains_the_attention_component(twin_root, tmp_path):
    """recipes/attention_transfer.yml's twin through ``axolotl.cli.train``: its promises (the ``attention``
    component logged at every step and in evaluation, the loss sum, the saved student reloads) and a
    gradient at every step, on the layer pairs uniform:2 gives the 2-layer student and 4-layer teacher."""
    from twin_runs import check_promises, train_twin

    recipe = REPO / "recipes" / "attention_transfer.yml"
    run = train_twin(recipe, twin_root, tmp_path)
    check_promises(recipe, run)
    assert "attention transfer: decoder-layer pairs (student, teacher) [(0, 1), (1, 3)]" in run.output
    values = [e["attention_loss"] for e in run.logs]
    assert all(math.isfinite(v) and v > 0 for v in values) and all(e["grad_norm"] > 0 for e in run.logs)
