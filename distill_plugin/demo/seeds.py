"""The demo over several seeds: per-metric mean, spread and range, the paired KD − SFT difference, the table.

For each model row (teacher, student SFT, student KD) and metric over the n seeds: ``mean = Σx/n``,
``sd = sqrt(Σ(x-mean)²/(n-1))`` (0 for one seed), the standard error of the mean ``se = sd/sqrt(n)``,
and ``min``/``max``. ``kd_minus_sft`` is the per-seed difference KD − SFT of the KL to the source
(negative: KD is closer), with its mean and standard error: the seeds are paired (same sample, init
and data order), so the difference carries less noise than either mean. ``gap_closed`` per seed:
``(KL_SFT − KL_KD) / (KL_SFT − KL_teacher)``, the share of the way from SFT to the teacher.
"""

from __future__ import annotations

import math

# key: (label, scale, digits); the first is the one the paired difference and the gap closed use
METRICS = {"kl_to_source": ("KL(source‖·)", 1, 4), "kl_to_teacher": ("KL(T‖S)", 1, 4),
           "validity": ("valid %", 100, 1), "entropy_ratio": ("entropy ratio", 1, 2), "coverage": ("coverage", 1, 2)}


def spread(values: list[float]) -> dict:
    """mean, sample sd (n-1; 0 for a single value), standard error sd/sqrt(n), min, max."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "se": sd / math.sqrt(n), "min": min(values), "max": max(values), "n": n}


def summarise(runs: list[dict]) -> dict:
    """Summary of per-seed ``results.json`` dicts (teacher, student SFT, student KD in each)."""
    models = [r["model"] for r in runs[0]["rows"]]
    summary: dict = {"seeds": [r["settings"]["seed"] for r in runs], "models": {}}
    for i, model in enumerate(models):
        rows = [r["rows"][i] for r in runs]
        assert all(row["model"] == model for row in rows), "per-seed results list different models"
        summary["models"][model] = {k: spread([row[k] for row in rows]) for k in METRICS if rows[0][k] is not None}
    by_name = [{row["model"]: row["kl_to_source"] for row in r["rows"]} for r in runs]
    diffs = [m["student KD"] - m["student SFT"] for m in by_name]
    summary["kd_minus_sft"] = diffs
    summary["kd_minus_sft_spread"] = spread(diffs)
    gaps = [(m["student SFT"] - m["student KD"]) / (m["student SFT"] - m["teacher"]) for m in by_name
            if m["student SFT"] > m["teacher"]]
    summary["gap_closed"] = spread(gaps) if gaps else None
    return summary


def fmt(stats: dict | None, scale: float, digits: int) -> str:
    """``mean ± se [min–max]``."""
    if stats is None:
        return "-"
    mean, se, lo, hi = (scale * stats[k] for k in ("mean", "se", "min", "max"))
    return f"{mean:.{digits}f} ± {se:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


def summary_table(summary: dict, runs: list[dict]):
    from rich.markup import escape
    from rich.table import Table

    s = runs[0]["settings"]
    seeds = ", ".join(map(str, summary["seeds"]))
    table = Table(title=escape(f"a source with many right answers, {len(runs)} seeds ({seeds}): mean ± se [min–max] "
                               f"over seeds ({s['n_heldout']} held-out draws; each student saw {s['n_train']})"))
    table.add_column("model", justify="left")
    for col in ("params", "steps", *(label for label, _, _ in METRICS.values())):
        table.add_column(col, justify="right")
    for i, (model, stats) in enumerate(summary["models"].items()):
        row = runs[0]["rows"][i]
        cells = [fmt(stats.get(k), scale, digits) for k, (_, scale, digits) in METRICS.items()]
        table.add_row(model, f"{row['params']:,}", str(row["train_steps"]), *map(escape, cells))
    d, gap = summary["kd_minus_sft_spread"], summary["gap_closed"]
    per_seed = ", ".join(f"{g:+.4f}" for g in summary["kd_minus_sft"])
    table.caption = (f"KD − SFT KL to the source per seed: {per_seed} (paired mean {d['mean']:+.4f} ± {d['se']:.4f}); "
                     f"KD closer on {sum(g < 0 for g in summary['kd_minus_sft'])} of {len(runs)} seeds"
                     + ("" if gap is None else f"; gap SFT→teacher closed {gap['mean']:.2f} ± {gap['se']:.2f}"))
    return table
