"""Stage 2b: score every generation an answer rule cannot check, with an LLM judge or a reward model.

Each generation gets ``score`` (a float, or ``None`` when the judge's reply held no readable score:
never a silent 0) and ``judge = {"status", "reasoning"}`` (the reply the score was read from, so a
score can be audited); each row gets ``judge_meta`` (who judged, with what rubric and sampling).

* LLM judge (``--judge-model``): the generation layer's backends (``openai`` HTTP, ``vllm``,
  ``hf``) with one request per generation: the rubric's chat (:mod:`data_prep.rubric`) holding the
  row's prompt, the generation's final answer (``content``: the text after ``</think>``) and the
  row's reference ``answer`` when it has one.
* Reward model (``--reward-model``): :class:`data_prep.reward.RewardModel` scores (prompt, answer)
  in batches; ``score`` is its logit.

Resumable and shardable exactly like ``generate`` (the same code): ``<out>/judged.jsonl`` (or
``judged-<i>-of-<n>.jsonl``), a row appended once all its generations are scored; a restart skips
ids already written and cuts a torn last line. A judge request that fails for good (a 400, retries
exhausted, an unparsable response body) fails its row: recorded in ``_errors.jsonl`` and counted
against ``--max-errors``; ``--retry-errors`` retries those rows on the next run.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field, model_validator
from tqdm import tqdm

from distill_plugin.generation import Backend, SamplingParams, make_backend

from .dedup import prompt_text
from .generate import drive, pending, run_with_error_log, shard_path
from .generation_errors import ErrorLog
from .guards import preflight, record_settings
from .io import JsonlAppender, SkipLog, parse_shard
from .report import StageReport
from .rubric import Rubric, answer_of, load_rubric, reference_of
from .schema import join_reasoning
from .verify import unique_rows

log = logging.getLogger("data_prep")


def _judge_sampling() -> SamplingParams:
    return SamplingParams(n=1, temperature=0.0, top_p=1.0, max_tokens=1024)


class JudgeConfig(BaseModel):
    backend: str = "openai"  # hf | openai | vllm (LLM judge)
    model: str | None = None  # the LLM judge: served model name (openai) or local dir / hub name
    reward_model: str | None = None  # or a sequence-classification reward model (dir or hub name)
    rubric: str = "default"  # "default" or a rubric file (data_prep.rubric)
    sampling: SamplingParams = Field(default_factory=_judge_sampling)  # greedy: a judge should be repeatable
    backend_options: dict = Field(default_factory=dict)
    chunk_size: int = Field(64, ge=1)  # judge requests handed to a local backend per call
    batch_size: int = Field(8, ge=1)  # reward model: pairs per forward pass
    max_length: int = Field(4096, ge=1)  # reward model: longer pairs get status too_long, no score
    max_errors: float | None = Field(None, gt=0)
    retry_errors: bool = False
    strict: bool = False

    @model_validator(mode="after")
    def _one_judge(self) -> "JudgeConfig":
        if (self.model is None) == (self.reward_model is None):
            raise ValueError("give exactly one of --judge-model (an LLM judge) or --reward-model")
        if self.sampling.n != 1:
            raise ValueError("a judge samples one reply per generation (sampling.n must be 1)")
        return self

    def settings(self, rubric: Rubric | None) -> dict:
        """What shapes the scores (a resumed run must use the same)."""
        if self.reward_model:
            return {"reward_model": self.reward_model, "max_length": self.max_length}
        return {"backend": self.backend, "model": self.model, "sampling": self.sampling.model_dump(),
                "rubric": rubric.model_dump() if rubric else None}


class RowAssembler:
    """Collects one verdict per generation (flat index over ``todo``'s generations, in order) and
    appends a row once all of its generations have one; the first failure of a row records it in
    the error log and drops it."""

    def __init__(self, todo: list[dict], sink: JsonlAppender, report: StageReport, errors: ErrorLog,
                 meta: dict, statuses: Counter, bar: tqdm):
        self.todo, self.sink, self.report, self.errors = todo, sink, report, errors
        self.meta, self.statuses, self.bar = meta, statuses, bar
        self.owner = [(r, k) for r, row in enumerate(todo) for k in range(len(row["generations"]))]
        self.left = [len(row["generations"]) for row in todo]
        self.verdicts: dict[int, list] = {}
        self.failed: set[int] = set()
        for r, n in enumerate(self.left):
            if n == 0:
                self._write(r)

    def done(self, i: int, score: float | None, status: str, reasoning: str | None) -> None:
        r, k = self.owner[i]
        if r in self.failed:
            return
        self.verdicts.setdefault(r, [None] * len(self.todo[r]["generations"]))[k] = (score, status, reasoning)
        self.left[r] -= 1
        if self.left[r] == 0:
            self._write(r)

    def fail(self, i: int, error) -> None:
        r, _ = self.owner[i]
        if r in self.failed:
            return
        self.failed.add(r)
        self.verdicts.pop(r, None)
        self.bar.update(1)
        self.errors.record(self.todo[r]["id"], error)

    def _write(self, r: int) -> None:
        row = self.todo[r]
        verdicts = self.verdicts.pop(r, [])
        for score, status, _ in verdicts:  # counted for written rows only (not a failed row's)
            self.statuses[status] += 1
            if score is not None:
                self.report.scores.append(score)
        gens = [{**g, "score": s, "judge": {"status": st, "reasoning": why}}
                for g, (s, st, why) in zip(row["generations"], verdicts)]
        self.sink.write({**row, "generations": gens, "judge_meta": self.meta})
        self.report.rows_out += 1
        self.bar.update(1)


def judge(inputs, out_dir: str | Path, cfg: JudgeConfig, shard: str | None = None,
          backend: Backend | None = None) -> StageReport:
    """Score this shard's generations; returns (and writes) the stage report."""
    shard_t = parse_shard(shard)
    out_dir = Path(out_dir)
    files = preflight(inputs, out_dir)
    rubric = None if cfg.reward_model else load_rubric(cfg.rubric)
    record_settings(out_dir, "judge", cfg.settings(rubric), resumable=True)
    skips, report = SkipLog(cfg.strict), StageReport("judge")
    todo = pending(list(unique_rows(files, skips, report)), out_dir, shard_t, "judged", cfg.retry_errors, report)
    report.input_skips = skips.as_dict()
    statuses = Counter()
    report.extra["score_status"] = statuses  # filled as the run goes
    out_path = shard_path(out_dir, shard_t, "judged")

    def work(engine, errors: ErrorLog) -> None:
        meta = engine.describe() if cfg.reward_model else {
            **engine.describe(), "rubric": rubric.name, **cfg.sampling.model_dump()}
        bar = tqdm(total=len(todo), desc="judge", unit="row")
        with JsonlAppender(out_path) as sink, bar:
            rows = RowAssembler(todo, sink, report, errors, meta, statuses, bar)
            pairs = ((row, g) for row in todo for g in row["generations"])
            if cfg.reward_model:
                engine.score(pairs, lambda i, score, status: rows.done(i, score, status, None))
            else:
                ask_llm(engine, pairs, rubric, cfg, rows)

    if cfg.reward_model:
        from .reward import RewardModel

        open_engine = lambda: backend or RewardModel(cfg.reward_model, cfg.batch_size, cfg.max_length)  # noqa: E731
    else:
        open_engine = lambda: backend or make_backend(cfg.backend, cfg.model, **cfg.backend_options)  # noqa: E731
    run_with_error_log(report, out_dir, shard_t, todo, cfg.max_errors, open_engine, work)
    return report


def ask_llm(backend: Backend, pairs, rubric: Rubric, cfg: JudgeConfig, rows: RowAssembler) -> None:
    """One judge request per (row, generation); each reply parsed strictly (:meth:`Rubric.parse`)."""
    requests = (rubric.messages(prompt_text(row["prompt"]), answer_of(g), reference_of(row)) for row, g in pairs)

    def on_done(i: int, completions) -> None:
        (c,) = completions
        score, status = rubric.parse(c.text)
        reply = join_reasoning(c.reasoning, c.text) if c.reasoning else c.text  # a thinking judge's reasoning too
        rows.done(i, score, status, reply)

    drive(backend, requests, cfg.sampling, cfg.chunk_size, on_done, rows.fail)
