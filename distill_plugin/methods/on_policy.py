"""On-policy distillation (GKD): ``distill.on_policy_fraction`` λ > 0 and/or ``distill.seq_kd``.

With probability λ an optimizer step replaces its completions by the student's own samples (drawn
per step, seeded, resumable); with ``seq_kd`` the other steps use the teacher's samples. The teacher
source and terms are the online teacher's: the divergence is computed at every sampled position.
Step hook: the step's micro-batches are regenerated (``onpolicy.steps``) before the Trainer counts
their supervised tokens, and the sampling statistics are logged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..errors import SetupError
from .base import FieldsBase, Method

# Sampling settings, meaningful only when something is sampled.
GENERATION_ONLY = ("max_new_tokens", "generation_temperature", "generation_top_p", "generation_batch_size",
                   "generation_backend", "vllm_options")


class OnPolicyFields(FieldsBase):
    on_policy_fraction: float = Field(
        0.0, ge=0.0, le=1.0,
        description="λ: probability that an optimizer step trains on completions the student samples (drawn per step, seeded, resumable); 0 = off.",
    )
    seq_kd: bool = Field(False, description="Steps that are not on-policy use completions the teacher samples instead of the data's.")
    max_new_tokens: int = Field(256, gt=0, description="Tokens sampled per completion at most (on-policy / seq_kd).")
    generation_temperature: float = Field(
        1.0, ge=0.0, description="Sampling temperature of the completions (0 = greedy); the loss keeps its own `temperature`."
    )
    generation_top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling of the completions.")
    generation_batch_size: int | None = Field(
        None, gt=0, description="Prompts sampled together at most: an optimizer step's micro-batches (all of its gradient accumulation) are sampled in one rollout by default; a cap bounds the KV cache of long completions."
    )
    generation_backend: Literal["hf", "vllm"] = Field(
        "hf", description="`hf`: the training model itself (batched KV-cached sampling, finished rows dropped); `vllm`: a colocated vLLM engine, student weights synced before each step."
    )
    vllm_options: dict[str, Any] | None = Field(
        None, description="Keyword arguments of `vllm.LLM` for the colocated engine (e.g. `gpu_memory_utilization` (default 0.3), `max_model_len`, `enforce_eager`); with `generation_backend: vllm` only."
    )

    @model_validator(mode="after")
    def _check_on_policy(self):
        sampled = self.on_policy_fraction > 0 or self.seq_kd
        self.refuse_unless(GENERATION_ONLY, sampled, "without `on_policy_fraction` > 0 or `seq_kd`")
        if not sampled:
            return self
        if self.vllm_options is not None and self.generation_backend != "vllm":
            raise ValueError("distill.vllm_options has no effect without `generation_backend: vllm`; remove it")
        if getattr(self, "teacher", None) is None or getattr(self, "teacher_logits", None) is not None:
            raise ValueError("distill: `on_policy_fraction` / `seq_kd` need the online `teacher` alone: stored "
                             "`teacher_logits` cannot score freshly sampled completions")
        if self.seq_kd and self.on_policy_fraction >= 1:
            raise ValueError("distill.seq_kd has no effect with `on_policy_fraction: 1` (every step samples from the student); remove it")
        if self.on_policy_fraction > 0 and getattr(self, "ce_weight", 0) > 0:
            raise ValueError("distill.ce_weight > 0 with `on_policy_fraction` > 0 would train the student on the likelihood "
                             "of its own samples; set `ce_weight: 0` (GKD trains on the divergence alone)")
        if self.seq_kd and self.generation_backend == "vllm":
            raise ValueError("distill.seq_kd samples from the teacher with the `hf` backend only; set `generation_backend: hf`")
        return self


class OnPolicyHook:
    """``steps`` (``onpolicy.steps.OnPolicySteps``) on the trainer's optimizer steps."""

    def __init__(self, steps):
        self.steps = steps

    def batches(self, trainer, iterator):
        # trainer.model, not model_wrapped: DDP's forward may broadcast buffers on every call, and ranks
        # whose samples end at different lengths make different numbers of calls (a deadlock).
        return self.steps.batches(trainer.state.global_step, iterator, trainer.model,
                                  trainer.args.gradient_accumulation_steps)

    def logs(self, trainer) -> dict[str, float]:
        # Summed over processes: each one sampled for its own prompts.
        return self.steps.logs(trainer.state.global_step, reduce_sum=trainer.sum_over_processes)


class OnPolicy(Method):
    name = "on_policy"
    key = "on_policy_fraction"
    Fields = OnPolicyFields

    def active(self, config) -> bool:
        return bool(config.on_policy_fraction or config.seq_kd)

    def check_config(self, cfg: dict, config) -> None:
        """One document per row (sample packing is refused, not switched off behind the user's back: it
        also changes the off-policy steps' batches), and whole weights in every process."""
        from ..teachers.placement import engine_of

        if cfg.get("sample_packing"):
            raise SetupError("`sample_packing: true` with distill.on_policy_fraction / distill.seq_kd: generated steps need "
                             "one prompt per row; set `sample_packing: false`")
        engine = engine_of(cfg)
        if engine in ("fsdp2", "zero3"):
            raise SetupError(f"distill.on_policy_fraction / distill.seq_kd: sampling needs whole weights in every process, and "
                             f"{engine} shards them; train with DDP or ZeRO-1/2, or remove the sampling settings")

    def step_hook(self, config, trainer):
        from ..modeling import unwrap_distributed
        from ..onpolicy.steps import on_policy_steps

        if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
            raise ValueError("distill: on-policy / seq_kd sampling needs the whole student on each process (no FSDP/DeepSpeed)")
        steps = on_policy_steps(config, trainer.processing_class, unwrap_distributed(trainer.model),
                                getattr(trainer.teacher_source, "model", None), trainer.args.seed)
        return OnPolicyHook(steps)
