"""The embedded demo: tiny teacher, then SFT vs logit-KD students through ``axolotl.cli.train``.

``python -m distill_plugin.demo [--out DIR] [--quick]`` or the ``distill-demo`` console script.
"""

from __future__ import annotations


def main() -> None:
    """Console-script entry point (``distill-demo``)."""
    from .__main__ import app

    app()
