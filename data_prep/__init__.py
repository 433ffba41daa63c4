"""R1-style data preparation: generate → verify → filter → export (``distill-data``).

Each stage is a Python function and a CLI verb: :func:`data_prep.generate.generate`,
:func:`data_prep.verify.verify`, :func:`data_prep.filters.filter_rows`,
:func:`data_prep.export.export`, :func:`data_prep.pipeline.run_pipeline`; see docs/data_prep.md.
"""
