"""``distill-data tune-temperature``: score KD temperatures on held-out rows before training.

    distill-data tune-temperature --config RECIPE.yml --values 1 2 4 8 --eval-rows 32

For each T, without training (``distill_plugin.evaluation.pair_stats``): the recipe's KD divergence
D(P_T‖Q_T) of the current student (and T²·D, what the loss weighs when ``temperature_squared``), the
teacher's mean entropy H_T, the student's, KL(P_T‖Q_T) and top-1 agreement (the same at every T).
Suggested T (``suggest_temperature``): the largest T whose teacher entropy H_T ≤ f·log V
(``--max-entropy-fraction`` f, default ½: the softened teacher still concentrates on at most √V
tokens); none qualifying → the smallest T.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def tune_temperature(
    temperatures: Annotated[Optional[list[float]], typer.Argument(metavar="[T]...", help="Temperatures to score (default 1 2 4 8).", show_default=False)] = None,
    config: Annotated[Path, typer.Option("--config", help="Axolotl recipe with a distill: block (online teacher).")] = ...,
    values: Annotated[bool, typer.Option("--values", help="Optional marker before the temperatures: --values 1 2 4.")] = False,
    eval_rows: Annotated[int, typer.Option("--eval-rows", min=1, help="Held-out chat rows of the recipe's data to score.")] = 32,
    max_entropy_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="f of the rule below.")] = 0.5,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per forward.")] = 8,
    device: Annotated[Optional[str], typer.Option(help="Default: cuda if available.")] = None,
):
    """Score KD temperatures on held-out rows (no training) and suggest one.

    Suggested T: the largest T whose mean teacher entropy H_T <= f * log V (f = --max-entropy-fraction, default 0.5: the softened teacher keeps its mass on at most sqrt(V) tokens); if none, the smallest T.
    """
    from .cli import _run

    temps = sorted(set(temperatures or [1.0, 2.0, 4.0, 8.0]))
    if any(t <= 0 for t in temps):
        raise typer.BadParameter("temperatures must be > 0")
    stats, pair = _run(lambda: measure(config, temps, eval_rows, batch_size, device))
    typer.echo(render(stats, pair, max_entropy_fraction))


def measure(config: Path, temps: list[float], eval_rows: int, batch_size: int, device: str | None):
    """``(PairStats per T, the pair)``; refuses what it cannot score (one line)."""
    from distill_plugin.evaluation import pair_stats, tokenizer_mismatch
    from distill_plugin.generation import load_tokenizer

    from .pair_recipe import default_device, heldout_sequences, load_online_teacher, load_student, read_recipe
    from .io import InputError

    pair = read_recipe(config)
    if not pair.online:
        raise InputError(f"{config}: tune-temperature scores an online `distill.teacher`; this recipe has a "
                         f"{pair.teacher_source()} (run it with the teacher checkpoint as `teacher:`)")
    if pair.distill.cross_tokenizer != "off":
        raise InputError(f"{config}: cross_tokenizer {pair.distill.cross_tokenizer!r}: the teacher's ids are not the "
                         "student's; tune-temperature compares distributions id by id")
    tok = load_tokenizer(pair.student)
    if why := tokenizer_mismatch(load_tokenizer(pair.distill.teacher), tok):
        raise InputError(f"{config}: the teacher's tokenizer differs from the student's ({why})")
    sequences = heldout_sequences(pair, tok, eval_rows)
    device = default_device(device)
    d = pair.distill
    stats = pair_stats(load_student(pair, device), load_online_teacher(pair, device), sequences, temps,
                       pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0, vocab_size=len(tok),
                       batch_size=batch_size, chunk_size=d.chunk_size, divergence=d.divergence, beta=d.beta, skew=d.skew)
    return stats, pair


def render(stats, pair, max_entropy_fraction: float) -> str:
    """The table (rich, plain text) and the suggestion line."""
    import io
    import math

    from rich.console import Console
    from rich.table import Table

    from distill_plugin.evaluation import suggest_temperature

    d = pair.distill
    log_v = math.log(stats[0].vocab_size)
    table = Table(title=f"{d.divergence} on {stats[0].rows} held-out tokens, V = {stats[0].vocab_size}")
    for name in ("T", f"KD {d.divergence}", "T²·KD" if d.temperature_squared else "KD (no T²)",
                 "teacher H (nats)", "H / log V", "student H", "KL(P‖Q)", "top-1 agree"):
        table.add_column(name, justify="right")
    for s in stats:
        scaled = s.divergence * (s.temperature**2 if d.temperature_squared else 1.0)
        table.add_row(f"{s.temperature:g}", f"{s.divergence:.4f}", f"{scaled:.4f}", f"{s.teacher_entropy:.3f}",
                      f"{s.teacher_entropy / log_v:.3f}", f"{s.student_entropy:.3f}", f"{s.kl:.4f}", f"{s.agreement:.3f}")
    console = Console(width=120, file=io.StringIO())
    console.print(table)
    best, why = suggest_temperature(stats, max_entropy_fraction)
    return console.file.getvalue() + f"suggested temperature: {best:g} ({why}; the recipe has {d.temperature:g})"
