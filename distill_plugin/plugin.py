"""The Axolotl plugin: ``plugins: [distill_plugin.DistillPlugin]`` plus a ``distill:`` block.

Hooks used: ``register`` and ``pre_model_load`` (multi-process runs without CUDA, see
``no_cuda``), ``get_input_args`` (declares the ``distill:`` block so Axolotl's loader keeps and
validates it), ``get_trainer_cls`` (our trainer class), ``get_collator_cls_and_kwargs`` (the
teacher-logit collator for offline KD; ``None`` otherwise, never ``(None, None)``, which would
disable Axolotl's default collator) and ``post_trainer_create`` (loads the teacher once per process
and attaches it). No training-args mixin is contributed, so the plugin does not depend on being
registered before ``axolotl.core.training_args`` is imported.
"""

from __future__ import annotations

import logging

from axolotl.integrations.base import BasePlugin

from . import no_cuda
from .args import DistillConfig

LOG = logging.getLogger(__name__)


def distill_config_of(cfg) -> DistillConfig | None:
    """The validated ``distill:`` block of an Axolotl cfg, or None when absent."""
    block = cfg.get("distill") if hasattr(cfg, "get") else getattr(cfg, "distill", None)
    if not block:
        return None
    return block if isinstance(block, DistillConfig) else DistillConfig.model_validate(dict(block))


class DistillPlugin(BasePlugin):
    """Knowledge distillation for Axolotl (online logit KD, offline top-k KD, hidden-state KD)."""

    def get_input_args(self) -> str:
        return "distill_plugin.args.DistillArgs"

    def register(self, cfg) -> None:
        # Called by load_cfg before its CUDA peer-to-peer probe.
        no_cuda.skip_cuda_p2p_probe()

    def pre_model_load(self, cfg) -> None:
        if distill_config_of(cfg) is not None:
            no_cuda.map_ranks_to_cpu(cfg.device_map)

    def get_trainer_cls(self, cfg):
        if distill_config_of(cfg) is None:
            return None
        from .axolotl_trainer import AxolotlDistillTrainer

        return AxolotlDistillTrainer

    def get_collator_cls_and_kwargs(self, cfg, is_eval: bool = False):
        config = distill_config_of(cfg)
        if config is None or config.teacher_logits is None:
            return None
        from .offline.collator import offline_collator_cls_and_kwargs

        return offline_collator_cls_and_kwargs(cfg, is_eval, store_path=config.teacher_logits, k=config.topk)

    def post_trainer_create(self, cfg, trainer) -> None:
        config = distill_config_of(cfg)
        if config is None or not hasattr(trainer, "setup_distillation"):
            return
        tokenizer = trainer.processing_class
        sources = []
        if config.teacher_logits is not None:
            from .offline.store import check_compatible, read_meta
            from .teachers import StoredTopKSource

            meta = read_meta(config.teacher_logits)  # refuse logits captured for another tokenizer/template/k
            check_compatible(meta, tokenizer, k=config.topk, sequence_len=cfg.get("sequence_len"))
            sources.append(StoredTopKSource(meta.capture_temperature))
        if config.teacher is not None:  # online KD, or the hidden states next to offline logits
            from .teachers import TeacherModelSource, check_same_tokenizer, load_teacher

            if config.check_tokenizer:
                check_same_tokenizer(tokenizer, config.teacher, config.teacher_revision)
            teacher = load_teacher(config, trainer.args.device)
            sources.append(TeacherModelSource(teacher, len(tokenizer), logits=config.teacher_logits is None))
        from .teachers import CombinedSources

        source = sources[0] if len(sources) == 1 else CombinedSources(*sources)
        trainer.setup_distillation(config, source)
        LOG.info("distill_plugin: %s, divergence=%s, T=%s", type(source).__name__, config.divergence, config.temperature)
