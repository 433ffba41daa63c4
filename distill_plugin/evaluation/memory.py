"""A per-GPU memory estimate of one distillation run (weights, gradients, optimizer, loss buffers).

Arithmetic, not a measurement; activations (sequence length × micro-batch × layers, with or without
gradient checkpointing) are not included, so leave headroom. In bytes, with P_s / P_t the student's
/ teacher's parameter counts, V the compared vocabulary, H_s the student's width:

    student weights   P_s · w            w = 2 (bf16/fp16) or 4 (fp32); QLoRA base: 0.5 (NF4) for
                                         all but lm_head and embeddings (2·V·H_s at w)
    trainable         full fine-tune: P_s; LoRA/QLoRA: r · Σ_linear (in + out) (adapters, fp32)
    gradients         trainable · bytes of a trainable parameter (w; adapters 4)
    optimizer         AdamW: 2 states per trainable parameter in its dtype (torch keeps the moments in
                      the parameter's dtype); 8-bit optimizers (``*8bit*``): 2 bytes
    loss lm_head grad full fine-tune only: the fused loss accumulates d/dW_head in fp32, V·H_s·4
    loss chunk        c·V·4 per fp32 [chunk, V] buffer, c = ``chunk_size`` or
                      ``losses.auto_chunk_size(V)`` (one buffer ≈ 256 MiB); 5 buffers alive with forward
                      KL (closed-form gradient), 8 with the other divergences (autograd on the chunk)
    teacher weights   online: P_t · t (t = 2 bf16/fp16, 4 fp32, 1 for 8-bit, 0.5 for 4-bit NF4 with the
                      lm_head unquantised at 2); ``teacher_placement: shard`` over g GPUs: the decoder
                      layers / g, embeddings and head whole; offline logits / a served teacher: 0
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..losses.chunked import auto_chunk_size

GIB = 1 << 30
LORA_R = 16  # the rank assumed for a suggested LoRA/QLoRA student when the recipe has none


@dataclass(frozen=True)
class RunShape:
    """What the estimate reads of a run (counts from the loaded models, settings from the recipe)."""

    student_params: int
    student_hidden: int
    vocab: int
    student_linear_io: int  # Σ over the student's linear layers except lm_head of (in + out): LoRA size per rank
    student_bytes: float = 2.0  # w: bytes per student weight (bf16)
    adapter: str | None = None  # None | "lora" | "qlora"
    lora_r: int = LORA_R
    optimizer: str = "adamw_torch"
    teacher_params: int = 0  # 0: no teacher in GPU memory (offline logits, served teacher)
    teacher_hidden: int = 0
    teacher_bytes: float = 2.0
    teacher_bits: int = 16  # 16 | 8 | 4
    teacher_shards: int = 1  # teacher_placement: shard over this many GPUs
    chunk_size: int | None = None
    divergence: str = "forward_kl"


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict[str, float]  # bytes per component

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def gib(self) -> float:
        return self.total / GIB


def estimate(run: RunShape) -> MemoryEstimate:
    """Bytes per GPU of the components in the module docstring."""
    head = run.vocab * run.student_hidden
    if run.adapter == "qlora":
        weights = (run.student_params - 2 * head) * 0.5 + 2 * head * run.student_bytes
    else:
        weights = run.student_params * run.student_bytes
    if run.adapter in ("lora", "qlora"):
        trainable, trainable_bytes = run.lora_r * run.student_linear_io, 4.0
    else:
        trainable, trainable_bytes = run.student_params, run.student_bytes
    state_bytes = 2.0 if "8bit" in run.optimizer else 2 * trainable_bytes
    chunk = run.chunk_size or auto_chunk_size(run.vocab)
    buffers = 5 if run.divergence == "forward_kl" else 8
    parts = {
        "student weights": weights,
        "gradients": trainable * trainable_bytes,
        "optimizer states": trainable * state_bytes,
        "loss: lm_head grad (fp32)": 0.0 if run.adapter else head * 4.0,
        f"loss: {buffers} chunk buffers ({chunk} × {run.vocab})": buffers * chunk * run.vocab * 4.0,
        "teacher weights": _teacher_bytes(run),
    }
    return MemoryEstimate(parts)


def _teacher_bytes(run: RunShape) -> float:
    if not run.teacher_params:
        return 0.0
    head = run.vocab * run.teacher_hidden
    if run.teacher_bits == 4:
        return (run.teacher_params - head) * 0.5 + head * 2.0
    per = 1.0 if run.teacher_bits == 8 else run.teacher_bytes
    body = run.teacher_params - 2 * head
    return (body / max(run.teacher_shards, 1) + 2 * head) * per


def options(run: RunShape, budget_gib: float, gpus: tuple[int, ...] = (2, 4, 8)) -> list[tuple[str, float]]:
    """``(setting, GiB)`` of each change that lowers the estimate, in the order tried by users: a
    4-bit teacher, offline logits, a served teacher, a LoRA / QLoRA student, a sharded teacher (the
    fewest GPUs of ``gpus`` that fit, else the most)."""
    out = []
    online = run.teacher_params > 0
    if online and run.teacher_bits != 4:
        out.append(("distill.teacher_load_in_4bit: true", estimate(replace(run, teacher_bits=4)).gib))
    if online:
        no_teacher = estimate(replace(run, teacher_params=0)).gib
        out.append(("distill.teacher_logits (offline top-k, `distill-data logits`)", no_teacher))
        out.append(("distill.teacher_server (teacher on other GPUs)", no_teacher))
    if run.adapter is None:
        out.append((f"adapter: lora (r={run.lora_r})", estimate(replace(run, adapter="lora")).gib))
    if run.adapter != "qlora":
        out.append((f"adapter: qlora + load_in_4bit: true (r={run.lora_r})", estimate(replace(run, adapter="qlora")).gib))
    if online and run.teacher_bits == 16 and run.teacher_shards == 1:
        fits = [(g, estimate(replace(run, teacher_shards=g)).gib) for g in gpus]
        g, gib = next(((g, gib) for g, gib in fits if gib <= budget_gib), fits[-1])
        out.append((f"distill.teacher_placement: shard (over {g} GPUs)", gib))
    return out
