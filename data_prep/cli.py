"""``distill-data``: one verb per stage. Each verb is a thin wrapper over a Python function.

Other modules may add verbs with one line, e.g. ``app.command("logits")(capture_logits)``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from distill_plugin.generation import SamplingParams

from .guards import prepare_generate, preflight
from .cli_options import EngineOptions, PromptOptions, option_groups
from .io import InputError
from .doctor import doctor
from .logits import import_axolotl_kd, logits
from .tune_temperature import tune_temperature


class _OneLineUsageErrors(TyperGroup):
    """A bad option or argument prints one line ``error: …`` (not a usage panel) and exits 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:  # the help, as before
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            command = e.ctx.command_path if e.ctx else "distill-data"
            click.echo(f"error: {command}: {e.format_message()}", err=True)
            sys.exit(2)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(name="distill-data", no_args_is_help=True, add_completion=False, cls=_OneLineUsageErrors,
                  help="R1-style trajectory generation, verification, filtering and chat-template export.")
_DEBUG = {"on": bool(os.environ.get("DISTILL_DATA_DEBUG"))}


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")] = False):
    """R1-style trajectory generation, verification, filtering and chat-template export."""
    _DEBUG["on"] = _DEBUG["on"] or debug


Strict = Annotated[bool, typer.Option("--strict", help="Fail on the first bad input line instead of skipping it.")]


