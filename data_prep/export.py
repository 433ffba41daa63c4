"""Stage 4: write chat-format training rows and prove the student's template keeps the reasoning.

Row: ``{"messages": [system?, user, assistant], "id", "source"}``. The assistant turn holds
``<think>\\nR\\n</think>\\n\\nA`` (R1's layout) or, with ``reasoning_field``, ``content=A`` plus
``reasoning_content=R`` (for templates that render that field). Axolotl reads it with
``type: chat_template`` (``field_messages: messages``).

R1-Distill-style chat templates drop everything up to ``</think>`` from assistant turns, so a
student trained with them never sees the reasoning. :func:`check_reasoning_kept` renders a few
rows through the student's template and raises :class:`ReasoningStrippedError` if it is lost.

Output: one JSONL file (``-o train.jsonl``), or, with ``split`` > 0, ``shard_size`` or ``format:
parquet``, a folder of ``train-*``/``eval-*`` shards split by prompt id
(:mod:`data_prep.dataset_out`), with the token-length table of each split when ``tokenizer`` (the
student's) is given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from .dataset_out import (SPLITS, LengthTable, ShardWriter, check_folder_output, parquet_schema, parse_size,
                          remove_stale_shards, split_of)
from .guards import preflight, record_settings
from .io import SkipLog, write_jsonl_atomic
from .report import StageReport
from .schema import join_reasoning
from .verify import unique_rows

Select = Literal["first_correct", "shortest_correct", "all_correct", "first", "shortest", "all", "highest_score"]


class ReasoningStrippedError(RuntimeError):
    """The student's chat template removes the reasoning from assistant turns."""


class ExportConfig(BaseModel):
    select: Select = "first_correct"
    reasoning_field: bool = False  # separate `reasoning_content` instead of inline <think>
    keep_prompt_suffix: bool = True  # user turn exactly as the teacher saw it (system + suffix)
    check_template: str | None = None  # student tokenizer (dir or hub name) to check
    check_rows: int = 3
    split: float = Field(0.0, ge=0, lt=1)  # eval fraction, by prompt id (0: no eval split)
    format: Literal["jsonl", "parquet"] = "jsonl"
    shard_size: int | str | None = None  # e.g. "200MB": bytes per shard (None: one shard per split)
    tokenizer: str | None = None  # the student's: token-length table per split
    strict: bool = False

    @field_validator("shard_size")
    @classmethod
    def _size(cls, v):
        return parse_size(v)

    @property
    def to_folder(self) -> bool:
        return self.split > 0 or self.format == "parquet" or self.shard_size is not None


def select_generations(gens: list[dict], how: Select) -> list[dict]:
    """Pick generations; ``*_correct`` only consider ``correct is True``; ``highest_score`` the
    scored ones (the first of equal best)."""
    pool = [g for g in gens if g.get("correct") is True] if how.endswith("_correct") else list(gens)
    if how == "highest_score":
        scored = [g for g in gens if g.get("score") is not None]
        return [max(scored, key=lambda g: g["score"])] if scored else []
    if not pool:
        return []
    if how.startswith("first"):
        return pool[:1]
    if how.startswith("shortest"):
        key = lambda g: g.get("completion_tokens") if g.get("completion_tokens") is not None else len(g.get("text", ""))  # noqa: E731
        return [min(pool, key=key)]
    return pool


def assistant_message(gen: dict, reasoning_field: bool) -> dict:
    """The assistant turn; a generation without reasoning (a teacher that does not think) is its
    answer alone, without an empty ``<think></think>``."""
    reasoning, content = gen.get("reasoning", ""), gen.get("content", "")
    if not reasoning and not gen.get("think_closed"):
        return {"role": "assistant", "content": content}
    if reasoning_field:
        return {"role": "assistant", "content": content, "reasoning_content": reasoning}
    return {"role": "assistant", "content": join_reasoning(reasoning, content)}


def prompt_messages(row: dict, keep_suffix: bool) -> list[dict]:
    if keep_suffix and row.get("messages"):
        return [dict(m) for m in row["messages"]]
    p = row["prompt"]
    return [dict(m) for m in p] if isinstance(p, list) else [{"role": "user", "content": str(p)}]


def to_training_rows(row: dict, cfg: ExportConfig) -> list[dict]:
    gens = select_generations(row.get("generations", []), cfg.select)
    base = prompt_messages(row, cfg.keep_prompt_suffix)
    out = []
    for k, g in enumerate(gens):
        rid = str(row["id"]) if len(gens) == 1 else f"{row['id']}#{k}"
        out.append({"messages": base + [assistant_message(g, cfg.reasoning_field)], "id": rid,
                    "source": row.get("source", "")})
    return out


def reasoning_of(row: dict) -> str:
    """The reasoning of a training row's assistant turn (``reasoning_content`` or inside ``<think>``)."""
    asst = row["messages"][-1]
    reasoning = asst.get("reasoning_content")
    if reasoning is None:
        content = asst["content"]
        reasoning = content.split("</think>")[0].split("<think>")[-1] if "</think>" in content else ""
    return reasoning.strip()


