"""User errors through the real CLI: one line naming the file/URL/key, exit 2, nothing written;
--debug shows the traceback. Refusals before writing (output = or inside an input, a JSON array,
an empty input), nested YAML keys checked, settings recorded and compared on resume."""

import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dp_helpers import subprocess_env, write_jsonl
from data_prep.cli import app
from data_prep.io import InputError
from data_prep.pipeline import load_config

GEN = {"text": "<think>\nr\n</think>\n\n\\boxed{1}", "reasoning": "r", "content": "\\boxed{1}",
       "think_closed": True, "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 9,
       "correct": True, "verdict": "correct"}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(res, *names) -> str:
    """The run exited 2 with exactly one ``error:`` line that names each of ``names``."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.output
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def tree(path):
    return sorted(str(p.relative_to(path)) + ("/" if p.is_dir() else f":{p.stat().st_size}")
                  for p in path.rglob("*"))


def gen_rows(path, n=3):
    return write_jsonl(path, [{"id": f"r{i}", "prompt": f"Q{i}", "answer": "1", "generations": [GEN]}
                              for i in range(n)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- one line, exit 2 -------------------------------------------------------------------------

def test_missing_input_file(tmp_path):
    one_error(cli("verify", tmp_path / "nope.jsonl", "-o", tmp_path / "ver"), tmp_path / "nope.jsonl")
    assert not (tmp_path / "ver").exists()


def test_server_unreachable_names_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    one_error(cli("generate", src, "-o", tmp_path / "gen", "--backend", "openai", "--model", "m",
                  "--base-url", url, "--max-retries", "0"), url)


def test_malformed_yaml_names_file_and_line(tmp_path):
    cfg = tmp_path / "pipe.yml"
    cfg.write_text("input: p.jsonl\nworkdir: run\ngenerate: {model: m\nverify: {task: math}\n")
    line = one_error(cli("run", cfg), cfg)
    assert f"{cfg}:" in line and "malformed YAML" in line
    one_error(cli("run", tmp_path / "missing.yml"), tmp_path / "missing.yml")


@pytest.mark.parametrize("args,name", [
    (["--taks", "math"], "--taks"),  # unknown option
    (["--task", "maths"], "task"),  # bad value: names the key
    (["--workers", "many"], "--workers"),
])
def test_bad_option(tmp_path, args, name):
    src = gen_rows(tmp_path / "gen.jsonl")
    one_error(cli("verify", src, "-o", tmp_path / "ver", *args), name)
    assert not (tmp_path / "ver").exists()


def test_debug_shows_the_traceback(tmp_path):
    cmd = [sys.executable, "-m", "data_prep.cli", "--debug", "verify", str(tmp_path / "nope.jsonl"),
           "-o", str(tmp_path / "ver")]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "Traceback" in res.stderr and "FileNotFoundError" in res.stderr
    plain = subprocess.run(cmd[:3] + cmd[4:], env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert [ln for ln in plain.stderr.splitlines() if ln.strip()] == [f"error: input not found: {tmp_path / 'nope.jsonl'}"]


# --- refuse before writing --------------------------------------------------------------------

def test_output_equal_to_input_is_refused(tmp_path):
    gen = tmp_path / "gen"
    src = gen_rows(gen / "generations.jsonl")
    before = tree(tmp_path)
    one_error(cli("verify", gen, "-o", gen), "the input")
    one_error(cli("filter", gen, "-o", gen), "the input")
    one_error(cli("export", src, "-o", src), "the input")
    one_error(cli("generate", src, "-o", src, "--model", "m"), "the input")
    one_error(cli("merge", gen, "-o", gen), "the input")
    assert tree(tmp_path) == before  # nothing written, the input untouched


def test_output_inside_an_input_folder_is_refused(tmp_path):
    gen = tmp_path / "gen"
    gen_rows(gen / "generations.jsonl")
    before = tree(tmp_path)
    one_error(cli("verify", gen, "-o", gen / "ver"), "inside the input folder")
    one_error(cli("filter", gen, "-o", gen / "kept.jsonl"), "inside the input folder")
    one_error(cli("export", gen, "-o", gen / "train.jsonl"), "inside the input folder")
    one_error(cli("merge", gen, "-o", gen / "all.jsonl"), "inside the input folder")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("content,why", [
    ('[{"id": "a", "prompt": "Q", "generations": []}]\n', "one JSON array"),
    ('[\n  {"id": "a",\n   "prompt": "Q"}\n]\n', "one JSON array"),
    ("", "is empty"),
    ("\n  \n", "is empty"),
])
@pytest.mark.parametrize("stage", ["generate", "verify", "filter", "export"])
def test_json_array_and_empty_inputs_are_refused(tmp_path, content, why, stage):
    src = tmp_path / "in.json"
    src.write_text(content)
    out = tmp_path / "out"
    extra = ["--model", "m"] if stage == "generate" else []
    one_error(cli(stage, src, "-o", out, *extra), src, why)
    assert not out.exists()


def test_all_inputs_empty_vs_one_empty_shard(tmp_path):
    gen = tmp_path / "gen"
    (gen / "generations-00000-of-00002.jsonl").parent.mkdir()
    (gen / "generations-00000-of-00002.jsonl").write_text("")
    (gen / "generations-00001-of-00002.jsonl").write_text("")
    one_error(cli("verify", gen, "-o", tmp_path / "ver"), "all 2 input files are empty")
    gen_rows(gen / "generations-00001-of-00002.jsonl")  # one empty shard among others is fine
    assert cli("verify", gen, "-o", tmp_path / "ver", "--workers", "1").exit_code == 0


# --- nested config keys -----------------------------------------------------------------------

BASE_YAML = "input: p.jsonl\nworkdir: run\ngenerate:\n  model: m\n"


@pytest.mark.parametrize("extra,message", [
    ("  samplng: {n: 2}\n", "unknown key 'generate.samplng' (did you mean 'generate.sampling'?)"),
    ("  sampling: {n: 2, temprature: 0.7}\n",
     "unknown key 'generate.sampling.temprature' (did you mean 'generate.sampling.temperature'?)"),
    ("  prompt: {prefil_think: true}\n", "unknown key 'generate.prompt.prefil_think' (did you mean 'generate.prompt.prefill_think'?)"),
    ("  fields: {answr: gold}\n", "unknown key 'generate.fields.answr' (did you mean 'generate.fields.answer'?)"),
    ("verify: {tsk: code}\n", "unknown key 'verify.tsk' (did you mean 'verify.task'?)"),
    ("filter: {max_token: 100}\n", "unknown key 'filter.max_token' (did you mean 'filter.max_tokens'?)"),
    ("filter: {benchmark_fields: {promt: q}}\n", "unknown key 'filter.benchmark_fields.promt' (did you mean 'filter.benchmark_fields.prompt'?)"),
    ("export: {selct: all}\n", "unknown key 'export.selct' (did you mean 'export.select'?)"),
    ("exprt: {select: all}\n", "unknown key 'exprt' (did you mean 'export'?)"),
    ("verify: {zzz: 1}\n", "unknown key 'verify.zzz' (valid keys: task, "),
    ("verify: {task: maths}\n", "verify.task: Input should be 'math', 'code' or 'mcq'"),
    ("  backend: openai\n  backend_options: {concurency: 8}\n",
     "unknown key 'generate.backend_options.concurency' for backend openai (did you mean 'generate.backend_options.concurrency'?)"),
    ("  backend_options: {batch_sise: 8}\n",
     "unknown key 'generate.backend_options.batch_sise' for backend hf (did you mean 'generate.backend_options.batch_size'?)"),
])
def test_nested_config_keys_are_checked(tmp_path, extra, message):
    cfg = tmp_path / "pipe.yml"
    cfg.write_text(BASE_YAML + extra)
    with pytest.raises(InputError) as e:
        load_config(cfg)
    assert str(e.value).startswith(f"{cfg}: {message}")
    one_error(cli("run", cfg), message)
    assert not (tmp_path / "run").exists()


# --- settings recorded, compared on resume ----------------------------------------------------

def test_resume_with_other_settings_stops_with_the_difference(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    gen = tmp_path / "gen"
    base = ["generate", src, "-o", gen, "--backend", "openai", "--base-url", url, "--max-retries", "0"]
    one_error(cli(*base, "--model", "a", "-n", "2"), url)  # the server is down, settings recorded
    assert (gen / "_settings.generate.json").exists()
    one_error(cli(*base, "--model", "a", "-n", "2"), url)  # same settings: goes on to the server
    line = one_error(cli(*base, "--model", "b", "-n", "3", "--temperature", "1.0"), "_settings.generate.json")
    assert 'model: "a" → "b"' in line and "sampling.n: 2 → 3" in line and "sampling.temperature: 0.6 → 1.0" in line

    ver_in = gen_rows(tmp_path / "g2" / "generations.jsonl")
    ver = tmp_path / "ver"
    assert cli("verify", ver_in, "-o", ver, "--workers", "1").exit_code == 0
    assert (ver / "_settings.verify.json").exists()
    line = one_error(cli("verify", ver_in, "-o", ver, "--task", "mcq"), "_settings.verify.json")
    assert 'task: "math" → "mcq"' in line
    assert cli("verify", ver_in, "-o", ver, "--workers", "1").exit_code == 0  # same settings resume


def test_filter_and_export_record_their_settings(tmp_path):
    import json

    src = gen_rows(tmp_path / "ver" / "verified.jsonl")
    assert cli("filter", src, "-o", tmp_path / "kept", "--ngram", "6").exit_code == 0
    assert json.loads((tmp_path / "kept" / "_settings.filter.json").read_text())["ngram"] == 6
    assert cli("export", tmp_path / "kept", "-o", tmp_path / "out" / "train.jsonl", "--select", "all").exit_code == 0
    assert json.loads((tmp_path / "out" / "_settings.export.json").read_text())["select"] == "all"


def test_shared_option_groups_reach_every_verb_that_declares_them():
    """generate, judge and evaluate take their engine flags from one declaration
    (data_prep/cli_options.py); generate and evaluate also share the prompt flags."""
    import typer.main

    group = typer.main.get_command(app)
    flags = {name: {opt for p in group.commands[name].params for opt in p.opts}
             for name in ("generate", "judge", "evaluate")}
    engine = {"--base-url", "--api-key-env", "--concurrency", "--timeout", "--max-retries", "--tensor-parallel-size"}
    prompting = {"-n", "--temperature", "--suffix", "--prefill-think", "--field-prompt", "--field-choices", "--limit"}
    for name in flags:
        assert engine <= flags[name], name
    assert prompting <= flags["generate"] and prompting <= flags["evaluate"]
