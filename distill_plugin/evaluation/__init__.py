"""Evaluation: how close a student is to its teacher, and how accurate it is, on held-out data.

The stable API (``distill-data evaluate`` and ``benchmarks/bench_quality.py`` use these names):

* ``teacher_fit(student, sequences, teacher=None, *, pad_id, vocab_size, batch_size, chunk_size, desc)``
  → ``TeacherFit(student_ce, kl, teacher_ce, tokens, sequences)``: token-mean KL(teacher ‖ student),
  student CE and teacher CE on given completions, through the fused chunked loss (no [B, T, V]).
  ``sequences`` are ``ScoredSequence = (prompt_ids, completion_ids)``; ``encode_completion(tokenizer,
  messages, completion, stopped)`` makes one from a chat and a completion text, and
  ``completion_batch(sequences, pad_id)`` pads them (prompt and padding masked, row t predicts t+1).
  ``tokenizer_mismatch(a, b)``: why two tokenizers cannot be compared token by token, or None.
* ``pass_at_1(correct_per_prompt)`` → ``Estimate(mean, low, high, clusters, samples, confidence)``:
  the mean over prompts of each prompt's pass rate over its n samples, with a 95% Student-t interval
  over prompts (clustered by prompt); ``clustered_mean`` is the same for any per-prompt values.
* ``gap_closed(student, baseline, teacher, higher_is_better=True)``: the fraction of the
  baseline→teacher gap (e.g. SFT → teacher) the student closed.

* ``pair_stats(student, teacher, sequences, temperatures, *, pad_id, vocab_size, batch_size, chunk_size,
  divergence, beta, skew)`` → one ``PairStats`` per temperature: top-1 agreement, probability
  correlation, KL(teacher ‖ student), the named divergence and both entropies, row means through
  the fused chunked pass (``distill-data doctor`` and ``tune-temperature``);
  ``suggest_temperature(stats, max_entropy_fraction)``: the largest T whose teacher entropy ≤ f·log V.
* ``RunShape`` → ``estimate_memory`` → ``MemoryEstimate`` (bytes per component, ``gib``) and
  ``memory_options(run, budget_gib)``: what a run needs per GPU and the settings that lower it.

Formulas and conventions: ``teacher_fit``, ``stats``, ``pair_checks`` and ``memory`` module docstrings.
"""

from .memory import MemoryEstimate, RunShape
from .memory import estimate as estimate_memory
from .memory import options as memory_options
from .pair_checks import MAX_ENTROPY_FRACTION, PairStats, pair_stats, suggest_temperature
from .stats import Estimate, clustered_mean, gap_closed, pass_at_1
from .teacher_fit import ScoredSequence, TeacherFit, completion_batch, encode_completion, teacher_fit, tokenizer_mismatch

__all__ = ["MAX_ENTROPY_FRACTION", "Estimate", "MemoryEstimate", "PairStats", "RunShape", "ScoredSequence", "TeacherFit",
           "clustered_mean", "completion_batch", "encode_completion", "estimate_memory", "gap_closed", "memory_options",
           "pair_stats", "pass_at_1", "suggest_temperature", "teacher_fit", "tokenizer_mismatch"]
