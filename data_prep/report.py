"""Per-stage reports: rows in/out, kept fraction, drop reasons, pass rates, token-length and
score histograms.

Each stage writes ``_report.<stage>.json`` (and ``_lengths.<stage>.png`` when it has token lengths,
``_scores.<stage>.png`` when it has judge scores) into its output directory; ``distill-data run``
also collects them into ``report.json``.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageReport:
    stage: str
    rows_in: int = 0
    rows_out: int = 0
    drops: Counter = field(default_factory=Counter)  # row-level drop reasons
    generation_drops: Counter = field(default_factory=Counter)  # per-generation drop reasons
    input_skips: dict = field(default_factory=dict)  # bad input lines (SkipLog.as_dict())
    extra: dict = field(default_factory=dict)
    token_lengths: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # judge scores (judge: all; filter: kept)

    def as_dict(self) -> dict:
        d = {
            "stage": self.stage,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "kept_fraction": round(self.rows_out / self.rows_in, 4) if self.rows_in else None,
            "drops": dict(self.drops),
            "generation_drops": dict(self.generation_drops),
            "input_skips": self.input_skips,
            **self.extra,
        }
        if self.token_lengths:
            d["token_lengths"] = length_summary(self.token_lengths)
        if self.scores:
            d["scores"] = score_summary(self.scores)
        return d

    def write(self, out_dir: str | Path, suffix: str = "") -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = f"{self.stage}{suffix}"
        path = out / f"_report.{name}.json"
        if self.token_lengths:
            png = out / f"_lengths.{name}.png"
            save_histogram(self.token_lengths, png, f"{name}: completion tokens")
            self.extra["histogram_png"] = png.name
        if self.scores:
            png = out / f"_scores.{name}.png"
            save_histogram(self.scores, png, f"{name}: judge scores", xlabel="score")
            self.extra["score_histogram_png"] = png.name
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        return path

    def summary(self) -> str:
        d = self.as_dict()
        drops = ", ".join(f"{k}={v}" for k, v in sorted({**d["drops"], **{f"gen:{k}": v for k, v in d["generation_drops"].items()}}.items()))
        kf = f"{d['kept_fraction']:.1%}" if d["kept_fraction"] is not None else "n/a"
        return f"[{self.stage}] rows in {self.rows_in} → out {self.rows_out} (kept {kf}){'; drops: ' + drops if drops else ''}"


def length_summary(values: list[int]) -> dict:
    """count, mean, p50, p95 (nearest rank below), max."""
    t = sorted(values)
    return {"count": len(t), "mean": round(statistics.fmean(t), 1), "p50": t[len(t) // 2],
            "p95": t[min(len(t) - 1, int(0.95 * len(t)))], "max": t[-1]}


def score_summary(values: list[float]) -> dict:
    """count, mean, min, max and a histogram: one bin per value for integer scores spanning at most
    20 values (a 1–10 judge), else 10 equal-width bins ``"[lo, hi)"`` (a reward model's logits)."""
    lo, hi = min(values), max(values)
    if all(float(v).is_integer() for v in values) and hi - lo <= 20:
        hist = {f"{v:g}": c for v, c in sorted(Counter(values).items())}
    else:
        width = (hi - lo) / 10 or 1.0
        counts = Counter(min(9, int((v - lo) / width)) for v in values)
        hist = {f"[{lo + b * width:.3g}, {lo + (b + 1) * width:.3g})": counts[b] for b in range(10)}
    return {"count": len(values), "mean": round(statistics.fmean(values), 3), "min": lo, "max": hi,
            "histogram": hist}


def save_histogram(values: list[float], path: str | Path, title: str, xlabel: str = "tokens") -> None:
    """A PNG histogram (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(values, bins=min(50, max(5, len(set(values)))), color="#4477aa")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("generations")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def collect(dirs: list[str | Path]) -> dict:
    """Merge every ``_report.*.json`` found in ``dirs`` into one dict keyed by stage."""
    out = {}
    for d in dirs:
        for p in sorted(Path(d).glob("_report.*.json")) if Path(d).is_dir() else []:
            out[p.stem.removeprefix("_report.")] = json.loads(p.read_text())
    return out
