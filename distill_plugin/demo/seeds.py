"""The demo over several seeds: per-metric mean, sample standard deviation and range, and the table.

For each model row (teacher, student SFT, student KD) and metric (exact match, CE, KL to the
teacher) over the n seeds: ``mean = Σx/n``, ``sd = sqrt(Σ(x-mean)²/(n-1))`` (0 for one seed), the
standard error of the mean ``se = sd/sqrt(n)``, and ``min``/``max``. ``kd_minus_sft`` is the per-seed exact-match gap (KD - SFT), so a reader sees on
how many seeds KD was ahead, not only the averages.
"""

from __future__ import annotations

import math

METRICS = ("exact_match", "heldout_ce", "kl_to_teacher")


def spread(values: list[float]) -> dict:
    """mean, sample sd (n-1; 0 for a single value), standard error sd/sqrt(n), min, max."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "se": sd / math.sqrt(n), "min": min(values), "max": max(values), "n": n}


def summarise(runs: list[dict]) -> dict:
    """Summary of per-seed ``results.json`` dicts (same models in the same order in each)."""
    models = [r["model"] for r in runs[0]["rows"]]
    summary: dict = {"seeds": [r["settings"]["seed"] for r in runs], "models": {}}
    for i, model in enumerate(models):
        rows = [r["rows"][i] for r in runs]
        assert all(row["model"] == model for row in rows), "per-seed results list different models"
        summary["models"][model] = {
            metric: spread([row[metric] for row in rows]) for metric in METRICS if rows[0][metric] is not None
        }
    by_name = [{row["model"]: row for row in r["rows"]} for r in runs]
    if all("student KD" in m and "student SFT" in m for m in by_name):
        summary["kd_minus_sft"] = [m["student KD"]["exact_match"] - m["student SFT"]["exact_match"] for m in by_name]
    return summary


def fmt(stats: dict | None, percent: bool) -> str:
    """``mean ± sd [min–max]`` (exact match in percent, losses to 4 decimals)."""
    if stats is None:
        return "-"
    scale, digits, unit = (100, 1, "%") if percent else (1, 4, "")
    mean, sd, lo, hi = (scale * stats[k] for k in ("mean", "sd", "min", "max"))
    return f"{mean:.{digits}f}{unit} ± {sd:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


def summary_table(summary: dict, runs: list[dict]):
    from rich.markup import escape
    from rich.table import Table

    s = runs[0]["settings"]
    seeds = ", ".join(map(str, summary["seeds"]))
    table = Table(title=escape(f"held-out two-digit addition, {len(runs)} seeds ({seeds}): mean ± sd [min–max] "
                        f"over seeds ({s['n_heldout']} unseen problems each)"))
    for col in ("model", "params", "steps", "exact match", "CE", "KL(T‖S)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for i, (model, stats) in enumerate(summary["models"].items()):
        row = runs[0]["rows"][i]
        cells = [fmt(stats.get("exact_match"), True), fmt(stats.get("heldout_ce"), False),
                 fmt(stats.get("kl_to_teacher"), False)]
        table.add_row(model, f"{row['params']:,}", str(row["train_steps"]), *map(escape, cells))
    gaps = summary.get("kd_minus_sft")
    if gaps:
        ahead = sum(g > 0 for g in gaps)
        tied = sum(g == 0 for g in gaps)
        per_seed = ", ".join(f"{100 * g:+.1f}" for g in gaps)
        table.caption = (f"KD - SFT exact match per seed (points): {per_seed}; KD ahead on {ahead}, "
                         f"tied on {tied}, behind on {len(gaps) - ahead - tied} of {len(gaps)}")
    return table
