"""Riding out a served teacher's outage (``distill.teacher_server.max_outage_s``).

A request that fails the way a restarting server fails (connection refused or dropped, timeout,
408/409/429/5xx, after the HTTP layer's own retries) is tried again with capped exponential backoff
until the outage, timed from the start of the first failing attempt and shared by every request of
the source, has lasted ``max_outage_s``; then ``TeacherOutage`` is raised. Any success ends the
outage. While it lasts, one line is logged every ``log_every_s`` ("teacher unreachable for 40 s;
retrying until 600 s"), and one when the server answers again. Other failures (400, 401, 404, an
unparsable answer) are not outages: they raise at once (the source asks again a few times for an
answer it cannot parse, then raises ``MalformedAnswers``).

The trainer (``trainer.DistillTrainerMixin.training_step``) turns ``TeacherOutage`` (and
``MalformedAnswers``: both are ``TeacherStopped``) into a
checkpoint of the last completed optimizer step and exit code 2 (``stop_for_outage``). Under DDP
the processes agree on it per teacher batch (``agree_on_outage``), so all stop at the same step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..generation.base import GenerationError
from ..generation.openai_http import RETRY_STATUS

LOG = logging.getLogger("axolotl.distill_plugin")
T = TypeVar("T")


class TeacherStopped(GenerationError):
    """A served teacher that training cannot go on with: the trainer saves the last step and stops."""

    url: str


class TeacherOutage(TeacherStopped):
    """The served teacher stayed unreachable for the whole outage budget."""

    def __init__(self, url: str, seconds: float, budget: float, cause: GenerationError):
        super().__init__(f"{url}: teacher unreachable for {seconds:.0f} s, the outage budget "
                         f"(distill.teacher_server.max_outage_s: {budget:g}) is spent; last error: {cause}", cause.status)
        self.url, self.seconds, self.budget = url, seconds, budget


class MalformedAnswers(TeacherStopped):
    """The served teacher answered, but not with the top-k log-probs asked for, ``attempts`` times in a row."""

    def __init__(self, url: str, attempts: int, last: str):
        super().__init__(f"{url}: a malformed answer {attempts} times in a row (last: {last}); is it a "
                         "vLLM-compatible server (prompt_logprobs or echo + logprobs)?", "unparsable")
        self.url, self.attempts = url, attempts


def is_outage(err: GenerationError) -> bool:
    """A failure a restarting server produces: connection/timeout errors and retryable statuses."""
    if isinstance(err, TeacherOutage):
        return False
    if isinstance(err.status, int):
        return err.status in RETRY_STATUS
    return err.status not in (None, "unparsable")  # httpx exception names: ConnectError, ReadTimeout, ...


class OutageBudget:
    """Retries ``attempt`` through an outage of up to ``max_outage_s``; see the module docstring."""

    def __init__(self, url: str, max_outage_s: float, backoff_s: float = 1.0, backoff_max_s: float = 30.0,
                 log_every_s: float = 20.0, clock: Callable[[], float] = time.monotonic):
        self.url, self.max_outage_s = url, max_outage_s
        self.backoff_s, self.backoff_max_s, self.log_every_s, self.clock = backoff_s, backoff_max_s, log_every_s, clock
        self.since: float | None = None  # start of the current outage
        self._logged_at: float | None = None
        self.outages: list[float] = []  # durations of the outages ridden out

    def _log(self, now: float, err: GenerationError) -> None:
        if self._logged_at is None or now - self._logged_at >= self.log_every_s:
            self._logged_at = now
            LOG.warning("distill_plugin: teacher unreachable for %.0f s; retrying until %g s (%s)",
                        now - self.since, self.max_outage_s, err)

    async def run(self, attempt: Callable[[], Awaitable[T]]) -> T:
        delay = self.backoff_s
        while True:
            started = self.clock()
            try:
                result = await attempt()
            except GenerationError as err:
                if not is_outage(err):
                    raise
                now = self.clock()
                self.since = started if self.since is None else min(self.since, started)
                elapsed = now - self.since
                if elapsed >= self.max_outage_s:
                    raise TeacherOutage(self.url, elapsed, self.max_outage_s, err) from None
                self._log(now, err)
                await asyncio.sleep(min(delay, self.max_outage_s - elapsed + 0.01))
                delay = min(delay * 2, self.backoff_max_s)
                continue
            if self.since is not None:
                lasted = self.clock() - self.since
                self.since, self._logged_at = None, None
                self.outages.append(lasted)
                LOG.warning("distill_plugin: teacher %s answers again after %.0f s", self.url, lasted)
            return result


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agree_on_outage(err: TeacherStopped | None, url: str, budget: float, device) -> None:
    """Raise ``err`` on every process when any process got one (DDP), else return.

    Every process calls this once per teacher batch, so all of them stop at the same micro-batch of
    the same step and none is left waiting in a collective of the next one: one scalar all-reduce
    (whether any process saw an outage or malformed answers, and the longest outage) per batch, only
    when there are several processes."""
    if _distributed():
        import torch
        import torch.distributed as dist

        kind = 0.0 if err is None else 1.0 if isinstance(err, TeacherOutage) else 2.0
        seen = torch.tensor([kind, float(getattr(err, "seconds", 0.0))], dtype=torch.float64, device=device)
        dist.all_reduce(seen, op=dist.ReduceOp.MAX)
        if err is None and seen[0].item() == 1.0:
            err = TeacherOutage(url, seen[1].item(), budget, GenerationError("another process's requests", "peer"))
        elif err is None and seen[0].item() == 2.0:
            err = MalformedAnswers(url, 0, "in another process")
    if err is not None:
        raise err


def stop_for_outage(trainer, model, err: TeacherStopped) -> None:
    """Save the last completed optimizer step as a checkpoint (the Trainer's own format, resumable with
    ``resume_from_checkpoint``; every process takes part, then waits for the others), print one line
    naming the URL and how to resume (the main process), exit with code 2."""
    import os
    import sys

    step = trainer.state.global_step
    folder = os.path.join(trainer.args.output_dir, f"checkpoint-{step}")
    back = "once the server is back" if isinstance(err, TeacherOutage) else "once the server answers correctly"
    if step == 0:
        saved = f"no optimizer step was completed, nothing to save; run again {back}"
    else:
        trainer._save_checkpoint(model, trial=None)  # again if the schedule saved this step: same files
        if _distributed():
            import torch.distributed as dist

            dist.barrier()  # no process exits (ending the job) before the checkpoint is written
        saved = (f"saved step {step} as {folder}; resume {back} with "
                 f"`resume_from_checkpoint: {folder}` (or `axolotl train CONFIG --resume_from_checkpoint {folder}`)")
    if isinstance(err, TeacherOutage):
        what = f"{err.url} unreachable for {err.seconds:.0f} s (max_outage_s {err.budget:g})"
    else:
        what = " ".join(str(err).split())
    if trainer.args.should_save:
        print(f"distill_plugin: error: distill.teacher_server: {what}; {saved}", file=sys.stderr, flush=True)
    raise SystemExit(2)
