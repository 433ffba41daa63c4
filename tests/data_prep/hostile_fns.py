"""Module-level functions for the hard-timeout pool test (must be importable by workers)."""

import time


def slow_square(x):
    if x < 0:
        time.sleep(3600)  # hangs: the pool must kill and replace this worker
    if x == 999:
        raise ValueError("boom")
    return x * x
