"""The demo's two Axolotl recipes, built in code so the demo runs from an installed package.

``base_recipe`` is the CPU setup shared by both students; ``student_recipes`` adds the run's data,
budget and seed, and writes ``sft.yml`` (no plugin, Axolotl's own trainer and loss) and ``kd.yml``
(the plugin with the trained teacher). The two differ only by ``plugins:`` and the ``distill:`` block
(and their output folders).

Not a twin derived from a recipe (``distill_plugin.testing.twins``), on purpose: the demo runs from
the installed package, which ships no ``recipes/``, and its settings (600 steps of 16, lr 3e-3
cosine, no packing, fp32 teacher) are the ones behind the SFT-vs-KD table in docs/demo.md; a derived
twin would bring a real recipe's schedule (lr 1e-5, packing, accumulation), for which that table
was not measured.
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


def student_recipes(out: Path, s) -> dict[str, Path]:
    """Write ``out/recipes/{sft,kd}.yml`` for the demo settings ``s``; return their paths."""
    base = base_recipe()
    common = {
        "base_model": str(out / "student_init"),
        "datasets": [{
            "path": str(out / "data" / "train.jsonl"), "type": "chat_template",
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
    }
    recipes = {}
    for name in ("sft", "kd"):
        cfg = {**base, **common, "output_dir": str(out / name), "dataset_prepared_path": str(out / "prepared" / name)}
        if name == "sft":
            cfg.pop("plugins")
            cfg.pop("distill")
        else:
            cfg["distill"] = {
                **base["distill"], "teacher": str(out / "teacher"),
                "divergence": s.divergence, "temperature": s.temperature,
                "kd_weight": s.kd_weight, "ce_weight": s.ce_weight,
            }
        path = out / "recipes" / f"{name}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        recipes[name] = path
    return recipes
