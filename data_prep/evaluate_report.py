"""The evaluation's outputs: ``report.json``, a Markdown table (``report.md``) and a bar chart of
pass@1 with its 95% intervals (``report.png``; a second panel with KL to the teacher when measured)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def markdown(report: dict) -> str:
    """One row per model; a model without a teacher fit gets a numbered note saying why."""
    s = report["settings"]
    samp = s["sampling"]
    lines = [f"Held-out: {report['prompts']} prompts × n = {samp['n']} samples (temperature {samp['temperature']}, "
             f"top-p {samp['top_p']}, max {samp['max_tokens']} tokens), task {s['verify']['task']}, backend "
             f"{s['backend']}; teacher fit on the {s['fit_on']}'s completions. pass@1: mean over prompts of the "
             "pass rate over the n samples, 95% Student-t interval over prompts.", "",
             "| model | role | pass@1 [95% CI] | prompts (failed) | mean tokens | truncated | KL(teacher‖model) "
             "| CE | gap closed (pass@1 / KL) |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for m in report["models"]:
        acc = m["pass_at_1"]
        ci = f" [{_pct(acc['low'])}, {_pct(acc['high'])}]" if acc["low"] is not None else ""
        fit = m.get("fit") or {}
        kl = _num(fit.get("kl")) if m["role"] != "teacher" else "—"
        if m.get("fit_skipped"):
            if m["fit_skipped"] not in notes:
                notes.append(m["fit_skipped"])
            kl = f"— ({notes.index(m['fit_skipped']) + 1})"
        gap = m.get("gap_closed") or {}
        gap_s = f"{_num(gap.get('pass_at_1'), 2)} / {_num(gap.get('kl'), 2)}" if gap else "—"
        tokens = "—" if m["mean_completion_tokens"] is None else f"{m['mean_completion_tokens']:.1f}"
        name = m["name"] + (" (baseline)" if m["name"] == report.get("baseline") else "")
        lines.append(f"| {name} | {m['role']} | {_pct(acc['mean'])}{ci} | {m['prompts']} ({m['failed_prompts']}) "
                     f"| {tokens} | {_pct(m['truncation_rate'])} | {kl} | {_num(fit.get('student_ce'))} | {gap_s} |")
    lines += [""] + [f"({i}) {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines).rstrip() + "\n"


def save_chart(report: dict, path: str | Path) -> None:
    """Bars of pass@1 with the interval as error bars (and KL to the teacher when any was measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    names = [m["name"] for m in models]
    kls = [(m.get("fit") or {}).get("kl") if m["role"] != "teacher" else None for m in models]
    panels = 2 if any(k is not None for k in kls) else 1
    fig, axes = plt.subplots(1, panels, figsize=(1.2 + 1.1 * len(models) * panels, 3.6), dpi=100, squeeze=False)
    acc = [m["pass_at_1"] for m in models]
    means = [100 * (a["mean"] or 0) for a in acc]
    err = [[100 * (a["mean"] - a["low"]) if a["low"] is not None else 0 for a in acc],
           [100 * (a["high"] - a["mean"]) if a["high"] is not None else 0 for a in acc]]
    colors = ["#aa3377" if m["role"] == "teacher" else "#4477aa" for m in models]
    ax = axes[0][0]
    ax.bar(names, means, yerr=err, capsize=4, color=colors)
    ax.set_ylabel("pass@1 (%), 95% CI")
    ax.set_ylim(0, 100)
    ax.set_title(f"pass@1, n = {report['settings']['sampling']['n']}")
    if panels == 2:
        ax = axes[0][1]
        ax.bar(names, [k or 0 for k in kls], color="#228833")
        ax.set_ylabel("nats / token")
        ax.set_title("KL(teacher ‖ model)")
    for a in axes[0]:
        a.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out: str | Path, report: dict) -> None:
    """``report.json``, ``report.md``, ``report.png`` under ``out`` (each replaced whole)."""
    out = Path(out)
    for name, write in (("report.json", lambda p: p.write_text(json.dumps(report, indent=2) + "\n")),
                        ("report.md", lambda p: p.write_text(markdown(report))),
                        ("report.png", lambda p: save_chart(report, p))):
        tmp = out / f".{name}.{os.getpid()}.tmp{Path(name).suffix}"
        write(tmp)
        os.replace(tmp, out / name)
