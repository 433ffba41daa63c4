"""``distill-data doctor``: check a teacher/student pair before any training.

    distill-data doctor --config RECIPE.yml [--rows 8] [--gpu-gib 80] [--json report.json]
    distill-data doctor --teacher TEACHER --student STUDENT

One line per check, ``ok`` / ``warn`` / ``fail`` / ``skip``; exit 0 when nothing fails, 1 when a check
fails, 2 for bad input (a missing file, an unknown ``distill:`` key). The checks and thresholds:

    tokenizer      same vocabulary (token → id) and eos on both sides (``evaluation.tokenizer_mismatch``);
                   different → fail, unless ``distill.cross_tokenizer: uld | hybrid`` is set (ok: that
                   mode applies); without a recipe: warn, naming those modes
    vocab padding  lm_head rows ≥ the tokenizer's length on each side (fewer: fail, tokens without a
                   logit); more: ok, reported as padding, which the loss cuts (never zero-fills)
    think          the student's chat template keeps ``<think>…</think>`` in an assistant turn (fail)
    agreement      top-1 agreement of student and teacher at T = 1: warn below ``AGREEMENT`` (0.5)
    correlation    mean per-row Pearson correlation of their probabilities: warn below ``CORRELATION`` (0.5)
    kl             mean KL(teacher‖student) at T = 1: warn above ``KL_NATS`` (1.0 nat/token)
    capacity gap   warn when KL > ``GAP_KL`` (2.0) and agreement < ``GAP_AGREEMENT`` (0.3)
    memory         ``evaluation.estimate_memory`` per GPU: fail above ``--gpu-gib``, warn above
                   ``HEADROOM`` (85 %) of it (activations are not estimated); the settings that lower it
                   are listed with their estimates

The three pair measurements (``evaluation.pair_stats``) run on ``--rows`` chat rows of the recipe's
data (``pair_recipe.heldout_sequences``) and need an online teacher on the student's tokenizer;
otherwise they are ``skip``. The thresholds are ours (the anchors give none): an untrained student of
the teacher's family agrees on most next tokens and sits within about a nat of it; a student below
half agreement or a nat of KL has much to learn from soft targets, and one both far (KL > 2) and
rarely agreeing (< 30 %) may be too small to follow the teacher (capacity gap, Busbridge et al. 2025):
try a smaller teacher, SFT the student first, or a mode-seeking divergence.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

AGREEMENT, CORRELATION, KL_NATS = 0.5, 0.5, 1.0
GAP_KL, GAP_AGREEMENT = 2.0, 0.3
HEADROOM = 0.85
THINK_PROBE = "probe reasoning that must survive the template"


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str


def doctor(
    config: Annotated[Optional[Path], typer.Option("--config", help="Axolotl recipe with a distill: block.")] = None,
    teacher: Annotated[Optional[str], typer.Option(help="Without --config: the teacher (directory or cached hub id).")] = None,
    student: Annotated[Optional[str], typer.Option(help="Without --config: the student.")] = None,
    rows: Annotated[int, typer.Option(min=1, help="Chat rows of the recipe's data for agreement, correlation and KL.")] = 8,
    gpu_gib: Annotated[float, typer.Option(min=0.0, help="Memory of one GPU (GiB) for the estimate.")] = 80.0,
    gpus: Annotated[int, typer.Option(min=1, help="GPUs of the run (teacher_placement: shard divides the teacher by it).")] = 1,
    device: Annotated[Optional[str], typer.Option(help="Where the checks run the models (default: cuda if available).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON.")] = None,
):
    """Check a teacher/student pair before training: tokenizer, vocab padding, <think> in the chat
    template, top-1 agreement / probability correlation / KL, capacity gap, memory per GPU.

    Exit 0: no check failed; 1: a check failed; 2: bad input."""
    from .cli import _run
    from .pair_recipe import pair_of, read_recipe

    if (config is None) == (teacher is None or student is None) or (config and (teacher or student)):
        raise typer.BadParameter("give --config, or --teacher and --student")
    pair = _run(lambda: read_recipe(config) if config else pair_of(teacher, student))
    report = _run(lambda: diagnose(pair, rows, gpu_gib, gpus, device))
    typer.echo(render(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    raise typer.Exit(1 if any(c["status"] == "fail" for c in report["checks"]) else 0)


def diagnose(pair, n_rows: int, gpu_gib: float, gpus: int, device: str | None) -> dict:
    """The report: ``checks`` (dicts of ``Check``), ``memory`` (parts in bytes, GiB, budget), ``options``."""
    from distill_plugin.generation import load_tokenizer

    from .pair_recipe import default_device, load_online_teacher, load_student

    device = default_device(device)
    s_tok = load_tokenizer(pair.student)
    d = pair.distill
    t_tok = load_tokenizer(d.teacher_tokenizer or d.teacher) if pair.online else None
    student_model = load_student(pair, device)
    teacher_model = load_online_teacher(pair, device) if pair.online else None
    checks = [tokenizer_check(pair, t_tok, s_tok), padding_check(student_model, s_tok, teacher_model, t_tok),
              think_check(pair, s_tok)]
    checks += pair_checks(pair, student_model, teacher_model, s_tok, n_rows, comparable=checks[0].status == "ok"
                          and d.cross_tokenizer == "off")
    from .doctor_memory import memory_check

    check, memory = memory_check(pair, student_model, teacher_model, len(s_tok), gpu_gib, gpus)
    return {"pair": {"student": pair.student, "teacher": pair.teacher_source()},
            "checks": [asdict(c) for c in checks + [check]], "memory": memory}


def tokenizer_check(pair, t_tok, s_tok) -> Check:
    from distill_plugin.evaluation import tokenizer_mismatch

    if t_tok is None:
        return Check("tokenizer", "skip", f"{pair.teacher_source()}: its tokenizer is checked when training starts")
    why = tokenizer_mismatch(t_tok, s_tok)
    mode = pair.distill.cross_tokenizer
    if why is None:
        return Check("tokenizer", "ok", f"same vocabulary ({len(s_tok)} tokens) and eos: logit KD id by id")
    if mode != "off":
        return Check("tokenizer", "ok", f"differ ({why}); distill.cross_tokenizer: {mode} applies")
    advice = "needs distill.cross_tokenizer: uld | hybrid (docs/methods/cross_tokenizer.md)"
    return Check("tokenizer", "fail" if pair.source else "warn", f"differ ({why}): {advice}")


def _head_rows(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def padding_check(student, s_tok, teacher, t_tok) -> Check:
    sides = [("student", student, s_tok)] + ([("teacher", teacher, t_tok)] if teacher is not None else [])
    parts, status = [], "ok"
    for name, model, tok in sides:
        rows, length = _head_rows(model), len(tok)
        if rows < length:
            status = "fail"
            parts.append(f"{name} lm_head {rows} rows < tokenizer {length}: tokens without a logit")
        elif rows > length:
            parts.append(f"{name} lm_head padded: {rows} rows, tokenizer {length} (the loss compares the first {length})")
        else:
            parts.append(f"{name} lm_head {rows} rows = tokenizer")
    return Check("vocab padding", status, "; ".join(parts))


def think_check(pair, s_tok) -> Check:
    from .export import ReasoningStrippedError, check_reasoning_kept

    template = pair.recipe.get("chat_template", "tokenizer_default")
    if template != "tokenizer_default" or pair.recipe.get("chat_template_jinja"):
        return Check("think", "skip", f"the recipe uses Axolotl's chat_template {template!r}, not the tokenizer's; "
                     "`distill-data export --check-template` checks exported data")
    if not getattr(s_tok, "chat_template", None):
        return Check("think", "warn", "the student's tokenizer has no chat template")
    probe = {"id": "think-probe", "messages": [
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": f"<think>\n{THINK_PROBE}\n</think>\nBecause."}]}
    try:
        check_reasoning_kept(s_tok, [probe], k=1)
    except ReasoningStrippedError:
        return Check("think", "fail", "the student's chat template drops <think>…</think> from assistant turns: "
                     "training would teach answers without reasoning (use a template that keeps them)")
    return Check("think", "ok", "the student's chat template keeps <think>…</think> in assistant turns")


def pair_checks(pair, student, teacher, s_tok, n_rows: int, comparable: bool) -> list[Check]:
    names = ("agreement", "correlation", "kl", "capacity gap")
    if teacher is None or not comparable:
        why = "no online teacher" if teacher is None else "the tokenizers differ: ids do not line up"
        return [Check(n, "skip", why) for n in names]
    from distill_plugin.evaluation import pair_stats

    from .pair_recipe import heldout_sequences

    if not pair.recipe:  # --teacher/--student: no data to score
        return [Check(n, "skip", "no recipe data (give --config)") for n in names]
    sequences = heldout_sequences(pair, s_tok, n_rows)
    (s,) = pair_stats(student, teacher, sequences, (1.0,), pad_id=s_tok.pad_token_id or 0, vocab_size=len(s_tok),
                      chunk_size=pair.distill.chunk_size)
    on = f"on {s.rows} tokens of {len(sequences)} rows"
    gap = s.kl > GAP_KL and s.agreement < GAP_AGREEMENT
    return [
        Check("agreement", "ok" if s.agreement >= AGREEMENT else "warn", f"top-1 {s.agreement:.1%} (warn < {AGREEMENT:.0%}) {on}"),
        Check("correlation", "ok" if s.correlation >= CORRELATION else "warn",
              f"probability correlation {s.correlation:.3f} (warn < {CORRELATION})"),
        Check("kl", "ok" if s.kl <= KL_NATS else "warn", f"KL(teacher‖student) {s.kl:.3f} nats/token (warn > {KL_NATS})"),
        Check("capacity gap", "warn" if gap else "ok",
              "the student is far behind (KL > 2, agreement < 30%): try a smaller teacher, SFT the student "
              "first, or a mode-seeking divergence" if gap else "no sign of one (KL ≤ 2 or agreement ≥ 30%)"),
    ]


def render(report: dict) -> str:
    import io

    from rich.console import Console
    from rich.table import Table

    from .doctor_memory import memory_lines

    table = Table(title=f"doctor: {report['pair']['student']} ← {report['pair']['teacher']}")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    for c in report["checks"]:
        table.add_row(c["name"], c["status"], c["detail"])
    console = Console(width=110, file=io.StringIO())
    console.print(table)
    return console.file.getvalue() + "\n".join(memory_lines(report["memory"]))
