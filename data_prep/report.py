"""Per-stage reports: rows in/out, kept fraction, drop reasons, pass rates, token-length histogram.

Each stage writes ``_report.<stage>.json`` (and ``_lengths.<stage>.png`` when it has token lengths)
into its output directory; ``distill-data run`` also collects them into ``report.json``.
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
            t = sorted(self.token_lengths)
            d["token_lengths"] = {"count": len(t), "mean": round(statistics.fmean(t), 1),
                                  "p50": t[len(t) // 2], "p95": t[min(len(t) - 1, int(0.95 * len(t)))],
                                  "max": t[-1]}
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
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        return path

    def summary(self) -> str:
        d = self.as_dict()
        drops = ", ".join(f"{k}={v}" for k, v in sorted({**d["drops"], **{f"gen:{k}": v for k, v in d["generation_drops"].items()}}.items()))
        kf = f"{d['kept_fraction']:.1%}" if d["kept_fraction"] is not None else "n/a"
        return f"[{self.stage}] rows in {self.rows_in} → out {self.rows_out} (kept {kf}){'; drops: ' + drops if drops else ''}"


def save_histogram(values: list[int], path: str | Path, title: str) -> None:
    """A PNG histogram of token lengths (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(values, bins=min(50, max(5, len(set(values)))), color="#4477aa")
    ax.set_xlabel("tokens")
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
