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

``next_byte_classes(student, teacher)`` gives every id of both sides the first byte it writes
(``▁the`` and ``Ġthe`` both start with b" "): the hybrid loss compares the two next-byte
distributions. Built once per tokenizer pair and cached.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

import numpy as np
import torch

from ..signals import NUM_BYTE_CLASSES

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


OTHER = 256  # the class of an id that writes no bytes, or starts with a byte no id of the other side does


class NextByteClasses(NamedTuple):
    """``student[i]`` / ``teacher[j]``: the first byte of the text id i / j writes, or ``OTHER``.

    An id's first byte is the one event both tokenizers' next-token distributions determine alike:
    "the text goes on with byte c" has probability Σ_{v: first byte of v = c} p(v) on either side,
    whatever the two vocabularies' merges. Equal *strings* are not equal events: a byte-level
    teacher's ``5`` means "the text goes on with 5", a student's ``5`` means "the token 5 and not the
    longer ``5;`` the student's tokenizer writes for that text".

    A byte only one side's ids start with (a tokenizer without byte fallback) joins ``OTHER``, so
    no byte class has ids on one side only (the divergence would put an infinite price on it).
    """

    student: torch.Tensor
    teacher: torch.Tensor


def first_bytes(tokenizer, vocab_size: int | None = None) -> torch.Tensor:
    """[vocab_size] the first byte each id writes (``OTHER`` for none); special tokens count as
    their literal text, as the alignment reads them."""
    size = vocab_size or len(tokenizer)
    pieces = token_bytes(tokenizer)[:size]
    out = torch.full((size,), OTHER, dtype=torch.long)
    out[: len(pieces)] = torch.tensor([piece[0] if piece else OTHER for piece in pieces], dtype=torch.long)
    return out


def _used(classes: torch.Tensor) -> torch.Tensor:
    """[NUM_BYTE_CLASSES] bool: which classes some id falls in."""
    return torch.zeros(NUM_BYTE_CLASSES, dtype=torch.bool).index_fill(0, classes, True)


def next_byte_classes(student_tokenizer, teacher_tokenizer, student_vocab: int | None = None,
                      teacher_vocab: int | None = None) -> NextByteClasses:
    """Both sides' first-byte classes (cached per pair of tokenizer objects)."""
    key = ("classes", id(student_tokenizer), id(teacher_tokenizer), student_vocab, teacher_vocab)
    if key not in _CACHE:
        student, teacher = first_bytes(student_tokenizer, student_vocab), first_bytes(teacher_tokenizer, teacher_vocab)
        both = _used(student) & _used(teacher)
        _CACHE[key] = NextByteClasses(torch.where(both[student], student, OTHER), torch.where(both[teacher], teacher, OTHER))
    return _CACHE[key]  # type: ignore[return-value]


def tokenizer_difference(tokenizer, other) -> str | None:
    """None when both map the same strings to the same ids; else ``"A vs B tokens; first differences: …"``."""
    vocab, other_vocab = tokenizer.get_vocab(), other.get_vocab()
    if vocab == other_vocab:
        return None
    differing = sorted(set(vocab.items()) ^ set(other_vocab.items()), key=lambda kv: kv[1])[:5]
    return f"{len(other_vocab)} vs {len(vocab)} tokens; first differences: {differing}"
