"""The demo's Axolotl recipes, built in code so the demo runs from an installed package.

``base_recipe`` is the CPU setup shared by every student; ``student_recipe`` adds one run's data,
budget, seed and ``distill:`` block (the quality benchmark writes one per method and seed with it);
``student_recipes`` writes the demo's ``sft.yml`` (no plugin, Axolotl's own trainer and loss) and
``kd.yml`` (the plugin with the trained teacher), which differ only by ``plugins:`` and the
``distill:`` block (and their output folders).

Not a twin derived from a recipe (``distill_plugin.testing.twins``), on purpose: the demo runs from
the installed package, which ships no ``recipes/``, and its settings (a few hundred steps of 16, lr
3e-3 cosine, no packing, fp32 teacher) are the ones behind the table in docs/demo.md; a derived twin
would bring a real recipe's schedule (lr 1e-5, packing, accumulation), for which it was not measured.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def base_recipe() -> dict:
    """Axolotl keys common to both students; model, data, steps and seed are filled in per run."""
    return {
        "tokenizer_type": "AutoTokenizer",
        "plugins": ["distill_plugin.DistillPlugin"],
        "distill": {"teacher_dtype": "float32", "temperature_squared": True, "chunk_size": 64},
        "chat_template": "tokenizer_default",
        "sequence_len": 256,
        "sample_packing": False,
        "optimizer": "adamw_torch",
        "weight_decay": 0.0,
        "save_safetensors": True,
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "dataloader_num_workers": 0,
        "use_tensorboard": False,
    }


def student_recipe(path: Path, s, *, base_model: Path, data: Path, output_dir: Path, prepared: Path,
                   distill: dict | None, tokenizer: Path | None = None, pad_to_multiple_of: int | None = None,
                   extra: dict | None = None) -> Path:
    """Write one student recipe to ``path``: the settings ``s`` (steps, batch, lr, seed) on ``data``;
    ``distill=None`` is plain SFT (no plugin, Axolotl's own trainer and loss), otherwise the plugin
    with ``distill`` merged over the base block. Every student of a comparison shares all but these.
    ``tokenizer`` (``tokenizer_config``; default: ``base_model``'s): Axolotl keys a prepared dataset on
    the tokenizer's path, so students that name one tokenizer folder share one tokenised dataset.
    ``pad_to_multiple_of``: Axolotl's batch padding (its default, 64, pads ~100-token rows to 128).
    ``extra``: top-level recipe keys a method needs (e.g. ``attn_implementation: eager``)."""
    base = base_recipe()
    cfg = {
        **base,
        "base_model": str(base_model),
        **({} if tokenizer is None else {"tokenizer_config": str(tokenizer)}),
        **({} if pad_to_multiple_of is None else {"pad_to_multiple_of": pad_to_multiple_of}),
        "datasets": [{
            "path": str(data), "type": "chat_template",
            "field_messages": "messages", "roles_to_train": ["assistant"],
        }],
        "max_steps": s.student_steps,
        "micro_batch_size": s.student_batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": s.student_lr,
        "lr_scheduler": "cosine",
        "warmup_steps": max(1, s.student_steps // 20),
        "save_steps": s.student_steps,
        "logging_steps": 1,
        "seed": s.seed,
        "val_set_size": 0.0,
        "output_dir": str(output_dir),
        "dataset_prepared_path": str(prepared),
        **(extra or {}),
    }
    if distill is None:
        cfg.pop("plugins")
        cfg.pop("distill")
    else:
        # The base block's teacher_dtype means nothing without an online teacher (the plugin refuses it).
        shared = {k: v for k, v in base["distill"].items() if "teacher" in distill or k != "teacher_dtype"}
        cfg["distill"] = {**shared, **distill}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def student_recipes(out: Path, s, teacher: Path) -> dict[str, Path]:
    """Write ``out/recipes/{sft,kd}.yml`` for the demo settings ``s`` (``teacher``: the KD run's);
    return their paths."""
    kd = {"teacher": str(teacher), "divergence": s.divergence, "temperature": s.temperature,
          "kd_weight": s.kd_weight, "ce_weight": s.ce_weight}
    return {
        name: student_recipe(out / "recipes" / f"{name}.yml", s, base_model=out / "student_init",
                             data=out / "data" / "train.jsonl", output_dir=out / name,
                             prepared=out / "prepared" / name, distill=distill)
        for name, distill in (("sft", None), ("kd", kd))
    }
