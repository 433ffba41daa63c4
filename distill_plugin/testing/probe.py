"""A test-only Axolotl plugin that records what a run really did (the twin tests read it).

    plugins: [distill_plugin.DistillPlugin, distill_plugin.testing.probe.ProbePlugin]

At the end of training, process 0 writes into ``output_dir``:

``probe.json``
    ``world_size``; ``student_4bit`` / ``teacher_4bit``: whether the model holds bitsandbytes 4-bit
    linears; ``student_sharded`` / ``teacher_sharded``: whether FSDP2 sharded it (DTensor parameters);
    ``batches`` and ``packed_batches``: training micro-batches seen, and those in which a row holds several documents (``position_ids`` restart at 0, 1 inside the row, which padding never does);
    ``trainable``: how many trainable parameters the student has, and how many in all;
    ``teacher_params``: how many parameters the teacher model holds (a 4-bit one: its packed count; None
    without a teacher model);
    ``projectors_moved``: the largest change of a distillation module's weight (the hidden-state
    projectors, which live outside the model) between the start and the end of training, or None.
``probe_logits.pt``
    ``input_ids`` (a fixed chat, tokenised by the run's tokenizer) and the student's fp32 logits on
    them, in eval mode, with the final weights: what a reload of the saved output must reproduce.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

PROBE_TEXT = "<|im_start|>user\nWhat is 12 + 34?<|im_end|>\n<|im_start|>assistant\n12 + 34 = 46<|im_end|>\n"


def holds_4bit(model) -> bool:
    return model is not None and any(type(m).__name__ == "Linear4bit" for m in model.modules())


def parameter_count(model) -> int | None:
    return None if model is None else sum(p.numel() for p in model.parameters())


def holds_dtensor(model) -> bool:
    """Whether FSDP2 (``fully_shard``) has sharded the model: its parameters are DTensors."""
    from torch.distributed.tensor import DTensor

    return model is not None and any(isinstance(p, DTensor) for p in model.parameters())


def packed_rows(position_ids: torch.Tensor) -> int:
    """Rows in which a new document starts after position 0 (a 0 followed by a 1)."""
    pos = position_ids.reshape(-1, position_ids.shape[-1])
    restarts = (pos[:, 1:-1] == 0) & (pos[:, 2:] == 1)
    return int(restarts.any(dim=1).sum())


@torch.no_grad()
def probe_logits(model, tokenizer) -> dict:
    ids = tokenizer(PROBE_TEXT, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    logits = model(input_ids=ids, use_cache=False).logits.float().cpu()
    model.train(was_training)
    return {"input_ids": ids.cpu(), "logits": logits}


class _Probe(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.batches, self.packed = trainer, 0, 0
        step = trainer.training_step

        def recording_step(model, inputs, *args, **kwargs):
            self.batches += 1
            if inputs.get("position_ids") is not None:
                self.packed += packed_rows(inputs["position_ids"]) > 0
            return step(model, inputs, *args, **kwargs)

        trainer.training_step = recording_step
        self.start = None

    def distill_weights(self) -> list[torch.Tensor]:
        modules = getattr(self.trainer, "distill_modules", None)
        return [p.detach().clone() for p in modules.parameters()] if modules is not None else []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.distill_weights()

    def on_train_end(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        logits = probe_logits(model or trainer.model, trainer.processing_class)  # every rank: DDP forwards are collective-free here
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        source = getattr(trainer, "teacher_source", None)
        params = list(trainer.model.parameters())
        report = {
            "world_size": trainer.accelerator.num_processes,
            "student_4bit": holds_4bit(trainer.model),
            "teacher_4bit": holds_4bit(getattr(source, "model", None)),
            "student_sharded": holds_dtensor(trainer.model),
            "teacher_sharded": holds_dtensor(getattr(source, "model", None)),
            "batches": self.batches,
            "packed_batches": self.packed,
            "trainable": [sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)],
            "teacher_params": parameter_count(getattr(source, "model", None)),
            "projectors_moved": max(((a - b).abs().max().item() for a, b in zip(self.distill_weights(), self.start or [])),
                                    default=None),
        }
        (out / "probe.json").write_text(json.dumps(report))
        torch.save(logits, out / "probe_logits.pt")


class ProbePlugin(BasePlugin):
    """Adds the recording callback to the trainer (listed after the plugin under test)."""

    def add_callbacks_post_trainer(self, cfg, trainer):
        from ..modeling import keep_4bit_layers_trainable_on_cpu

        keep_4bit_layers_trainable_on_cpu(trainer.model)  # also for twins of recipes without the plugin
        return [_Probe(trainer)]
