"""``python -m distill_plugin.demo``: the command line of the embedded demo (logic in ``run.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output directory (its demo sub-folders are recreated).")] = Path("demo_out"),
    quick: Annotated[bool, typer.Option(help="A much smaller run (about a minute), for the test suite.")] = False,
    threads: Annotated[int, typer.Option(help="Torch threads per process (the two students run concurrently).")] = 1,
    student_steps: Annotated[Optional[int], typer.Option(help="Override the students' max_steps.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Override the KD temperature.")] = None,
    kd_weight: Annotated[Optional[float], typer.Option(help="Override the KD loss weight.")] = None,
    ce_weight: Annotated[Optional[float], typer.Option(help="Override the CE loss weight of the KD run.")] = None,
    seed: Annotated[Optional[list[int]], typer.Option(
        help="Seed of the data split, the trainers and Axolotl; repeat for several (default 0-3, --quick 0-1).")] = None,
) -> None:
    """Train a tiny teacher, then a student by plain SFT and by logit KD; compare them on held-out problems,
    once per seed, and print the mean ± spread over the seeds."""
    from .run import main_cli

    main_cli(out=out, quick=quick, threads=threads, student_steps=student_steps, temperature=temperature,
             kd_weight=kd_weight, ce_weight=ce_weight, seeds=seed)


if __name__ == "__main__":
    app()
