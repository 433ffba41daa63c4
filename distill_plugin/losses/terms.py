"""Loss terms: named, weighted components, each term consuming one kind of teacher signal.

A term returns per-token *sums*; the trainer divides by N (the optimizer step's supervised-token
count, ``num_items_in_batch``) and logs every component c as ``<c.name>_loss`` (or its ``logged_as``)
= Σ_i value_{c,i} / N:

    loss = (Σ_terms Σ_c weight_c · Σ_i value_{c,i}) / N

Logit-level components share the student's [chunk, V] logits, so they are one term:
``LogitTerms`` computes KD (teacher distribution vs student, any divergence) and CE (hard labels)
in a single fused chunk pass — for forward KL at T = 1 from a single log_softmax. Their weights
live in the term because the fused pass forms d(Σ_c weight_c · value_c)/d logits on the spot (one
fp32 grad-weight buffer for all components). A non-logit term (hidden-state MSE, say) is another
``LossTerm`` with its own components and its own signal kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, Sequence

import torch

from ..signals import DenseLogits, StudentRows, TopKLogprobs
from .kd import KDSettings, online_kd_loss
from .sampled import sampled_kd_loss
from .topk import TAIL_MODES, topk_kd_loss


class Component(NamedTuple):
    name: str
    weight: float
    logged_as: str | None = None  # the metric's name; default `<name>_loss` (eval: `eval_` + it)


class TermOutput(NamedTuple):
    objective: torch.Tensor  # Σ_c weight_c · Σ_i value_{c,i}, differentiable
    sums: torch.Tensor  # [len(components)] Σ_i value_{c,i}, detached


class LossTerm(Protocol):
    components: tuple[Component, ...]
    accepts: tuple[type, ...]  # teacher signal kinds it can consume (one of them); () = none needed

    def __call__(self, student: StudentRows, signal: Any) -> TermOutput: ...


@dataclass(frozen=True)
class LogitTerms:
    """``kd`` (weight kd_weight·T², or kd_weight without ``temperature_squared``) and ``ce``
    (weight ce_weight) from one fused chunk pass; see ``losses.kd``, ``losses.topk`` and
    ``losses.sampled`` (a sampled store's signal)."""

    settings: KDSettings = KDSettings()
    tail: str = "bucket"  # top-k signals only: see ``losses.topk``
    chunk_size: int | None = None
    accepts = (DenseLogits, TopKLogprobs)

    def __post_init__(self):
        if self.tail not in TAIL_MODES:
            raise ValueError(f"topk_tail must be one of {TAIL_MODES}, got {self.tail!r}")

    @property
    def components(self) -> tuple[Component, ...]:
        return Component("kd", self.settings.kd_scale), Component("ce", self.settings.ce_weight)

    def __call__(self, student: StudentRows, signal: DenseLogits | TopKLogprobs) -> TermOutput:
        head, common = student.head, dict(normalizer=1.0, chunk_size=self.chunk_size)
        if isinstance(signal, DenseLogits):
            teacher = signal.head
            vocab = min(head.weight.shape[0], teacher.weight.shape[0], signal.vocab_size or 1 << 62)
            out = online_kd_loss(
                student.rows, head.weight, signal.rows.to(teacher.weight.dtype), teacher.weight, student.targets,
                self.settings, vocab_size=vocab, student_bias=head.bias, teacher_bias=teacher.bias,
                student_softcap=head.softcap, teacher_softcap=teacher.softcap, **common,
            )
        elif isinstance(signal, TopKLogprobs) and signal.sampled:
            out = sampled_kd_loss(
                student.rows, head.weight, signal.ids, signal.logprobs, student.targets, self.settings,
                signal.capture_temperature, student_bias=head.bias, student_softcap=head.softcap, **common,
            )
        elif isinstance(signal, TopKLogprobs):
            out = topk_kd_loss(
                student.rows, head.weight, signal.ids, signal.logprobs, student.targets, self.settings, self.tail,
                signal.capture_temperature, student_bias=head.bias, student_softcap=head.softcap, **common,
            )
        else:
            raise TypeError(f"LogitTerms accepts {[k.__name__ for k in self.accepts]}, got {type(signal).__name__}")
        return TermOutput(out.loss, torch.stack([out.kd, out.ce]))


def component_names(terms: Sequence[LossTerm]) -> tuple[str, ...]:
    """Every component's name, in order; a name used twice is an error (the logs would collide)."""
    names = tuple(c.name for term in terms for c in term.components)
    if len(set(names)) != len(names):
        raise ValueError(f"loss components must have distinct names, got {names}")
    return names


def metric_names(terms: Sequence[LossTerm]) -> tuple[str, ...]:
    """The logged name of every component, in ``component_names`` order."""
    component_names(terms)  # refuses duplicates
    return tuple(c.logged_as or f"{c.name}_loss" for term in terms for c in term.components)


def check_signals(terms: Sequence[LossTerm], produced: Sequence[type]) -> None:
    """At setup: every term that needs a teacher signal accepts one the teacher source produces."""
    for term in terms:
        if term.accepts and not set(term.accepts) & set(produced):
            raise ValueError(
                f"loss term {type(term).__name__} ({', '.join(component_names([term]))}) needs one of "
                f"{[k.__name__ for k in term.accepts]}; the teacher source produces {[k.__name__ for k in produced]}"
            )


def run_terms(terms: Sequence[LossTerm], student: StudentRows, signals: dict[type, Any]) -> TermOutput:
    """Σ of the terms' objectives and all components' sums, concatenated in ``component_names`` order."""
    outputs = []
    for term in terms:
        kind = next((k for k in term.accepts if k in signals), None)
        outputs.append(term(student, signals[kind] if kind is not None else None))
    return TermOutput(sum(o.objective for o in outputs), torch.cat([o.sums for o in outputs]))
