"""Which way each cross-tokenizer term pushes a trained student, next to its CE: per-row gradient cosines.

For the student of a quality-benchmark run (``bench_quality.py --out OUT``; default its tokenizer-B
SFT student, ``OUT/seed_N/sft_b``) and the run's teacher, on the first ``--rows`` training examples:
the gradient, with respect to the student's logits at every aligned supervised row, of the next-byte
KL, of ULD (``losses.uld``: Σ|sort↓P − sort↓Q|) and of CE. It prints their mean cosine with CE's
gradient (all rows; the rows whose student argmax is wrong, split by whether that argmax writes the
same first byte as the target), the teacher's mean top probability, and the same per target token
for the tokens with the largest summed CE.

    python benchmarks/diag_cross_tokenizer.py --out bench_quality_out --seed 1
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
import torch.nn.functional as F


def aligned_rows(out: Path, student_dir: Path, rows: int):
    """Student logits (grad-ready) and teacher log-probs at the aligned supervised rows, and targets."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill_plugin.alignment.collator import CrossTokenizerCollator
    from distill_plugin.alignment.tokens import next_byte_classes
    from distill_plugin.demo.core import encode
    from distill_plugin.losses.chunked import supervised_mask
    from distill_plugin.teachers import AlignedTeacherSource

    teacher_dir = out / "shared" / "teacher"
    student_tok, teacher_tok = AutoTokenizer.from_pretrained(student_dir), AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    lines = (out / "shared" / "data" / "train.jsonl").read_text().splitlines()[:rows]
    features = []
    for line in lines:
        e = encode(student_tok, json.loads(line))
        ids = e.prompt_ids + e.target_ids
        features.append({"input_ids": ids, "labels": [-100] * len(e.prompt_ids) + e.target_ids, "attention_mask": [1] * len(ids)})
    collate = CrossTokenizerCollator(student_tok, teacher_tokenizer=str(teacher_dir), base_collator="transformers.DataCollatorForSeq2Seq")
    classes = next_byte_classes(student_tok, teacher_tok)
    batch = collate(features, return_tensors="pt")
    mask = supervised_mask(batch["labels"])
    (signal,) = AlignedTeacherSource(teacher, len(teacher_tok), len(student_tok), classes).signals(batch, mask).values()
    aligned = signal.index >= 0
    with torch.no_grad():
        z_s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
        z_t = F.linear(signal.rows, signal.head.weight)[:, : len(teacher_tok)]
    z = z_s[aligned][:, : len(student_tok)].clone().requires_grad_(True)
    targets = batch["labels"][:, 1:][mask][aligned]
    return z, F.log_softmax(z_t[signal.index[aligned]], -1), targets, classes, student_tok


def main() -> None:
    from distill_plugin.losses.divergences import divergence
    from distill_plugin.losses.uld import next_byte_logprobs, sorted_l1

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench_quality_out"), help="a bench_quality.py output folder")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--student", type=Path, help="default: OUT/seed_N/sft_b")
    p.add_argument("--rows", type=int, default=64, help="training examples")
    a = p.parse_args()
    torch.set_num_threads(1)
    z, teacher_logp, targets, classes, tok = aligned_rows(a.out, a.student or a.out / f"seed_{a.seed}" / "sft_b", a.rows)
    student_logp = F.log_softmax(z, -1)
    losses = {
        "next_byte": divergence(next_byte_logprobs(teacher_logp.exp(), classes.teacher),
                                next_byte_logprobs(student_logp.exp(), classes.student)),
        "uld": sorted_l1(teacher_logp.exp(), student_logp.exp()),
        "ce": F.cross_entropy(z, targets, reduction="none"),
    }
    grads = {k: torch.autograd.grad(v.sum(), z, retain_graph=True)[0] for k, v in losses.items()}
    cos = {k: F.cosine_similarity(grads[k], grads["ce"], dim=-1) for k in ("next_byte", "uld")}
    argmax = z.argmax(-1)
    wrong = argmax != targets
    # the next-byte term cannot tell apart two tokens that write the same first byte
    same_byte = wrong & (classes.student[argmax] == classes.student[targets])
    other_byte = wrong & ~same_byte
    print(f"{len(targets)} aligned rows; teacher top probability {teacher_logp.exp().max(-1).values.mean():.4f} (mean); "
          f"student argmax wrong on {wrong.float().mean():.1%} ({same_byte.float().mean():.1%} with the target's first byte)\n")
    print("| term | mean cos with CE's gradient | rows where < 0 | mean cos, wrong rows | wrong, same first byte "
          "| wrong, other first byte | mean ‖grad‖ |")
    print("|---|---|---|---|---|---|---|")

    def mean(c, rows):
        return f"{c[rows].mean():+.3f}" if rows.any() else "–"

    for k, c in cos.items():
        print(f"| {k} | {c.mean():+.3f} | {(c < 0).float().mean():.1%} | {mean(c, wrong)} | {mean(c, same_byte)} "
              f"| {mean(c, other_byte)} | {grads[k].norm(dim=-1).mean():.4f} |")
    print(f"| ce | +1 | – | – | – | – | {grads['ce'].norm(dim=-1).mean():.4f} |\n")
    by = collections.defaultdict(list)
    for j, t in enumerate(targets.tolist()):
        by[tok.convert_ids_to_tokens(t)].append(j)
    print("| target token | rows | Σ CE | cos next_byte | cos uld |\n|---|---|---|---|---|")
    for token, idx in sorted(by.items(), key=lambda kv: -losses["ce"][kv[1]].sum().item())[:10]:
        i = torch.tensor(idx)
        print(f"| {token!r} | {len(idx)} | {losses['ce'][i].sum():.2f} | {cos['next_byte'][i].mean():+.3f} | {cos['uld'][i].mean():+.3f} |")


if __name__ == "__main__":
    main()
