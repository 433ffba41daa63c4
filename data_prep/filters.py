"""Stage 3: drop contaminated and duplicate prompts, then truncated / incorrect / over-length
generations; a row without any generation left is dropped. Every drop is counted by reason.

Row reasons: ``contaminated``, ``duplicate_prompt``, ``near_duplicate_prompt``, ``no_generation_left``.
Generation reasons: ``truncated`` (finish_reason ``length``), ``no_closing_think`` (no ``</think>``),
``incorrect``, ``unverifiable`` / ``unverified`` (unless kept), ``over_length``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field
from tqdm import tqdm

from .dedup import ContaminationIndex, NearDuplicateIndex, exact_key, prompt_text
from .guards import preflight, record_settings
from .io import SkipLog, input_files, read_rows, write_jsonl_atomic
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
    strict: bool = False


def generation_drop_reason(gen: dict, cfg: FilterConfig, count_tokens) -> str | None:
    """Why one generation is dropped, or ``None`` to keep it (checks in a fixed order)."""
    if gen.get("finish_reason") == "length":
        return "truncated"
    if cfg.require_think and not gen.get("think_closed"):
        return "no_closing_think"
    if cfg.require_correct:
        if "correct" not in gen:
            return "unverified"
        if gen["correct"] is None and not cfg.keep_unverifiable:
            return "unverifiable"
        if gen["correct"] is False:
            return "incorrect"
    if cfg.max_tokens is not None:
        n = count_tokens(gen)
        if n is not None and n > cfg.max_tokens:
            return "over_length"
    return None


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
    bench_texts = load_benchmarks(cfg.decontaminate, cfg.benchmark_fields, SkipLog(cfg.strict))
    contam = ContaminationIndex(bench_texts, cfg.ngram) if bench_texts else None
    near = NearDuplicateIndex(cfg.near_dup_threshold) if cfg.dedup and cfg.near_dup_threshold else None
    count_tokens = _token_counter(cfg)
    exact_seen: set[str] = set()
    gen_in = Counter()

    def kept():
        for row in tqdm(unique_rows(files, skips, report), desc="filter", unit="row"):
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
            keep = []
            for g in row["generations"]:
                gen_in["total"] += 1
                why = generation_drop_reason(g, cfg, count_tokens)
                if why:
                    report.generation_drops[why] += 1
                else:
                    keep.append(g)
                    gen_in["kept"] += 1
                    n = count_tokens(g)
                    if n is not None:
                        report.token_lengths.append(n)
            if not keep:
                report.drops["no_generation_left"] += 1
                continue
            report.rows_out += 1
            yield {**row, "generations": keep}

    write_jsonl_atomic(out_path, kept())
    report.input_skips = skips.as_dict()
    report.extra.update(generations_in=gen_in["total"], generations_out=gen_in["kept"],
                        benchmark_items=contam.size if contam else 0, ngram=cfg.ngram)
    report.write(out_path.parent)
    return report
