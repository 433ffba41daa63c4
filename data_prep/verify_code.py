"""Code: run the last fenced code block of the answer against the row's tests, one sandbox each.

Tests may be given as a list of ``{"input": ..., "output": ...}`` (stdin/stdout), as
``{"inputs": [...], "outputs": [...]}`` (APPS/TACO style, possibly a JSON string), or as a list of
Python assertion snippets run after the program. Stdout is compared line by line after stripping
trailing whitespace and blank trailing lines.
"""

from __future__ import annotations

import json
import re

from .sandbox import Limits, run_python

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str | None:
    """The last fenced block (python-tagged blocks preferred over untagged ones)."""
    blocks = _FENCE.findall(text or "")
    if not blocks:
        return None
    py = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
    return (py or [code for _, code in blocks])[-1]


def normalize_tests(tests) -> list[dict]:
    """Tests as ``[{"input", "output"}]`` or ``[{"assert": code}]``; ``[]`` if none/unknown."""
    if tests is None:
        return []
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            return [{"assert": tests}]
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        return [{"input": _as_text(i), "output": _as_text(o)} for i, o in zip(tests["inputs"], tests["outputs"])]
    out = []
    for t in tests if isinstance(tests, list) else []:
        if isinstance(t, str):
            out.append({"assert": t})
        elif isinstance(t, dict) and "input" in t and "output" in t:
            out.append({"input": _as_text(t["input"]), "output": _as_text(t["output"])})
    return out


def _as_text(x) -> str:
    return "\n".join(map(str, x)) if isinstance(x, list) else str(x)


def same_output(got: str, expected: str) -> bool:
    norm = lambda s: [ln.rstrip() for ln in s.strip().splitlines()]  # noqa: E731
    return norm(got) == norm(expected)


def run_tests(code: str, tests: list[dict], limits: Limits | None = None, stop_on_fail: bool = True) -> dict:
    """``{"passed", "total", "status", "details"}``; ``status`` of the first failure or ``ok``."""
    passed, details, status = 0, [], "ok"
    for t in tests:
        if "assert" in t:
            r = run_python(code + "\n\n" + t["assert"] + "\n", "", limits)
            ok = r.status == "ok"
        else:
            r = run_python(code, t["input"], limits)
            ok = r.status == "ok" and same_output(r.stdout, t["output"])
        details.append(r.status if r.status != "ok" or ok else "wrong_output")
        if ok:
            passed += 1
        else:
            status = details[-1]
            if stop_on_fail:
                break
    return {"passed": passed, "total": len(tests), "status": status, "details": details}


def check(tests, prediction: str, limits: Limits | None = None) -> tuple[str, dict]:
    """``(correct|wrong|no_answer|unverifiable, run info)`` for one generation."""
    norm = normalize_tests(tests)
    if not norm:
        return "unverifiable", {}
    code = extract_code(prediction)
    if code is None:
        return "no_answer", {}
    info = run_tests(code, norm, limits)
    return ("correct" if info["passed"] == info["total"] else "wrong"), info
