"""What each token id of a tokenizer stands for, as bytes, and where two vocabularies agree.

``token_bytes(tokenizer)`` maps every id to the UTF-8 bytes it contributes to the text, read from the
fast (Rust) tokenizer's own model and decoder — two conventions cover the families in use:

    byte-level BPE  (GPT-2, Llama 3, Qwen)        each character of the token is a stand-in for one
                                                   byte (``Ġ`` = space); see ``byte_alphabet``
    SentencePiece   (Llama 2, Mistral, Gemma)     ``▁`` is a space, ``<0xNN>`` a raw byte (byte
                                                   fallback), any other token its UTF-8 text

Added (special) tokens are their literal content (``<|im_start|>``). The student's byte offsets
are the cumulative byte lengths of the ids it trains on (exact: no re-tokenisation that could split
differently from Axolotl's ids); the teacher's come from its offset mapping (``spans``).

``vocab_agreement(student, teacher)`` pairs the ids whose byte strings are equal — ``▁the`` and
``Ġthe`` are both b" the" — one-to-one: where one tokenizer has several ids for the same bytes (a
regular token and its byte-fallback spelling), the regular one wins, since it is the one that
tokenizer emits. It is built once per tokenizer pair and cached (a 150k vocabulary takes ~0.3 s).
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

import numpy as np
import torch

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_CACHE: dict[tuple, object] = {}  # keyed by id(tokenizer): a tokenizer is built once per process


def _byte_stand_ins() -> tuple[list[int], list[str]]:
    """GPT-2's table: byte ``values[i]`` is written as the character ``chars[i]``."""
    values = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = values[:], 0
    for b in range(256):
        if b not in values:
            values.append(b)
            codes.append(256 + extra)
            extra += 1
    return values, [chr(c) for c in codes]


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2/Qwen convention)."""
    return _byte_stand_ins()[1]


def byte_decoder() -> dict[str, int]:
    """Stand-in character → the byte it writes (``Ġ`` → 0x20)."""
    values, chars = _byte_stand_ins()
    return dict(zip(chars, values))


def tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def backend_json(tokenizer) -> dict:
    """The Rust tokenizer's serialised pipeline; a slow (Python) tokenizer has none and no offsets."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"tokenizer {tokenizer_name(tokenizer)!r} ({type(tokenizer).__name__}) is not a fast tokenizer: it gives "
            "no offset mapping, which cross-tokenizer alignment needs (install `tokenizers` and load it with use_fast=True)"
        )
    return json.loads(backend.to_str())


def _is_byte_level(spec: dict) -> bool:
    decoder = spec.get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(part.get("type") == "ByteLevel" for part in parts)


def token_bytes(tokenizer) -> list[bytes]:
    """``out[id]`` = the bytes token ``id`` contributes to the text (cached per tokenizer object)."""
    key = ("bytes", id(tokenizer), len(tokenizer))
    if key in _CACHE:
        return _CACHE[key]  # type: ignore[return-value]
    spec = backend_json(tokenizer)
    added = {t["id"]: t["content"] for t in spec.get("added_tokens", [])}
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    out: list[bytes] = [b""] * size
    if _is_byte_level(spec):
        inverse = byte_decoder()
        for token, i in vocab.items():
            out[i] = token.encode() if i in added else bytes(inverse[c] for c in token if c in inverse)
    else:
        for token, i in vocab.items():
            fallback = _BYTE_FALLBACK.match(token)
            out[i] = (token.encode() if i in added else bytes([int(fallback.group(1), 16)]) if fallback
                      else token.replace("▁", " ").encode())
    _CACHE[key] = out
    return out


def token_lengths(tokenizer) -> np.ndarray:
    """[V] byte length of every id (the student's offsets are their cumulative sums)."""
    key = ("lengths", id(tokenizer), len(tokenizer))
    if key not in _CACHE:
        _CACHE[key] = np.fromiter((len(b) for b in token_bytes(tokenizer)), dtype=np.int64)
    return _CACHE[key]  # type: ignore[return-value]


class VocabMap(NamedTuple):
    """Ids whose byte strings agree: ``student[i]`` and ``teacher[i]`` spell the same bytes.

    ``student_other`` / ``teacher_other`` are the remaining ids of each side (below its vocabulary
    size), which the hybrid loss compares by sorted probabilities (ULD).
    """

    student: torch.Tensor
    teacher: torch.Tensor
    student_other: torch.Tensor
    teacher_other: torch.Tensor


def _canonical_ids(tokenizer, vocab_size: int) -> dict[bytes, int]:
    """bytes → the id that tokenizer emits for them: regular tokens before byte-fallback ``<0xNN>``
    spellings, then the lowest id."""
    pieces = token_bytes(tokenizer)
    fallback = {i for token, i in tokenizer.get_vocab().items() if _BYTE_FALLBACK.match(token)}
    best: dict[bytes, tuple[int, int]] = {}
    for i, piece in enumerate(pieces[:vocab_size]):
        if not piece:
            continue
        rank = (i in fallback, i)
        if piece not in best or rank < best[piece]:
            best[piece] = rank
    return {piece: i for piece, (_, i) in best.items()}


def vocab_agreement(student_tokenizer, teacher_tokenizer, student_vocab: int | None = None,
                    teacher_vocab: int | None = None) -> VocabMap:
    """The one-to-one map of ids with equal byte strings (cached per pair of tokenizer objects)."""
    s_size = student_vocab or len(student_tokenizer)
    t_size = teacher_vocab or len(teacher_tokenizer)
    key = ("map", id(student_tokenizer), id(teacher_tokenizer), s_size, t_size)
    if key in _CACHE:
        return _CACHE[key]  # type: ignore[return-value]
    student = _canonical_ids(student_tokenizer, s_size)
    teacher = _canonical_ids(teacher_tokenizer, t_size)
    pairs = sorted((i, teacher[piece]) for piece, i in student.items() if piece in teacher)
    s_ids = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    t_ids = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    s_rest, t_rest = torch.ones(s_size, dtype=torch.bool), torch.ones(t_size, dtype=torch.bool)
    s_rest[s_ids], t_rest[t_ids] = False, False
    out = VocabMap(s_ids, t_ids, s_rest.nonzero().squeeze(1), t_rest.nonzero().squeeze(1))
    _CACHE[key] = out
    return out
