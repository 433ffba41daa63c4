"""Testing and demo utilities — not part of the library's API.

Nothing in the library imports this package; the tests, the benchmarks and the embedded demo do.

* ``tiny``: a locally built tiny tokenizer and Qwen2-style models (no hub download).
* ``synthetic``: a briefly trained tiny teacher and LM-shaped synthetic top-k distributions.
* ``runs``: ``axolotl.cli.train`` in a subprocess: its environment, recipes, the logged steps.
"""
