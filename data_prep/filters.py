"""Stage 3: drop contaminated and duplicate prompts, prompts of the wrong difficulty, then
truncated / incorrect / over-length / low-scored generations; a row without any generation left is
dropped. Every drop is counted by reason.

Row reasons, in order: ``contaminated``, ``duplicate_prompt``, ``near_duplicate_prompt``,
``pass_rate_out_of_range`` / ``pass_rate_unknown`` (``pass_rate``), ``no_generation_left``.
Generation reasons, in order: ``truncated`` (finish_reason ``length``), ``no_closing_think`` (no
``</think>``), ``incorrect``, ``unverifiable`` / ``unverified`` (unless kept; a judged generation,
one with a ``score``, is never unverified), ``over_length``, ``unscored`` (score ``None`` while a
score rule is on), ``below_min_score``, ``not_top_fraction``.

The teacher's pass rate of a prompt (``pass_rate: [lo, hi]``, kept when lo <= rate <= hi) is
``verify``'s (correct / checked) when the row was verified, else the fraction of its scored
generations with score >= ``pass_score`` (default ``min_score``), over all its generations before
any generation is dropped. ``top_fraction`` keeps the best ceil(f * k) of the k generations left,
per prompt (``top_scope: prompt``) or over the whole file (``overall``: a second pass over the
rows kept by every other rule; ties go to the earlier generation).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from tqdm import tqdm

from .dedup import ContaminationIndex, NearDuplicateIndex, exact_key, prompt_text
from .guards import preflight, record_settings
from .io import InputError, SkipLog, input_files, read_jsonl, read_rows, write_jsonl_atomic
from .report import StageReport
from .schema import FieldMap, canonical_row
from .verify import unique_rows


class FilterConfig(BaseModel):
    decontaminate: list[str] = Field(default_factory=list)  # benchmark JSONL files or dirs
    benchmark_fields: FieldMap = Field(default_factory=FieldMap)
    ngram: int = 8
    dedup: bool = True
    near_dup_threshold: float | None = 0.8  # None = exact dedup only
    require_think: bool = True  # drop generations without a closing </think>
    require_correct: bool = True
    keep_unverifiable: bool = False
    max_tokens: int | None = None
    tokenizer: str | None = None  # count tokens with this tokenizer (else the teacher's counts)
    min_score: float | None = None  # judge score: drop generations below it
    top_fraction: float | None = Field(None, gt=0, le=1)  # keep the best fraction by score
    top_scope: Literal["prompt", "overall"] = "overall"
    pass_rate: tuple[float, float] | None = None  # keep prompts with lo <= teacher pass rate <= hi
    pass_score: float | None = None  # a judged generation passes at score >= this (default min_score)
    strict: bool = False

    @field_validator("pass_rate", mode="before")
    @classmethod
    def _pass_rate(cls, v):
        """``"lo:hi"`` (the CLI's form) or ``[lo, hi]``, with 0 <= lo <= hi <= 1."""
        raw = v
        if isinstance(v, str):
            parts = v.split(":")
            try:
                v = tuple(float(x) for x in parts) if len(parts) == 2 else None
            except ValueError:
                v = None
        if v is not None and (len(v) != 2 or not 0 <= v[0] <= v[1] <= 1):
            v = None
        if v is None and raw is not None:
            raise ValueError(f"expected 'lo:hi' with 0 <= lo <= hi <= 1 (e.g. 0.1:0.9), got {raw!r}")
        return v

    @property
    def scores_needed(self) -> bool:
        return self.min_score is not None or self.top_fraction is not None


def generation_drop_reason(gen: dict, cfg: FilterConfig, count_tokens) -> str | None:
    """Why one generation is dropped, or ``None`` to keep it (checks in a fixed order)."""
    if gen.get("finish_reason") == "length":
        return "truncated"
    if cfg.require_think and not gen.get("think_closed"):
        return "no_closing_think"
    if cfg.require_correct and gen.get("correct") is not True:
        if gen.get("correct") is False:
            return "incorrect"
        if "score" not in gen:  # neither checked nor judged
            if "correct" not in gen:
                return "unverified"
            if not cfg.keep_unverifiable:
                return "unverifiable"
    if cfg.max_tokens is not None:
        n = count_tokens(gen)
        if n is not None and n > cfg.max_tokens:
            return "over_length"
    if cfg.scores_needed and gen.get("score") is None:
        return "unscored"
    if cfg.min_score is not None and gen["score"] < cfg.min_score:
        return "below_min_score"
    return None


def teacher_pass_rate(row: dict, pass_score: float | None) -> float | None:
    """``verify``'s pass rate when the row was checked, else the fraction of scored generations with
    score >= ``pass_score``; ``None`` when neither says anything."""
    if row.get("n_checked"):
        return row["pass_rate"]
    scores = [g["score"] for g in row["generations"] if g.get("score") is not None]
    if not scores:
        return None
    if pass_score is None:
        raise InputError(f"row {row['id']}: no verified pass rate; give --pass-score (or --min-score) "
                         "to count a judged generation as passed")
    return sum(s >= pass_score for s in scores) / len(scores)


def best(gens: list[dict], k: int) -> list[dict]:
    """The ``k`` highest-scored generations, in their original order (ties: the earlier one)."""
    order = sorted(range(len(gens)), key=lambda j: (-gens[j]["score"], j))[:k]
    return [gens[j] for j in sorted(order)]


def _token_counter(cfg: FilterConfig):
    if cfg.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
        return lambda g: len(tok(g.get("text", ""), add_special_tokens=False)["input_ids"])
    return lambda g: g.get("completion_tokens")


def load_benchmarks(paths: list[str], fields: FieldMap, skips: SkipLog) -> list[str]:
    if not paths:
        return []
    files = [f for p in paths for f in input_files(p)]
    texts = []
    for path, lineno, raw in read_rows(files, skips):
        row = canonical_row(raw, fields, (path, lineno), skips)
        if row is not None:
            texts.append(prompt_text(row["prompt"]))
    return texts


def filter_rows(inputs, out_path: str | Path, cfg: FilterConfig) -> StageReport:
    """Write kept rows to ``out_path`` (atomically) and return the report."""
    out_path = Path(out_path)
    if out_path.suffix != ".jsonl":
        out_path = out_path / "kept.jsonl"
    files = preflight(inputs, out_path)
    record_settings(out_path.parent, "filter", cfg.model_dump(exclude={"strict"}), resumable=False)
    skips, report = SkipLog(cfg.strict), StageReport("filter")
    gen_in = Counter()
    overall = cfg.top_fraction is not None and cfg.top_scope == "overall"
    count_tokens = _token_counter(cfg)
    rows = kept_rows(unique_rows(files, skips, report), cfg, report, gen_in, count_tokens)
    if overall:  # the cut needs every score first: stage the rows, then cut
        stage = out_path.with_name("_stage." + out_path.name)
        try:
            write_jsonl_atomic(stage, rows)
            write_jsonl_atomic(out_path, top_overall(stage, cfg.top_fraction, report, gen_in, count_tokens))
        finally:
            stage.unlink(missing_ok=True)
    else:
        write_jsonl_atomic(out_path, rows)
    report.input_skips = skips.as_dict()
    report.extra.update(generations_in=gen_in["total"], generations_out=gen_in["kept"], ngram=cfg.ngram,
                        benchmark_items=gen_in["benchmark_items"])
    report.write(out_path.parent)
    return report


def kept_rows(rows, cfg: FilterConfig, report: StageReport, gen_in: Counter, count_tokens):
    """Every rule but the overall top fraction, streaming (kept rows are counted in the report
    here, or by :func:`top_overall` when that cut follows)."""
    bench_texts = load_benchmarks(cfg.decontaminate, cfg.benchmark_fields, SkipLog(cfg.strict))
    contam = ContaminationIndex(bench_texts, cfg.ngram) if bench_texts else None
    gen_in["benchmark_items"] = contam.size if contam else 0
    near = NearDuplicateIndex(cfg.near_dup_threshold) if cfg.dedup and cfg.near_dup_threshold else None
    exact_seen: set[str] = set()
    per_prompt = cfg.top_fraction is not None and cfg.top_scope == "prompt"
    for row in tqdm(rows, desc="filter", unit="row"):
        text = prompt_text(row["prompt"])
        if contam is not None and contam.overlaps(text):
            report.drops["contaminated"] += 1
            continue
        if cfg.dedup:
            key = exact_key(text)
            if key in exact_seen:
                report.drops["duplicate_prompt"] += 1
                continue
            exact_seen.add(key)
            if near is not None and near.seen_similar(row["id"], text):
                report.drops["near_duplicate_prompt"] += 1
                continue
        if cfg.pass_rate is not None:
            rate = teacher_pass_rate(row, cfg.pass_score if cfg.pass_score is not None else cfg.min_score)
            if rate is None or not cfg.pass_rate[0] <= rate <= cfg.pass_rate[1]:
                report.drops["pass_rate_unknown" if rate is None else "pass_rate_out_of_range"] += 1
                continue
        keep = []
        for g in row["generations"]:
            gen_in["total"] += 1
            why = generation_drop_reason(g, cfg, count_tokens)
            if why:
                report.generation_drops[why] += 1
            else:
                keep.append(g)
        if per_prompt and keep:
            top = best(keep, math.ceil(cfg.top_fraction * len(keep)))
            report.generation_drops["not_top_fraction"] += len(keep) - len(top)
            keep = top
        if not keep:
            report.drops["no_generation_left"] += 1
            continue
        if cfg.top_fraction is None or per_prompt:
            _count_kept(keep, report, gen_in, count_tokens)
        yield {**row, "generations": keep}


def _count_kept(gens: list[dict], report: StageReport, gen_in: Counter, count_tokens) -> None:
    report.rows_out += 1
    for g in gens:
        gen_in["kept"] += 1
        n = count_tokens(g)
        if n is not None:
            report.token_lengths.append(n)
        if g.get("score") is not None:
            report.scores.append(g["score"])


def top_overall(stage: Path, fraction: float, report: StageReport, gen_in: Counter, count_tokens):
    """Second pass: keep the best ceil(fraction * N) of the N staged generations."""
    scores = [g["score"] for _, row in read_jsonl(stage) for g in row["generations"]]
    k = math.ceil(fraction * len(scores))
    keep_idx = set(sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k])
    report.generation_drops["not_top_fraction"] += len(scores) - k
    report.extra["score_cut"] = {"top_fraction": fraction, "kept": k, "of": len(scores),
                                 "lowest_kept": min((scores[j] for j in keep_idx), default=None)}
    j = 0
    for _, row in read_jsonl(stage):
        gens = []
        for g in row["generations"]:
            if j in keep_idx:
                gens.append(g)
            j += 1
        if not gens:
            report.drops["no_generation_left"] += 1
            continue
        _count_kept(gens, report, gen_in, count_tokens)
        yield {**row, "generations": gens}
