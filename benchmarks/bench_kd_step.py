"""Whole training step (forward + backward) of logit KD against SFT, and KD's FLOP-ratio limit.

Qwen2-shaped models with random weights, built here (no download): by default a student of
40.5M and a teacher of 90.4M non-embedding parameters, V = 151,936 (untied lm_heads), a batch of
4 × 256 tokens whose first 64 positions are prompt (labels -100), so 768 supervised rows
(row t predicts token t+1, mask ``labels[t+1] != -100``). fp32 on CPU. Rows:

    hf_sft     ``student(**batch, labels=labels).loss``: the model's own CE over the full [B, T, V] logits
    fused_sft  student with its lm_head bypassed → supervised rows → ``losses.chunked.fused_linear_loss``
               with a closed-form CE chunk (log_softmax, then softmax − onehot): Liger-style fused CE,
               its fp32 maths run over blocks of ``--block-elements`` logits (rows that stay in cache)
    kd_ours    ``DistillTrainerMixin.compute_loss`` as the trainer calls it: teacher forward under
               no_grad (``TeacherModelSource``), student forward, ``LogitTerms`` → ``online_kd_loss``
               (forward KL, T = 1, kd_weight 1, ce_weight 0), then backward
    naive_kd   full student and teacher logits, log_softmax over the supervised rows, ``F.kl_div``

Each step is ``zero_grad`` + forward + backward (no optimizer step: it is the same for every row
and outside the FLOP model). The rows run interleaved, one of each per round (order rotated each
round), ``--warmup`` rounds then ``--repeats`` timed ones; reported: the median ms/step with its
min–max, and the median (min–max) over rounds of each row's time divided by fused_sft's in the same
round — the ratio is what survives a contended machine. ``--clock process`` times this process's CPU
seconds (all threads) instead of wall seconds: time slices lost to other processes then do not count.

FLOPs (the limit): matmuls only, 2 per multiply-add; a decoder body forward is
2·N·tokens (N = non-embedding parameters) + 2·H·T(T+1) per layer and sequence (causal QKᵀ and AV);
backward = 2 × forward; the head costs 2·rows·V·H per GEMM (forward 1, backward 2 for the
student, forward only for the teacher). The **limit** is FLOPs(kd_ours) / FLOPs(fused_sft): the
ratio KD would have if everything but the matmuls were free and the matmuls ran at SFT's speed.

``--profile ROW`` runs one more step of ROW under torch.profiler and prints its top operators;
``--breakdown`` times the parts of fused_sft and kd_ours separately (teacher forward, student body
forward + backward, the fused head loss forward + backward).

    python benchmarks/bench_kd_step.py                       # the default shapes, 2 threads
    python benchmarks/bench_kd_step.py --rows fused_sft kd_ours --breakdown --profile kd_ours
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = ("hf_sft", "fused_sft", "kd_ours", "naive_kd")


# ---------------------------------------------------------------------------------------------
# models, batch, FLOPs


def build(hidden, inter, layers, heads, kv_heads, vocab, seed):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                         tie_word_embeddings=False, use_sliding_window=False, attn_implementation="sdpa")
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def non_embedding(model) -> int:
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def make_batch(a):
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
    labels = input_ids.clone()
    labels[:, : a.prompt] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def body_flops(model, batch, seq) -> float:
    c = model.config
    return 2.0 * non_embedding(model) * batch * seq + c.num_hidden_layers * batch * 2.0 * c.hidden_size * seq * (seq + 1)


def step_flops(a, student, teacher) -> dict[str, float]:
    rows, tokens = a.batch * (a.seq - a.prompt), a.batch * a.seq
    hs, ht, v = student.config.hidden_size, teacher.config.hidden_size, a.vocab
    s_body, t_body = 3 * body_flops(student, a.batch, a.seq), body_flops(teacher, a.batch, a.seq)
    return {
        "hf_sft": s_body + 6.0 * tokens * v * hs,
        "fused_sft": s_body + 6.0 * rows * v * hs,
        "kd_ours": s_body + 6.0 * rows * v * hs + t_body + 2.0 * rows * v * ht,
        "naive_kd": s_body + 6.0 * tokens * v * hs + t_body + 2.0 * tokens * v * ht,
    }


# ---------------------------------------------------------------------------------------------
# the steps: each returns a closure doing zero_grad + forward + backward


def ce_chunk(targets, normalizer, block: int):
    """Closed-form CE chunk for ``fused_linear_loss``: ``[Σ ce / N]`` and (softmax − onehot) / N,
    computed over blocks of ``block`` rows (as ours: the fp32 maths stays in cache), the gradient
    written over the chunk's logits (fp32 here)."""

    def chunk(logits, start, end):
        grad, total = logits.detach(), None
        for i in range(0, max(end - start, 1), block):
            j = min(i + block, end - start)
            t = targets[start + i:start + j]
            with torch.no_grad():
                logp = F.log_softmax(logits[i:j].float(), dim=-1)
                ce = -logp.gather(1, t[:, None]).sum() / normalizer
                total = ce if total is None else total + ce
                if logits.requires_grad:  # written over the block's own logits, as ours writes its gradient
                    g = torch.exp(logp, out=grad[i:j])
                    g[torch.arange(len(t)), t] -= 1.0
                    g.mul_(1.0 / normalizer)
        return (total[None], grad) if logits.requires_grad else total[None]

    return chunk


