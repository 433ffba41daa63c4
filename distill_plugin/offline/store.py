"""Parquet store of captured top-k teacher distributions, with the capture's provenance.

Layout: a directory holding ``meta.json`` (the store metadata, written when a capture starts) and
part files ``part-s{shard}of{n}-{seq}.parquet``, each written whole (to ``*.tmp`` then renamed), so
an interrupted capture loses at most the part in flight. Schema of every part (one row per training
example):

==============  =========  ===================================================================
column          type       meaning
==============  =========  ===================================================================
row_key         string     ``row_key(input_ids)``: blake2b-128 of the int32 little-endian ids
row_id          string     the user-facing id of the example, if the dataset had one (nullable)
n_tokens        int32      ``len(input_ids)``
n_positions     int32      number of captured positions (= popcount of ``positions``)
positions       binary     bit t set (``np.packbits``, big-endian bit order) iff position t was
                           captured, i.e. ``labels[t+1] != -100``: the distribution at t
                           predicts token t+1
topk            binary     ``codec.encode`` of the ``[n_positions, k]`` ids and log-probs
==============  =========  ===================================================================

Format versions (``meta.json``'s ``format_version``): 1, a fixed top-k per position (the codec's
fixed layout); 2, adaptive top-k (``epsilon`` set): each position keeps its fewest top candidates
whose probability sum reaches ``1 - epsilon``, at most ``k`` and at least 1
(``codec.adaptive_truncate``), stored in the codec's ragged layout (a per-position count, then only
the kept entries). Readers decode both to ``[n_positions, k]``, the dropped slots id 0 and
log-prob ``-inf``, which the top-k loss ignores on both sides; its tail bucket carries the
dropped mass, ``1 - sum of the kept p``; 3, a sampled store (``samples`` set): each position keeps
the distinct ids of ``samples`` draws from the proposal ``q ∝ p^(1/proposal_temperature)`` with
their counts (and log importance weights when ``q ≠ p``), drawn from the seeded generator of
``offline.sampled``; readers decode it to ``[n_positions, samples]`` ids and the estimate
``log p̂ = log(c / samples) + log w`` (``losses.sampled`` trains on it); ``meta.json`` holds its
``samples``, ``proposal_temperature`` and ``seed`` in ``extra["sampled"]`` (``SAMPLED_KEYS``). A store
of a newer version than ``FORMAT_VERSIONS`` stops with one line naming it.

Part-file key-value metadata ``distill_plugin.store`` holds the store metadata (``StoreMeta``) plus
``tables`` (the codec's symbol counts for that part). Log-probs are natural-log
``log_softmax(logits / capture_temperature)`` of the teacher, before any top-k renormalisation.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from distill_plugin.offline.checksums import CHECKSUMS_KEY, SIDE_KEYS, CorruptStoreError, record_part, verify_part
from distill_plugin.offline.codec import CodecConfig, CodecTables
from distill_plugin.offline.diskspace import removed_on_failure
from distill_plugin.offline.layout import decode_row, encode_part, stored_form

FORMAT_VERSION = 1  # fixed top-k
ADAPTIVE_FORMAT_VERSION = 2  # adaptive top-k, ragged codec layout
SAMPLED_FORMAT_VERSION = 3  # sampled ids with counts (offline.sampled)
FORMAT_VERSIONS = (FORMAT_VERSION, ADAPTIVE_FORMAT_VERSION, SAMPLED_FORMAT_VERSION)  # what this code reads
# A sampled store's fields are written inside ``extra["sampled"]``: the top-level keys stay those a
# version-2 reader builds its StoreMeta from, so that reader refuses the store on its format version
# (``check_compatible``, one line) instead of failing on an unknown key.
SAMPLED_KEYS = ("samples", "proposal_temperature", "seed")
META_KEY = b"distill_plugin.store"
META_FILE = "meta.json"


def row_key(input_ids) -> str:
    """Content key of a training example: blake2b-128 of its ids as int32 little-endian."""
    arr = np.asarray(input_ids, dtype="<i4")
    return hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest()


def tokenizer_hash(tokenizer) -> str:
    """SHA-256 of the tokenizer's vocabulary, merges, normaliser and special tokens.

    Fast tokenizers hash their serialised ``tokenizers`` JSON (runtime truncation/padding settings
    excluded); others hash the sorted vocabulary and special tokens.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = {"vocab": sorted(tokenizer.get_vocab().items())}
    spec["special"] = sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", []))
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def chat_template_hash(template: str | None) -> str | None:
    """SHA-256 of the chat template string (``None`` when the run uses no template)."""
    return None if template is None else hashlib.sha256(template.encode()).hexdigest()


