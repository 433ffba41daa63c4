"""Exceptions shared across layers (defined low so that any module may raise or catch them)."""

from __future__ import annotations


class SetupError(ValueError):
    """A user error found before training starts; its message is one line naming the key."""
