"""Derive a tiny CPU twin from a real recipe: the recipe's own YAML, with only what cannot run here changed.

    from distill_plugin.testing.twins import Fixtures, derive_twin

    twin = derive_twin("recipes/qlora_logit_kd.yml",
                       Fixtures(student=..., teacher=..., data=..., workdir=tmp_path))
    twin.config       # the derived Axolotl config (a dict); twin.write(path) saves it as YAML
    twin.changes      # what differs from the recipe, one readable line per key, e.g.
                      # "sequence_len: 4096 → 256 (tiny models, CPU time)"
    twin.processes    # processes to launch: 1, or 2 (gloo, CPU) for a recipe sized for several GPUs
    twin.cpu_blocker  # None, or why this twin can only be validated here, not trained

    python -m distill_plugin.testing.twins RECIPE --fixtures runs/tiny -o runs/tiny/twin.yml

The rules, in order; every change is listed with its reason, and nothing else changes:

  models     ``base_model`` (and ``base_model_config`` / ``tokenizer_config``) → ``fixtures.student``
             (``fixtures.cross_student``, on another tokenizer, when ``distill.cross_tokenizer`` is set);
             ``distill.teacher`` → ``fixtures.teacher``, or, when it lies under another recipe's
             ``output_dir`` that ``fixtures.outputs`` maps (a chain: a later stage distils from an
             earlier stage's saved student), the same place under that recipe's twin's output;
             ``distill.teacher_logits`` →
             ``fixtures.teacher_logits``; ``distill.teacher_server``'s ``url`` and ``model`` →
             ``fixtures.teacher_server`` (a server of the tiny teacher; the rest of the block stays);
             any ``distill`` key in ``fixtures.distill`` → its value
             (a server URL, another teacher...). A resource key (``RESOURCE_KEYS``) that the recipe
             sets and the fixtures lack is an error, never a twin that points at a hub id.
  data       ``datasets[i].path`` and ``test_datasets[i].path`` → ``fixtures.data`` (the entry's
             other keys, its parsing, stay: they are what the twin tests); ``dataset_prepared_path``
             → ``fixtures.prepared`` (one prepared copy shared by twins); ``output_dir`` → workdir/out.
  size       ``sequence_len`` ≤ 256; ``max_steps`` = ``steps``; ``num_epochs`` 1;
             ``gradient_accumulation_steps`` and ``micro_batch_size`` ≤ 2; per-epoch saves and evals →
             once, at the last step; ``val_set_size`` > 0 → 0.1 (a few rows of the small data);
             ``logging_steps`` 1; ``distill.max_new_tokens`` ≤ 16 (on-policy sampling);
             ``hidden_layers`` / ``attention_layers: uniform:N / last:N`` with N above the
             tiny student's depth → its depth.
  CPU        ``bf16`` / ``fp16`` / ``tf32`` → false; flash attention → ``sdpa`` (student and
             ``distill.teacher_attn_implementation``); Axolotl's Triton LoRA kernels
             (``lora_*_kernel``) → false where the recipe sets them, and for LoRA recipes without the
             distill plugin (Axolotl turns them on by itself; the plugin turns them off without CUDA);
             Triton-only integrations (cut-cross-entropy, Liger) → off and their plugins removed;
             ``torch_compile`` → false; hub pushes and wandb → off (no network).
  processes  ``sized-for: Nx...`` with N > 1 → 2 CPU processes (gloo), the smallest multi-process run.

Kept as the recipe has them: 4-bit loading and QLoRA (bitsandbytes 0.50 runs them on CPU; its 4-bit
kernel needs widths that are multiples of 64, so QLoRA twins need a fixture pair of such widths), the
optimizer (bitsandbytes' paged 8-bit AdamW runs on CPU too), adapters, packing, gradient
checkpointing, the schedule, the whole ``distill:`` maths and the teacher's dtype.
Other branches extend ``RESOURCE_KEYS`` (a new teacher source) and ``CPU_BLOCKERS`` (an engine that
cannot run on CPU) with one entry each.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from .recipe_header import gpus, read_header

SEQUENCE_LEN = 256
STEPS = 4
CAP = 2  # micro_batch_size and gradient_accumulation_steps: accumulation still happens, briefly
VAL_SET_SIZE = 0.1
MAX_NEW_TOKENS = 16  # on-policy twins: tokens sampled per completion

# distill keys that name a resource (a model, a store, a server), and the Fixtures field standing in for it.
RESOURCE_KEYS = {"teacher": "teacher", "teacher_logits": "teacher_logits", "teacher_server": "teacher_server"}
# What ``Fixtures.under`` points a served-teacher twin at: the fixtures' teacher, served locally by
#   python -m distill_plugin.serve ROOT/teacher --served-model-name tiny-teacher --max-logprobs 64 --port 8000
# (tests pass the URL of their own loopback server instead).
LOCAL_SERVER = {"url": "http://127.0.0.1:8000/v1", "model": "tiny-teacher"}
FLASH = ("flash_attention_2", "flash_attention_3")
TRITON_ONLY = {  # key → the plugin that carries it (removed with it)
    "cut_cross_entropy": "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin",
    "liger_rope": "axolotl.integrations.liger.LigerPlugin",
    "liger_rms_norm": "axolotl.integrations.liger.LigerPlugin",
    "liger_glu_activation": "axolotl.integrations.liger.LigerPlugin",
    "liger_layer_norm": "axolotl.integrations.liger.LigerPlugin",
    "liger_cross_entropy": "axolotl.integrations.liger.LigerPlugin",
    "liger_fused_linear_cross_entropy": "axolotl.integrations.liger.LigerPlugin",
}
LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")
PLUGIN = "distill_plugin.DistillPlugin"
NETWORK_KEYS = ("hub_model_id", "hub_strategy", "wandb_project", "wandb_entity", "wandb_name", "wandb_watch",
                "wandb_log_model", "mlflow_tracking_uri", "comet_api_key")
# (test on the recipe's config, reason): a twin that matches cannot train on this machine.
CPU_BLOCKERS: list[tuple[Callable[[dict], bool], str]] = [
    (lambda cfg: bool(cfg.get("deepspeed")), "DeepSpeed needs CUDA (no CPU accelerator in this stack)"),
]


@dataclass(frozen=True)
class Fixtures:
    """Local stand-ins for what a recipe names on the hub or on a GPU machine."""

    student: str | Path                  # a tiny model directory (distill_plugin.testing.tiny.prepare_tiny_run)
    data: str | Path                     # a chat JSONL (``messages``), e.g. distill_plugin.testing.addition.make_split
    workdir: str | Path                  # output_dir goes under it
    teacher: str | Path | None = None    # a tiny teacher sharing the student's tokenizer (online recipes)
    prepared: str | Path | None = None   # dataset_prepared_path, shared by twins (default workdir/prepared)
    teacher_logits: str | Path | None = None  # an offline store (captured with the twin's own config)
    distill: Mapping[str, Any] = field(default_factory=dict)  # further distill-key stand-ins, e.g. a server URL
    cross_student: str | Path | None = None  # the student of a cross-tokenizer recipe (another tokenizer than the teacher's)
    teacher_server: Mapping[str, Any] | None = None  # keys of distill.teacher_server to replace: the url and served name of the fixtures' teacher
    outputs: Mapping[str, str | Path] = field(default_factory=dict)  # an earlier stage's output_dir (as its recipe spells it) → its twin's output_dir

    @classmethod
    def under(cls, root: str | Path, workdir: str | Path, **kwargs) -> "Fixtures":
        """What ``distill_plugin.testing.tiny.prepare_tiny_run(root)`` builds (``root/student``,
        ``root/teacher``, ``root/data.jsonl``; prepared data shared in ``root/prepared``), with this
        twin's outputs (and its offline store, ``workdir/logits``) under ``workdir``; a served teacher
        at ``LOCAL_SERVER``."""
        root, workdir = Path(root), Path(workdir)
        defaults = dict(student=root / "student", teacher=root / "teacher", data=root / "data.jsonl", workdir=workdir,
                        prepared=root / "prepared", teacher_logits=workdir / "logits", cross_student=root / "student_sp",
                        teacher_server=LOCAL_SERVER)
        return cls(**{**defaults, **kwargs})


@dataclass
class Twin:
    recipe: Path
    config: dict
    changes: list[str]
    processes: int = 1
    cpu_blocker: str | None = None

    def write(self, path: str | Path) -> Path:
        """Save the config as YAML, the list of changes as its header comment."""
        path = Path(path)
        lines = [f"# Tiny CPU twin of {self.recipe}, derived by distill_plugin.testing.twins. Changes:"]
        lines += [f"#   {change}" for change in self.changes]
        path.write_text("\n".join(lines) + "\n" + yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True))
        return path


class _Edits:
    """The config being derived and the readable list of what changed."""

    def __init__(self, cfg: dict):
        self.cfg, self.changes = cfg, []

    def set(self, where: dict, key: str, value, why: str, name: str | None = None) -> None:
        before = where.get(key)
        if before != value:
            where[key] = value
            self.changes.append(f"{name or key}: {_show(before)} → {_show(value)} ({why})")

    def drop(self, where: dict, key: str, why: str, name: str | None = None) -> None:
        if key in where:
            self.changes.append(f"{name or key}: {_show(where.pop(key))} → removed ({why})")


def _show(value) -> str:
    return "unset" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def derive_twin(recipe: str | Path, fixtures: Fixtures, steps: int = STEPS, sequence_len: int = SEQUENCE_LEN) -> Twin:
    """The tiny CPU twin of ``recipe`` (a path into ``recipes/``): see the module docstring for the rules."""
    recipe = Path(recipe)
    raw = yaml.safe_load(recipe.read_text())
    header = read_header(recipe)
    edits = _Edits(copy.deepcopy(raw))
    _models(edits, fixtures, recipe)
    _data(edits, fixtures)
    _size(edits, fixtures, steps, sequence_len)
    _cpu(edits)
    processes = 1
    if gpus(header) > 1:
        processes = 2
        edits.changes.append(f"processes: {gpus(header)} GPUs → 2 CPU processes (gloo; sized-for: {header['sized-for']})")
    return Twin(recipe, edits.cfg, edits.changes, processes, cpu_blocker(raw))


def cpu_blocker(cfg: dict) -> str | None:
    """Why a recipe with config ``cfg`` cannot train on this machine's CPU (``CPU_BLOCKERS``), or None."""
    return next((why for test, why in CPU_BLOCKERS if test(cfg)), None)


