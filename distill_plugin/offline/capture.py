"""Capture a teacher's top-k log-probabilities on the exact token ids training will see.

Shift convention (shared with the online loss and the collator): the teacher's distribution at
position t predicts token t+1, so position t is captured iff ``labels[t+1] != -100``. Stored values
are ``topk(log_softmax(logits_t / T_capture))`` in fp32 (natural log), before any renormalisation;
a sampled store (``samples``) keeps instead ``samples`` draws from ``q ∝ p^(1/proposal_temperature)``
(``p = softmax(logits_t / T_capture)``), seeded per row (``offline.sampled``).

Examples come from ``examples_from_axolotl_config`` (Axolotl's own dataset preparation, so ids and
labels are byte-identical to training) or ``examples_from_jsonl`` (chat template of a tokenizer,
for users without Axolotl). Scoring is the generation layer's ``Backend.prompt_topk`` (``hf``: a
batched forward, the LM head applied only to the captured positions, chunk by chunk, so
``[B, T, V]`` fp32 logits are never held; ``vllm``: ``prompt_logprobs``). Sharding is
``distill_plugin.shards.shard_of`` on the row's content key.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distill_plugin.generation import Backend, make_backend
from distill_plugin.jsonl import SkipLog, read_jsonl
from distill_plugin.offline.checksums import verify_store
from distill_plugin.offline.diskspace import check_room, estimate_bytes
from distill_plugin.offline.layout import encode_part, stored_form
from distill_plugin.offline.sampled import uniforms
from distill_plugin.offline.store import (
    StoreMeta, StoreWriter, chat_template_hash, positions_mask, row_key, stored_keys, tokenizer_hash,
)
from distill_plugin.shards import shard_of


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    row_id: str | None = None

    @property
    def mask(self) -> np.ndarray:
        return positions_mask(self.labels)


def examples_from_axolotl_config(config: str | Path, **overrides) -> tuple[list[Example], object, dict]:
    """Tokenise the training and evaluation sets of an Axolotl YAML exactly as ``axolotl.cli.train``
    will (the eval split of ``val_set_size`` / ``test_datasets`` too: the offline loss looks every
    batch's rows up in the store, evaluation batches included).

    Returns ``(examples, tokenizer, info)`` with ``info = {"sequence_len", "base_model"}``.
    """
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets

    cfg = load_cfg(str(config), **overrides)
    meta = load_datasets(cfg=cfg)
    from axolotl.loaders import load_tokenizer

    tokenizer = load_tokenizer(cfg)
    examples = [
        Example(list(map(int, row["input_ids"])), list(map(int, row["labels"])), row.get("id"))
        for dataset in (meta.train_dataset, meta.eval_dataset) if dataset is not None
        for row in dataset
    ]
    return examples, tokenizer, {"sequence_len": cfg.sequence_len, "base_model": cfg.base_model}


def tokenize_row(row: dict, tokenizer, sequence_len: int | None = None, messages_field: str = "messages",
                 id_field: str = "id") -> Example:
    """Tokenise one row: ``messages`` through the tokenizer's chat template (assistant turns
    supervised, via the template's ``{% generation %}`` markers) or ``text`` (every token
    supervised), truncated to ``sequence_len``."""
    if messages_field in row:
        enc = tokenizer.apply_chat_template(row[messages_field], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids = list(enc["input_ids"])
        labels = [t if m else -100 for t, m in zip(ids, enc["assistant_masks"])]
    else:
        ids = list(tokenizer(row["text"])["input_ids"])
        labels = list(ids)
    if sequence_len:
        ids, labels = ids[:sequence_len], labels[:sequence_len]
    return Example(ids, labels, None if row.get(id_field) is None else str(row[id_field]))


def examples_from_jsonl(path: str | Path, tokenizer, sequence_len: int | None = None,
                        messages_field: str = "messages", id_field: str = "id") -> list[Example]:
    """``tokenize_row`` over a JSONL file (for users without Axolotl)."""
    rows = read_jsonl(path, SkipLog(strict=True))  # a bad line stops with its file:line
    return [tokenize_row(r, tokenizer, sequence_len, messages_field, id_field) for _, r in rows]


@dataclass
class CaptureStats:
    rows: int = 0
    skipped: int = 0
    positions: int = 0
    tokens: int = 0
    seconds: float = 0.0
    parts: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def capture(examples: Iterable[Example], backend: Backend, out_dir: str | Path, meta: StoreMeta, shard: int = 0,
            num_shards: int = 1, batch_size: int = 8, max_rows: int | None = None, rows_per_part: int = 256,
            progress: bool = True, command: str | None = None) -> CaptureStats:
    """Capture the rows of this shard not yet stored under ``out_dir`` (resumable by row key).

    ``backend.prompt_topk`` scores each batch at the store's ``k`` and capture temperature (a sampled
    store: ``backend.prompt_sample`` draws ``meta.samples`` ids per position, row by row from
    ``sampled.uniforms(meta.seed, row_key)``, so the draws do not depend on the batch). Batches
    are formed from examples sorted by length (less padding). ``max_rows`` bounds the number of new
    rows captured in this call. ``command``: the command line re-capturing this shard, recorded in
    ``meta.json`` for the corrupt-part message.

    Faults: the parts this shard already stored are verified first (``CorruptStoreError`` names a corrupt one
    and the command re-capturing it). After the first batch is scored, the rows still to do are sized
    at the bytes per captured position measured on it (``offline.diskspace``); ``DiskFullError``
    refuses, before anything is written, when the filesystem cannot hold them, and reports a full
    disk met while writing (the part being written removed, the complete ones kept for resume).
    """
    from tqdm.auto import tqdm

    if (Path(out_dir) / "meta.json").exists():  # this shard's parts (the other shards verify their own)
        verify_store(out_dir, prefix=f"part-s{shard:03d}of{num_shards:03d}-")
    done = stored_keys(out_dir)
    todo, seen, stats = [], set(), CaptureStats()
    for e in examples:
        key = row_key(e.input_ids)
        if shard_of(key, num_shards) != shard or key in seen:
            continue
        seen.add(key)
        if key in done:
            stats.skipped += 1
        elif e.mask.any():
            todo.append(e)
    todo = sorted(todo, key=lambda e: len(e.input_ids))[:max_rows]
    writer = StoreWriter(out_dir, meta, shard, num_shards, rows_per_part, command=command)
    start = time.perf_counter()
    with tqdm(total=len(todo), unit="row", desc="capture", disable=not progress) as bar:  # closed before an error prints
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            scored = score(backend, meta, batch)
            if i == 0:
                writer.estimated_bytes = check_capture_room(out_dir, meta, todo, scored, rows_per_part)
            for e, (ids, vals) in zip(batch, scored):
                writer.add(e.input_ids, e.labels, ids, vals, e.row_id)
                stats.rows += 1
                stats.positions += len(ids)
                stats.tokens += len(e.input_ids)
            stats.seconds = time.perf_counter() - start
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{stats.tokens_per_s:,.0f}")
        writer.close()
    stats.seconds = time.perf_counter() - start
    return stats


def score(backend: Backend, meta: StoreMeta, batch: list[Example]) -> list:
    """The batch's captured arrays per example: top-k ids and log-probs, or (sampled) draws and log weights."""
    sequences, masks = [e.input_ids for e in batch], [e.mask for e in batch]
    if meta.sampled:
        draws = [uniforms(meta.seed, row_key(e.input_ids), int(e.mask.sum()), meta.samples) for e in batch]
        return backend.prompt_sample(sequences, masks, draws, meta.capture_temperature, meta.proposal_temperature,
                                     vocab_size=meta.vocab_size)
    return backend.prompt_topk(sequences, masks, meta.k, meta.capture_temperature, vocab_size=meta.vocab_size)


