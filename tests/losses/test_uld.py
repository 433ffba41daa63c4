"""Cross-tokenizer losses (ULD, hybrid) against a plain float64 full-logit reference: values and
gradients, vocabularies of different sizes, unaligned rows, lm_head padding cut, top-k; and what the
hybrid's next-byte part asks of a student whose tokens are coarser than the teacher's.

Tolerances: values rtol 1e-4; gradients rtol 1e-3 with an absolute floor of 1e-4·max|grad|.
"""

import shutil

import pytest
import torch

from distill_plugin.alignment.tokens import OTHER, NextByteClasses
from distill_plugin.losses import KDSettings
from distill_plugin.losses.uld import CrossTokenizerTerms, cross_tokenizer_loss, next_byte_logprobs, sorted_l1
from distill_plugin.signals import AlignedLogits, OutputHead, StudentRows

from reference import make_case, reference_class_sums, reference_cross_tokenizer

VS, VT = 50, 37  # the two vocabularies differ in size


def byte_classes(seed=3):
    """A few byte classes shared by both sides (most of the 257 empty), ``OTHER`` among them."""
    g = torch.Generator().manual_seed(seed)
    used = torch.tensor([10, 48, 53, 200, OTHER])
    return NextByteClasses(used[torch.randint(0, 5, (VS,), generator=g)], used[torch.randint(0, 5, (VT,), generator=g)])


def case(rows=31, aligned=19, seed=0):
    """Student rows [rows], teacher rows [aligned]; student row i ↔ teacher row index[i] (−1: none)."""
    h_s, w_s, h_t, w_t, targets = make_case(rows=rows, vs=VS, vt=VT, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    index = torch.full((rows,), -1, dtype=torch.long)
    index[torch.randperm(rows, generator=g)[:aligned]] = torch.randperm(aligned, generator=g)
    return h_s, w_s, h_t[:aligned], w_t, targets, index


CASES = [("uld", "forward_kl", None), ("uld", "forward_kl", 7), ("hybrid", "forward_kl", None),
         ("hybrid", "jsd", 7), ("hybrid", "reverse_kl", None), ("hybrid", "tvd", None)]


@pytest.mark.parametrize("mode,div,top_k", CASES)
@pytest.mark.parametrize("temperature,chunk", [(1.0, 64), (2.0, 5)])
def test_values_and_grads_match_reference(mode, div, top_k, temperature, chunk):
    h_s, w_s, h_t, w_t, targets, index = case()
    s = KDSettings(divergence=div, temperature=temperature, kd_weight=0.7, ce_weight=0.3)
    classes = byte_classes()
    signal = AlignedLogits(h_t, OutputHead(w_t), index, byte_classes=classes)
    out = cross_tokenizer_loss(h_s, w_s, signal, targets, s, mode, top_k, normalizer=40, chunk_size=chunk)
    out.loss.backward()
    h2, w2 = h_s.detach().clone().requires_grad_(True), w_s.detach().clone().requires_grad_(True)
    ref, next_byte, uld, ce = reference_cross_tokenizer(h2, w2, h_t, w_t, index, targets, s, mode, top_k, classes, 40)
    ref.backward()
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-4, atol=1e-6)
    for ours, theirs in ((out.next_byte, next_byte), (out.uld, uld), (out.ce, ce)):
        torch.testing.assert_close(ours.double(), theirs.detach(), rtol=1e-4, atol=1e-6)
    assert out.uld > 0 and (out.next_byte > 0) == (mode == "hybrid")
    for ours, ref_grad in ((h_s.grad, h2.grad), (w_s.grad, w2.grad)):
        floor = 1e-4 * ref_grad.abs().max().item()
        torch.testing.assert_close(ours, ref_grad.float(), rtol=1e-3, atol=floor)


@pytest.mark.parametrize("uld_weight", [0.0, 0.25, 3.0])
def test_hybrid_uld_weight_matches_reference(uld_weight):
    """``uld_weight`` scales ULD against the next-byte term; at 0 ULD is not computed (logged as 0)."""
    h_s, w_s, h_t, w_t, targets, index = case(seed=4)
    s = KDSettings(divergence="forward_kl", temperature=2.0, kd_weight=0.7, ce_weight=0.3)
    classes = byte_classes()
    signal = AlignedLogits(h_t, OutputHead(w_t), index, byte_classes=classes)
    out = cross_tokenizer_loss(h_s, w_s, signal, targets, s, "hybrid", None, normalizer=40, chunk_size=8,
                               uld_weight=uld_weight)
    out.loss.backward()
    h2 = h_s.detach().clone().requires_grad_(True)
    ref, next_byte, uld, _ = reference_cross_tokenizer(h2, w_s.detach(), h_t, w_t, index, targets, s, "hybrid", None,
                                                       classes, 40, uld_weight=uld_weight)
    ref.backward()
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.next_byte.double(), next_byte.detach(), rtol=1e-4, atol=1e-6)
    assert (out.uld == 0) if uld_weight == 0 else torch.isclose(out.uld.double(), uld.detach(), rtol=1e-4)
    torch.testing.assert_close(h_s.grad, h2.grad.float(), rtol=1e-3, atol=1e-4 * h2.grad.abs().max().item())
    with pytest.raises(ValueError, match="uld_weight weighs ULD against the next-byte term"):
        cross_tokenizer_loss(h_s, w_s, signal, targets, s, "uld", uld_weight=uld_weight or 2.0)