def _models(edits: _Edits, fx: Fixtures, recipe: Path) -> None:
    cfg = edits.cfg
    student, why = fx.student, "tiny student"
    if (cfg.get("distill") or {}).get("cross_tokenizer", "off") != "off" and fx.cross_student is not None:
        student, why = fx.cross_student, "tiny student on the second tokenizer (cross-tokenizer recipe)"
    edits.set(cfg, "base_model", str(student), why)
    for key in ("base_model_config", "tokenizer_config"):
        if key in cfg:
            edits.set(cfg, key, str(student), why)
    distill = cfg.get("distill") or {}
    stand_ins = {key: getattr(fx, attr) for key, attr in RESOURCE_KEYS.items()} | dict(fx.distill)
    upstream = _upstream(distill.get("teacher"), fx.outputs)
    if upstream is not None and "teacher" not in fx.distill:
        edits.set(distill, "teacher", str(upstream), "the twin of the stage that writes it", "distill.teacher")
        del stand_ins["teacher"]
    for key, value in stand_ins.items():
        if distill.get(key) is None:
            continue
        if value is None:
            raise ValueError(f"{recipe}: distill.{key} is set, but the fixtures have no `{RESOURCE_KEYS.get(key, key)}` to stand in for it")
        if isinstance(value, Mapping) and isinstance(distill[key], dict):  # a block (teacher_server): only the named entries
            for sub, item in value.items():
                edits.set(distill[key], sub, item, "fixture", f"distill.{key}.{sub}")
        else:
            edits.set(distill, key, str(value) if isinstance(value, Path) else value, "fixture", f"distill.{key}")


