"""Axolotl's trainer with the distillation loss (kept apart so the mixin never imports Axolotl)."""

import math

from axolotl.core.trainers.base import AxolotlTrainer
from transformers import Trainer

from .trainer import DistillTrainerMixin


class _CEPerplexity(Trainer):
    """Sits between AxolotlTrainer and Trainer in the MRO: AxolotlTrainer.log sets ``ppl`` to
    exp(loss), which for a KD+CE objective means nothing; it is replaced by exp(ce_loss)."""

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        for prefix in ("", "eval_"):
            if f"{prefix}ppl" in logs:
                ce = logs.get(f"{prefix}ce_loss")
                if ce is None:
                    del logs[f"{prefix}ppl"]
                else:
                    logs[f"{prefix}ppl"] = round(math.exp(ce), 5) if ce < 700 else float("inf")
        super().log(logs, *args, **kwargs)


class AxolotlDistillTrainer(DistillTrainerMixin, AxolotlTrainer, _CEPerplexity):
    """AxolotlTrainer whose loss is ``DistillTrainerMixin.compute_loss``; logged ppl is the CE's."""