def check_reasoning_kept(tokenizer, rows: list[dict], k: int = 3) -> int:
    """Render up to ``k`` rows with reasoning through ``tokenizer``'s chat template; raise
    :class:`ReasoningStrippedError` if any loses it. Returns the number of rows checked."""
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    checked = 0
    for row in rows:
        if checked >= k:
            break
        reasoning = reasoning_of(row)
        if not reasoning:
            continue
        rendered = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        probes = [reasoning[:40].strip(), reasoning[-40:].strip()]
        if not all(p in rendered for p in probes):
            raise ReasoningStrippedError(
                f"row {row.get('id')}: the student's chat template drops the reasoning from the "
                "assistant turn (R1-Distill-style templates strip everything before </think>). "
                "Training on it would teach answers without reasoning. Use a template that keeps "
                "assistant content verbatim (e.g. the base Qwen2.5 ChatML template, "
                "`chat_template: qwen_25` in Axolotl), or export with `--reasoning-field` for a "
                "template that renders `reasoning_content`.")
        checked += 1
    return checked


def _head(rows: Iterator[tuple[str, dict]], k: int, limit: int = 1000) -> list[tuple[str, dict]]:
    """The first (split, row) of ``rows``: until ``k`` of them have reasoning, or ``limit`` rows."""
    head, with_reasoning = [], 0
    for split, row in rows:
        head.append((split, row))
        with_reasoning += bool(reasoning_of(row))
        if with_reasoning >= k or len(head) >= limit:
            break
    return head


def export(inputs, out_path: str | Path, cfg: ExportConfig) -> StageReport:
    """Write the training rows, streaming (the template check looks at the first ones before
    anything is renamed into place, so a failed check leaves no output)."""
    out_path = Path(out_path)
    files = preflight(inputs, out_path)
    if cfg.to_folder:
        check_folder_output(out_path)
    report_dir = out_path if cfg.to_folder else out_path.parent
    record_settings(report_dir, "export", cfg.model_dump(exclude={"strict", "check_rows"}), resumable=False)
    skips, report = SkipLog(cfg.strict), StageReport("export")
    prompts = Counter()  # prompts per split

    def training_rows() -> Iterator[tuple[str, dict]]:
        for row in unique_rows(files, skips, report):
            produced = to_training_rows(row, cfg)
            if not produced:
                report.drops["no_selectable_generation"] += 1
                continue
            report.rows_out += 1
            for g in select_generations(row["generations"], cfg.select):
                if g.get("completion_tokens") is not None:
                    report.token_lengths.append(g["completion_tokens"])
            split = split_of(str(row["id"]), cfg.split) if cfg.split else "train"
            prompts[split] += 1
            yield from ((split, r) for r in produced)

    rows = training_rows()
    if cfg.check_template:
        head = _head(rows, cfg.check_rows)
        n = check_reasoning_kept(cfg.check_template, [r for _, r in head], cfg.check_rows)
        report.extra["template_check"] = {"tokenizer": cfg.check_template, "rows_checked": n, "ok": True}
        rows = chain(head, rows)
    lengths = LengthTable(cfg.tokenizer) if cfg.tokenizer else None
    if cfg.to_folder:
        written = write_splits(rows, out_path, cfg, report, lengths, prompts)
    else:
        written = write_jsonl_atomic(out_path, (_measured(lengths, s, r) for s, r in rows))
    if lengths is not None:
        report.extra["token_lengths_by_split"] = lengths.as_dict()
        report.extra["length_table"] = lengths.markdown()
    report.extra.update(training_rows=written, select=cfg.select)
    report.input_skips = skips.as_dict()
    report.write(report_dir)
    return report


def _measured(lengths: LengthTable | None, split: str, row: dict) -> dict:
    if lengths is not None:
        lengths.add(split, row)
    return row


def write_splits(rows: Iterator[tuple[str, dict]], out_dir: Path, cfg: ExportConfig, report: StageReport,
                 lengths: LengthTable | None, prompts: Counter) -> int:
    """The (split, row) pairs into the split's shards; all shards renamed into place at the end."""
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = parquet_schema(cfg.reasoning_field) if cfg.format == "parquet" else None
    writers = {s: ShardWriter(out_dir, s, cfg.format, cfg.shard_size, schema) for s in SPLITS}
    try:
        for split, row in rows:
            writers[split].write(_measured(lengths, split, row))
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    paths = {s: w.finish() for s, w in writers.items()}
    stale = remove_stale_shards(out_dir, [p for ps in paths.values() for p in ps])
    report.extra["splits"] = {s: {"prompts": prompts[s], "rows": writers[s].rows,
                                  "files": [p.name for p in paths[s]]} for s in SPLITS}
    report.extra.update(eval_fraction=cfg.split, format=cfg.format, shard_bytes=cfg.shard_size,
                        removed_stale_shards=stale)
    return sum(w.rows for w in writers.values())