def _upstream(teacher: str | None, outputs: Mapping[str, str | Path]) -> Path | None:
    """Where a twin finds ``teacher`` when it is (under) an earlier stage's ``output_dir``: that
    stage's twin's output, the same relative path below it; None for any other teacher."""
    for recipe_out, twin_out in outputs.items():
        if teacher is not None and Path(teacher).is_relative_to(Path(recipe_out)):
            return Path(twin_out) / Path(teacher).relative_to(Path(recipe_out))
    return None


def _data(edits: _Edits, fx: Fixtures) -> None:
    cfg = edits.cfg
    for group in ("datasets", "test_datasets"):
        for i, entry in enumerate(cfg.get(group) or []):
            edits.set(entry, "path", str(fx.data), "local data", f"{group}[{i}].path")
            edits.drop(entry, "data_files", "local data", f"{group}[{i}].data_files")
    edits.set(cfg, "dataset_prepared_path", str(fx.prepared or Path(fx.workdir) / "prepared"), "shared prepared data")
    edits.set(cfg, "output_dir", str(Path(fx.workdir) / "out"), "scratch directory")
    edits.drop(cfg, "resume_from_checkpoint", "fresh run")


def _size(edits: _Edits, fx: Fixtures, steps: int, sequence_len: int) -> None:
    cfg = edits.cfg
    why = "tiny models, CPU time"
    if cfg.get("sequence_len", sequence_len + 1) > sequence_len:
        edits.set(cfg, "sequence_len", sequence_len, why)
    edits.set(cfg, "max_steps", steps, why)
    if "num_epochs" in cfg:
        edits.set(cfg, "num_epochs", 1, why)
    for key in ("micro_batch_size", "gradient_accumulation_steps"):
        if cfg.get(key, 1) > CAP:
            edits.set(cfg, key, CAP, why)
    if cfg.get("val_set_size"):
        edits.set(cfg, "val_set_size", VAL_SET_SIZE, "a few eval rows of the small data")
    for per_epoch, at in (("saves_per_epoch", "save_steps"), ("evals_per_epoch", "eval_steps")):
        if per_epoch in cfg:
            edits.drop(cfg, per_epoch, f"once, at step {steps}")
            edits.set(cfg, at, steps, "the last step")
        elif cfg.get(at, 0) > steps:
            edits.set(cfg, at, steps, "the last step")
    if cfg.get("logging_steps", 1) != 1:
        edits.set(cfg, "logging_steps", 1, "every step is checked")
    distill = cfg.get("distill") or {}
    if distill.get("max_new_tokens", 0) > MAX_NEW_TOKENS:  # on-policy sampling: sequential decoding
        edits.set(distill, "max_new_tokens", MAX_NEW_TOKENS, why, "distill.max_new_tokens")
    _clamp_layer_maps(edits, Path(fx.student))


