"""Regime ``unlabelled`` (issue 26, regime 2): the teacher labels prompts nobody has answers for (R1-style).

Column addition (``distill_plugin.testing.addition``), five sets of problems, disjoint but for the first:

* ``teacher_train`` (``n_teacher_train``): the teacher's labelled set (the certain regime's training
  split at the default sizes, so the same teacher);
* ``train`` (``n_train``, small): the students' labelled set, with worked solutions, the first
  ``n_train`` problems of the teacher's: what SFT sees;
* ``pool`` (``n_pool``, large): prompts only, ``{"id", "prompt"}``, no answer, no assistant turn;
* ``valid`` and ``heldout``: scored by exact match.

The pool rows (``seq_kd_pool``, ``fkl_pool``, ``topk_pool``, ``gkd_pool`` in ``methods.METHODS``)
train on the teacher's trajectories over the pool, written once by the real CLI
(:func:`pool_trajectories`): ``distill-data generate`` (``seqkd_samples`` samples per prompt) →
``verify --majority`` (the pool has no answers: a prompt's pseudo-answer is the most common final
answer among its samples, a tie leaves it unverifiable; the samples that agree with it count as
correct) → ``filter`` (majority-correct only) → ``export`` (the first agreeing sample per prompt).
On-policy GKD (``gkd_pool``) trains on that same exported file: the student samples its completions
after each exported row's prompt (the pool prompts that kept a trajectory) on a λ = 0.5 share of the
steps, and the other steps use the teacher's trajectory as the off-policy data.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

# The exported trajectories depend on these (and on the shared teacher and pool: a change of those
# rebuilds all of OUT/shared).
POOL_KEYS = ("seqkd_samples", "seqkd_temperature", "seqkd_keep_incorrect")
POOL_WORK = "seq_kd_pool"  # the folder under OUT/shared that holds gen/, ver/, kept/, train.jsonl
_POOL_LOCK = threading.Lock()  # methods.prepare_all builds several methods at once, in threads


def pool_rows(rows: list[dict]) -> list[dict]:
    """Addition rows reduced to what an unlabelled pool holds: ``{"id", "prompt"}`` (the user turn)."""
    return [{"id": r["id"], "prompt": r["messages"][0]["content"]} for r in rows]


def pool_data(sh) -> Path:
    """The exported trajectories every pool row trains on."""
    return sh.work(POOL_WORK) / "train.jsonl"


def pool_trajectories(sh, s) -> dict:
    """Build the pool's trajectories once (module docstring), whichever pool method asks first; the
    others wait for it. ``OUT/shared/seq_kd_pool/exported.json`` holds the settings it was built with
    (another setting rebuilds it), each stage's seconds and their ``total`` (returned: ``seq_kd_pool``
    reports the total as its prepare time, the other pool rows only their own work) and the rows it kept."""
    from .methods import sampled_answer_budget, trajectories

    work, key = sh.work(POOL_WORK), {k: getattr(s, k) for k in POOL_KEYS}
    marker = work / "exported.json"
    with _POOL_LOCK:
        if marker.exists() and json.loads(marker.read_text())["settings"] == key:
            return json.loads(marker.read_text())["seconds"]
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        # The pool has no answers to size the budget from: the longest possible answer + 16 tokens.
        seconds = trajectories(sh, s, work, sh.data("pool"), sampled_answer_budget(s), majority=True)
        seconds["total"] = sum(seconds.values())
        marker.write_text(json.dumps({"settings": key, "seconds": seconds, "kept": kept_count(work)}))
        return seconds


def kept_count(work: Path) -> dict:
    """Prompts in, rows verified by a majority, rows exported (what the pool turned into)."""
    ver = [json.loads(line) for line in (work / "ver" / "verified.jsonl").read_text().splitlines() if line.strip()]
    exported = sum(1 for line in (work / "train.jsonl").read_text().splitlines() if line.strip())
    return {"prompts": len(ver), "majority": sum(1 for r in ver if r.get("pseudo_answer") is not None),
            "exported": exported}


def prepare_from_pool(sh, s) -> float:
    """The prepare of a pool row that only trains on the trajectories: they exist, no work of its own."""
    pool_trajectories(sh, s)
    return 0.0


def pool_topk(sh, s) -> float:
    """Offline top-k KD over the pool: the teacher's top-``top_k`` log-probs of the exported
    trajectories; returns the capture's seconds."""
    import time

    from .methods import capture_topk

    pool_trajectories(sh, s)
    start = time.perf_counter()
    capture_topk(sh, s, sh.work("topk_pool"), pool_data(sh))
    return time.perf_counter() - start
