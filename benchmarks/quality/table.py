"""The quality benchmark's table: per row over the seeds (``summarise``) and the Markdown README quotes
(``markdown``), from ``runner.run``'s results."""

from __future__ import annotations

from pathlib import Path

from distill_plugin.demo.seeds import spread


def summarise(teacher: dict, rows: list[dict], row_names: list[str], metrics, baselines: dict[str, str] | None = None,
              against: tuple[str, ...] = ()) -> dict:
    """Per row over the seeds: spread (mean, sd, se, min, max) of each metric (None where a metric is
    undefined, e.g. KL across tokenizers), and on the row's first defined metric (``on``) the paired
    per-seed difference against the same seed's student of the row's baseline row (``baselines[row]``,
    default ``"sft"``) and the gap closed (``evaluation.gap_closed``; seeds where the teacher is no
    better than that baseline student are left out); ``versus[r]``, the same paired difference
    against row ``r`` of ``against`` (``--against``)."""
    from distill_plugin.evaluation import gap_closed

    metrics = [m if isinstance(m, dict) else vars(m) for m in metrics]
    summary = {}
    for name in row_names:
        mine = [r for r in rows if r["row"] == name]
        stats = {}
        for k in [m["key"] for m in metrics] + ["heldout_ce", "train_seconds"]:
            values = [r[k] for r in mine if r.get(k) is not None]  # train_seconds: None for a reused student
            stats[k] = spread(values) if values else None
        on = next((m for m in metrics if stats[m["key"]] is not None), metrics[0])
        base = (baselines or {}).get(name, "sft")
        value = {(r["row"], r["seed"]): r.get(on["key"]) for r in rows}
        pairs = paired(mine, value, base, on["key"])
        gaps = [gap_closed(v, b, teacher[on["key"]], higher_is_better=on["higher_is_better"]) for v, b in pairs]
        gaps = [g for g in gaps if g is not None]
        stats.update(same_as=sorted({r["same_as"] for r in mine if r.get("same_as")}), baseline=base, on=on["key"],
                     paired=spread([v - b for v, b in pairs]) if pairs and name != base else None,
                     versus={r: differences(paired(mine, value, r, on["key"])) if r != name else None
                             for r in against},
                     gap_closed=spread(gaps) if gaps else None,
                     per_seed={r["seed"]: r[on["key"]] for r in mine})
        summary[name] = stats
    return summary


def paired(mine: list[dict], value: dict, other: str, key: str) -> list[tuple[float, float]]:
    """``(this row's value, row other's value)`` of every seed both have (``value[(row, seed)]``)."""
    pairs = [(r[key], value.get((other, r["seed"]))) for r in mine]
    return [(v, b) for v, b in pairs if v is not None and b is not None]


def differences(pairs: list[tuple[float, float]]) -> dict | None:
    """Spread of the paired differences (None without a pair)."""
    return spread([v - b for v, b in pairs]) if pairs else None


def pm(stats: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    if stats is None:
        return "–"
    return f"{scale * stats['mean']:.{digits}f} ± {scale * stats['se']:.{digits}f}"


def markdown(results: dict) -> str:
    """The regime's table: mean ± standard error over the seeds, the paired difference against the
    row's baseline and the gap closed, both on the row's first defined metric."""
    s, seeds, t = results["settings"], results["seeds"], results["teacher"]
    metrics = results["metrics"]
    fmt = {m["key"]: m for m in metrics}
    lines = [
        f"**{results['title']}**: {results['split']} split ({results['split_size']} rows), {len(seeds)} seed(s) "
        f"{', '.join(map(str, seeds))}, mean ± standard error over the seeds; teacher {t['params']:,} params, "
        f"students {student_sizes(results)}, "
        + (f"{s['warm_steps']} warm-up SFT steps then " if s.get("warm_steps") else "")
        + f"{s['student_steps']} steps × {s['student_batch']} for every student.",
        "",
        f"Expected before running: {results['expectation']}.",
        "",
        "| method | " + " | ".join(m["label"] for m in metrics) + " | paired Δ vs its SFT | gap closed | train s / student | prepare s (once) |",
        "|---|" + "---|" * (len(metrics) + 4),
        "| teacher | " + " | ".join(cell(t.get(m["key"]), m) for m in metrics)
        + f" | – | 1 | {teacher_cell(results)} | – |",
    ]
    for name, stats in results["summary"].items():
        prep = results["prepare_seconds"].get(results["rows"][name]["method"])
        on = fmt[stats["on"]]
        lines.append(f"| {results['rows'][name]['label']} | "
                     + " | ".join(pm(stats[m["key"]], m["scale"], m["digits"]) for m in metrics)
                     + f" | {delta(stats, on)} | {pm(stats['gap_closed'], 1, 2)} | {train_cell(results, stats)} | "
                     f"{'–' if prep is None else f'{prep:.0f}'} |")
    against = results.get("against") or []
    if against:
        lines += ["", "Paired per-seed Δ on each row's first defined metric against "
                  + ", ".join(results["rows"][r]["label"] for r in against) + " (mean ± standard error):", "",
                  "| method | " + " | ".join(f"Δ vs {results['rows'][r]['label']}" for r in against) + " |",
                  "|---|" + "---|" * len(against)]
        for name, stats in results["summary"].items():
            versus = stats.get("versus", {})
            lines.append(f"| {results['rows'][name]['label']} | "
                         + " | ".join(delta({"paired": versus.get(r)}, fmt[stats["on"]]) for r in against) + " |")
    lines += ["", "Per seed, each row's first defined metric:", ""]
    for name, stats in results["summary"].items():
        m = fmt[stats["on"]]
        per_seed = ", ".join(f"{seed}: {cell(v, m)}" for seed, v in stats["per_seed"].items())
        lines.append(f"- {results['rows'][name]['label']} ({m['label']}): {per_seed}")
    if any(stats["kl_to_teacher"] is None for stats in results["summary"].values()):
        lines += ["", "–: undefined for this student (a token-level KL needs one vocabulary; the exact KL to the "
                      "source needs one token per letter): its paired Δ and gap closed use the first metric it has."]
    lines += ["", f"Wall time {results['wall_seconds']:.0f}s ({results['jobs']} students at a time, "
                  f"{results['threads']} thread(s) each)."]
    return "\n".join(lines) + "\n"


def teacher_cell(results: dict) -> str:
    """``117 (once)``, or for a teacher copied from another regime's run, which one trained it."""
    donor = results.get("teacher_from")
    once = "once" if donor is None else f"once, for regime {Path(donor).parent.name}"
    return f"{results['teacher_seconds']:.0f} ({once})"


def cell(value: float | None, m: dict) -> str:
    return "–" if value is None else f"{m['scale'] * value:.{m['digits']}f}"


def delta(stats: dict, m: dict) -> str:
    """The paired per-seed difference against the baseline, ``+0.0123 ± 0.0040 (metric)``."""
    d = stats["paired"]
    if d is None:
        return "–"
    digits = m["digits"]
    return f"{m['scale'] * d['mean']:+.{digits}f} ± {m['scale'] * d['se']:.{digits}f}"


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