def test_padding_rows_of_both_heads_are_cut():
    h_s, w_s, h_t, w_t, targets, index = case()
    pad_s = torch.cat([w_s.detach(), torch.randn(6, w_s.shape[1])]).requires_grad_(True)  # lm_head padding rows
    pad_t = torch.cat([w_t, torch.randn(9, w_t.shape[1]) * 5])
    s = KDSettings(ce_weight=0.5)
    signal = AlignedLogits(h_t, OutputHead(pad_t), index, vocab_size=VT, student_vocab_size=VS)
    out = cross_tokenizer_loss(h_s, pad_s, signal, targets, s, "uld", normalizer=31)
    ref, *_ = reference_cross_tokenizer(h_s, w_s, h_t, w_t, index, targets, s, "uld", None, None, 31)
    torch.testing.assert_close(out.loss.double(), ref.detach(), rtol=1e-4, atol=1e-6)


def test_identical_distributions_give_zero_and_permutation_invariance():
    p = torch.softmax(torch.randn(4, 30, dtype=torch.float64), -1)
    assert sorted_l1(p, p).abs().max() == 0
    assert sorted_l1(p, p[:, torch.randperm(30)]).abs().max() == 0  # ULD ignores which token holds the mass
    wider = torch.cat([p, torch.zeros(4, 10, dtype=torch.float64)], 1)
    assert sorted_l1(p, wider).abs().max() == 0  # zero padding in probability space changes nothing


@pytest.mark.parametrize("gemm", [False, True])  # the CPU scatter-add and the CUDA GEMM, both run here
def test_next_byte_logprobs_both_paths_match_reference(gemm):
    """Values and gradients against the float64 one-hot reference; the classes no id falls in are
    −inf with zero gradient (no NaN leaks into the GEMM's backward); TF32 is left as it was."""
    classes = byte_classes().student
    z = (torch.randn(6, VS, dtype=torch.float64) * 3).requires_grad_(True)
    weights = torch.randn(6, 257, dtype=torch.float64)
    ours = next_byte_logprobs(torch.softmax(z, -1).float(), classes, gemm=gemm)
    used = torch.isfinite(ours[0])
    assert used.sum() == 5 and not torch.isfinite(ours[:, ~used]).any()
    (g,) = torch.autograd.grad((ours.double().clamp_min(-1e4) * weights).sum(), z)
    z2 = z.detach().clone().requires_grad_(True)
    ref = reference_class_sums(torch.softmax(z2, -1), classes)[:, used].log()
    torch.testing.assert_close(ours[:, used].double(), ref.detach(), rtol=1e-5, atol=1e-6)
    (g_ref,) = torch.autograd.grad((ref * weights[:, used]).sum(), z2)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    torch.set_float32_matmul_precision("high")
    try:
        next_byte_logprobs(torch.softmax(z, -1).float(), classes, gemm=gemm)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")


def test_sorting_by_bf16_logits_gives_the_fp32_order():
    """ULD sorts by the raw logits in their compute dtype (faster in bf16): the sorted probabilities
    equal a plain sort of the fp32 ones, ties in bf16 included, for the full sort and top-k."""
    raw = (torch.randn(5, 400) * 4).to(torch.bfloat16)  # many exact ties at this width
    p = torch.softmax(raw.float() / 2.0, -1)
    q = torch.softmax(torch.randn(5, 300), -1)
    for top_k in (None, 17):
        torch.testing.assert_close(sorted_l1(p, q, top_k, teacher_keys=raw), sorted_l1(p, q, top_k), rtol=0, atol=0)


def test_term_components_and_every_weighted_component_has_gradient():
    h_s, w_s, h_t, w_t, targets, index = case()
    signal = AlignedLogits(h_t, OutputHead(w_t), index, byte_classes=byte_classes())
    student = StudentRows(h_s, targets, OutputHead(w_s))
    for mode, uld_weight, names in (("uld", 1.0, ["uld", "ce"]), ("hybrid", 1.0, ["next_byte", "uld", "ce"]),
                                    ("hybrid", 0.0, ["next_byte", "ce"])):
        for weights in ((1.0, 0.0), (0.0, 1.0)):  # KD alone, CE alone: each moves the student
            settings = KDSettings(kd_weight=weights[0], ce_weight=weights[1], temperature=2.0)
            term = CrossTokenizerTerms(settings, mode, uld_weight=uld_weight)
            assert [c.name for c in term.components] == names
            assert term.components[0].weight == weights[0] * 4  # T² on the KD components
            h_s.grad = None
            out = term(student, signal)
            out.objective.backward()
            assert out.sums.shape == (len(names),) and h_s.grad.abs().sum() > 0