def _setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("DISTILL_DATA_LOGLEVEL", "INFO"),
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # never echo request lines


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix (input, config, server): one line, exit 2."""
    import httpx
    import yaml

    from distill_plugin.generation import GenerationError
    from .export import ReasoningStrippedError

    return (InputError, OSError, ValueError, yaml.YAMLError, ReasoningStrippedError, GenerationError,
            httpx.HTTPError)


def _one_line(e: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(e, ValidationError):  # a bad option value: name the key
        err = e.errors(include_url=False)[0]
        where = ".".join(map(str, err["loc"]))
        return f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}"
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return " ".join(str(e).split()) or type(e).__name__


def _run(step):
    """Run ``step``; a user error prints ``error: …`` (one line naming the file/URL/key) and exits 2,
    or raises with its traceback under ``--debug``."""
    try:
        return step()
    except _user_errors() as e:
        if _DEBUG["on"]:
            raise
        typer.secho(f"error: {_one_line(e)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _report(stage) -> None:
    """Run a stage, print its summary."""
    typer.echo(_run(stage).summary())


@app.command("generate")
@option_groups
def generate_cmd(
    prompts: Annotated[list[Path], typer.Argument(help="Prompt JSONL file(s) or folder(s).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")],
    model: Annotated[str, typer.Option(help="Teacher: local dir / hub name (hf, vllm) or served model name (openai).")],
    backend: Annotated[str, typer.Option(help="hf | openai | vllm")] = "hf",
    batch_size: Annotated[int, typer.Option(help="hf backend: prompts per generate() call.")] = 8,
    shard: Annotated[Optional[str], typer.Option(help="'i/n': only this worker's share (0-based i).")] = None,
    max_errors: Annotated[Optional[float], typer.Option(help="Failed prompts allowed before the run stops: N, or a fraction (0-1) of the prompts to do. Default: no limit.")] = None,
    retry_errors: Annotated[bool, typer.Option(help="Retry prompts an earlier run recorded as failed (_errors*.jsonl).")] = False,
    strict: Strict = False,
    *,
    prompting: PromptOptions,
    engine: EngineOptions,
):
    """Sample n teacher trajectories per prompt (resumable; --shard i/n splits the work)."""
    from .generate import GenerateConfig, generate

    _setup_logging()
    cfg = _run(lambda: GenerateConfig(  # a bad value (-n 0) is a one-line error too
        backend=backend, model=model, prompt=prompting.style(), chunk_size=prompting.chunk_size,
        limit=prompting.limit, strict=strict, max_errors=max_errors, retry_errors=retry_errors,
        sampling=prompting.sampling(), fields=prompting.fields(),
        backend_options=engine.backend_options(backend, batch_size)))
    inputs = [str(p) for p in prompts]

    def run():
        prepare_generate(inputs, out, cfg)
        return generate(inputs, out, cfg, shard=shard)

    _report(run)


@app.command("merge")
def merge_cmd(gen_dir: Path, out: Annotated[Path, typer.Option("-o", "--out")]):
    """Join generation shards into one JSONL (each id once)."""
    from .generate import merge

    _setup_logging()

    def run():
        preflight(gen_dir, out)
        return merge(gen_dir, out)

    _report(run)


@app.command("verify")
def verify_cmd(
    gen: Annotated[Path, typer.Argument(help="Generation folder or file.")],
    out: Annotated[Path, typer.Option("-o", "--out")],
    task: Annotated[str, typer.Option(help="math | code | mcq")] = "math",
    workers: Annotated[Optional[int], typer.Option(help="Processes (default: all cores).")] = None,
    timeout: Annotated[float, typer.Option(help="Hard per-item timeout for a maths check (s).")] = 5.0,
    code_wall: float = 10.0,
    code_cpu: int = 10,
    code_memory_mb: int = 1024,
    majority: Annotated[bool, typer.Option("--majority", help="Maths: a row without an answer is verified by its samples' most common final answer (self-consistency; needs -n >= 2 at generate).")] = False,
    strict: Strict = False,
):
    """Mark every generation correct/wrong/unverifiable (resumable)."""
    from .verify import VerifyConfig, verify

    _setup_logging()
    kw = {"workers": workers} if workers else {}
    _report(lambda: verify(gen, out, VerifyConfig(
        task=task, timeout_s=timeout, code_wall_s=code_wall, code_cpu_s=code_cpu,
        code_memory_mb=code_memory_mb, majority=majority, strict=strict, **kw)))


@app.command("filter")
def filter_cmd(
    ver: Path,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (kept.jsonl) or .jsonl file.")],
    decontaminate: Annotated[Optional[list[Path]], typer.Option(help="Benchmark JSONL file(s); repeatable.")] = None,
    ngram: int = 8,
    max_tokens: Optional[int] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Count --max-tokens with this tokenizer.")] = None,
    near_dup_threshold: float = 0.8,
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="Drop duplicate and near-duplicate prompts.")] = True,
    require_think: Annotated[bool, typer.Option("--require-think/--no-require-think", help="Drop generations without a closing </think> (--no-require-think for a teacher that does not think).")] = True,
    keep_unverifiable: bool = False,
    keep_incorrect: bool = False,
    min_score: Annotated[Optional[float], typer.Option(help="Drop generations the judge scored below this.")] = None,
    top_fraction: Annotated[Optional[float], typer.Option(help="Keep the best-scored fraction (0-1] of the generations.")] = None,
    top_scope: Annotated[str, typer.Option(help="--top-fraction per prompt or over the whole file: prompt | overall")] = "overall",
    pass_rate: Annotated[Optional[str], typer.Option(help="'lo:hi': keep prompts whose teacher pass rate is within [lo, hi] (e.g. 0.1:0.9 drops what every sample or no sample solves).")] = None,
    pass_score: Annotated[Optional[float], typer.Option(help="A judged generation passes at this score (default --min-score).")] = None,
    strict: Strict = False,
):
    """Drop contaminated/duplicate prompts, prompts of the wrong difficulty, and truncated/incorrect/over-length/low-scored generations."""
    from .filters import FilterConfig, filter_rows

    _setup_logging()
    cfg = _run(lambda: FilterConfig(
        decontaminate=[str(p) for p in decontaminate or []], ngram=ngram, max_tokens=max_tokens,
        tokenizer=tokenizer, near_dup_threshold=near_dup_threshold, dedup=dedup, require_think=require_think,
        keep_unverifiable=keep_unverifiable, require_correct=not keep_incorrect, min_score=min_score,
        top_fraction=top_fraction, top_scope=top_scope, pass_rate=pass_rate, pass_score=pass_score, strict=strict))
    _report(lambda: filter_rows(ver, out, cfg))


@app.command("export")
def export_cmd(
    kept: Path,
    out: Annotated[Path, typer.Option("-o", "--out", help="Training JSONL file, or a folder of shards (with --split, --format parquet or --shard-size).")],
    select: Annotated[str, typer.Option(help="first_correct | shortest_correct | all_correct | first | shortest | all | highest_score")] = "first_correct",
    reasoning_field: Annotated[bool, typer.Option(help="Put reasoning in a separate `reasoning_content` field.")] = False,
    check_template: Annotated[Optional[str], typer.Option(help="Student tokenizer: fail if its chat template strips the reasoning.")] = None,
    split: Annotated[float, typer.Option(help="Eval fraction, split by prompt id (stable across runs; 0: no eval split).")] = 0.0,
    fmt: Annotated[str, typer.Option("--format", help="jsonl | parquet")] = "jsonl",
    shard_size: Annotated[Optional[str], typer.Option(help="Bytes per shard, e.g. 200MB (default: one shard per split).")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="The student's tokenizer: token-length table (p50/p95/max) per split.")] = None,
    strict: Strict = False,
):
    """Write {"messages", "id", "source"} rows with <think>…</think> kept in the assistant turn."""
    from .export import ExportConfig, export

    _setup_logging()
    cfg = _run(lambda: ExportConfig(select=select, reasoning_field=reasoning_field, check_template=check_template,
                                    split=split, format=fmt, shard_size=shard_size, tokenizer=tokenizer,
                                    strict=strict))
    rep = _run(lambda: export(kept, out, cfg))
    typer.echo(rep.summary())
    if "length_table" in rep.extra:
        typer.echo(rep.extra["length_table"])


@app.command("judge")
@option_groups
def judge_cmd(
    gen: Annotated[list[Path], typer.Argument(help="Generation (or verified) folder(s) or file(s).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")],
    judge_model: Annotated[Optional[str], typer.Option(help="LLM judge: served model name (openai) or local dir / hub name (hf, vllm).")] = None,
    reward_model: Annotated[Optional[str], typer.Option(help="Or a sequence-classification reward model (dir or hub name).")] = None,
    rubric: Annotated[str, typer.Option(help="'default' (MT-Bench single-answer grading, 1-10, with the reference answer when the row has one) or a rubric file (.yml or .txt).")] = "default",
    backend: Annotated[str, typer.Option(help="LLM judge: hf | openai | vllm")] = "openai",
    temperature: float = 0.0,
    max_tokens: Annotated[int, typer.Option(help="LLM judge: tokens per reply.")] = 1024,
    seed: Optional[int] = None,
    batch_size: Annotated[int, typer.Option(help="hf backend / reward model: sequences per forward.")] = 8,
    max_length: Annotated[int, typer.Option(help="Reward model: longer (prompt, answer) pairs get no score (status too_long).")] = 4096,
    chunk_size: Annotated[int, typer.Option(help="Judge requests handed to a local backend per call.")] = 64,
    shard: Annotated[Optional[str], typer.Option(help="'i/n': only this worker's share (0-based i).")] = None,
    max_errors: Annotated[Optional[float], typer.Option(help="Failed rows allowed before the run stops: N, or a fraction (0-1) of the rows to do. Default: no limit.")] = None,
    retry_errors: Annotated[bool, typer.Option(help="Retry rows an earlier run recorded as failed (_errors*.jsonl).")] = False,
    strict: Strict = False,
    *,
    engine: EngineOptions,
):
    """Score every generation with an LLM judge or a reward model (resumable; --shard i/n splits the work)."""
    from .judge import JudgeConfig, judge

    _setup_logging()
    cfg = _run(lambda: JudgeConfig(
        backend=backend, model=judge_model, reward_model=reward_model, rubric=rubric, chunk_size=chunk_size,
        sampling=SamplingParams(n=1, temperature=temperature, top_p=1.0, max_tokens=max_tokens, seed=seed),
        backend_options=engine.backend_options(backend, batch_size),
        batch_size=batch_size, max_length=max_length, max_errors=max_errors, retry_errors=retry_errors,
        strict=strict))
    _report(lambda: judge([str(p) for p in gen], out, cfg, shard=shard))


@app.command("evaluate")
@option_groups
def evaluate_cmd(
    heldout: Annotated[list[Path], typer.Argument(help="Held-out JSONL file(s): prompts with answers (or chats ending in an assistant turn).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (report.json, report.md, report.png).")],
    model: Annotated[list[str], typer.Option("--model", help="A model to evaluate (directory, LoRA adapter directory, cached hub id, or served name); repeatable.")],
    teacher: Annotated[Optional[str], typer.Option(help="The teacher: evaluated too, and the reference of KL(teacher‖model).")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="One of --model (e.g. the SFT student): report the fraction of its gap to the teacher each model closed.")] = None,
    task: Annotated[str, typer.Option(help="math | code | mcq")] = "math",
    fit_on: Annotated[str, typer.Option(help="teacher | data: the completions KL and CE are measured on.")] = "teacher",
    backend: Annotated[str, typer.Option(help="hf | openai | vllm")] = "hf",
    batch_size: Annotated[int, typer.Option(help="hf backend: prompts per generate() call.")] = 8,
    max_errors: Annotated[Optional[float], typer.Option(help="Failed prompts allowed per model: N, or a fraction (0-1).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Verification processes (default: all cores).")] = None,
    fit_batch_size: Annotated[int, typer.Option(help="Sequences per teacher-fit forward.")] = 8,
    device: Annotated[Optional[str], typer.Option(help="Teacher-fit device (default: cuda if available).")] = None,
    *,
    prompting: PromptOptions,
    engine: EngineOptions,
):
    """Accuracy (pass@1, 95% CI), length, truncation and KL to the teacher of each model (resumable)."""
    from .evaluate import EvaluateConfig, evaluate
    from .verify import VerifyConfig

    _setup_logging()
    cfg = _run(lambda: EvaluateConfig(
        models=model, teacher=teacher, baseline=baseline, backend=backend, prompt=prompting.style(),
        limit=prompting.limit, chunk_size=prompting.chunk_size, sampling=prompting.sampling(),
        fields=prompting.fields(), backend_options=engine.backend_options(backend, batch_size),
        max_errors=max_errors, fit_on=fit_on, fit_batch_size=fit_batch_size, device=device,
        verify=VerifyConfig(task=task, **({"workers": workers} if workers else {}))))
    _run(lambda: evaluate([str(p) for p in heldout], out, cfg))
    typer.echo((out / "report.md").read_text() + f"\nreport: {out / 'report.json'}, {out / 'report.md'}, {out / 'report.png'}")


@app.command("run")
def run_cmd(config: Annotated[Path, typer.Argument(help="Pipeline YAML.")]):
    """All four stages from one YAML (re-run the same command to resume)."""
    from .pipeline import run_pipeline

    _setup_logging()
    rep = _run(lambda: run_pipeline(config))
    typer.echo(f"done: {rep.get('output', '(shard only)')}")


def main() -> None:  # pragma: no cover
    app()


app.command("logits")(logits)
app.command("import-axolotl-kd")(import_axolotl_kd)
app.command("tune-temperature")(tune_temperature)
app.command("doctor")(doctor)


if __name__ == "__main__":  # pragma: no cover
    app()
