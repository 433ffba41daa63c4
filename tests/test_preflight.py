"""Checks that need no model, through Axolotl's own config loader and the plugin's hooks.

``axolotl.cli.config.load_cfg`` registers the plugin (``register``: the raw YAML) and validates;
``PluginManager.load_datasets`` is the hook ``axolotl.cli.train`` calls next, before it tokenises
the data or loads the student. One test runs the real ``axolotl.cli.train`` to show the user's view.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from axolotl_runs import SUBPROCESS_ENV, preflight, twin_of

OFFLINE = {"teacher": None, "teacher_dtype": None}  # drop the online teacher and its online-only dtype


def recipe(tmp_path, tiny_pair, data, **overrides):
    """The twin of recipes/logit_kd_qwen2_1p5b.yml, with ``overrides`` on top."""
    teacher, student = tiny_pair
    distill = {"teacher": str(teacher), **overrides.pop("distill", {})}
    return twin_of("logit_kd_qwen2_1p5b.yml", tmp_path / "recipe.yml", student, data, teacher=teacher,
                   output_dir=str(tmp_path / "out"), dataset_prepared_path=str(tmp_path / "prepared"),
                   distill=distill, **overrides)


def test_good_config_passes(tmp_path, tiny_pair, arithmetic_data, capsys):
    assert preflight(recipe(tmp_path, tiny_pair, arithmetic_data), capsys) is None


def test_missing_teacher_directory(tmp_path, tiny_pair, arithmetic_data, capsys):
    line = preflight(recipe(tmp_path, tiny_pair, arithmetic_data, distill={"teacher": str(tmp_path / "nope")}), capsys)
    assert "distill.teacher: no such directory" in line and "nope" in line


def test_unresolvable_hub_id_offline(tmp_path, tiny_pair, arithmetic_data, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = preflight(recipe(tmp_path, tiny_pair, arithmetic_data, distill={"teacher": "no-org/no-such-teacher"}), capsys)
    assert "distill.teacher: hub id 'no-org/no-such-teacher'" in line and "HF_HUB_OFFLINE" in line


def test_directory_without_config(tmp_path, tiny_pair, arithmetic_data, capsys):
    (tmp_path / "empty").mkdir()
    line = preflight(recipe(tmp_path, tiny_pair, arithmetic_data, distill={"teacher": str(tmp_path / "empty")}), capsys)
    assert "distill.teacher" in line and "config.json" in line


def test_teacher_with_another_tokenizer(tmp_path, tiny_pair, arithmetic_data, capsys):
    """One added token makes the vocabularies differ: refused before any model loads."""
    import shutil

    from transformers import AutoTokenizer

    other = tmp_path / "other_teacher"
    shutil.copytree(tiny_pair[0], other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    line = preflight(recipe(tmp_path, tiny_pair, arithmetic_data, distill={"teacher": str(other)}), capsys)
    assert "distill.teacher: tokenizer of" in line and "262 vs 261" in line


def test_missing_offline_store(tmp_path, tiny_pair, arithmetic_data, capsys):
    path = recipe(tmp_path, tiny_pair, arithmetic_data, distill={**OFFLINE, "teacher_logits": str(tmp_path / "nostore")})
    line = preflight(path, capsys)
    assert "distill.teacher_logits: no offline store" in line


def test_store_from_another_chat_template_is_refused(tmp_path, tiny_pair, arithmetic_data, capsys):
    """Offline logits silently depend on the capture's tokenizer and template: we check them, at start-up."""
    from distill_plugin.offline.capture import capture_teacher
    from distill_plugin.testing.tiny import STRIPPING_CHAT_TEMPLATE, build_tokenizer

    other_tok = build_tokenizer(chat_template=STRIPPING_CHAT_TEMPLATE)
    capture_teacher(tiny_pair[0], tmp_path / "logits", data=arithmetic_data, tokenizer=other_tok, k=8, progress=False)
    line = preflight(recipe(tmp_path, tiny_pair, arithmetic_data, distill={**OFFLINE, "teacher_logits": str(tmp_path / "logits")}),
                     capsys)
    assert line.startswith("distill_plugin: error: distill.teacher_logits:") and "chat template hash" in line, line


def test_store_with_ids_beyond_the_student_is_refused(tmp_path, tiny_pair, arithmetic_data, capsys):
    """A store captured over 300 rows (a padded teacher, before capture cut them) cannot index a
    261-row student: refused at start-up, not with an index error mid-run."""
    from transformers import AutoTokenizer

    from distill_plugin.offline.capture import make_meta
    from distill_plugin.offline.store import META_FILE

    store = tmp_path / "store"
    store.mkdir()
    meta = make_meta("padded-teacher", AutoTokenizer.from_pretrained(tiny_pair[1]), 4, 1.0, 256, vocab_size=300)
    (store / META_FILE).write_text(meta.to_json())
    line = preflight(recipe(tmp_path, tiny_pair, arithmetic_data, distill={**OFFLINE, "teacher_logits": str(store)}), capsys)
    assert "token ids up to 299" in line and "261 vocabulary rows" in line
    meta.vocab_size = 261  # what capture now records: the tokenizer's length
    (store / META_FILE).write_text(meta.to_json())
    assert preflight(recipe(tmp_path, tiny_pair, arithmetic_data, distill={**OFFLINE, "teacher_logits": str(store)}), capsys) is None