@pytest.mark.parametrize("teacher_rows", [19, 0])  # 0: the collator found no aligned position at all
def test_no_aligned_rows_is_ce_only(teacher_rows):
    h_s, w_s, h_t, w_t, targets, _ = case()
    none = torch.full((h_s.shape[0],), -1, dtype=torch.long)
    s = KDSettings(ce_weight=1.0)
    out = cross_tokenizer_loss(h_s, w_s, AlignedLogits(h_t[:teacher_rows], OutputHead(w_t), none), targets, s, "uld")
    out.loss.backward()
    assert out.uld == 0 and torch.isfinite(h_s.grad).all()
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(h_s @ w_s.t(), targets), rtol=1e-5, atol=1e-6)


def test_next_byte_part_leaves_a_coarser_student_on_its_own_tokens():
    """A byte-level teacher sure the text goes on with ``5`` and a student sure of its own ``5;`` (the
    token its tokenizer writes for "5;"): they agree on the next byte, so the next-byte part is ~0
    and pushes no mass towards the student's single-character ``5``. Comparing the ids both sides
    spell alike (``5`` ↔ ``5``, TRL GOLD's hybrid and ours before) priced this student at ~20 nats
    and pulled it towards ``5``: tokenisations it never reads, and 0 % in the quality benchmark."""
    from distill_plugin.alignment.tokens import next_byte_classes
    from distill_plugin.testing.tiny import build_sp_tokenizer, build_tokenizer

    teacher_tok, student_tok = build_tokenizer(), build_sp_tokenizer()
    classes = next_byte_classes(student_tok, teacher_tok)
    five, five_semi = student_tok.convert_tokens_to_ids("5"), student_tok.convert_tokens_to_ids("5;")
    assert student_tok.convert_ids_to_tokens(student_tok("5;", add_special_tokens=False)["input_ids"]) == ["5;"]
    vt, vs = len(teacher_tok), len(student_tok)
    w_t, w_s = torch.eye(vt, dtype=torch.float64) * 20, torch.eye(vs, dtype=torch.float64) * 20
    h_t = w_t[teacher_tok.convert_tokens_to_ids("5")][None].clone()  # teacher logits: 20 on "5"
    h_s = w_s[five_semi][None].clone().requires_grad_(True)  # student logits: 20 on "5;"
    signal = AlignedLogits(h_t, OutputHead(w_t), torch.tensor([0]), byte_classes=classes)
    out = cross_tokenizer_loss(h_s, w_s, signal, None, KDSettings(kd_weight=1.0, ce_weight=0.0), "hybrid")
    assert out.next_byte < 1e-3
    grad = torch.autograd.grad(out.loss, h_s)[0][0] @ w_s.t() / 20  # d loss / d student logits
    assert grad[five] >= 0  # descent does not raise the single-character token


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor on the CPU needs a C++ compiler")
def test_compiled_chunk_matches_eager():
    """The chunk maths CUDA runs through ``torch.compile`` (inductor, here on the CPU) gives the eager
    values and gradients, unaligned rows and the hybrid's eager class sums included."""
    from distill_plugin.losses.compiled import compiled_cross_tokenizer_chunk
    from distill_plugin.losses.uld import ChunkOptions, cross_tokenizer_chunk

    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(9, VS, generator=g).requires_grad_(True)
    z_t, targets = torch.randn(9, VT, generator=g), torch.randint(0, VS, (9,), generator=g)
    aligned = torch.tensor([True, True, False, True, True, True, False, True, True])
    options = ChunkOptions(KDSettings(divergence="jsd", temperature=2.0, kd_weight=0.7, ce_weight=0.3), "hybrid", None, None, None)
    results = []
    for maths in (cross_tokenizer_chunk, compiled_cross_tokenizer_chunk):
        parts = maths(z_s, z_t, aligned, targets, byte_classes(), options, torch.tensor(40.0))
        results.append((parts, *torch.autograd.grad(parts[0], z_s)))
    (eager, g_eager), (compiled, g_compiled) = results
    assert eager[1] > 0 and eager[2] > 0  # next_byte and uld both present
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-7)


def test_next_byte_gradient_follows_the_students_shares_within_a_class():
    """README's claim, checked on our term: ∂next_byte/∂z_v = Q(v)·(1 − P_B(c)/Q_B(c)) for v of class c
    (forward KL), so within a class each token moves in proportion to its own probability."""
    from distill_plugin.losses.divergences import divergence

    classes = byte_classes().student
    z = (torch.randn(3, VS, dtype=torch.float64) * 2).requires_grad_(True)
    teacher_b = torch.softmax(torch.randn(3, VS, dtype=torch.float64), -1)
    p_b = next_byte_logprobs(teacher_b.float(), classes, gemm=False).double()
    q = torch.softmax(z, -1)
    divergence(p_b, next_byte_logprobs(q.float(), classes, gemm=False).double(), "forward_kl").sum().backward()
    q = q.detach()
    q_b = reference_class_sums(q, classes)
    expected = q * (1 - p_b.exp().gather(1, classes.expand(3, -1)) / q_b.gather(1, classes.expand(3, -1)))
    torch.testing.assert_close(z.grad, expected, rtol=1e-4, atol=1e-6)
