"""Axolotl's trainer with the distillation loss (kept apart so the mixin never imports Axolotl)."""

from axolotl.core.trainers.base import AxolotlTrainer

from .trainer import DistillTrainerMixin


class AxolotlDistillTrainer(DistillTrainerMixin, AxolotlTrainer):
    """AxolotlTrainer whose loss is ``DistillTrainerMixin.compute_loss``."""