def misspelt(path, key):
    """The recipe at ``path`` with its ``distill:`` block renamed ``key``."""
    import yaml

    cfg = yaml.safe_load(path.read_text())
    cfg[key] = cfg.pop("distill")
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, tiny_pair, arithmetic_data) -> dict:
    """The user's view: ``axolotl.cli.train`` on a missing teacher and on a misspelt block. Both processes
    start at once (each is mostly Axolotl's import time on one core); name → (its directory, the
    finished process with ``returncode`` and ``stderr``, seconds until it exited)."""
    dirs = {name: tmp_path_factory.mktemp(name) for name in ("missing", "misspelt")}
    paths = {"missing": recipe(dirs["missing"], tiny_pair, arithmetic_data,
                               distill={"teacher": str(dirs["missing"] / "missing_teacher")}),
             "misspelt": misspelt(recipe(dirs["misspelt"], tiny_pair, arithmetic_data), "distil")}
    start = time.monotonic()
    procs = {name: subprocess.Popen([sys.executable, "-m", "axolotl.cli.train", str(path)], cwd=dirs[name],
                                    env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name, path in paths.items()}
    runs = {}
    for name, proc in procs.items():
        _, proc.stderr = proc.communicate(timeout=300)
        runs[name] = (dirs[name], proc, time.monotonic() - start)
    return runs


def test_cli_train_stops_before_data_and_model(cli_runs):
    """`axolotl.cli.train` exits 2 with one line naming the key, before tokenising."""
    root, proc, seconds = cli_runs["missing"]
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("distill_plugin: error:")]
    assert errors == [f"distill_plugin: error: distill.teacher: no such directory {str(root / 'missing_teacher')!r}"]
    assert "Traceback" not in proc.stderr
    assert not (root / "prepared").exists()  # the data was never tokenised, the student never loaded
    print(f"failed after {seconds:.1f} s")


def test_cli_train_refuses_misspelt_block(cli_runs):
    """Regression: `distil:` (one l) used to train plain SFT and exit 0."""
    root, proc, _ = cli_runs["misspelt"]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "has `distil:` — did you mean `distill:`?" in proc.stderr
    assert not (root / "prepared").exists()


@pytest.mark.parametrize("key", ["distil", "distillation"])
def test_misspelt_block_is_refused(tmp_path, tiny_pair, arithmetic_data, capsys, key):
    line = preflight(misspelt(recipe(tmp_path, tiny_pair, arithmetic_data), key), capsys)
    assert f"has `{key}:` — did you mean `distill:`?" in line


def test_on_policy_with_sample_packing_is_refused(tmp_path, tiny_pair, arithmetic_data, capsys):
    """Sampled completions need one prompt per row: the GKD recipe's twin with packing is refused."""
    teacher, student = tiny_pair

    def gkd(packing):
        return twin_of("gkd_on_policy.yml", tmp_path / f"gkd_{packing}.yml", student, arithmetic_data, teacher=teacher,
                       output_dir=str(tmp_path / "out"), dataset_prepared_path=str(tmp_path / "prepared"),
                       sample_packing=packing)

    line = preflight(gkd(True), capsys)
    assert line.startswith("distill_plugin: error: `sample_packing: true` with distill.on_policy_fraction"), line
    assert preflight(gkd(False), capsys) is None  # the packing, nothing else in the twin, is refused


KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel")


def test_cuda_only_lora_kernels_are_switched_off_with_one_warning(tmp_path, tiny_pair, arithmetic_data):
    """Axolotl switches its Triton LoRA kernels on by itself for LoRA; without CUDA they would fail at
    the first step (`torch._C` has no `_cuda_getCurrentRawStream`). The plugin switches them off
    before the model loads (Axolotl patches the model after), with one warning."""
    import logging

    import torch
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager

    assert not torch.cuda.is_available()
    path = recipe(tmp_path, tiny_pair, arithmetic_data, adapter="lora", lora_r=8, lora_alpha=16, lora_dropout=0.0,
                  lora_target_linear=True)
    cfg = load_cfg(str(path))
    assert all(cfg[key] for key in KERNELS)  # auto-enabled by Axolotl, not by the recipe
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("axolotl.distill_plugin")
    logger.addHandler(handler)
    try:
        assert PluginManager.get_instance().load_datasets(cfg) is None
    finally:
        logger.removeHandler(handler)
    assert not any(cfg[key] for key in KERNELS)
    switched = [r.getMessage() for r in records if "switched off" in r.getMessage()]
    assert len(switched) == 1 and all(key in switched[0] for key in KERNELS), switched


def test_cuda_only_switch_leaves_cuda_machines_and_unset_keys_alone():
    from axolotl.utils.dict import DictDefault

    from distill_plugin.preflight import switch_off_cuda_only

    cfg = DictDefault({key: True for key in KERNELS})
    assert switch_off_cuda_only(cfg, cuda=True) is None and all(cfg[key] for key in KERNELS)
    assert switch_off_cuda_only(DictDefault({"lora_mlp_kernel": False}), cuda=False) is None
    cfg = DictDefault({"lora_qkv_kernel": True})
    assert "lora_qkv_kernel" in switch_off_cuda_only(cfg, cuda=False) and cfg["lora_qkv_kernel"] is False
