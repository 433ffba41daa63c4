"""Cross-tokenizer KD on CPU: alignment throughput, and the training-step overhead vs same-tokenizer KD.

    python benchmarks/bench_uld.py [--examples 2000] [--steps 20] [--batch 8]

1. Alignment (one core): the collator's per-example work — rebuild the student's text from its ids,
   re-render it with the teacher's chat template, tokenise it with the teacher's tokenizer (offsets),
   align — on the demo's addition chats, student on the tiny SentencePiece-style tokenizer, teacher on
   the byte-level one (different templates). Also with a long example (~4k student tokens of prose
   and digits) to show the cost is linear in tokens. Reports examples/s and student tokens/s.
2. Step overhead on the tiny pair (hidden 32 student, 48 teacher): collate + teacher forward + the
   loss forward/backward, for same-tokenizer logit KD (student on A, forward KL) vs cross-tokenizer
   `uld`, `hybrid` and `hybrid` with `uld_weight: 0` (student on B). Median ms per step.
3. ``--loss-scale``: the loss alone (forward + backward) at real vocabulary sizes, e.g. on a GPU,
   for a Llama-3 teacher (V_t = 128,256, H 4,096) and a Qwen2.5 student (V_s = 151,936, H 1,536):
   same-tokenizer forward KL (``online_kd_loss``, the teacher's head cut to V_s) vs ``uld`` and
   ``hybrid`` (``cross_tokenizer_loss``; 95 % of rows aligned, first-byte classes drawn at random:
   the cost does not depend on which), ``hybrid`` with ``uld_top_k: 1024`` and with ``uld_weight: 0``
   (the next byte alone: no sort). Median time and
   peak memory above the inputs.

    python benchmarks/bench_uld.py --loss-scale --device cuda            # the GPU numbers in README
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _student_features(tokenizer, rows):
    from distill_plugin.demo.core import encode

    out = []
    for row in rows:
        e = encode(tokenizer, row)
        ids = e.prompt_ids + e.target_ids
        out.append({"input_ids": ids, "labels": [-100] * len(e.prompt_ids) + e.target_ids, "attention_mask": [1] * len(ids)})
    return out


def bench_alignment(student_tok, teacher_tok, features, repeats: int = 1) -> tuple[float, float, float]:
    """(examples/s, student tokens/s, fraction of supervised positions aligned) on one thread."""
    from distill_plugin.alignment.collator import Aligner

    aligner = Aligner(student_tok, teacher_tok)
    aligner(features[0]["input_ids"], features[0]["labels"])  # template probes rendered once
    tokens = sum(len(f["input_ids"]) for f in features) * repeats
    supervised = sum(int((np.asarray(f["labels"][1:]) != -100).sum()) for f in features)
    aligned = 0
    start = time.perf_counter()
    for _ in range(repeats):
        for f in features:
            aligned += len(aligner(f["input_ids"], f["labels"]).student_pos)
    elapsed = time.perf_counter() - start
    return len(features) * repeats / elapsed, tokens / elapsed, aligned / (supervised * repeats)


def long_feature(student_tok):
    text = " ".join(f"the quick brown fox {i * 37 % 1000} jumps over héllo 😀 {i}+{i * 3}" for i in range(260))
    messages = [{"role": "user", "content": "Write it out."}, {"role": "assistant", "content": text}]
    rendered = student_tok.apply_chat_template(messages, tokenize=False)
    ids = student_tok(rendered, add_special_tokens=False)["input_ids"]
    return {"input_ids": ids, "labels": ids, "attention_mask": [1] * len(ids)}


def bench_steps(root: Path, rows, steps: int, batch: int) -> dict[str, float]:
    """Median ms per step (collate + teacher + loss fwd/bwd) for same-tokenizer KD and the two cross modes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill_plugin.alignment.collator import CrossTokenizerCollator
    from distill_plugin.alignment.tokens import next_byte_classes
    from distill_plugin.losses.chunked import supervised_mask
    from distill_plugin.losses.kd import KDSettings
    from distill_plugin.losses.terms import LogitTerms
    from distill_plugin.losses.uld import CrossTokenizerTerms
    from distill_plugin.teachers import AlignedTeacherSource, TeacherModelSource
    from distill_plugin.testing.tiny import build_cross_pair, build_model
    from distill_plugin.trainer import student_objective

    teacher_dir, student_sp_dir = build_cross_pair(root, teacher_hidden=48, student_hidden=32)
    tok_a = AutoTokenizer.from_pretrained(teacher_dir)
    build_model(root / "student_a", tok_a, hidden_size=32, seed=2)
    load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)  # noqa: E731
    teacher = load(teacher_dir).eval().requires_grad_(False)
    settings = KDSettings(kd_weight=0.5, ce_weight=0.5)
    tok_b = AutoTokenizer.from_pretrained(student_sp_dir)
    base = "transformers.DataCollatorForSeq2Seq"
    cross = CrossTokenizerCollator(tok_b, teacher_tokenizer=str(teacher_dir), base_collator=base)
    same = CrossTokenizerCollator(tok_a, teacher_tokenizer=str(teacher_dir), base_collator=base).base
    setups = {
        "same tokenizer, forward KL": (load(root / "student_a"), same, _student_features(tok_a, rows),
                                       TeacherModelSource(teacher, len(tok_a)), LogitTerms(settings)),
    }
    for name, mode, uld_weight in (("uld", "uld", 1.0), ("hybrid", "hybrid", 1.0), ("hybrid, uld_weight 0", "hybrid", 0.0)):
        classes = next_byte_classes(tok_b, tok_a) if mode == "hybrid" else None
        setups[f"cross tokenizer, {name}"] = (
            load(student_sp_dir), cross, _student_features(tok_b, rows),
            AlignedTeacherSource(teacher, len(tok_a), len(tok_b), classes),
            CrossTokenizerTerms(settings, mode, uld_weight=uld_weight))
    results = {}
    for name, (student, collate, features, source, term) in setups.items():
        times = []
        for step in range(steps + 2):
            chunk = [features[(step * batch + i) % len(features)] for i in range(batch)]
            start = time.perf_counter()
            inputs = collate(chunk, return_tensors="pt") if collate is cross else collate(chunk)
            mask = supervised_mask(inputs["labels"])
            signals = source.signals(inputs, mask)
            model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
            objective, _ = student_objective(None, student, inputs["labels"], mask, (term,), signals, **model_inputs)
            objective.backward()
            student.zero_grad(set_to_none=True)
            if step >= 2:  # two warm-up steps
                times.append((time.perf_counter() - start) * 1e3)
        results[name] = statistics.median(times)
    return results


