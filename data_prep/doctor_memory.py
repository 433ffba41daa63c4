"""The doctor's memory check: a recipe and its loaded models → ``evaluation.RunShape`` → the estimate
per GPU against ``--gpu-gib``, and the settings that lower it (formulas: ``distill_plugin.evaluation.memory``)."""

from __future__ import annotations

GIB = 1 << 30


def run_shape(pair, student, teacher, vocab: int, gpus: int):
    """What the estimate reads: parameter counts and widths of the loaded models, the recipe's
    precision (``bf16``/``fp16``: 2 bytes a weight, else 4; no recipe: bf16), adapter, optimizer."""
    import torch

    from distill_plugin.evaluation import RunShape

    recipe, d = pair.recipe, pair.distill
    head = student.get_output_embeddings()
    linear_io = sum(m.in_features + m.out_features for m in student.modules()
                    if isinstance(m, torch.nn.Linear) and m is not head)
    half = not recipe or any(recipe.get(k) not in (None, False) for k in ("bf16", "fp16"))
    adapter = recipe.get("adapter") if recipe.get("adapter") in ("lora", "qlora") else None
    shape = dict(student_params=student.num_parameters(), student_hidden=student.config.get_text_config().hidden_size,
                 vocab=min(vocab, head.weight.shape[0]), student_linear_io=linear_io, student_bytes=2.0 if half else 4.0,
                 adapter=adapter, lora_r=int(recipe.get("lora_r") or 16), optimizer=str(recipe.get("optimizer") or "adamw_torch"),
                 chunk_size=d.chunk_size, divergence=d.divergence)
    if teacher is not None:
        shape.update(teacher_params=teacher.num_parameters(), teacher_hidden=teacher.config.get_text_config().hidden_size,
                     teacher_bytes=4.0 if d.teacher_dtype == "float32" else 2.0,
                     teacher_bits=4 if d.teacher_load_in_4bit else 8 if d.teacher_load_in_8bit else 16,
                     teacher_shards=gpus if d.teacher_placement == "shard" else 1)
    return RunShape(**shape)


def memory_check(pair, student, teacher, vocab: int, gpu_gib: float, gpus: int):
    """``(Check, memory dict)``: fail above the budget, warn above ``doctor.HEADROOM`` of it."""
    from distill_plugin.evaluation import estimate_memory, memory_options

    from .doctor import HEADROOM, Check

    run = run_shape(pair, student, teacher, vocab, gpus)
    est = estimate_memory(run)
    status = "fail" if est.gib > gpu_gib else "warn" if est.gib > HEADROOM * gpu_gib else "ok"
    detail = f"{size(est.total)} per GPU of {gpu_gib:g} GiB (weights, gradients, optimizer, loss buffers; no activations)"
    memory = {"parts": est.parts, "bytes": est.total, "gib": est.gib, "budget_gib": gpu_gib,
              "options": [{"setting": s, "gib": g} for s, g in memory_options(run, gpu_gib)] if status != "ok" else []}
    return Check("memory", status, detail), memory


def size(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def memory_lines(memory: dict) -> list[str]:
    lines = [f"memory per GPU ({size(memory['bytes'])}): " + ", ".join(f"{k} {size(v)}" for k, v in memory["parts"].items() if v)]
    if memory["options"]:
        lines.append(f"settings that lower it (budget {memory['budget_gib']:g} GiB):")
    for option in memory["options"]:
        mark = "fits" if option["gib"] <= memory["budget_gib"] else "still over"
        lines.append(f"  {option['setting']}: {size(option['gib'] * GIB)} ({mark})")
    return lines
