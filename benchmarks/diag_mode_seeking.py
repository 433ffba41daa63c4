"""Reverse KL and on-policy GKD against a source with many right answers: the loss or the objective?

    python benchmarks/diag_mode_seeking.py --bench bench_quality_warm [--seed 1] [--steps 150]

Reads an output of ``bench_quality.py --regime warm`` (its teacher, its train split and seed N's warm
student init) and prints three tables.

1. **The batches.** One teacher-forced batch of the student's sample, and one on-policy batch built
   the way the plugin's on-policy step builds it: ``Rollout`` on the student (T = 1, top-p 1, the
   first stop token kept) after each row's prompt, then ``replace_completions`` (prompt and padding
   masked, completion and its end supervised). Rows, supervised positions, the sampled answers'
   validity under the source.
2. **The gradient.** On each batch and each divergence (forward KL, reverse KL, JSD β = 0.5): the
   plugin's ``online_kd_loss`` against a float64 full-logit reference written from the formulas,
   value and gradient with respect to the student's rows and head (max relative error, cosine).
3. **The objective.** From the warm init, ``--steps`` AdamW steps (the students' lr, warmup then
   cosine, the same teacher-forced batches for every row) with the plugin's loss and with the float64
   reference, per divergence: KL(source ‖ student) per letter and the entropy ratio every ``--every``
   steps. Before the first step: the share of the reverse KL that sits on tokens the teacher gives
   less than 1e-3 (the student's mass off the teacher's support).

4. **The end of the answer** (``--trained``, for any regime's output: the seed's trained students):
   the mean log-probability each gives the end-of-turn token after the 24 letters, where the teacher
   gives ~1, and its mass on the letters at the letter positions. A divergence whose gradient at a
   token is proportional to the student's own probability there (reverse KL, JSD) cannot raise a
   token the student starts near 0 on.

If the plugin's curves follow the reference's, the table shows what the divergence does to this
student, not a defect of the code.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_plugin.demo import core  # noqa: E402
from distill_plugin.demo.source import MarkovSource  # noqa: E402
from distill_plugin.demo.source_scores import source_scores  # noqa: E402
from distill_plugin.evaluation import completion_batch  # noqa: E402
from distill_plugin.generation import SamplingParams  # noqa: E402
from distill_plugin.generation.rollout import Rollout  # noqa: E402
from distill_plugin.losses import KDSettings, online_kd_loss, select_rows  # noqa: E402
from distill_plugin.onpolicy.batch import replace_completions, split_prompts  # noqa: E402

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def reference(name: str, logp: torch.Tensor, logq: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Mean over rows of the divergence, float64, from probabilities (0·log 0 = 0)."""
    p, q = logp.exp(), logq.exp()
    kl = lambda a, b: torch.where(a > 0, a * (a.clamp_min(1e-300).log() - b.clamp_min(1e-300).log()), 0.0).sum(-1)
    if name == "forward_kl":
        return kl(p, q).mean()
    if name == "reverse_kl":
        return kl(q, p).mean()
    m = beta * p + (1 - beta) * q
    return (beta * kl(p, m) + (1 - beta) * kl(q, m)).mean()


def rows_of(model, batch: dict) -> torch.Tensor:
    """The final hidden state (after the last norm) at every supervised row, shift applied."""
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return select_rows(hidden, batch["labels"])[0]


def loss(student, teacher, batch: dict, name: str, plugin: bool) -> torch.Tensor:
    rows_s = rows_of(student, batch)
    with torch.no_grad():
        rows_t = rows_of(teacher, batch)
    if plugin:
        return online_kd_loss(rows_s, student.lm_head.weight, rows_t, teacher.lm_head.weight, None,
                              KDSettings(divergence=name)).loss
    logq = F.log_softmax(rows_s.double() @ student.lm_head.weight.double().t(), -1)
    logp = F.log_softmax(rows_t.double() @ teacher.lm_head.weight.double().t(), -1)
    return reference(name, logp, logq)


def gradient_check(student, teacher, batch: dict, name: str) -> tuple[float, float, float]:
    """(|value − reference| / reference, max relative gradient error, gradient cosine) over the
    student's parameters."""
    grads, values = [], []
    for plugin in (True, False):
        student.zero_grad()
        value = loss(student, teacher, batch, name, plugin)
        value.backward()
        values.append(float(value.detach()))
        grads.append(torch.cat([p.grad.flatten().double() for p in student.parameters() if p.grad is not None]))
    err = float((grads[0] - grads[1]).abs().max() / grads[1].abs().max())
    cos = float(F.cosine_similarity(grads[0], grads[1], dim=0))
    return abs(values[0] - values[1]) / abs(values[1]), err, cos


def off_support_share(student, teacher, batch: dict, floor: float = 1e-3) -> float:
    """The share of the reverse KL Σ q (log q − log p) that lies on tokens with p < ``floor``."""
    with torch.no_grad():
        logq = F.log_softmax(rows_of(student, batch).double() @ student.lm_head.weight.double().t(), -1)
        logp = F.log_softmax(rows_of(teacher, batch).double() @ teacher.lm_head.weight.double().t(), -1)
        terms = logq.exp() * (logq - logp)
        return float(terms[logp.exp() < floor].sum() / terms.sum())


