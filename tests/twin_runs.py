"""Training a recipe's tiny twin through ``axolotl.cli.train`` and checking what its ``# twin-checks:``
header promises: shared by ``test_e2e_twins.py`` (every recipe) and the e2e tests that train a
twin next to something it needs (a served teacher, FSDP2 processes compared with one).

The twin is derived from the recipe (``distill_plugin.testing.twins``) on the session's tiny pair
(``twin_root``); the probe plugin (``distill_plugin.testing.probe``) records what the run really did.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from axolotl_runs import SUBPROCESS_ENV, override, run_axolotl_train, run_axolotl_train_two_processes
from distill_plugin.testing.recipe_header import read_header, twin_checks
from distill_plugin.testing.twins import STEPS, Fixtures, derive_twin

PROBE = "distill_plugin.testing.probe.ProbePlugin"


@dataclass
class Run:
    config: dict
    out: Path
    output: str
    logs: list[dict]
    probe: dict
    student: Path
    path: Path  # the twin's YAML, as trained


def component_names(run: Run) -> list[str]:
    return [key for key in run.logs[0] if key.endswith("_loss")]


def check_component(name):
    def check(run: Run):
        values = [entry.get(name) for entry in run.logs]
        assert all(v is not None and math.isfinite(v) and v >= 0 for v in values), (name, run.logs)
        if name == "kd_loss":
            assert all(v > 0 for v in values), values
    return check


def check_loss(run: Run):
    assert all(math.isfinite(e["loss"]) and e["loss"] > 0 for e in run.logs), run.logs


def check_loss_sum(run: Run):
    """loss = kd_scale·kd + ce_weight·ce + hidden_weight·hidden + attention_weight·attention, kd_scale = kd_weight·T² (temperature_squared),
    on the unrounded log history of the last checkpoint (the console shows 4 digits; the components
    are kept to 6 decimals, hence the 1e-5 tolerance)."""
    from distill_plugin.args import DistillConfig

    d = DistillConfig.model_validate(run.config["distill"])
    kd_scale = d.kd_weight * (d.temperature**2 if d.temperature_squared else 1.0)
    (state,) = sorted(run.out.glob("checkpoint-*/trainer_state.json"))[-1:]
    history = [e for e in json.loads(state.read_text())["log_history"] if "kd_loss" in e]
    assert len(history) == len(run.logs)
    for e in history:
        expected = (kd_scale * e["kd_loss"] + d.ce_weight * e.get("ce_loss", 0.0) + d.hidden_weight * e.get("hidden_loss", 0.0)
                    + d.attention_weight * e.get("attention_loss", 0.0))
        assert e["loss"] == pytest.approx(expected, rel=1e-6, abs=1e-5), (e, kd_scale, d.ce_weight, d.hidden_weight, d.attention_weight)
    assert kd_scale * history[0]["kd_loss"] > 0.05 * history[0]["loss"]  # the KD term is not negligible


def check_eval(run: Run):
    evals = re.findall(r"\{'eval_loss'[^}]*\}", run.output)
    assert evals, run.output[-3000:]
    for name in component_names(run):
        assert f"'eval_{name}'" in evals[-1], (name, evals[-1])


def check_packing(run: Run):
    assert run.config["sample_packing"] and 0 < run.probe["packed_batches"] <= run.probe["batches"], run.probe


def tensor_names(directory: Path, pattern: str) -> set[str]:
    names = set()
    for file in directory.glob(pattern):
        with safe_open(str(file), "pt") as f:
            names |= set(f.keys())
    return names


def full_model(directory: Path):
    """A saved plain model in fp32, every tensor of the checkpoint matched to the architecture."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"], info
    return model


