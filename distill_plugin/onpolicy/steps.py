"""The trainer's side of on-policy distillation: generated micro-batches and their statistics.

``OnPolicySteps.batches(step, iterator, student, count)`` wraps the iterator the HF Trainer draws one
optimizer step's ``count`` micro-batches from (``Trainer.get_batch_samples``). For a step the schedule
marks on-policy, every micro-batch's completions are replaced by the student's samples; with
``seq_kd``, the other steps' completions are replaced by the teacher's samples; otherwise batches pass
through untouched (λ = 0 without ``seq_kd`` trains exactly the off-policy objective). The step's
micro-batches are read together and their prompts sampled in one rollout (``generation_batch_size``
prompts at most per call): a decode step costs about the same for 8 rows as for 32 when the forward
is small (per-operator overhead on CPU, memory-bound weights on GPU), so gradient accumulation does
not multiply the sampling time. The Trainer then counts the supervised tokens of the *new* labels
for the whole step (``num_items_in_batch``, summed over processes with
``average_tokens_across_devices``), so the loss stays normalised by the step's real token count.
The teacher source scores the new rows like any batch: the divergence is computed at every
completion position by the existing fused chunked loss.

Under DDP every process makes the same decision for a step without communicating (the schedule is
a pure function of (seed, step), and every process's ``global_step`` is the same), samples for its
own micro-batches' prompts on its unwrapped model (no collective inside generation, so processes
whose samples stop at different lengths cannot deadlock), and the Trainer's count of the generated
labels is then summed over processes, as for any batch.

Logged at each training log, over all processes: ``on_policy`` (fraction of optimizer steps so far
that sampled from the student), ``generated_completions`` (completions sampled since the last log),
``generated_length`` (mean tokens per sampled completion since the last log, stop token included;
absent when nothing was sampled) and ``generation_time_share`` (Σ seconds spent sampling / Σ wall
seconds since the last log, sums over processes).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import torch

from ..generation.base import SamplingParams, stop_ids
from ..generation.rollout import Rollout
from .batch import completion_length, replace_completions, split_prompts
from .schedule import StepSchedule


class OnPolicySteps:
    def __init__(self, schedule: StepSchedule, rollout: Rollout, tokenizer, eos_ids: list[int],
                 teacher: torch.nn.Module | None = None, seq_kd: bool = False,
                 generation_batch_size: int | None = None):
        if seq_kd and teacher is None:
            raise ValueError("distill.seq_kd needs an online teacher model to sample from")
        self.schedule, self.rollout, self.teacher, self.seq_kd = schedule, rollout, teacher, seq_kd
        self.generation_batch_size = generation_batch_size  # None: all of a step's rows in one call
        self.eos_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        self._seconds = self._tokens = self._completions = 0
        self._since = None  # start of the current logging window

    def sampler(self, step: int) -> str | None:
        """Who writes step ``step``'s completions: "student", "teacher" (seq_kd) or None (the data)."""
        if self.schedule.on_policy(step):
            return "student"
        return "teacher" if self.seq_kd else None

    def batches(self, step: int, iterator: Iterator[dict], student: torch.nn.Module, count: int) -> Iterator[dict]:
        """The step's ``count`` micro-batches (fewer where the epoch ends), regenerated when the
        schedule says so; nothing is read from ``iterator`` before the Trainer asks for the first."""
        if self._since is None:
            self._since = time.perf_counter()
        who = self.sampler(step)
        if who is None:
            return iterator
        model = student if who == "student" else self.teacher

        def regenerated():
            yield from self.generated_together(list(itertools.islice(iterator, count)), model)

        return regenerated()

    def generated_together(self, batches: list[dict], model: torch.nn.Module) -> list[dict]:
        """Each batch with each row's completion sampled from ``model`` after the row's prompt; the
        prompts of all batches are sampled together (``generation_batch_size`` at most per rollout
        call), and prompt j of the flattened list gets sample j."""
        start = time.perf_counter()
        split = [split_prompts(b["input_ids"], b["labels"], b.get("attention_mask"), b.get("position_ids"))
                 for b in batches]
        wanted = [(i, r) for i, prompts in enumerate(split) for r, p in enumerate(prompts) if p is not None]
        flat = [split[i][r] for i, r in wanted]
        size = self.generation_batch_size or max(len(flat), 1)
        samples = [s for at in range(0, len(flat), size) for s in self.rollout.sample(model, flat[at:at + size])]
        completions = [[None] * len(prompts) for prompts in split]
        for (i, r), sample in zip(wanted, samples):
            completions[i][r] = sample
            self._tokens += completion_length(sample, self.eos_ids)
        self._completions += len(wanted)
        out = [replace_completions(b, c, p, self.pad_id, self.eos_ids) for b, c, p in zip(batches, completions, split)]
        self._seconds += time.perf_counter() - start
        return out

    def logs(self, steps_done: int, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """The statistics of the module docstring; resets the window.

        ``reduce_sum`` sums a tensor over processes (the trainer's ``accelerator.reduce``); every
        process must then call ``logs`` together. Each process samples only its own prompts, so
        without the sum the log would show rank 0's share of the step only.
        """
        now = time.perf_counter()
        wall = now - (self._since if self._since is not None else now)
        window = torch.tensor([self._seconds, wall, self._tokens, self._completions], dtype=torch.float64)
        seconds, wall, tokens, completions = (reduce_sum(window) if reduce_sum is not None else window).tolist()
        out = {"on_policy": round(self.schedule.fraction_so_far(steps_done), 4),
               "generated_completions": int(completions),
               "generation_time_share": round(seconds / wall, 4) if wall > 0 else 0.0}
        if completions:
            out["generated_length"] = round(tokens / completions, 2)
        self._seconds = self._tokens = self._completions = 0
        self._since = now
        return out


def on_policy_steps(config, tokenizer, student: torch.nn.Module, teacher: torch.nn.Module | None, seed: int):
    """The ``OnPolicySteps`` of a ``DistillConfig``, or None when it samples nothing."""
    if not config.on_policy_fraction and not config.seq_kd:
        return None
    sampling = SamplingParams(n=1, temperature=config.generation_temperature, top_p=config.generation_top_p,
                              max_tokens=config.max_new_tokens)
    rollout = Rollout(tokenizer, sampling, backend=config.generation_backend, vllm_options=config.vllm_options)
    return OnPolicySteps(StepSchedule(config.on_policy_fraction, seed), rollout, tokenizer,
                         stop_ids(tokenizer, student), teacher=teacher, seq_kd=config.seq_kd,
                         generation_batch_size=config.generation_batch_size)
