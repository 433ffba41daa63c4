"""Stage 2: mark every generation correct / wrong / unverifiable, resumably.

Each generation gets ``verdict`` (correct | wrong | no_answer | timeout | unverifiable) and
``correct`` (True / False / None = could not be checked); each row gets ``n_correct``,
``n_checked`` and ``pass_rate``. Output: ``<out>/verified.jsonl`` (rows appended one by one as each
chunk is graded; a restart cuts a torn last line and skips ids already there, so a run killed at
any moment and restarted ends with every row once; a full disk stops in one line, its torn row
removed). ``majority`` (maths only): a row without an answer is verified by
the vote of its samples (:mod:`data_prep.majority`).
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from tqdm import tqdm

from . import majority as vote, verify_code, verify_math, verify_mcq
from .guards import preflight, record_settings
from .io import JsonlAppender, RoomGuard, SkipLog, done_ids, read_rows
from .pool import TIMEOUT
from .report import StageReport
from .rows import GenerationRow, row_error
from .sandbox import Limits


class VerifyConfig(BaseModel):
    task: Literal["math", "code", "mcq"] = "math"
    workers: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1))
    timeout_s: float = 5.0  # hard per-item limit for a maths check
    code_wall_s: float = 10.0
    code_cpu_s: int = 10
    code_memory_mb: int = 1024
    chunk_rows: int = 256
    strict: bool = False
    majority: bool = False  # a row without an answer: its samples' most common answer (maths only)

    @model_validator(mode="after")
    def _majority_is_for_maths(self):
        if self.majority and self.task != "math":
            raise ValueError(f"--majority votes on maths answers only (got --task {self.task})")
        return self


SETTINGS = {"task", "timeout_s", "code_wall_s", "code_cpu_s", "code_memory_mb"}  # shape the verdicts


def _answer_text(gen: dict) -> str:
    """What is graded: the text after ``</think>`` (the whole text if it had no think tags; nothing
    if the reasoning never closed, so an intermediate ``\\boxed{}`` cannot pass)."""
    content = gen.get("content")
    return content if content is not None else gen.get("text", "")


def _correct(verdict: str):
    return None if verdict == "unverifiable" else verdict == "correct"


def unique_rows(files, skips: SkipLog, report: StageReport):
    """Valid rows (:class:`data_prep.rows.GenerationRow`) of all input files (shards), each id once;
    a bad row is skipped with ``file:line`` and the reason (or raises under ``--strict``)."""
    seen = set()
    for path, lineno, row in read_rows(files, skips):
        report.rows_in += 1
        why = row_error(GenerationRow, row)
        if why:
            skips.skip(path, lineno, "invalid_row", why)
            continue
        if row["id"] in seen:
            report.drops["duplicate_id"] += 1
            continue
        seen.add(row["id"])
        yield row


def chunks(rows, size: int):
    """Lists of up to ``size`` consecutive items of the iterable ``rows``."""
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def verify(inputs, out_dir: str | Path, cfg: VerifyConfig) -> StageReport:
    """Grade every generation, streaming: ``cfg.chunk_rows`` rows in memory at a time."""
    out_dir = Path(out_dir)
    out_path = out_dir / "verified.jsonl"
    files = preflight(inputs, out_dir)
    # ``majority`` recorded only when on: folders verified before it existed still resume.
    record_settings(out_dir, "verify", cfg.model_dump(include=SETTINGS | ({"majority"} if cfg.majority else set())),
                    resumable=True)
    skips, report = SkipLog(cfg.strict), StageReport("verify")
    done = done_ids([out_path])
    report.extra["already_done"] = 0

    def todo():
        for row in unique_rows(files, skips, report):
            if row["id"] in done:
                report.extra["already_done"] += 1
            else:
                yield row

    verdicts: Counter[str] = Counter()
    rows_by: Counter[str] = Counter()  # with --majority: answer | majority | no_majority
    pool = extractor = None
    limits = Limits(wall_s=cfg.code_wall_s, cpu_s=cfg.code_cpu_s, memory_mb=cfg.code_memory_mb)
    bar = tqdm(desc=f"verify[{cfg.task}]", unit="row")
    try:
        with JsonlAppender(out_path) as sink:
            guard = RoomGuard(sink, None)  # a full disk: one line, the torn row removed, the rows written kept
            for chunk in chunks(todo(), cfg.chunk_rows):
                voted = [r for r in chunk if cfg.majority and not vote.has_answer(r)]
                graded = [r for r in chunk if not (cfg.majority and not vote.has_answer(r))]
                pairs = [(r, g) for r in graded for g in r["generations"]]
                if pool is None and cfg.task == "math" and pairs:  # started only when there is work
                    pool = verify_math.make_pool(cfg.workers, cfg.timeout_s)
                for (row, gen), (verdict, info) in zip(pairs, _check_all(pairs, cfg, pool, limits)):
                    gen["verdict"], gen["correct"] = verdict, _correct(verdict)
                    if info:
                        gen["tests"] = info
                    verdicts[verdict] += 1
                if voted and extractor is None:
                    extractor = verify_math.make_pool(cfg.workers, cfg.timeout_s, fn=verify_math.extract_item)
                for row, row_verdicts in zip(voted, vote.verify_by_vote(voted, extractor, _answer_text) if voted else []):
                    for gen, verdict in zip(row["generations"], row_verdicts):
                        gen["verdict"], gen["correct"] = verdict, _correct(verdict)
                        verdicts[verdict] += 1
                    rows_by["majority" if row["pseudo_answer"] is not None else "no_majority"] += 1
                for row in graded if cfg.majority else ():
                    row["verified_by"] = "answer"
                    rows_by["answer"] += 1
                for row in chunk:
                    flags = [g["correct"] for g in row["generations"]]
                    row["n_correct"] = sum(1 for f in flags if f)
                    row["n_checked"] = sum(1 for f in flags if f is not None)
                    row["pass_rate"] = row["n_correct"] / row["n_checked"] if row["n_checked"] else None
                    guard.write(row)
                    report.rows_out += 1
                bar.update(len(chunk))
    finally:
        bar.close()
        for p in (pool, extractor):
            if p is not None:
                p.close()
    checked = sum(v for k, v in verdicts.items() if k != "unverifiable")
    report.extra.update(task=cfg.task, verdicts=dict(verdicts),
                        generation_pass_rate=round(verdicts["correct"] / checked, 4) if checked else None,
                        math_timeouts=sum(p.timeouts for p in (pool, extractor) if p))
    if cfg.majority:
        report.extra["rows_verified_by"] = dict(rows_by)
    report.input_skips = skips.as_dict()
    report.write(out_dir)
    return report


def _check_all(pairs, cfg: VerifyConfig, pool, limits: Limits):
    if cfg.task == "math":
        items = [(str(r.get("answer") if r.get("answer") is not None else ""), _answer_text(g)) for r, g in pairs]
        for r_item, res in zip(items, pool.map(items)):
            if not r_item[0].strip():
                yield "unverifiable", None
            else:
                yield (verify_math.TIMEOUT if res is TIMEOUT else res), None
    elif cfg.task == "mcq":
        for r, g in pairs:
            yield verify_mcq.check(r.get("answer"), _answer_text(g), r.get("choices")), None
    else:
        with ThreadPoolExecutor(max_workers=cfg.workers) as ex:  # each test is its own process
            yield from ex.map(lambda p: verify_code.check(p[0].get("tests"), _answer_text(p[1]), limits), pairs)