def end_of_answer(bench: Path, seed: int, tok, source: MarkovSource, rows: list[dict]) -> None:
    """Table 4: each trained student's log Q(end | the letters) and its letter mass (module docstring)."""
    from transformers import AutoModelForCausalLM

    from distill_plugin.demo.source_scores import answer_log_probs, letter_ids

    examples = [core.encode(tok, r) for r in rows]
    ids, n = letter_ids(tok, source.alphabet), source.length
    print(f"\n4. the end of the answer (seed {seed}'s trained students, {len(rows)} held-out draws)")
    print("| model | mean log Q(end-of-turn after the letters) | mean mass on the letters |\n|---|---|---|")
    students = sorted(p for p in (bench / f"seed_{seed}").iterdir() if (p / "config.json").exists() and
                      not p.name.startswith("student_init") and (p / "tokenizer_config.json").exists())
    for path in [bench / "shared" / "teacher", *students]:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        if model.config.vocab_size != len(tok):
            continue  # another tokenizer's student
        per_row = answer_log_probs(model, examples, tok.pad_token_id)
        end = sum(float(lp[n, e.target_ids[n]]) for lp, e in zip(per_row, examples)) / len(examples)
        mass = float(torch.stack([lp[:n, ids].exp().sum(-1).mean() for lp in per_row]).mean())
        print(f"| {'teacher' if path.parent.name == 'shared' else path.name} | {end:.3f} | {mass:.4f} |")


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", type=Path, default=Path("bench_quality_warm"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--trained", action="store_true", help="only table 4, on the seed's trained students")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    settings = json.loads((a.bench / "results.json").read_text())["settings"]
    source = MarkovSource(length=settings["source_length"])
    tok = AutoTokenizer.from_pretrained(str(a.bench / "shared" / "tokenizer"))
    load = lambda path: AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    teacher = load(a.bench / "shared" / "teacher").eval()
    (init,) = sorted((a.bench / f"seed_{a.seed}").glob("student_init_*_a_warm*"))
    train = [json.loads(line) for line in (a.bench / "shared" / "data" / "train.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (a.bench / "shared" / "data" / "heldout.jsonl").read_text().splitlines()]
    if a.trained:
        end_of_answer(a.bench, a.seed, tok, source, heldout[:100])
        return
    reference_draws = [r["answer"] for r in source.rows(settings["samples"], seed=30_000)]
    examples = [core.encode(tok, r) for r in train]
    batches = [completion_batch([(e.prompt_ids, e.target_ids) for e in examples[i:i + a.batch]], tok.pad_token_id)
               for i in range(0, len(examples), a.batch)]

    student = load(init).eval()
    forced = batches[0]
    rollout = Rollout(tok, SamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=source.length + 8))
    prompts = split_prompts(forced["input_ids"], forced["labels"], forced["attention_mask"])
    answers = rollout.sample(student, prompts)
    policy = replace_completions(forced, answers, prompts, tok.pad_token_id, [tok.eos_token_id])
    texts = [tok.decode(x, skip_special_tokens=True).strip() for x in answers]
    print("1. batches (warm student, seed %d)" % a.seed)
    print("| batch | rows | supervised positions | prompt tokens masked | valid answers |\n|---|---|---|---|---|")
    for label, b, valid in (("teacher-forced (its sample)", forced, sum(map(source.valid, [r["answer"] for r in train[:a.batch]]))),
                            ("on-policy (student, T 1)", policy, sum(map(source.valid, texts)))):
        sup = int((b["labels"] != -100).sum())
        masked = int(((b["labels"] == -100) & (b["attention_mask"] == 1)).sum())
        print(f"| {label} | {b['input_ids'].shape[0]} | {sup} | {masked} | {valid} of {len(prompts)} |")

    print("\n2. plugin loss vs float64 reference (student parameters' gradient)")
    print("| batch | divergence | value rel. error | gradient max rel. error | gradient cosine |\n|---|---|---|---|---|")
    for label, b in (("teacher-forced", forced), ("on-policy", policy)):
        for name in DIVERGENCES:
            v, g, c = gradient_check(student, teacher, b, name)
            print(f"| {label} | {name} | {v:.1e} | {g:.1e} | {c:.6f} |")
    print(f"\nreverse KL at the warm start: {100 * off_support_share(student, teacher, forced):.0f} % of it on tokens "
          "the teacher gives < 1e-3")

    print(f"\n3. {a.steps} steps from the warm init: KL(source‖student) per letter (entropy ratio)")
    marks = list(range(0, a.steps + 1, a.every))
    print("| divergence | loss | " + " | ".join(f"step {m}" for m in marks) + " |\n|---|---|" + "---|" * len(marks))
    for name in DIVERGENCES:
        for plugin in (True, False):
            student = load(init).train()
            opt = torch.optim.AdamW(student.parameters(), lr=a.lr, weight_decay=0.0)
            warm = max(1, a.steps // 20)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / a.steps)))
            cells = []
            for step in range(a.steps + 1):
                if step in marks:
                    scores = source_scores(student.eval(), tok, source, heldout, reference_draws, samples=settings["samples"])
                    ratio = scores["entropy_ratio"]
                    cells.append(f"{scores['kl_to_source']:.3f} ({'–' if ratio is None else f'{ratio:.2f}'})")
                    student.train()
                if step == a.steps:
                    break
                opt.zero_grad()
                loss(student, teacher, batches[step % len(batches)], name, plugin).backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
                opt.step()
                sched.step()
            print(f"| {name} | {'plugin' if plugin else 'float64 reference'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
