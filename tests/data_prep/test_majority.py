"""``distill-data verify --majority``: self-consistency for rows without an answer (data_prep.majority)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from data_prep import majority
from data_prep.guards import InputError
from data_prep.verify import VerifyConfig, verify
from dp_helpers import read_jsonl, subprocess_env, write_jsonl


def gen(answer: str) -> dict:
    return {"text": f"<think>\nwork\n</think>\n\n{answer}", "reasoning": "work", "content": answer,
            "think_closed": True}


def row(rid: str, answers: list[str], answer=None) -> dict:
    r = {"id": rid, "prompt": f"What is {rid}?", "generations": [gen(a) for a in answers]}
    return r if answer is None else {**r, "answer": answer}


ROWS = [
    row("three_of_four", ["1236", "\\boxed{1236}", "1237", "1,236"]),  # one key in three spellings
    row("tie", ["12", "13", "13", "12"]),
    row("lone", ["7", "I am not sure"]),  # one vote is not a consensus
    row("known", ["7", "7", "5"], answer="5"),  # the majority says 7: the answer still decides
    row("blank_answer", ["3", "3", "4"], answer=" "),  # blank = no answer: voted
]


@pytest.mark.parametrize("keys,expected", [
    (["a", "a", "b", "a"], ("a", 0.75)),
    (["a", "b", "b", "a"], (None, 0.5)),
    (["a", None, None, None], (None, 0.25)),
    ([None, None], (None, 0.0)),
    (["a", "a", "b", "c"], ("a", 0.5)),  # a plurality of two is enough when nothing else has two
])
def test_vote(keys, expected):
    assert majority.vote(keys) == expected


def test_verdicts_follow_the_pseudo_answer():
    from data_prep.pool import TIMEOUT

    assert majority.verdicts(["a", "b", None, TIMEOUT], "a") == ["correct", "wrong", "no_answer", "timeout"]
    assert majority.verdicts(["a", "b", None], None) == ["unverifiable", "unverifiable", "no_answer"]


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("majority")
    verify(write_jsonl(tmp / "gen.jsonl", ROWS), tmp / "ver", VerifyConfig(task="math", workers=1, majority=True))
    return {r["id"]: r for r in read_jsonl(tmp / "ver" / "verified.jsonl")}, tmp


def test_three_of_four_is_the_pseudo_answer(verified):
    r = verified[0]["three_of_four"]
    assert (r["verified_by"], r["pseudo_answer"], r["vote_share"]) == ("majority", "1236", 0.75)
    assert [g["verdict"] for g in r["generations"]] == ["correct", "correct", "wrong", "correct"]
    assert (r["n_correct"], r["n_checked"], r["pass_rate"]) == (3, 4, 0.75)
    assert "answer" not in r  # the pseudo-answer is recorded beside, never as, the row's answer


def test_a_tie_or_a_lone_vote_is_unverifiable(verified):
    tie, lone = verified[0]["tie"], verified[0]["lone"]
    assert (tie["pseudo_answer"], tie["vote_share"], tie["n_checked"]) == (None, 0.5, 0)
    assert {g["verdict"] for g in tie["generations"]} == {"unverifiable"}
    assert [g["verdict"] for g in lone["generations"]] == ["unverifiable", "no_answer"]
    assert lone["pseudo_answer"] is None and lone["verified_by"] == "majority"


def test_a_row_with_an_answer_is_checked_against_it(verified):
    known, blank = verified[0]["known"], verified[0]["blank_answer"]
    assert [g["verdict"] for g in known["generations"]] == ["wrong", "wrong", "correct"]
    assert known["verified_by"] == "answer" and "pseudo_answer" not in known
    assert (blank["verified_by"], blank["pseudo_answer"]) == ("majority", "3")


def test_without_majority_rows_without_an_answer_stay_unverifiable(tmp_path):
    verify(write_jsonl(tmp_path / "gen.jsonl", ROWS[:1]), tmp_path / "ver", VerifyConfig(task="math", workers=1))
    (r,) = read_jsonl(tmp_path / "ver" / "verified.jsonl")
    assert {g["verdict"] for g in r["generations"]} == {"unverifiable"} and "verified_by" not in r


def test_resume_skips_done_rows_and_refuses_other_settings(verified):
    _, tmp = verified
    extra = write_jsonl(tmp / "more.jsonl", ROWS + [row("new", ["9", "9"])])
    rep = verify(extra, tmp / "ver", VerifyConfig(task="math", workers=1, majority=True))
    assert (rep.extra["already_done"], rep.rows_out) == (len(ROWS), 1)
    rows = read_jsonl(tmp / "ver" / "verified.jsonl")
    assert [r["id"] for r in rows][-1] == "new" and rows[-1]["pseudo_answer"] == "9"
    with pytest.raises(InputError, match="majority"):
        verify(extra, tmp / "ver", VerifyConfig(task="math", workers=1))


def test_majority_is_refused_outside_maths():
    with pytest.raises(ValueError, match="maths answers only"):
        VerifyConfig(task="mcq", majority=True)


def test_cli_verify_majority_then_filter(tmp_path):
    """The real CLI: --majority marks the agreeing samples, filter keeps them and drops the tie."""
    write_jsonl(tmp_path / "gen.jsonl", ROWS)
    cli = [sys.executable, "-m", "data_prep.cli"]
    run = lambda *a: subprocess.run([*cli, *a], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                                    timeout=300)
    done = run("verify", "gen.jsonl", "-o", "ver", "--majority", "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "ver" / "_report.verify.json").read_text())["rows_verified_by"] == \
        {"majority": 2, "no_majority": 2, "answer": 1}
    done = run("filter", "ver", "-o", "kept", "--no-dedup")
    assert done.returncode == 0, done.stderr
    kept = {r["id"]: r for r in read_jsonl(tmp_path / "kept" / "kept.jsonl")}
    assert set(kept) == {"three_of_four", "known", "blank_answer"}
    assert [g["content"] for g in kept["three_of_four"]["generations"]] == ["1236", "\\boxed{1236}", "1,236"]
    bad = run("verify", "gen.jsonl", "-o", "ver2", "--majority", "--task", "mcq")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "maths answers only" in bad.stderr
