"""Per-prompt generation failures over HTTP (a real server on loopback): a 400 for one prompt and an
unparsable response for another are recorded with id, status and the server's message; the run
goes on; ``max_errors`` stops it cleanly; resume skips failed prompts unless asked to retry."""

from __future__ import annotations

import json

import pytest

from data_prep.generate import GenerateConfig, generate
from data_prep.generation_errors import TooManyErrors
from distill_plugin.generation import SamplingParams
from dp_helpers import R1_SUFFIX, TRAINED, openai_server, read_jsonl, write_jsonl


@pytest.fixture(scope="module")
def server(tiny_teacher):
    with openai_server(tiny_teacher) as url:
        yield url


def prompts(tmp_path):
    rows = [{"id": f"ok{i}", "problem": q} for i, (q, _, _) in enumerate(TRAINED[:3])]
    rows.insert(1, {"id": "too-long", "problem": "<<reject>> a prompt over the context length"})
    rows.insert(3, {"id": "bad-body", "problem": "<<garbage>> please"})
    return write_jsonl(tmp_path / "p.jsonl", rows)


def config(server, **kw) -> GenerateConfig:
    return GenerateConfig(backend="openai", model="tiny", sampling=SamplingParams(n=1, max_tokens=8, seed=0),
                          backend_options={"base_url": server + "/v1", "concurrency": 2, "max_retries": 1,
                                           "backoff_s": 0.01}, **kw)


def test_failed_prompts_are_recorded_and_the_run_goes_on(tmp_path, server):
    src, out = prompts(tmp_path), tmp_path / "gen"
    report = generate([src], out, config(server))
    assert sorted(r["id"] for r in read_jsonl(out / "generations.jsonl")) == ["ok0", "ok1", "ok2"]
    errors = {e["id"]: e for e in read_jsonl(out / "_errors.jsonl")}
    assert set(errors) == {"too-long", "bad-body"}
    assert errors["too-long"]["status"] == 400 and "maximum context length is 64 tokens" in errors["too-long"]["message"]
    assert errors["bad-body"]["status"] == "unparsable" and "upstream proxy error" in errors["bad-body"]["message"]
    written = json.loads((out / "_report.generate.json").read_text())
    assert report.rows_out == 3 and written["errors"]["count"] == 2
    assert written["errors"]["by_status"] == {"400": 1, "unparsable": 1} and written["stopped"] is None

    again = generate([src], out, config(server))  # resume: failed prompts are skipped...
    assert again.rows_out == 0 and again.extra["skipped_failed_before"] == 2 and again.extra["errors"]["count"] == 0
    retried = generate([src], out, config(server, retry_errors=True))  # ...unless asked
    assert retried.rows_out == 0 and retried.extra["errors"]["count"] == 2
    assert len(read_jsonl(out / "_errors.jsonl")) == 4
    # later stages never read the error file as generations
    assert [p.name for p in sorted(out.glob("*.jsonl")) if not p.name.startswith("_")] == ["generations.jsonl"]


@pytest.mark.parametrize("max_errors", [1, 0.2])
def test_max_errors_stops_the_run_cleanly(tmp_path, server, max_errors):
    src, out = prompts(tmp_path), tmp_path / "gen"
    with pytest.raises(TooManyErrors, match=f"more than --max-errors {max_errors:g}"):
        generate([src], out, config(server, max_errors=max_errors))
    written = json.loads((out / "_report.generate.json").read_text())
    assert written["errors"]["count"] == 2 and "stopped" in written["stopped"]
    # what finished is kept, whole, and a resume (without the limit) completes the rest
    done = {r["id"] for r in read_jsonl(out / "generations.jsonl")} if (out / "generations.jsonl").exists() else set()
    assert done <= {"ok0", "ok1", "ok2"}
    generate([src], out, config(server))
    assert sorted(r["id"] for r in read_jsonl(out / "generations.jsonl")) == ["ok0", "ok1", "ok2"]


def test_cli_max_errors_exits_2_with_one_line(tmp_path, server):
    from typer.testing import CliRunner

    from data_prep.cli import app

    result = CliRunner().invoke(app, ["generate", str(prompts(tmp_path)), "-o", str(tmp_path / "gen"), "--model", "tiny",
                                      "--backend", "openai", "--base-url", server + "/v1", "-n", "1",
                                      "--max-tokens", "8", "--max-retries", "1", "--max-errors", "1"])
    assert result.exit_code == 2, result.output
    assert "more than --max-errors 1" in result.output and "Traceback" not in result.output


def test_token_id_prompts_go_to_completions(server, tiny_teacher):
    """The HTTP engine takes token-id prompts too (``/completions``, what on-policy sampling will send):
    the ids of a rendered chat sample exactly what the chat itself samples."""
    from transformers import AutoTokenizer

    from distill_plugin.generation import render_chat
    from distill_plugin.generation.openai_http import OpenAIHTTPBackend

    chat = [{"role": "user", "content": f"{TRAINED[0][0]}\n\n{R1_SUFFIX}"}]
    ids = AutoTokenizer.from_pretrained(tiny_teacher)(render_chat(AutoTokenizer.from_pretrained(tiny_teacher), chat),
                                                     add_special_tokens=False)["input_ids"]
    backend = OpenAIHTTPBackend("tiny", base_url=server + "/v1", concurrency=2)
    got = {}
    backend.generate([chat, ids], SamplingParams(n=1, max_tokens=24, seed=5), lambda i, c: got.setdefault(i, c))
    (from_chat,), (from_ids,) = got[0], got[1]
    assert from_ids.text == from_chat.text and from_ids.text  # same sample, non-empty
    assert from_ids.prompt_tokens == from_chat.prompt_tokens == len(ids)
    assert from_ids.finish_reason == from_chat.finish_reason
