"""Exceptions shared across layers (defined low so that any module may raise or catch them)."""

from __future__ import annotations


class SetupError(ValueError):
    """A user error found before training starts; its message is one line naming the key."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