ROW_BYTES = 48  # per stored row besides its top-k blob: row key, id, counts (compressed Parquet columns)
PART_BYTES = 8192  # per part file: footer, page headers, the metadata and codec tables


def check_capture_room(out_dir: str | Path, meta: StoreMeta, todo: list[Example], scored: list,
                       rows_per_part: int = 256) -> int:
    """Size the rows ``todo`` at the bytes per position of the first scored batch (encoded as a part
    would be); raise ``DiskFullError`` when the filesystem cannot hold them. Returns the store's
    estimated total size (the parts already written plus the estimate)."""
    rows = [stored_form(meta, ids, vals) for ids, vals in scored if len(ids)]
    measured = sum(len(blob) for blob in encode_part(meta, rows)[1])
    per_position = measured / max(1, sum(len(row[0]) for row in rows))
    positions = sum(int(e.mask.sum()) for e in todo)
    fixed = sum(ROW_BYTES + len(e.input_ids) // 8 for e in todo) + PART_BYTES * -(-len(todo) // rows_per_part)
    needed = estimate_bytes(positions, per_position, fixed)
    written = sum(p.stat().st_size for p in Path(out_dir).glob("part-*.parquet"))
    check_room(out_dir, needed, written + needed)
    return written + needed


def make_meta(teacher: str, tokenizer, k: int, temperature: float, sequence_len: int | None,
              vocab_size: int, bits: int = 8, r_max: float = 20.0, epsilon: float | None = None,
              samples: int | None = None, proposal_temperature: float = 1.0, seed: int = 0) -> StoreMeta:
    """The store metadata of a capture; ``epsilon`` makes it adaptive top-k (format version 2),
    ``samples`` a sampled store (format version 3, ``k = samples``; ``proposal_temperature`` and
    ``seed`` recorded)."""
    sampled = dict(samples=samples, proposal_temperature=proposal_temperature, seed=seed) if samples else {}
    return StoreMeta(teacher=str(teacher), tokenizer_hash=tokenizer_hash(tokenizer),
                     chat_template_hash=chat_template_hash(getattr(tokenizer, "chat_template", None)),
                     k=samples or k, capture_temperature=float(temperature), sequence_len=sequence_len,
                     vocab_size=int(vocab_size), codec={"bits": bits, "r_max": r_max}, epsilon=epsilon, **sampled)


def teacher_facts(teacher: str | Path, tokenizer, k: int) -> dict:
    """Refuse a teacher whose tokenizer differs from the data's and a k above the vocabulary;
    return what the store records of the teacher beside the data's tokenizer.

    The store's ``vocab_size`` is the data tokenizer's length: the teacher's lm_head may be padded
    beyond it (Qwen2-72B: 152,064 rows for 151,646 tokens), and those rows are cut at capture.
    """
    from transformers import AutoConfig, AutoTokenizer

    from distill_plugin.alignment.tokens import tokenizer_difference

    if k > len(tokenizer):
        raise ValueError(f"--top-k {k} is larger than the vocabulary ({len(tokenizer)} tokens)")
    teacher_tokenizer = AutoTokenizer.from_pretrained(str(teacher))
    difference = tokenizer_difference(tokenizer, teacher_tokenizer)
    if difference:
        raise ValueError(f"--teacher {str(teacher)!r}: its tokenizer differs from the data's ({difference}); "
                         "stored ids would mean other tokens at training")
    return {"teacher_tokenizer_hash": tokenizer_hash(teacher_tokenizer), "teacher_vocab_size": len(teacher_tokenizer),
            "teacher_lm_head_rows": AutoConfig.from_pretrained(str(teacher)).get_text_config().vocab_size}


def capture_teacher(teacher: str | Path, out_dir: str | Path, *, config: str | Path | None = None,
                    data: str | Path | None = None, tokenizer=None, k: int = 64, temperature: float = 1.0,
                    backend: str = "hf", sequence_len: int | None = None, device: str | None = None,
                    dtype: str = "auto", batch_size: int = 8, shard: int = 0, num_shards: int = 1,
                    max_rows: int | None = None, bits: int = 8, progress: bool = True,
                    command: str | None = None, epsilon: float | None = None, samples: int | None = None,
                    proposal_temperature: float = 1.0, seed: int = 0) -> CaptureStats:
    """One-call capture for Python users and tests: examples from ``config`` (Axolotl YAML) or
    ``data`` (JSONL + ``tokenizer``, a path or an object), then the chosen backend. ``epsilon``:
    adaptive top-k, each position's fewest top candidates holding ``>= 1 - epsilon`` (``k`` the cap).
    ``samples``: a sampled store, ``samples`` draws per position from ``q ∝ p^(1/proposal_temperature)``
    seeded by ``seed`` (``k`` and ``epsilon`` unused; hf backend only)."""
    from transformers import AutoTokenizer

    if samples is not None:
        check_sampling(samples, proposal_temperature, epsilon, backend)

    if config is not None:
        examples, tokenizer, info = examples_from_axolotl_config(config)
        sequence_len = info["sequence_len"]
    else:
        if data is None:
            raise ValueError("give an Axolotl config or a JSONL data file")
        tokenizer = tokenizer if not isinstance(tokenizer, (str, Path, type(None))) else \
            AutoTokenizer.from_pretrained(str(tokenizer or teacher))
        examples = examples_from_jsonl(data, tokenizer, sequence_len)
    meta = make_meta(str(teacher), tokenizer, k, temperature, sequence_len, len(tokenizer), bits=bits, epsilon=epsilon,
                     samples=samples, proposal_temperature=proposal_temperature, seed=seed)
    meta.extra.update(teacher_facts(teacher, tokenizer, meta.k if not meta.sampled else 1))
    if backend == "hf":
        runner = make_backend("hf", str(teacher), device=device, dtype=dtype)
    elif backend == "vllm":
        runner = make_backend("vllm", str(teacher), max_logprobs=k)
    else:
        raise ValueError(f"unknown capture backend {backend!r} (hf | vllm)")
    return capture(examples, runner, out_dir, meta, shard, num_shards, batch_size, max_rows, progress=progress,
                   command=command)


def check_sampling(samples: int, proposal_temperature: float, epsilon: float | None, backend: str) -> None:
    """Refuse, with one line each, what a sampled capture cannot do."""
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if not proposal_temperature > 0:
        raise ValueError(f"--proposal-temperature must be > 0, got {proposal_temperature}")
    if epsilon is not None:
        raise ValueError("--samples and --epsilon are two kinds of store: give one")
    if backend != "hf":
        raise ValueError(f"--samples needs --backend hf: the {backend} backend returns top-k prompt log-probs, "
                         "not the full distribution the draws come from")