def _clamp_layer_maps(edits: _Edits, student: Path) -> None:
    distill = edits.cfg.get("distill") or {}
    config = student / "config.json"
    for key in ("hidden_layers", "attention_layers"):  # the same layer-map syntax
        spec = distill.get(key)
        if not (isinstance(spec, str) and ":" in spec and config.exists()):
            continue
        depth = json.loads(config.read_text())["num_hidden_layers"]
        kind, n = spec.split(":")
        if int(n) > depth:
            edits.set(distill, key, f"{kind}:{depth}", f"the tiny student has {depth} layers", f"distill.{key}")


def _cpu(edits: _Edits) -> None:
    cfg = edits.cfg
    for key in ("bf16", "fp16", "tf32", "bfloat16", "float16"):
        if cfg.get(key) not in (None, False):
            edits.set(cfg, key, False, "CPU: fp32")
    if cfg.get("attn_implementation") in FLASH:
        edits.set(cfg, "attn_implementation", "sdpa", "flash attention needs CUDA")
    for key in ("flash_attention", "xformers_attention"):
        if cfg.get(key):
            edits.set(cfg, key, False, "needs CUDA")
    distill = cfg.get("distill") or {}
    if distill.get("teacher_attn_implementation") in FLASH:
        edits.set(distill, "teacher_attn_implementation", "sdpa", "flash attention needs CUDA", "distill.teacher_attn_implementation")
    # Axolotl switches its kernels on by itself for LoRA/QLoRA; the distill plugin switches them off
    # without CUDA (preflight.switch_off_cuda_only), which the twins of plugin recipes then exercise.
    auto_on = cfg.get("adapter") in ("lora", "qlora") and PLUGIN not in (cfg.get("plugins") or [])
    for key in LORA_KERNELS:
        if cfg.get(key) or (auto_on and key not in cfg):
            edits.set(cfg, key, False, "Axolotl's Triton LoRA kernels need CUDA")
    plugins = cfg.get("plugins") or []
    for key, plugin in TRITON_ONLY.items():
        if cfg.get(key):
            edits.set(cfg, key, False, "Triton kernels need CUDA")
            if plugin in plugins:
                plugins.remove(plugin)
                edits.changes.append(f"plugins: {plugin} removed (Triton kernels need CUDA)")
    if "plugins" in cfg and not plugins:
        del cfg["plugins"]  # the removal is listed above
    if cfg.get("torch_compile"):
        edits.set(cfg, "torch_compile", False, "CPU time")
    for key in NETWORK_KEYS:
        edits.drop(cfg, key, "no network")
    if cfg.get("push_to_hub"):
        edits.set(cfg, "push_to_hub", False, "no network")


def main(argv: list[str] | None = None) -> None:
    """``python -m distill_plugin.testing.twins RECIPE [--fixtures runs/tiny] -o TWIN.yml``: derive
    and write a twin; the fixtures directory is what ``python -m distill_plugin.testing.tiny`` builds."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m distill_plugin.testing.twins", description=main.__doc__)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--fixtures", type=Path, default=Path("runs/tiny"),
                        help="what `python -m distill_plugin.testing.tiny --out DIR` built (student/, teacher/, data.jsonl); "
                             "outputs and an offline store go to DIR/<twin name>/")
    parser.add_argument("-o", "--out", type=Path, required=True, help="where to write the twin's YAML")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    twin = derive_twin(args.recipe, Fixtures.under(args.fixtures, args.fixtures / args.out.stem), steps=args.steps)
    twin.write(args.out)
    print(f"{args.out}: twin of {args.recipe}" + (f"; {twin.processes} processes" if twin.processes > 1 else ""))
    for change in twin.changes:
        print(f"  {change}")
    if twin.cpu_blocker:
        print(f"  cannot train on CPU: {twin.cpu_blocker}")


if __name__ == "__main__":
    main()