@dataclass
class StoreMeta:
    """What a store depends on; ``check_compatible`` compares it with a training run."""

    teacher: str
    tokenizer_hash: str
    chat_template_hash: str | None
    k: int
    capture_temperature: float
    sequence_len: int | None
    vocab_size: int
    codec: dict = field(default_factory=lambda: asdict(CodecConfig()))
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)
    epsilon: float | None = None  # adaptive top-k (format version 2): kept mass >= 1 - epsilon
    samples: int | None = None  # sampled store (format version 3): draws per position, = k
    proposal_temperature: float | None = None  # sampled store: q ∝ p^(1/proposal_temperature)
    seed: int | None = None  # sampled store: the draws' seed (offline.sampled.uniforms)

    def __post_init__(self):
        if self.epsilon is not None:
            self.epsilon = float(self.epsilon)
            self.format_version = ADAPTIVE_FORMAT_VERSION
        if self.samples is not None:
            if self.epsilon is not None or self.k != self.samples:
                raise ValueError(f"a sampled store has k = samples ({self.samples}) and no epsilon")
            self.proposal_temperature = float(1.0 if self.proposal_temperature is None else self.proposal_temperature)
            self.seed = int(self.seed or 0)
            self.format_version = SAMPLED_FORMAT_VERSION

    @property
    def sampled(self) -> bool:
        """Whether the parts hold sampled ids with counts (``offline.sampled``) rather than top-k."""
        return self.format_version == SAMPLED_FORMAT_VERSION

    @property
    def weighted(self) -> bool:
        """A sampled store whose proposal is not the teacher (``log w`` stored per entry)."""
        return self.sampled and self.proposal_temperature != 1.0

    @property
    def codec_config(self) -> CodecConfig:
        return CodecConfig(**self.codec)

    @property
    def ragged(self) -> bool:
        """Whether the parts use the codec's ragged layout (adaptive top-k)."""
        return self.format_version == ADAPTIVE_FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        if data["epsilon"] is None:  # fixed top-k metadata keeps the format version 1 keys
            del data["epsilon"]
        sampled = {key: data.pop(key) for key in SAMPLED_KEYS}
        if self.sampled:
            data["extra"] = {**data["extra"], "sampled": sampled}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "StoreMeta":
        data = json.loads(text)
        version = data.get("format_version", FORMAT_VERSION)
        if version not in FORMAT_VERSIONS:
            raise StoreMismatchError(f"offline store format version {version}: this distill_plugin reads versions "
                                     f"{', '.join(map(str, FORMAT_VERSIONS))} (upgrade distill_plugin)")
        for key in ("tables", *SIDE_KEYS):  # a part's codec tables; meta.json's checksums
            data.pop(key, None)
        extra = dict(data.pop("extra", {}))
        return cls(**data, **extra.pop("sampled", {}), extra=extra)

    def same_capture(self, other: "StoreMeta") -> list[str]:
        """Field names (extra excluded) that differ from ``other``."""
        a, b = asdict(self), asdict(other)
        return [f for f in a if f != "extra" and a[f] != b[f]]


class StoreMismatchError(ValueError):
    """The offline logits were captured for a different tokenizer / template / k than the run."""


def check_compatible(meta: StoreMeta, tokenizer=None, k: int | None = None, chat_template: str | None = "",
                     sequence_len: int | None = None) -> None:
    """Raise ``StoreMismatchError`` naming every field where the store and the run disagree.

    ``chat_template`` defaults to ``tokenizer.chat_template``; pass ``None`` explicitly for runs
    without a template. ``k`` may be smaller than the stored k (the top-k' of a top-k capture is
    exact); a larger k is an error. ``sequence_len`` is checked only when given.
    """
    problems = []
    if meta.format_version not in FORMAT_VERSIONS:
        problems.append(f"format_version: store {meta.format_version}, this code reads {FORMAT_VERSIONS}")
    if tokenizer is not None:
        run_hash = tokenizer_hash(tokenizer)
        if run_hash != meta.tokenizer_hash:
            problems.append(f"tokenizer hash: store {meta.tokenizer_hash[:12]}, run {run_hash[:12]}")
        if chat_template == "":
            chat_template = getattr(tokenizer, "chat_template", None)
    if chat_template != "":
        run_template = chat_template_hash(chat_template)
        if run_template != meta.chat_template_hash:
            problems.append(f"chat template hash: store {str(meta.chat_template_hash)[:12]}, run {str(run_template)[:12]}")
    if k is not None and k > meta.k:
        problems.append(f"k: store has top-{meta.k}, run asks for top-{k}")
    if sequence_len is not None and meta.sequence_len is not None and sequence_len != meta.sequence_len:
        problems.append(f"sequence_len: store {meta.sequence_len}, run {sequence_len}")
    if problems:
        raise StoreMismatchError(
            f"offline teacher logits (teacher {meta.teacher!r}) do not match this run: "
            + "; ".join(problems)
            + ". Re-capture with the run's tokenizer, chat template and k (distill-data logits)."
        )