def steps(a, student, teacher, batch):
    from transformers import Trainer, TrainingArguments

    from distill_plugin.args import DistillConfig
    from distill_plugin.losses.chunked import fused_linear_loss, select_rows
    from distill_plugin.modeling import final_hidden_states
    from distill_plugin.teachers import TeacherModelSource
    from distill_plugin.trainer import DistillTrainerMixin

    class Bench(DistillTrainerMixin, Trainer):
        pass

    labels = batch["labels"]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    n = labels[:, 1:].ne(-100).sum()
    sft_block = max(1, a.block_elements // a.vocab)
    config = DistillConfig(teacher="bench", divergence="forward_kl", temperature=1.0, kd_weight=1.0, ce_weight=0.0,
                           chunk_size=a.chunk_size)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="bench_kd_step_"), report_to=[], use_cpu=True, seed=0)
    trainer = Bench(model=student, args=args)
    trainer.setup_distillation(config, TeacherModelSource(teacher, vocab_size=a.vocab))

    def hf_sft():
        student.zero_grad(set_to_none=True)
        loss = student(**inputs, labels=labels).loss
        loss.backward()
        return loss

    def fused_sft():
        student.zero_grad(set_to_none=True)
        rows, targets, _ = select_rows(final_hidden_states(student, inputs), labels)
        head = student.lm_head
        loss, _ = fused_linear_loss(rows, head.weight, ce_chunk(targets, float(n), sft_block), head.bias, a.chunk_size)
        loss.backward()
        return loss

    def kd_ours():
        student.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(student, batch, num_items_in_batch=n)
        loss.backward()
        return loss

    def naive_kd():
        student.zero_grad(set_to_none=True)
        mask = labels[:, 1:] != -100
        with torch.no_grad():
            log_p = F.log_softmax(teacher(**inputs).logits[:, :-1][mask].float(), dim=-1)
        log_q = F.log_softmax(student(**inputs).logits[:, :-1][mask].float(), dim=-1)
        loss = F.kl_div(log_q, log_p, reduction="sum", log_target=True) / n
        loss.backward()
        return loss

    return {"hf_sft": hf_sft, "fused_sft": fused_sft, "kd_ours": kd_ours, "naive_kd": naive_kd}, trainer


# ---------------------------------------------------------------------------------------------
# breakdown and profile


def breakdown(a, student, teacher, batch, trainer, repeats: int) -> list[tuple[str, float]]:
    """Median ms of each part of fused_sft / kd_ours, run separately (interleaved, ``repeats`` rounds)."""
    from distill_plugin.losses.chunked import fused_linear_loss, select_rows, supervised_mask
    from distill_plugin.losses.terms import LogitTerms
    from distill_plugin.modeling import final_hidden_states, output_head
    from distill_plugin.signals import StudentRows

    labels = batch["labels"]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    n = float(labels[:, 1:].ne(-100).sum())
    mask = supervised_mask(labels)
    signals = trainer.teacher_source.signals(batch, mask)
    (term,) = trainer.loss_terms
    with torch.no_grad():
        rows0, targets, _ = select_rows(final_hidden_states(student, inputs), labels)
    head = output_head(student)

    def teacher_forward():
        trainer.teacher_source.signals(batch, mask)

    def student_body():  # forward + backward of the body alone (a linear stand-in for the head)
        student.zero_grad(set_to_none=True)
        rows, _, _ = select_rows(final_hidden_states(student, inputs), labels)
        rows.sum().backward()

    def head_ce():
        rows = rows0.detach().requires_grad_(True)
        chunk = ce_chunk(targets, n, max(1, a.block_elements // a.vocab))
        loss, _ = fused_linear_loss(rows, head.weight, chunk, head.bias, a.chunk_size)
        loss.backward()

    def head_kd():
        rows = rows0.detach().requires_grad_(True)
        out = term(StudentRows(rows, targets, head, {}), signals[next(iter(signals))])
        (out.objective / n).backward()

    parts = {"teacher forward (no_grad)": teacher_forward, "student body fwd+bwd": student_body,
             "head: fused CE fwd+bwd": head_ce, "head: fused forward KL fwd+bwd": head_kd}
    times = {k: [] for k in parts}
    for r in range(repeats + 1):
        for name, fn in parts.items():
            start = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - start)
    student.zero_grad(set_to_none=True)
    return [(name, 1e3 * statistics.median(t)) for name, t in times.items()]


def profile(fn, top: int) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=top)


# ---------------------------------------------------------------------------------------------


