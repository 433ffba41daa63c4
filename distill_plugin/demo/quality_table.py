"""The quality benchmark's table: per row over the seeds (``summarise``) and the Markdown README quotes
(``markdown``), from ``quality.run``'s results."""

from __future__ import annotations

from .seeds import spread


def summarise(teacher: dict, rows: list[dict], row_names: list[str], baselines: dict[str, str] | None = None) -> dict:
    """Per row over the seeds: spread (mean, sd, se, min, max) of each metric (None where a metric is
    undefined, e.g. KL across tokenizers) and of the gap closed (``evaluation.gap_closed`` against the
    same seed's student of the row's baseline row, ``baselines[row]``, default ``"sft"``; seeds where
    the teacher is no better than that baseline student are left out)."""
    from ..evaluation import gap_closed

    by_row_seed = {(r["row"], r["seed"]): r["exact_match"] for r in rows}
    summary = {}
    for name in row_names:
        mine = [r for r in rows if r["row"] == name]
        stats = {}
        for k in ("exact_match", "kl_to_teacher", "heldout_ce", "train_seconds"):
            values = [r[k] for r in mine if r[k] is not None]  # train_seconds: None for a reused student
            stats[k] = spread(values) if values else None
        stats["same_as"] = sorted({r["same_as"] for r in mine if r.get("same_as")})
        base = (baselines or {}).get(name, "sft")
        gaps = [gap_closed(r["exact_match"], by_row_seed.get((base, r["seed"])), teacher["exact_match"]) for r in mine]
        gaps = [g for g in gaps if g is not None]
        stats["gap_closed"] = spread(gaps) if gaps else None
        stats["baseline"] = base
        stats["per_seed_exact_match"] = {r["seed"]: r["exact_match"] for r in mine}
        summary[name] = stats
    return summary


def pm(stats: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    if stats is None:
        return "–"
    return f"{scale * stats['mean']:.{digits}f} ± {scale * stats['se']:.{digits}f}"


def markdown(results: dict) -> str:
    """The table README quotes: mean ± standard error over the seeds."""
    s, seeds = results["settings"], results["seeds"]
    t = results["teacher"]
    lines = [
        f"{s['digits']}-digit addition, {results['split']} split ({results['split_size']} problems), "
        f"{len(seeds)} seed(s) {', '.join(map(str, seeds))}: mean ± standard error over the seeds; "
        f"teacher {t['params']:,} params, students {student_sizes(results)}, "
        f"{s['student_steps']} steps × {s['student_batch']} for every student.",
        "",
        "| method | exact match % | KL(T‖S) | gap closed (from its SFT baseline) | train s / student | prepare s (once) |",
        "|---|---|---|---|---|---|",
        f"| teacher | {100 * t['exact_match']:.1f} | – | 1 | {results['teacher_seconds']:.0f} (once) | – |",
    ]
    for name, stats in results["summary"].items():
        prep = results["prepare_seconds"].get(results["rows"][name]["method"])
        lines.append(f"| {results['rows'][name]['label']} | {pm(stats['exact_match'], 100)} | "
                     f"{pm(stats['kl_to_teacher'], 1, 4)} | {pm(stats['gap_closed'], 1, 2)} | "
                     f"{train_cell(results, stats)} | {'–' if prep is None else f'{prep:.0f}'} |")
    lines += ["", "Per-seed exact match (%):", ""]
    for name, stats in results["summary"].items():
        per_seed = ", ".join(f"{seed}: {100 * v:.1f}" for seed, v in stats["per_seed_exact_match"].items())
        lines.append(f"- {results['rows'][name]['label']}: {per_seed}")
    if any(stats["kl_to_teacher"] is None for stats in results["summary"].values()):
        lines += ["", "KL(T‖S) –: the student has another tokenizer than the teacher (a token-level KL needs one vocabulary)."]
    lines += ["", f"Wall time {results['wall_seconds']:.0f}s ({results['jobs']} students at a time, "
                  f"{results['threads']} thread(s) each)."]
    return "\n".join(lines) + "\n"


def train_cell(results: dict, stats: dict) -> str:
    """``57 ± 5``, or for a row whose students were reused (``reuse.same_students``) the row they are."""
    if not stats.get("same_as"):
        return pm(stats["train_seconds"], 1, 0)
    same = "= " + ", ".join(results["rows"][row]["label"] for row in stats["same_as"]) + " (identical data, reused)"
    return same if stats["train_seconds"] is None else f"{pm(stats['train_seconds'], 1, 0)}; some seeds {same}"


def student_sizes(results: dict) -> str:
    """``67,104 params`` or, with students on several tokenizers, the size on each (the embedding differs)."""
    sizes = results["student_params"]
    if len(set(sizes.values())) == 1:
        return f"{next(iter(sizes.values())):,} params"
    return ", ".join(f"{n:,} params (tokenizer {tok.upper()})" for tok, n in sizes.items())