def bench_loss_scale(device: str, dtype: torch.dtype, rows: int, repeats: int = 10) -> dict[str, tuple[float, float]]:
    """{case: (median ms of forward+backward, peak GiB above the inputs)} at real vocabulary sizes."""
    from distill_plugin.alignment.tokens import NUM_BYTE_CLASSES, NextByteClasses
    from distill_plugin.losses.kd import KDSettings, online_kd_loss
    from distill_plugin.losses.uld import cross_tokenizer_loss
    from distill_plugin.signals import AlignedLogits, OutputHead

    gen = torch.Generator().manual_seed(0)
    make = lambda *shape, scale=1.0: (torch.randn(*shape, generator=gen) * scale).to(device, dtype)  # noqa: E731
    v_s, h_s, v_t, h_t = 151936, 1536, 128256, 4096
    student_rows = make(rows, h_s).requires_grad_()
    student_weight = make(v_s, h_s, scale=h_s**-0.5 * 2).requires_grad_()
    teacher_rows, teacher_weight = make(rows, h_t), make(v_t, h_t, scale=h_t**-0.5 * 2)
    same_vocab_weight = make(v_s, h_t, scale=h_t**-0.5 * 2)
    targets = torch.randint(0, v_s, (rows,), generator=gen).to(device)
    index = torch.arange(rows)
    index[torch.rand(rows, generator=gen) < 0.05] = -1  # ~5 % of rows unaligned, as measured on real text
    classes = NextByteClasses(torch.randint(0, NUM_BYTE_CLASSES, (v_s,), generator=gen).to(device),
                              torch.randint(0, NUM_BYTE_CLASSES, (v_t,), generator=gen).to(device))
    signal = AlignedLogits(teacher_rows, OutputHead(teacher_weight), index.to(device), v_t, v_s, classes)
    settings = KDSettings(kd_weight=0.5, ce_weight=0.5)
    cases = {
        "same tokenizer, forward KL": lambda: online_kd_loss(  # a teacher with the student's vocabulary
            student_rows, student_weight, teacher_rows, same_vocab_weight, targets, settings).loss,
        "cross tokenizer, uld": lambda: cross_tokenizer_loss(student_rows, student_weight, signal, targets, settings, "uld").loss,
        "cross tokenizer, hybrid": lambda: cross_tokenizer_loss(student_rows, student_weight, signal, targets, settings, "hybrid").loss,
        "cross tokenizer, hybrid, uld_top_k 1024": lambda: cross_tokenizer_loss(
            student_rows, student_weight, signal, targets, settings, "hybrid", top_k=1024).loss,
        "cross tokenizer, hybrid, uld_weight 0": lambda: cross_tokenizer_loss(
            student_rows, student_weight, signal, targets, settings, "hybrid", uld_weight=0.0).loss,
    }
    cuda = device.startswith("cuda")
    results = {}
    for name, loss_fn in cases.items():
        times = []
        for step in range(repeats + 2):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            loss_fn().backward()
            if cuda:
                torch.cuda.synchronize()
            if step >= 2:
                times.append((time.perf_counter() - start) * 1e3)
            student_rows.grad = student_weight.grad = None
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else float("nan")
        results[name] = (statistics.median(times), peak)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--loss-scale", action="store_true", help="only the loss at real vocabulary sizes (section 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, nargs="+", default=[8192], help="supervised student rows (--loss-scale)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    args = parser.parse_args()
    if args.loss_scale:
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
        print(f"| loss fwd+bwd, {args.device}, {args.dtype}, V_s 151,936 / V_t 128,256 | rows | ms (median) | vs same-tokenizer | peak GiB |")
        print("|---|---|---|---|---|")
        for rows in args.rows:
            results = bench_loss_scale(args.device, dtype, rows)
            base = results["same tokenizer, forward KL"][0]
            for name, (ms, gib) in results.items():
                print(f"| {name} | {rows:,} | {ms:.1f} | {ms / base:.2f}x | {gib:.2f} |", flush=True)
        return
    torch.set_num_threads(1)

    from distill_plugin.testing.addition import make_split
    from distill_plugin.testing.tiny import build_sp_tokenizer, build_tokenizer

    tok_a, tok_b = build_tokenizer(), build_sp_tokenizer()
    rows = make_split(args.examples, seed=5)
    features = _student_features(tok_b, rows)
    print("| alignment (1 core) | examples | student tokens/example | examples/s | tokens/s | supervised positions aligned |")
    print("|---|---|---|---|---|---|")
    for name, feats, repeats in (("addition chats", features, 1), ("one long example", [long_feature(tok_b)], 20)):
        ex_s, tok_s, frac = bench_alignment(tok_b, tok_a, feats, repeats)
        per = sum(len(f["input_ids"]) for f in feats) / len(feats)
        print(f"| {name} | {len(feats) * repeats} | {per:.0f} | {ex_s:,.0f} | {tok_s:,.0f} | {frac:.0%} |")
    with tempfile.TemporaryDirectory() as tmp:
        results = bench_steps(Path(tmp), rows[:256], args.steps, args.batch)
    base = results["same tokenizer, forward KL"]
    print(f"\n| training step, tiny pair, batch {args.batch}, 1 core | ms/step (median of {args.steps}) | vs same-tokenizer |")
    print("|---|---|---|")
    for name, ms in results.items():
        print(f"| {name} | {ms:.1f} | {ms / base:.2f}x |")


if __name__ == "__main__":
    main()