def run(a):
    torch.set_num_threads(a.threads)
    s_shape = dict(zip(("hidden", "inter", "layers", "heads", "kv_heads"), a.student))
    t_shape = dict(zip(("hidden", "inter", "layers", "heads", "kv_heads"), a.teacher))
    student = build(**s_shape, vocab=a.vocab, seed=1).train()
    teacher = build(**t_shape, vocab=a.vocab, seed=2).eval().requires_grad_(False)
    batch = make_batch(a)
    clock = time.process_time if a.clock == "process" else time.perf_counter
    fns, trainer = steps(a, student, teacher, batch)
    names = [r for r in ROWS if r in a.rows]
    times = {r: [] for r in names}
    losses = {}
    for rnd in range(a.warmup + a.repeats):
        order = names[rnd % len(names):] + names[: rnd % len(names)]
        for name in order:
            start = clock()
            losses[name] = float(fns[name]().detach())
            elapsed = clock() - start
            if rnd >= a.warmup:
                times[name].append(elapsed)
        print(f"round {rnd + 1}/{a.warmup + a.repeats}: " + ", ".join(f"{k} {1e3 * v[-1]:.0f} ms" for k, v in times.items() if v),
              file=sys.stderr, flush=True)
    flops = step_flops(a, student, teacher)
    extra = {"breakdown": breakdown(a, student, teacher, batch, trainer, a.repeats) if a.breakdown else None,
             "profile": profile(fns[a.profile], a.top) if a.profile else None}
    return student, teacher, times, losses, flops, extra


def table(a, student, teacher, times, losses, flops) -> str:
    rows = a.batch * (a.seq - a.prompt)
    out = [f"student {non_embedding(student) / 1e6:.1f}M / teacher {non_embedding(teacher) / 1e6:.1f}M non-embedding "
           f"parameters (H {student.config.hidden_size} / {teacher.config.hidden_size}), V {a.vocab:,}, batch {a.batch} × "
           f"{a.seq} tokens, {rows} supervised rows, fp32, {a.threads} threads, chunk "
           f"{a.chunk_size or 'auto'}, {a.clock} clock; median of {a.repeats} interleaved rounds after {a.warmup} warm-up",
           "", "| row | ms/step (min–max) | × fused_sft (min–max over rounds) | GFLOP | FLOP × fused_sft | loss |",
           "|---|---|---|---|---|---|"]
    base = times.get("fused_sft")
    for name, t in times.items():
        ms = [1e3 * x for x in t]
        if base:
            ratios = [x / b for x, b in zip(t, base)]
            ratio = f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})"
        else:
            ratio = "—"
        out.append(f"| {name} | {statistics.median(ms):,.0f} ({min(ms):,.0f}–{max(ms):,.0f}) | {ratio} | "
                   f"{flops[name] / 1e9:,.0f} | {flops[name] / flops['fused_sft']:.3f} | {losses[name]:.4f} |")
    limit = flops["kd_ours"] / flops["fused_sft"]
    out.append(f"| limit (FLOPs of kd_ours / fused_sft) | | {limit:.3f} | | | |")
    if base and "kd_ours" in times:
        ratios = sorted(k / b for k, b in zip(times["kd_ours"], base))
        out.append("")
        out.append(f"kd_ours / limit: {statistics.median(ratios) / limit:.3f} "
                   f"(rounds: {', '.join(f'{r / limit:.3f}' for r in ratios)})")
    return "\n".join(out)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--student", type=int, nargs=5, default=[512, 1600, 13, 8, 2], metavar=("H", "I", "L", "HEADS", "KV"),
                   help="hidden, intermediate, layers, attention heads, KV heads (default: 40.5M non-embedding)")
    p.add_argument("--teacher", type=int, nargs=5, default=[896, 3520, 8, 14, 2], metavar=("H", "I", "L", "HEADS", "KV"),
                   help="default: 90.4M non-embedding")
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--prompt", type=int, default=64, help="prompt positions per sequence (labels -100)")
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk of the fused losses (default: auto)")
    p.add_argument("--block-elements", type=int, default=1 << 20,
                   help="fused_sft's CE maths runs over blocks of this many logits (rows = this // V)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="process: this process's CPU seconds (all its threads), less sensitive to a contended machine")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--breakdown", action="store_true")
    p.add_argument("--profile", choices=ROWS)
    p.add_argument("--top", type=int, default=25, help="operators listed by --profile")
    a = p.parse_args(argv)
    if not 0 < a.prompt < a.seq:
        p.error(f"--prompt must be in (0, --seq), got {a.prompt}")
    return a


def main(argv=None) -> None:
    a = parse(argv)
    student, teacher, times, losses, flops, extra = run(a)
    print(table(a, student, teacher, times, losses, flops))
    if extra["breakdown"]:
        print("\n| part | ms (median) |\n|---|---|")
        for name, ms in extra["breakdown"]:
            print(f"| {name} | {ms:,.0f} |")
    if extra["profile"]:
        print(f"\nprofile of one {a.profile} step:\n{extra['profile']}")


if __name__ == "__main__":
    main()
