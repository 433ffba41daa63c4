"""Stage 1: sample ``n`` teacher trajectories per prompt, resumably and shardably.

Output: ``<out>/generations.jsonl`` (or ``generations-<i>-of-<n>.jsonl`` with ``--shard i/n``), one
row per prompt, appended only once all ``n`` samples of that prompt are done. A restart skips ids
found in any ``generations*.jsonl`` of ``<out>`` and cuts a torn last line, so a run killed at any
moment and restarted ends with every prompt exactly once. :func:`merge` joins shard files.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field
from tqdm import tqdm

from distill_plugin.generation import Backend, SamplingParams, make_backend

from .io import (JsonlAppender, RoomGuard, SkipLog, done_ids, input_files, parse_shard, read_rows,
                 repair_torn_tail, shard_of, write_jsonl_atomic)
from .generation_errors import ErrorLog, TooManyErrors, error_path, errored_ids
from .report import StageReport
from .schema import FieldMap, canonical_row
from .trajectory import Generation, PromptStyle

log = logging.getLogger("data_prep")


class GenerateConfig(BaseModel):
    backend: str = "hf"  # hf | openai | vllm
    model: str
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    prompt: PromptStyle = Field(default_factory=PromptStyle)
    fields: FieldMap = Field(default_factory=FieldMap)
    backend_options: dict = Field(default_factory=dict)  # e.g. base_url, concurrency, batch_size
    # prompts handed to a local backend (hf, vllm) per call; the HTTP backend takes them all at once
    # and keeps `concurrency` requests in flight
    chunk_size: int = Field(64, ge=1)
    limit: int | None = None  # only the first N valid prompts (smoke tests)
    max_errors: float | None = Field(None, gt=0)  # failed prompts allowed: N >= 1, or a fraction of those to do
    retry_errors: bool = False  # on resume, retry prompts recorded as failed
    strict: bool = False
    source: str = ""  # default "source" when rows have none (else the input file stem)


def shard_path(out_dir: str | Path, shard: tuple[int, int], stem: str = "generations") -> Path:
    i, n = shard
    name = f"{stem}.jsonl" if n == 1 else f"{stem}-{i:05d}-of-{n:05d}.jsonl"
    return Path(out_dir) / name


def load_prompts(inputs, cfg: GenerateConfig, skips: SkipLog, report: StageReport) -> list[dict]:
    """Valid canonical rows of all inputs, first occurrence of each id kept."""
    rows, seen = [], set()
    files = [f for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs) for f in input_files(p)]
    for path, lineno, raw in read_rows(files, skips):
        report.rows_in += 1
        row = canonical_row(raw, cfg.fields, (path, lineno), skips, cfg.source or Path(path).stem)
        if row is None:
            continue
        if row["id"] in seen:
            report.drops["duplicate_id"] += 1
            continue
        seen.add(row["id"])
        rows.append(row)
        if cfg.limit and len(rows) >= cfg.limit:
            break
    return rows


def generate(inputs, out_dir: str | Path, cfg: GenerateConfig, shard: str | None = None,
             backend: Backend | None = None) -> StageReport:
    """Run generation for this shard; returns (and writes) the stage report."""
    shard_t = parse_shard(shard)
    out_dir = Path(out_dir)
    out_path = shard_path(out_dir, shard_t)
    skips = SkipLog(cfg.strict)
    report = StageReport("generate")
    rows = load_prompts(inputs, cfg, skips, report)
    todo = pending(rows, out_dir, shard_t, "generations", cfg.retry_errors, report)
    finish = Counter()
    report.input_skips = skips.as_dict()
    report.extra["finish_reasons"] = finish  # filled as the run goes
    run_with_error_log(report, out_dir, shard_t, todo, cfg.max_errors,
                       lambda: backend or make_backend(cfg.backend, cfg.model, **cfg.backend_options),
                       lambda be, errors: run_backend(be, todo, cfg, out_path, report, finish, errors))
    return report


def pending(rows: list[dict], out_dir: Path, shard_t: tuple[int, int], stem: str, retry_errors: bool,
            report: StageReport) -> list[dict]:
    """The rows of this shard still to do: not in any ``<out_dir>/<stem>*.jsonl``, nor recorded as
    failed before (unless ``retry_errors``). Cuts a torn last line off this shard's file
    (:func:`shard_path`) on every run, work left or not (only this one: other shards may be writing)."""
    mine = [r for r in rows if shard_of(r["id"], shard_t[1]) == shard_t[0]]
    repair_torn_tail(shard_path(out_dir, shard_t, stem))
    done = done_ids(out_dir.glob(f"{stem}*.jsonl")) if out_dir.exists() else set()
    failed = set() if retry_errors else errored_ids(out_dir) - done
    todo = [r for r in mine if r["id"] not in done | failed]
    report.extra.update(shard=f"{shard_t[0]}/{shard_t[1]}", prompts_in_shard=len(mine),
                        already_done=sum(r["id"] in done for r in mine),
                        skipped_failed_before=sum(r["id"] in failed for r in mine))
    log.info("%s: %d prompts in shard, %d already done, %d failed before (--retry-errors to retry), %d to do",
             report.stage, len(mine), report.extra["already_done"], report.extra["skipped_failed_before"], len(todo))
    return todo


def run_with_error_log(report: StageReport, out_dir: Path, shard_t: tuple[int, int], todo: list,
                       max_errors: float | None, open_backend, work) -> None:
    """``work(backend, errors)`` over ``todo`` with the per-prompt error log (``_errors*.jsonl``,
    ``max_errors``); the backend is opened only when there is work and always closed. Writes the
    report (``_report.<stage>[.shard<i>].json``) and re-raises :class:`TooManyErrors` after it."""
    stopped = None
    errors = ErrorLog(error_path(out_dir, shard_t), max_errors, len(todo), stage=report.stage)
    if todo:
        backend = open_backend()
        try:
            work(backend, errors)
        except TooManyErrors as e:
            stopped = e
        finally:
            backend.close()
            errors.close()
    report.extra.update(errors=errors.as_dict(), stopped=str(stopped) if stopped else None)
    report.write(out_dir, "" if shard_t[1] == 1 else f".shard{shard_t[0]}")
    if stopped:
        raise stopped


def drive(backend: Backend, requests, sampling: SamplingParams, chunk_size: int, on_done, on_error) -> None:
    """Hand ``requests`` (an iterator of prompts) to ``backend``; ``on_done(i, completions)`` and
    ``on_error(i, error)`` get the request's index in ``requests``. Over HTTP one call keeps
    ``concurrency`` requests in flight until the end; local engines get ``chunk_size`` at a time."""
    requests = iter(requests)
    if backend.name == "openai":
        backend.generate(requests, sampling, on_done, on_error)
        return
    start = 0
    while chunk := list(itertools.islice(requests, chunk_size)):
        backend.generate(chunk, sampling, lambda i, c, start=start: on_done(start + i, c),
                         lambda i, e, start=start: on_error(start + i, e))
        start += len(chunk)


def run_backend(backend: Backend, todo: list[dict], cfg: GenerateConfig, out_path: Path, report: StageReport,
                finish: Counter, errors: ErrorLog) -> None:
    """Generate ``todo`` and append each prompt's row as soon as its ``n`` samples are done; a prompt
    that fails for good goes to ``errors`` (which stops the run past ``max_errors``). The output's
    filesystem is watched (``RoomGuard``): a run that will not fit, or a full disk, stops in one line."""
    meta = {**backend.describe(), **cfg.sampling.model_dump()}
    requests = (cfg.prompt.request(cfg.prompt.messages(r["prompt"])) for r in todo)  # lazy, in todo order
    bar = tqdm(total=len(todo), desc="generate", unit="prompt")
    with JsonlAppender(out_path) as sink, bar:
        guard = RoomGuard(sink, len(todo))
        def on_done(i: int, completions) -> None:
            row = todo[i]
            gens = [Generation.from_completion(c, cfg.prompt).as_dict() for c in completions]
            if len(gens) != cfg.sampling.n:
                raise RuntimeError(f"{row['id']}: backend returned {len(gens)} of {cfg.sampling.n} samples")
            for g in gens:
                finish[g["finish_reason"]] += 1
                if g["completion_tokens"] is not None:
                    report.token_lengths.append(g["completion_tokens"])
            guard.write({**row, "messages": cfg.prompt.messages(row["prompt"]), "generations": gens, "gen_meta": meta})
            report.rows_out += 1
            bar.update(1)

        def on_error(i: int, error) -> None:
            errors.record(todo[i]["id"], error)
            bar.update(1)

        drive(backend, requests, cfg.sampling, cfg.chunk_size, on_done, on_error)


def merge(in_dir: str | Path, out_path: str | Path) -> StageReport:
    """Join shard files (any ``*.jsonl`` in ``in_dir``) into one file, each id once."""
    report = StageReport("merge")
    skips = SkipLog()
    seen: set[str] = set()

    def rows():
        for _, _, row in read_rows(input_files(in_dir), skips):
            report.rows_in += 1
            if row.get("id") in seen:
                report.drops["duplicate_id"] += 1
                continue
            seen.add(row.get("id"))
            report.rows_out += 1
            yield row

    write_jsonl_atomic(out_path, rows())
    report.input_skips = skips.as_dict()
    return report
