"""``distill-data judge``: the rubric's strict score parsing, the LLM judge end to end against a real
OpenAI-compatible server on loopback (its verdicts scripted; the requests, the 503 retry, the 400
and unparsable-body failures, parsing and resume are real), and a locally built reward model."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from data_prep.cli import app
from data_prep.io import InputError
from data_prep.judge import JudgeConfig, judge
from data_prep.rubric import Rubric, load_rubric
from dp_helpers import openai_server, read_jsonl, write_jsonl


def gen(content: str, reasoning: str = "thinking") -> dict:
    return {"text": f"<think>\n{reasoning}\n</think>\n\n{content}", "reasoning": reasoning, "content": content,
            "think_closed": True, "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 12}


ROWS = [
    {"id": "r0", "prompt": "Explain why the sky is blue.", "generations": [gen("GOOD-A answer"), gen("BAD-A answer")]},
    {"id": "r1", "prompt": "What is the capital of France?", "answer": "Paris", "generations": [gen("GOOD-B Paris")]},
    {"id": "r2", "prompt": "Write a haiku.", "generations": [gen("NOSCORE poem")]},
    {"id": "r3", "prompt": "Summarise this.", "generations": [gen("GOOD-C"), gen("<<reject>> far too long")]},
    {"id": "r4", "prompt": "Give advice.", "generations": [gen("AMBIG advice")]},
]
SCRIPT = [["GOOD", "The answer is thorough and correct.\nRating: [[9]]"], ["BAD", "It misses the point.\nRating: [[2]]"],
          ["NOSCORE", "I cannot decide on this one."], ["AMBIG", "Somewhere between [[2]] and [[9]]."]]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(res, *names) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


# --- the rubric ------------------------------------------------------------------------------

@pytest.mark.parametrize("reply,expected", [
    ("Clear and correct.\nRating: [[7]]", (7.0, "ok")),
    ("Rating: [[ 7.5 ]]", (7.5, "ok")),
    ("[[3]] ... so, again: Rating: [[3]]", (3.0, "ok")),  # the same value twice is one score
    ("Rating: 7", (None, "no_score")),  # strict: only the [[N]] format counts
    ("", (None, "no_score")),
    ("Rating: [[3]] no wait, [[8]]", (None, "ambiguous")),
    ("Rating: [[11]]", (None, "out_of_range")),
    ("Rating: [[0]]", (None, "out_of_range")),
])
def test_default_rubric_parses_strictly(reply, expected):
    assert Rubric().parse(reply) == expected


def test_default_rubric_uses_the_reference_when_there_is_one():
    r = load_rubric("default")
    plain = r.messages("Q {answer} braces", "A1")[-1]["content"]
    assert "[Question]\nQ {answer} braces\n" in plain and "Reference" not in plain  # one pass: no re-substitution
    assert "[The Start of Assistant's Answer]\nA1\n" in plain and "scale of 1 to 10" in plain
    ref = r.messages("Q", "A1", "Paris")[-1]["content"]
    assert "[The Start of Reference Answer]\nParis\n" in ref and "comparing the assistant's answer" in ref
    assert r.messages("Q", "A")[0] == {"role": "system", "content": "You are a helpful assistant."}


def test_user_rubrics_from_files(tmp_path):
    txt = tmp_path / "terse.txt"
    txt.write_text('Grade {"json": "braces stay"}.\nQ: {question}\nA: {answer}\nScore as [[N]].')
    r = load_rubric(str(txt))
    assert r.name == "terse" and r.messages("q?", "a!", "ref")[-1]["content"].startswith('Grade {"json": "braces stay"}.\nQ: q?\nA: a!')
    yml = tmp_path / "five.yml"
    yml.write_text("prompt: 'Q={question} A={answer}'\nprompt_with_reference: null\nscale: [1, 5]\n"
                   "score_pattern: 'Score: (\\d)'\nsystem: null\n")
    r = load_rubric(str(yml))
    assert r.parse("Score: 4") == (4.0, "ok") and r.parse("Score: 6") == (None, "out_of_range")
    assert r.messages("q", "a") == [{"role": "user", "content": "Q=q A=a"}]


@pytest.mark.parametrize("text,name,says", [
    ("prompt: 'Q={question}'\n", "bad.yml", "lacks the placeholder(s) {answer}"),
    ("prompt: '{question} {answer}'\nscale: [10, 1]\n", "bad.yml", "low < high"),
    ("prompt: '{question} {answer}'\nscore_pattern: '\\d+'\n", "bad.yml", "exactly one capture group"),
    ("promt: '{question} {answer}'\n", "bad.yml", "did you mean 'prompt'"),
    ("prompt: [unclosed\n", "bad.yml", "malformed YAML"),
    ("no placeholders at all", "bad.txt", "{question}"),
])
def test_bad_rubric_file_is_one_line_exit_2(tmp_path, text, name, says):
    rubric = tmp_path / name
    rubric.write_text(text)
    src = write_jsonl(tmp_path / "gen" / "generations.jsonl", ROWS[:1])
    line = one_error(cli("judge", src.parent, "-o", tmp_path / "judged", "--judge-model", "m", "--rubric", rubric), rubric)
    assert says in line
    assert not (tmp_path / "judged" / "judged.jsonl").exists()


def test_judge_option_errors(tmp_path):
    src = write_jsonl(tmp_path / "gen" / "generations.jsonl", ROWS[:1])
    one_error(cli("judge", src, "-o", tmp_path / "j"), "exactly one of --judge-model")
    one_error(cli("judge", src, "-o", tmp_path / "j", "--judge-model", "m", "--reward-model", "x"), "exactly one of")
    one_error(cli("judge", src, "-o", tmp_path / "j", "--judge-model", "m", "--rubric", tmp_path / "none.yml"),
              "none.yml", "rubric file not found")


# --- the LLM judge over HTTP -----------------------------------------------------------------

@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    script = tmp_path_factory.mktemp("script") / "judge.json"
    script.write_text(json.dumps(SCRIPT))
    with openai_server("unused", "--scripted", str(script), "--fail-first", "1") as url:
        yield url


def judge_args(src, out, url, *extra):
    return ["judge", src, "-o", out, "--judge-model", "judge-7b", "--backend", "openai", "--base-url", url + "/v1",
            "--concurrency", "3", "--max-retries", "2", *extra]


def test_llm_judge_end_to_end_over_http(tmp_path, judge_server):
    src, out = write_jsonl(tmp_path / "gen" / "generations.jsonl", ROWS), tmp_path / "judged"
    res = cli(*judge_args(src.parent, out, judge_server))
    assert res.exit_code == 0, res.output
    assert "[judge] rows in 5 → out 4" in res.output
    rows = {r["id"]: r for r in read_jsonl(out / "judged.jsonl")}
    assert set(rows) == {"r0", "r1", "r2", "r4"}
    g0, g1 = rows["r0"]["generations"]
    assert (g0["score"], g1["score"]) == (9.0, 2.0)
    assert g0["judge"] == {"status": "ok", "reasoning": "The answer is thorough and correct.\nRating: [[9]]"}
    assert g0["content"] == "GOOD-A answer" and g0["reasoning"] == "thinking"  # the generation itself untouched
    # unparsable replies are recorded as such, with no score (never a silent 0)
    assert rows["r2"]["generations"][0]["score"] is None
    assert rows["r2"]["generations"][0]["judge"]["status"] == "no_score"
    assert rows["r4"]["generations"][0]["judge"] == {"status": "ambiguous", "reasoning": "Somewhere between [[2]] and [[9]]."}
    assert rows["r1"]["judge_meta"]["model"] == "judge-7b" and rows["r1"]["judge_meta"]["rubric"] == "default"
    # r3: one of its judge requests got a 400: the row is recorded as failed, the run went on
    (err,) = read_jsonl(out / "_errors.jsonl")
    assert err["id"] == "r3" and err["status"] == 400 and "prompt too long" in err["message"]
    rep = json.loads((out / "_report.judge.json").read_text())
    assert rep["score_status"] == {"ok": 3, "no_score": 1, "ambiguous": 1}  # of the rows written
    assert rep["scores"]["histogram"] == {"2": 1, "9": 2} and (out / "_scores.judge.png").stat().st_size > 0
    assert rep["errors"]["count"] == 1
    stats = httpx.get(judge_server + "/stats").json()
    # the requests were real: the first got a 503 and was retried; r1 was graded against its reference
    assert stats["requests"] >= 7
    sent = [b["messages"][-1]["content"] for b in stats["bodies"]]
    (to_r1,) = [s for s in sent if "GOOD-B Paris" in s]
    assert "[The Start of Reference Answer]\nParis\n" in to_r1 and "What is the capital of France?" in to_r1
    assert all(b["temperature"] == 0.0 and b["model"] == "judge-7b" for b in stats["bodies"])

    # resume: nothing left but the failed row, which is skipped unless asked
    before = httpx.get(judge_server + "/stats").json()["requests"]
    again = cli(*judge_args(src.parent, out, judge_server))
    assert again.exit_code == 0 and "out 0" in again.output
    assert httpx.get(judge_server + "/stats").json()["requests"] == before
    # a run killed after r1 was judged: r1's line gone and a torn last line; only r1 is judged again
    lines = (out / "judged.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["id"] != "r1"]
    (out / "judged.jsonl").write_text("\n".join(kept) + '\n{"id": "r1", "generations": [{"te')
    again = cli(*judge_args(src.parent, out, judge_server))
    assert again.exit_code == 0 and "out 1" in again.output, again.output
    assert httpx.get(judge_server + "/stats").json()["requests"] == before + 1
    assert sorted(r["id"] for r in read_jsonl(out / "judged.jsonl")) == ["r0", "r1", "r2", "r4"]
    retried = cli(*judge_args(src.parent, out, judge_server, "--retry-errors", "--max-errors", "1"))
    assert retried.exit_code == 0 and "out 0" in retried.output  # r3 fails again: 1 error is allowed
    # another rubric is another judge: refused before anything is written
    other = tmp_path / "other.txt"
    other.write_text("{question} {answer} [[N]]")
    one_error(cli(*judge_args(src.parent, out, judge_server, "--rubric", other)), "_settings.judge.json", "rubric")


# --- a reward model ---------------------------------------------------------------------------

def build_reward_model(out_dir, num_labels: int = 1):
    from distill_plugin.testing.tiny import build_reward_model as build

    build(out_dir, num_labels=num_labels)
    return out_dir


def test_reward_model_scores_pairs_in_batches(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = build_reward_model(tmp_path / "rm")
    rows = [{"id": "a", "prompt": "Say hi.", "generations": [gen("hi"), gen("hello there, friend"), gen("x" * 50)]},
            {"id": "b", "prompt": [{"role": "user", "content": "Name a colour."}], "generations": [gen("blue")]}]
    src = write_jsonl(tmp_path / "gen.jsonl", rows)
    rep = judge(src, tmp_path / "judged", JudgeConfig(reward_model=str(rm), batch_size=2, max_length=60))
    out = {r["id"]: r for r in read_jsonl(tmp_path / "judged" / "judged.jsonl")}
    assert rep.rows_out == 2 and out["a"]["judge_meta"] == {"reward_model": str(rm), "max_length": 60}
    # each score is the model's logit for that pair alone (batching and padding change nothing)
    tok = AutoTokenizer.from_pretrained(str(rm))
    model = AutoModelForSequenceClassification.from_pretrained(str(rm)).eval()
    for rid, k, user in [("a", 0, "Say hi."), ("a", 1, "Say hi."), ("b", 0, "Name a colour.")]:
        g = out[rid]["generations"][k]
        text = tok.apply_chat_template([{"role": "user", "content": user},
                                        {"role": "assistant", "content": g["content"]}], tokenize=False)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            want = model(input_ids=ids).logits[0, 0].item()
        assert g["score"] == pytest.approx(want, abs=1e-5) and g["judge"] == {"status": "ok", "reasoning": None}
    # a pair over max_length is not truncated: no score, status too_long
    assert out["a"]["generations"][2]["score"] is None and out["a"]["generations"][2]["judge"]["status"] == "too_long"
    assert rep.extra["score_status"] == {"ok": 3, "too_long": 1}
    scores = [g["score"] for g in out["a"]["generations"][:2]] + [out["b"]["generations"][0]["score"]]
    assert len(set(scores)) == 3  # a real model: different answers, different rewards


def test_reward_model_with_several_labels_is_refused(tmp_path):
    rm = build_reward_model(tmp_path / "clf", num_labels=3)
    src = write_jsonl(tmp_path / "gen.jsonl", ROWS[:1])
    one_error(cli("judge", src, "-o", tmp_path / "j", "--reward-model", rm), rm, "num_labels 1")
