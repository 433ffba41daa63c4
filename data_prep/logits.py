"""``distill-data logits``: capture a teacher's top-k log-probs into an offline logits store."""

from __future__ import annotations

from pathlib import Path

import typer


def logits(
    data: Path = typer.Argument(None, help="train.jsonl (messages or text rows); omit with --config"),
    teacher: str = typer.Option(..., "--teacher", help="teacher checkpoint (path or hub id)"),
    out: Path = typer.Option(..., "-o", "--out", help="store directory (resumed if it exists)"),
    config: Path = typer.Option(None, "--config", help="Axolotl YAML: tokenise exactly as training"),
    tokenizer: str = typer.Option(None, "--tokenizer", help="tokenizer (= the student's); default: teacher"),
    top_k: int = typer.Option(None, "--top-k", help="candidates per position (default 64; the cap with --epsilon)"),
    backend: str = typer.Option("hf", "--backend", help="hf | vllm"),
    shard: str = typer.Option("0/1", "--shard", help="i/n: capture the rows with distill_plugin.shards.shard_of(row_key, n) == i"),
    temperature: float = typer.Option(1.0, "--temperature", help="capture temperature T: log_softmax(z/T)"),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_rows: int = typer.Option(None, "--max-rows", help="capture at most this many new rows"),
    sequence_len: int = typer.Option(None, "--sequence-len", help="truncation for JSONL input"),
    device: str = typer.Option(None, "--device"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU) | bfloat16 | float16 | float32"),
    bits: int = typer.Option(8, "--bits", help="log-prob quantisation bits (KL <= step^2/8)"),
    epsilon: float = typer.Option(None, "--epsilon", help="adaptive top-k: keep each position's fewest top "
                                  "candidates holding >= 1 - epsilon of the mass (--top-k the cap; store format 2)"),
    samples: int = typer.Option(None, "--samples", help="sampled (unbiased) store: draw this many ids per position "
                                "from the proposal, keep them with their counts (store format 3; instead of --top-k)"),
    proposal_temperature: float = typer.Option(1.0, "--proposal-temperature", help="--samples: draw from "
                                               "q ∝ p^(1/τ), p the teacher at --temperature (1: q = p, no weights)"),
    seed: int = typer.Option(0, "--seed", help="--samples: seed of the draws (recorded; a resume draws the same)"),
):
    """Capture top-k teacher log-probs (or, with --samples, sampled ids) for offline distillation (resumable, shardable).

    A corrupt part of an existing store, a filesystem too small for the estimated store and a full
    disk stop with one line and exit code 2 (the parts already complete are kept)."""
    from distill_plugin.offline import capture_teacher
    from distill_plugin.shards import parse_shard

    from .cli import _run

    if (data is None) == (config is None):
        raise typer.BadParameter("give either a JSONL file or --config")
    if epsilon is not None and not 0.0 <= epsilon < 1.0:
        raise typer.BadParameter(f"--epsilon must be in [0, 1), got {epsilon}")
    if samples is not None and top_k is not None:
        raise typer.BadParameter("--samples and --top-k are two kinds of store: give one")
    try:
        i, n = parse_shard(shard)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    stats = _run(lambda: capture_teacher(
        teacher, out, config=config, data=data, tokenizer=tokenizer, k=top_k or 64, temperature=temperature,
        backend=backend, sequence_len=sequence_len, device=device, dtype=dtype, batch_size=batch_size, shard=i,
        num_shards=n, max_rows=max_rows, bits=bits, command=recapture_command(f"{i}/{n}"), epsilon=epsilon,
        samples=samples, proposal_temperature=proposal_temperature, seed=seed))
    typer.echo(f"captured {stats.rows} rows ({stats.skipped} already stored), {stats.tokens} tokens, "
               f"{stats.positions} positions in {stats.seconds:.1f}s: {stats.tokens_per_s:,.0f} tokens/s")


def recapture_command(shard: str) -> str:
    """This command line, run from this directory, with ``--shard`` set: what re-captures one shard."""
    import os
    import shlex
    import sys

    args = list(sys.argv[1:])
    if not any(a == "--shard" or a.startswith("--shard=") for a in args):
        args += ["--shard", shard]
    return f"cd {shlex.quote(os.getcwd())} && distill-data {shlex.join(args)}"


def import_axolotl_kd(
    data: Path = typer.Argument(..., help="Axolotl KD dataset: .jsonl or .parquet rows with messages + target_token_ids/logprobs"),
    out: Path = typer.Option(..., "-o", "--out", help="store directory usable as distill.teacher_logits"),
    tokenizer: str = typer.Option(..., "--tokenizer", help="the tokenizer the log-probs were produced with (= the student's)"),
    top_k: int = typer.Option(None, "--top-k", help="keep the top k per position (default: all stored)"),
    temperature: float = typer.Option(1.0, "--temperature", help="the temperature the log-probs were produced at"),
    logprobs_field: str = typer.Option("logprobs", "--logprobs-field"),
    messages_field: str = typer.Option("messages", "--messages-field"),
    sequence_len: int = typer.Option(None, "--sequence-len"),
):
    """Import an existing Axolotl-KD-format logprob dataset into an offline logits store."""
    from transformers import AutoTokenizer

    from distill_plugin.jsonl import SkipLog, read_jsonl
    from distill_plugin.offline import import_axolotl_kd as run_import

    if data.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = (row for batch in pq.ParquetFile(data).iter_batches() for row in batch.to_pylist())
    else:
        rows = (row for _, row in read_jsonl(data, SkipLog(strict=True)))
    stats = run_import(rows, out, AutoTokenizer.from_pretrained(tokenizer), k=top_k, temperature=temperature,
                       sequence_len=sequence_len, logprobs_field=logprobs_field, messages_field=messages_field)
    typer.echo(f"imported {stats.rows} rows ({stats.skipped} already stored), {stats.positions} positions into {out}")
