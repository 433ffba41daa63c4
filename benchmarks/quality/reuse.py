"""Students the benchmark need not train: the same recipe on the same training data as another's.

Sequence-level KD trains on the teacher's exported trajectories; once the teacher is exact, those are
token for token the ground truth, and its student is SFT's (the same init, seed, budget and data).
Rather than assume it, the recipes are compared: a run whose recipe equals an earlier run's of the
same seed in every key but ``output_dir``, and whose dataset files hold the same training rows,
reuses that run's student and scores (``quality.run``). A dataset's training rows are, in order,
the values of the field the recipe trains on (``field_messages``, default ``messages``, of the
``chat_template`` type): its other keys (``id``, ``answer``, ``source``...) are never read, so an
exported file that orders or names them differently still trains the same student.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def training_rows(path: Path, dataset: dict) -> list:
    """What a ``chat_template`` dataset entry trains on: each row's messages field, in file order."""
    if dataset.get("type") != "chat_template":
        raise ValueError(f"{path}: only chat_template datasets are compared (got {dataset.get('type')!r})")
    field = dataset.get("field_messages", "messages")
    return [json.loads(line)[field] for line in path.read_text().splitlines() if line.strip()]


def training_key(recipe: Path, cache: dict[Path, list] | None = None) -> str:
    """The recipe as the training sees it: every key but ``output_dir``, each dataset's ``path``
    replaced by its training rows (``cache``: rows already read, by path)."""
    cache = {} if cache is None else cache
    cfg = yaml.safe_load(recipe.read_text())
    cfg.pop("output_dir")
    datasets = []
    for d in cfg.pop("datasets"):
        path = Path(d["path"])
        if path not in cache:
            cache[path] = training_rows(path, d)
        datasets.append({**{k: v for k, v in d.items() if k != "path"}, "rows": cache[path]})
    return json.dumps({**cfg, "datasets": datasets}, sort_keys=True)


def same_students(runs: dict[str, tuple[str, Path, int]]) -> dict[str, str]:
    """``{run: earlier run}`` for each run of ``runs`` (``{run: (row, recipe, steps)}``, in queue
    order) whose training is identical to an earlier one's (:func:`training_key`): the first of each
    kind is trained, the others reuse it."""
    first: dict[str, str] = {}
    same, cache = {}, {}
    for name, (_, recipe, _) in runs.items():
        key = training_key(recipe, cache)
        if key in first:
            same[name] = first[key]
        else:
            first[key] = name
    return same
