"""Which student hidden state is compared with which teacher hidden state.

Hidden-state indices follow ``output_hidden_states=True`` of a model with L decoder layers:

    0          the embedding output (the input of decoder layer 0)
    h, 0<h<L   the output of decoder layer h-1 (the input of decoder layer h)
    L          the final hidden state: the last layer's output after the final norm, i.e. the
               lm_head's input

A map is a tuple of pairs ``(student index, teacher index)``; ``hidden_layers`` spells it as

    uniform:N  N pairs evenly spaced over both depths, ending at the final hidden states:
               (⌊j·L_s/N⌋, ⌊j·L_t/N⌋) for j = 1..N. A 28-layer student and a 64-layer
               teacher with uniform:4 give (7, 16), (14, 32), (21, 48), (28, 64).
    last:N     the last N hidden states of each model, paired from the top:
               (L_s-N+j, L_t-N+j) for j = 1..N.
    [[s, t], ...]  explicit pairs, each index in [0, L] of its model.

N must be between 1 and the smaller depth (N > L_s would pair one student state with several
teacher states); every map is checked against both depths when training starts.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Strict

Pairs = tuple[tuple[int, int], ...]
# The type of a layer-map key: YAML's [[s, t], ...] arrives as lists, which strict fields refuse as
# tuples, and a validated block dumped and validated again (Axolotl's loader, then the plugin) holds
# tuples where the field says list; the key's validator stores ``as_field(check_spec(...))``.
LayerSpec = str | Annotated[list[Annotated[tuple[int, int], Strict(False)]], Strict(False)]
_SPEC = re.compile(r"^(uniform|last):(\d+)$")


def check_spec(spec: str | list, key: str = "hidden_layers") -> str | Pairs:
    """Config-time check of a layer map (depths unknown yet): the syntax and N ≥ 1. ``key`` is the
    ``distill:`` key named in errors (``hidden_layers``, or ``attention_layers``: the same syntax)."""
    if isinstance(spec, str):
        match = _SPEC.match(spec.strip())
        if not match or int(match.group(2)) < 1:
            raise ValueError(f"distill.{key}: expected `uniform:N`, `last:N` (N ≥ 1) or [[student, teacher], ...], got {spec!r}")
        return spec.strip()
    pairs = tuple((int(s), int(t)) for s, t in spec)
    if not pairs or any(s < 0 or t < 0 for s, t in pairs):
        raise ValueError(f"distill.{key}: pairs must be a non-empty list of non-negative [student, teacher] indices, got {spec!r}")
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"distill.{key}: pair listed twice in {spec!r}")
    return pairs


def as_field(spec: str | Pairs) -> str | list[tuple[int, int]]:
    """A checked spec as its ``LayerSpec`` field holds it (pairs as a list)."""
    return spec if isinstance(spec, str) else list(spec)


def resolve(spec: str | Pairs, student_depth: int, teacher_depth: int, key: str = "hidden_layers") -> Pairs:
    """The pairs of ``spec`` for models with ``student_depth`` / ``teacher_depth`` decoder layers."""
    spec = check_spec(spec, key)
    if not isinstance(spec, str):
        for s, t in spec:
            if s > student_depth or t > teacher_depth:
                raise ValueError(
                    f"distill.{key}: pair [{s}, {t}] is out of range; indices go from 0 (embeddings) to "
                    f"{student_depth} for the student and {teacher_depth} for the teacher (their decoder-layer counts)"
                )
        return spec
    kind, n = spec.split(":")
    n = int(n)
    if n > min(student_depth, teacher_depth):
        raise ValueError(
            f"distill.{key}: {spec} asks for {n} pairs but the student has {student_depth} and the "
            f"teacher {teacher_depth} decoder layers; N must be at most {min(student_depth, teacher_depth)}"
        )
    if kind == "uniform":
        return tuple((j * student_depth // n, j * teacher_depth // n) for j in range(1, n + 1))
    return tuple((student_depth - n + j, teacher_depth - n + j) for j in range(1, n + 1))
