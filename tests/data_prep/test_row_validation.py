"""One schema for every stage's input rows: a bad row is skipped with file:line and the reason
(or stops the run under --strict, leaving no temp file), and never takes other rows with it."""

import json

import pytest
from typer.testing import CliRunner

from dp_helpers import read_jsonl, write_jsonl
from data_prep.cli import app
from data_prep.io import SkipLog
from data_prep.schema import FieldMap, canonical_row

GOOD_GEN = {"text": "<think>\nr\n</think>\n\n\\boxed{1}", "reasoning": "r", "content": "\\boxed{1}",
            "think_closed": True, "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 9}


def good(i: int) -> dict:
    return {"id": f"ok{i}", "prompt": f"What is {i}+1-{i}?", "answer": "1", "source": "t",
            "messages": [{"role": "user", "content": f"What is {i}+1-{i}?"}], "generations": [dict(GOOD_GEN)]}


BAD_ROWS = [  # (row, text expected in the skip message)
    ({**good(90), "answer": {"value": 1}}, "answer: expected str | int | float | None, got dict"),
    ({**good(91), "generations": "oops"}, "generations: Input should be a valid list"),
    ({**good(92), "generations": [{**GOOD_GEN, "content": None}]}, "generations.0.content: Input should be a valid string"),
    ({**good(93), "prompt": [{"role": "user"}]}, "prompt.0.content: Field required"),
    ({**good(94), "prompt": [{"role": 1, "content": "x"}]}, "prompt.0.role: Input should be a valid string"),
    ({**good(95), "messages": [{"role": "user", "content": None}]}, "messages.0.content"),
    ({k: v for k, v in good(96).items() if k != "id"}, "id: Field required"),
    ({**good(97), "generations": [{**GOOD_GEN, "think_closed": "yes"}]}, "generations.0.think_closed"),
]


def _mixed_file(tmp_path):
    """Good rows with every kind of bad row between them (lines 2, 4, 6, ...)."""
    lines = []
    for i, (bad, _) in enumerate(BAD_ROWS):
        lines += [good(i), bad]
    lines.append(good(len(BAD_ROWS)))
    return write_jsonl(tmp_path / "in" / "rows.jsonl", lines)


def _skips(report_path):
    return json.loads(report_path.read_text())["input_skips"]


def test_canonical_prompt_rows_are_validated():
    skips = SkipLog()
    where = ("p.jsonl", 7)
    assert canonical_row({"prompt": [{"role": "user"}]}, FieldMap(), where, skips) is None
    assert canonical_row({"prompt": [{"role": 3, "content": "hi"}]}, FieldMap(), where, skips) is None
    assert canonical_row({"prompt": "hi", "answer": {"a": 1}}, FieldMap(), where, skips) is None
    assert canonical_row({"prompt": 12}, FieldMap(), where, skips) is None
    assert skips.counts == {"invalid_row": 4}
    assert skips.messages[0] == "p.jsonl:7: invalid_row: prompt.0.content: Field required"
    assert "prompt.0.role: Input should be a valid string (got int)" in skips.messages[1]
    ok = canonical_row({"prompt": [{"role": "user", "content": "hi"}], "answer": 3}, FieldMap(), where, skips)
    assert ok["answer"] == "3" and ok["id"]


@pytest.mark.parametrize("stage", ["verify", "filter", "export"])
def test_bad_rows_skipped_with_file_line_and_reason(tmp_path, stage):
    src = _mixed_file(tmp_path)
    rows = read_jsonl(src)
    if stage != "verify":  # filter/export read verified rows
        for r in rows:
            if isinstance(r.get("generations"), list):
                for g in r["generations"]:
                    if isinstance(g, dict):
                        g.update(correct=True, verdict="correct")
        write_jsonl(src, rows)
    out = tmp_path / "out"
    args = {"verify": ["verify", str(src), "-o", str(out), "--workers", "1"],
            "filter": ["filter", str(src), "-o", str(out)],
            "export": ["export", str(src), "-o", str(out / "train.jsonl")]}[stage]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    produced = read_jsonl(next(p for p in out.glob("*.jsonl")))
    assert sorted(r["id"] for r in produced) == sorted(f"ok{i}" for i in range(len(BAD_ROWS) + 1))
    skips = _skips(out / f"_report.{stage}.json")
    assert skips["counts"] == {"invalid_row": len(BAD_ROWS)}
    for k, (_, expected) in enumerate(BAD_ROWS):
        line = 2 * k + 2
        assert any(m.startswith(f"{src}:{line}: invalid_row: ") and expected in m for m in skips["examples"]), (line, expected)


@pytest.mark.parametrize("stage", ["verify", "filter", "export"])
def test_strict_stops_at_the_first_bad_row_and_leaves_no_temp_file(tmp_path, stage):
    src = _mixed_file(tmp_path)
    out = tmp_path / "out"
    args = {"verify": ["verify", str(src), "-o", str(out), "--workers", "1"],
            "filter": ["filter", str(src), "-o", str(out)],
            "export": ["export", str(src), "-o", str(out / "train.jsonl")]}[stage]
    res = CliRunner().invoke(app, args + ["--strict"])
    assert res.exit_code == 2, res.output
    assert f"{src}:2: invalid_row: answer" in res.output
    assert "Traceback" not in res.output and res.output.count("error:") == 1
    assert not list(tmp_path.rglob("*.tmp"))
    assert not (out / "kept.jsonl").exists() and not (out / "train.jsonl").exists()


def test_generate_keeps_the_valid_rows_of_a_chunk(tmp_path, tiny_teacher):
    """A chat prompt without content (or with a numeric role) in the middle of a chunk is skipped;
    the other prompts of that chunk are generated."""
    rows = [{"id": "a", "prompt": [{"role": "user", "content": "What is 2+3?"}]},
            {"id": "b", "prompt": [{"role": "user"}]},
            {"id": "c", "prompt": [{"role": 7, "content": "What is 4*2?"}]},
            {"id": "d", "prompt": "What is 9-7?"}]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    res = CliRunner().invoke(app, ["generate", str(src), "-o", str(tmp_path / "gen"), "--model", str(tiny_teacher),
                                   "-n", "1", "--max-tokens", "4", "--chunk-size", "8", "--seed", "0"])
    assert res.exit_code == 0, res.output
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "gen" / "generations.jsonl")) == ["a", "d"]
    skips = _skips(tmp_path / "gen" / "_report.generate.json")
    assert skips["counts"] == {"invalid_row": 2}
    assert skips["examples"][0].startswith(f"{src}:2: invalid_row: prompt.0.content")
    assert skips["examples"][1].startswith(f"{src}:3: invalid_row: prompt.0.role")
