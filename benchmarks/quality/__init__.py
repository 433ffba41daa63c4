"""The quality benchmark (``benchmarks/bench_quality.py``): regimes, methods, the run and its table.

``settings.py`` (one dataclass of every knob), ``regimes.py`` (task, teacher, scorer and expectation
of each regime), ``methods.py`` (one row per method: its data and ``distill:`` block), ``runner.py``
(the shared teacher, every method × seed through ``axolotl.cli.train``), ``reuse.py`` (students that
need not be trained twice) and ``table.py`` (mean ± standard error, paired differences, Markdown).
"""
