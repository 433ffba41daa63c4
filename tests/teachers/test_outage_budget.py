"""``teachers.outage.OutageBudget`` on a fake clock: how long it retries, what it logs and when, which
failures are outages at all. (The loopback runs against a killed server: ``test_outage.py``.)"""

from __future__ import annotations

import asyncio
import logging

import pytest

from distill_plugin.generation.base import GenerationError, ServerUnreachable
from distill_plugin.teachers.outage import OutageBudget, TeacherOutage, is_outage

URL = "http://10.0.0.2:8000/v1"


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def logged():
    handler, logger = Records(), logging.getLogger("axolotl.distill_plugin")
    logger.addHandler(handler)
    old_level, logger.level = logger.level, logging.INFO
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def failing(clock, failures: int, step_s: float = 7.0, error=None):
    """An attempt that takes ``step_s`` of the fake clock and fails ``failures`` times, then answers."""
    calls = []

    async def attempt():
        calls.append(clock[0])
        clock[0] += step_s
        if len(calls) <= failures:
            raise error or ServerUnreachable(f"{URL}/completions: giving up after 6 attempts (ConnectError)", "ConnectError")
        return "answer"

    return attempt, calls


def budget(clock, max_outage_s):
    return OutageBudget(URL, max_outage_s, backoff_s=0.001, backoff_max_s=0.004, log_every_s=20.0, clock=lambda: clock[0])


def test_an_outage_shorter_than_the_budget_is_ridden_out_and_logged_every_20_s(logged):
    clock = [0.0]
    attempt, calls = failing(clock, failures=5)
    rides = budget(clock, 600)
    assert asyncio.run(rides.run(attempt)) == "answer" and len(calls) == 6
    waits = [line for line in logged if "unreachable" in line]
    assert [w.split(";")[0] for w in waits] == ["distill_plugin: teacher unreachable for 7 s",
                                                "distill_plugin: teacher unreachable for 28 s"]
    assert all("retrying until 600 s" in w for w in waits)
    assert logged[-1] == f"distill_plugin: teacher {URL} answers again after 42 s" and rides.outages == [42.0]
    assert rides.since is None  # the next failure starts a new outage


def test_the_budget_spent_raises_teacher_outage_naming_the_url(logged):
    clock = [0.0]
    attempt, calls = failing(clock, failures=10**6)
    with pytest.raises(TeacherOutage) as err:
        asyncio.run(budget(clock, 30).run(attempt))
    assert err.value.url == URL and err.value.seconds == 35.0 and err.value.budget == 30 and len(calls) == 5
    assert str(err.value).startswith(f"{URL}: teacher unreachable for 35 s, the outage budget (distill.teacher_server."
                                     "max_outage_s: 30) is spent; last error: ")


@pytest.mark.parametrize("status,outage", [("ConnectError", True), ("ReadTimeout", True), ("RemoteProtocolError", True),
                                           (503, True), (429, True), (400, False), (401, False), (404, False),
                                           ("unparsable", False)])
def test_which_failures_are_outages(status, outage):
    assert is_outage(GenerationError(f"{URL}: failed", status)) is outage


def test_a_refusal_is_raised_at_once(logged):
    clock = [0.0]
    attempt, calls = failing(clock, failures=1, error=GenerationError(f"{URL}/completions: HTTP 400: bad", 400))
    with pytest.raises(GenerationError, match="HTTP 400"):
        asyncio.run(budget(clock, 600).run(attempt))
    assert len(calls) == 1 and not logged