def reloaded(run: Run):
    """The saved output as a user loads it: the full model, or the adapter on its (4-bit) base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from distill_plugin.modeling import keep_4bit_layers_trainable_on_cpu

    if not (run.out / "adapter_config.json").exists():
        return full_model(run.out)
    kwargs = {}
    if run.config.get("load_in_4bit"):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run.student, dtype=torch.float32, **kwargs), run.out)
    # The probe's logits came from the training run's 4-bit kernel; bitsandbytes' AVX512-BF16 inference
    # kernel (taken in eval mode on such CPUs) rounds differently, so compare on the same kernel.
    keep_4bit_layers_trainable_on_cpu(model)
    return model


def assert_gives_the_end_logits(run: Run, model) -> None:
    """Comparable: the same input, eval mode (no dropout), fp32 compute, the final weights."""
    end = torch.load(run.out / "probe_logits.pt")
    with torch.no_grad():
        logits = model.eval()(input_ids=end["input_ids"], use_cache=False).logits.float()
    torch.testing.assert_close(logits, end["logits"], rtol=1e-5, atol=1e-5)


def check_reload(run: Run):
    """The 4-bit base is re-quantised from the same checkpoint (NF4 is deterministic), so it is the trained one."""
    assert_gives_the_end_logits(run, reloaded(run))


def check_merge(run: Run):
    """``axolotl.cli.merge_lora`` on the twin's YAML writes ``output_dir/merged``: a plain model (no
    adapter) that gives the trained student's logits. The merged folder stays for a later stage."""
    proc = subprocess.run([sys.executable, "-m", "axolotl.cli.merge_lora", str(run.path)], cwd=run.path.parent,
                          env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    merged = run.out / "merged"
    assert not (merged / "adapter_config.json").exists() and tensor_names(merged, "model*.safetensors")
    assert_gives_the_end_logits(run, full_model(merged))


def check_adapter(run: Run):
    names = tensor_names(run.out, "adapter_model.safetensors")
    assert names and all("lora_" in n for n in names), names
    assert run.probe["trainable"][0] < run.probe["trainable"][1]  # a frozen base
    check_reload(run)


def check_4bit(run: Run):
    assert run.probe["student_4bit"], run.probe


def check_teacher_4bit(run: Run):
    assert run.probe["teacher_4bit"], run.probe


def check_projectors(run: Run):
    from distill_plugin.hidden.projector import PROJECTOR_FILE

    assert (run.out / PROJECTOR_FILE).exists()
    assert run.probe["projectors_moved"] > 0, run.probe  # they train, next to a frozen base under (Q)LoRA
    saved = tensor_names(run.out, "model*.safetensors") | tensor_names(run.out, "adapter_model.safetensors")
    assert saved and not any("maps." in n or "projector" in n for n in saved)


def check_stored_topk(run: Run):
    assert re.search(r"teacher = offline top-\d+ logits", run.output), run.output[-3000:]


def check_ddp(run: Run):
    assert run.probe["world_size"] == 2, run.probe


def check_on_policy(run: Run):
    """Each step's sampling decision is the schedule's for the run's seed (one draw per optimizer step);
    steps whose completions were sampled log their mean length, the run had both kinds of step (unless
    every step samples) and every step has a gradient."""
    from distill_plugin.args import DistillConfig
    from distill_plugin.onpolicy.schedule import StepSchedule

    d = DistillConfig.model_validate(run.config["distill"])
    decisions = StepSchedule(d.on_policy_fraction, run.config.get("seed") or 0).decisions(0, len(run.logs))
    assert any(decisions), "no on-policy step in the twin's run: the check would prove nothing"
    if d.on_policy_fraction < 1:
        assert not all(decisions), "a mixed schedule shows both kinds of step in the twin's run"
    for k, entry in enumerate(run.logs, start=1):
        assert entry["kd_loss"] > 0 and entry["grad_norm"] > 0, (k, entry)  # sampled steps train too
        assert entry["on_policy"] == pytest.approx(sum(decisions[:k]) / k, abs=1e-4), (k, entry)
        sampled = decisions[k - 1] or d.seq_kd
        assert ("generated_length" in entry) == sampled, (k, entry)
        if sampled:
            assert 0 < entry["generated_length"] <= d.max_new_tokens and 0 < entry["generation_time_share"] < 1


def check_alignment(run: Run):
    """Cross-tokenizer twins: the start-up line, and the KD components are > 0 (pairs were aligned)."""
    assert run.output.count("alignment in use (cross_tokenizer") == 1, run.output[-3000:]
    assert all(e["uld_loss"] > 0 for e in run.logs), run.logs


def check_fsdp2(run: Run):
    """FSDP2 really sharded the student over both processes (on CPU Accelerate would drop the request
    silently; ``no_cuda.fsdp2_on_cpu`` keeps it), and its save path wrote the checkpoint."""
    assert run.probe["world_size"] == 2 and run.probe["student_sharded"], run.probe
    assert list(run.out.glob("checkpoint-*/pytorch_model_fsdp.bin")), sorted(p.name for p in run.out.rglob("*"))


def check_teacher_shard(run: Run):
    assert run.probe["teacher_sharded"] and not run.probe["teacher_4bit"], run.probe


CHECKS = {
    "loss": check_loss, "kd_loss": check_component("kd_loss"), "ce_loss": check_component("ce_loss"),
    "hidden_loss": check_component("hidden_loss"), "attention_loss": check_component("attention_loss"), "loss_sum": check_loss_sum, "eval": check_eval,
    "packing": check_packing, "adapter": check_adapter, "reload": check_reload, "4bit": check_4bit,
    "teacher_4bit": check_teacher_4bit, "projectors": check_projectors, "stored_topk": check_stored_topk,
    "ddp": check_ddp, "on_policy": check_on_policy, "next_byte_loss": check_component("next_byte_loss"), "uld_loss": check_component("uld_loss"),
    "alignment": check_alignment, "fsdp2": check_fsdp2, "teacher_shard": check_teacher_shard, "merge": check_merge,
}


def check_promises(recipe: Path, run: Run) -> None:
    """Every check the recipe's ``# twin-checks:`` header names, on its twin's run."""
    for name in twin_checks(read_header(recipe)):
        CHECKS[name](run)


def train_twin(recipe: Path, twin_root: Path, workdir: Path, overrides: dict | None = None, processes: int | None = None,
               env: dict | None = None, steps: int = STEPS, **fixtures) -> Run:
    """Derive ``recipe``'s twin of ``steps`` steps under ``workdir`` (``fixtures`` replace ``Fixtures.under``'s), put
    ``overrides`` on top (``axolotl_runs.override``: what a test compares needs, e.g. no FSDP for a
    one-process reference), train it in ``processes`` (default: the twin's) and read what it did."""
    workdir.mkdir(parents=True, exist_ok=True)
    fixtures = Fixtures.under(twin_root, workdir, **fixtures)
    twin = derive_twin(recipe, fixtures, steps=steps)
    twin.config["plugins"] = [*twin.config.get("plugins", []), PROBE]
    override(twin.config, **(overrides or {}))
    twin.changes += [f"{key}: set by the test" for key in overrides or {}]
    path = twin.write(workdir / "twin.yml")
    if (twin.config.get("distill") or {}).get("teacher_logits"):
        from distill_plugin.offline.capture import capture_teacher

        # Captured with the twin's own config: Axolotl's tokenisation, packing and sequence_len.
        capture_teacher(fixtures.teacher or twin_root / "teacher", fixtures.teacher_logits, config=path, k=16, progress=False)
    train = run_axolotl_train_two_processes if (processes or twin.processes) == 2 else run_axolotl_train
    output, logs = train(path, cwd=workdir, timeout=1100, env=env)  # ~1 min alone; 10+ on a machine shared 8 ways
    out = Path(twin.config["output_dir"])
    probe = json.loads((out / "probe.json").read_text())
    assert len(logs) == twin.config["max_steps"], logs
    return Run(twin.config, out, output, logs, probe, Path(twin.config["base_model"]), path)