def _part_paths(root: Path) -> list[Path]:
    return sorted(root.glob("part-*.parquet"))


def read_meta(path: str | os.PathLike) -> StoreMeta:
    """The store's metadata (``meta.json`` of a store directory, or a part's key-value metadata)."""
    path = Path(path)
    try:
        if path.is_dir():
            return StoreMeta.from_json((path / META_FILE).read_text())
        import pyarrow.parquet as pq

        return StoreMeta.from_json(pq.read_schema(path).metadata[META_KEY])
    except StoreMismatchError as err:
        raise StoreMismatchError(f"{path}: {err}") from None


def positions_mask(labels) -> np.ndarray:
    """Captured positions of one example: ``mask[t] = labels[t+1] != -100`` (last position False)."""
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    mask[:-1] = labels[1:] != -100
    return mask


class StoreWriter:
    """Buffer captured rows and write them as self-contained part files.

    ``meta.json`` is created on first use; reopening a directory whose metadata differs from
    ``meta`` (other teacher, tokenizer, k, temperature, ...) raises instead of mixing captures.
    Every part's checksum is recorded in ``meta.json`` (``offline.checksums``), with ``command``
    (the command line that re-captures this shard) when given. A full disk raises
    ``DiskFullError`` (one line: the path, the free space, ``estimated_bytes`` when set) with the
    part being written removed; the parts already written stay and a re-run resumes after them.
    """

    def __init__(self, root: str | os.PathLike, meta: StoreMeta, shard: int = 0, num_shards: int = 1,
                 rows_per_part: int = 256, command: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta, self.rows_per_part, self.command = meta, rows_per_part, command
        self.estimated_bytes: int | None = None
        meta_path = self.root / META_FILE
        if meta_path.exists():
            differs = StoreMeta.from_json(meta_path.read_text()).same_capture(meta)
            if differs:
                raise StoreMismatchError(f"{self.root} holds a capture with different {', '.join(differs)}")
        else:
            tmp = meta_path.with_suffix(".tmp")
            with removed_on_failure(tmp, self.root):
                tmp.write_text(json.dumps(json.loads(meta.to_json()) | {CHECKSUMS_KEY: {}}, sort_keys=True))
                os.replace(tmp, meta_path)
        self.prefix = f"part-s{shard:03d}of{num_shards:03d}-"
        # after the highest sequence number, not the count: a part deleted to be re-captured leaves a gap
        seqs = [int(p.stem.rpartition("-")[2]) for p in self.root.glob(self.prefix + "*.parquet")
                if p.stem.rpartition("-")[2].isdigit()]
        self._seq = max(seqs, default=-1) + 1
        self._rows: list[dict] = []

    def add(self, input_ids, labels, ids: np.ndarray, values: np.ndarray, row_id: str | None = None) -> None:
        """Add one example's ``[n_positions, >=k]`` arrays at the captured positions (``stored_form``):
        top-k ids and log-probs, or for a sampled store the ``[n_positions, samples]`` draws and their
        log importance weights."""
        mask = positions_mask(labels)
        if len(ids) != mask.sum():
            raise ValueError(f"{len(ids)} captured positions but labels select {int(mask.sum())}")
        self._rows.append(dict(row_key=row_key(input_ids), row_id=None if row_id is None else str(row_id),
                               n_tokens=len(mask), mask=mask, stored=stored_form(self.meta, ids, values)))
        if len(self._rows) >= self.rows_per_part:
            self.flush()

    def flush(self) -> Path | None:
        if not self._rows:
            return None
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables, blobs = encode_part(self.meta, [r["stored"] for r in self._rows])
        table = pa.table({
            "row_key": pa.array([r["row_key"] for r in self._rows], pa.string()),
            "row_id": pa.array([r["row_id"] for r in self._rows], pa.string()),
            "n_tokens": pa.array([r["n_tokens"] for r in self._rows], pa.int32()),
            "n_positions": pa.array([int(r["mask"].sum()) for r in self._rows], pa.int32()),
            "positions": pa.array([np.packbits(r["mask"]).tobytes() for r in self._rows], pa.binary()),
            "topk": pa.array(blobs, pa.binary()),
        })
        file_meta = json.loads(self.meta.to_json()) | {"tables": json.loads(tables.to_json())}
        table = table.replace_schema_metadata({META_KEY: json.dumps(file_meta).encode()})
        path = self.root / f"{self.prefix}{self._seq:06d}.parquet"
        tmp = path.with_suffix(".tmp")
        with removed_on_failure(tmp, self.root, self.estimated_bytes):
            pq.write_table(table, tmp, compression={"row_key": "zstd", "row_id": "zstd", "positions": "zstd",
                                                    "n_tokens": "zstd", "n_positions": "zstd", "topk": "none"},
                           row_group_size=16)
            record_part(self.root, tmp, path.name, self.command)
            os.replace(tmp, path)
        self._seq += 1
        self._rows = []
        return path

    def close(self) -> None:
        self.flush()


def stored_keys(root: str | os.PathLike) -> set[str]:
    """Row keys already written under ``root`` (complete parts only): what a resumed capture skips."""
    import pyarrow.parquet as pq

    root = Path(root)
    keys: set[str] = set()
    for path in _part_paths(root) if root.exists() else []:
        keys.update(pq.read_table(path, columns=["row_key"]).column(0).to_pylist())
    return keys


@dataclass
class StoredRow:
    """One example's targets: ``ids``/``logprobs`` ``[n_positions, k]`` at the ``mask`` positions
    (a sampled store: ``log p̂``, the estimate of ``offline.sampled``)."""

    mask: np.ndarray
    ids: np.ndarray
    logprobs: np.ndarray
    row_id: str | None = None


class TopKStore:
    """Random access to a store by row key; decodes one Parquet row group at a time (LRU cached).

    Each part is checked against its recorded checksum (``offline.checksums``) before its first row
    group is decoded, and when it cannot be opened: a corrupt part raises ``CorruptStoreError``.
    """

    def __init__(self, root: str | os.PathLike, cache_row_groups: int = 8):
        import pyarrow.parquet as pq

        self.root = Path(root)
        self.meta = read_meta(self.root)
        self._recorded = json.loads((self.root / META_FILE).read_text()) if self.root.is_dir() else {}
        self._files, self._tables, self._index, self._verified = [], [], {}, set()
        self._paths = _part_paths(self.root)
        for fi, path in enumerate(self._paths):
            try:
                pf = pq.ParquetFile(path)
                part_meta = json.loads(pf.schema_arrow.metadata[META_KEY])
            except Exception:  # an unreadable footer: name the corrupt part if its checksum says so
                verify_part(self.root, path.name, self._recorded)
                raise
            differs = StoreMeta.from_json(json.dumps(part_meta)).same_capture(self.meta)
            if differs:
                raise StoreMismatchError(f"{path.name} was captured with different {', '.join(differs)}")
            self._files.append(pf)
            self._tables.append(CodecTables(**part_meta["tables"]))
            keys = pf.read(columns=["row_key"]).column(0).to_pylist()
            rg_rows = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            starts = np.cumsum([0] + rg_rows)
            for r, key in enumerate(keys):
                rg = int(np.searchsorted(starts, r, side="right") - 1)
                self._index[key] = (fi, rg, r - int(starts[rg]))
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_row_groups

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def keys(self):
        return self._index.keys()

    def _verify(self, fi: int) -> None:
        if fi not in self._verified:
            verify_part(self.root, self._paths[fi].name, self._recorded)
            self._verified.add(fi)

    def _row_group(self, fi: int, rg: int):
        key = (fi, rg)
        self._verify(fi)
        if key not in self._cache:
            self._cache[key] = self._files[fi].read_row_group(rg).to_pydict()
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def get(self, key: str) -> StoredRow:
        if key not in self._index:
            for fi in range(len(self._paths)):  # a corrupt row_key column hides rows: name the part
                self._verify(fi)
            raise KeyError(
                f"row {key} is not in the offline logits store {self.root}: the training tokens differ from "
                "the captured ones (other dataset, sequence_len, template or tokenizer?) or the capture is incomplete"
            )
        fi, rg, r = self._index[key]
        cols = self._row_group(fi, rg)
        n_tokens, n_pos = cols["n_tokens"][r], cols["n_positions"][r]
        mask = np.unpackbits(np.frombuffer(cols["positions"][r], dtype=np.uint8), count=n_tokens).astype(bool)
        ids, lps = decode_row(self.meta, cols["topk"][r], n_pos, self._tables[fi])
        return StoredRow(mask=mask, ids=ids, logprobs=lps, row_id=cols["row_id"][r])

    def get_by_ids(self, input_ids) -> StoredRow:
        return self.get(row_key(input_ids))
