"""The Axolotl plugin: ``plugins: [distill_plugin.DistillPlugin]`` plus a ``distill:`` block.

Hooks used: ``register`` (the raw YAML, before Axolotl validates it: a missing or misspelt
``distill:`` block, the block's own validation, refused engines; ``preflight.check_raw_config``),
``load_datasets`` (the validated cfg, before the data is tokenised and the student loads: teacher,
tokenizer and offline store; ``preflight.check_resources``; CUDA-only speed-ups switched off without
CUDA, ``preflight.switch_off_cuda_only``; ``pre_model_load`` runs it if a launcher skipped that hook;
both also fix multi-process runs without CUDA, see ``no_cuda``),
``get_input_args`` (declares the ``distill:`` block so Axolotl's loader keeps and
validates it), ``get_trainer_cls`` (our trainer class), ``get_collator_cls_and_kwargs`` (the
collator a method needs, e.g. the stored teacher logits'; ``None`` otherwise, never ``(None, None)``,
which would disable Axolotl's default collator) and ``post_trainer_create`` (builds the teacher
source and loss terms, ``methods``, and attaches them). Nothing here is specific to one method. No training-args mixin is contributed, so the plugin does not depend on being
registered before ``axolotl.core.training_args`` is imported.
"""

from __future__ import annotations

import functools
import logging
import sys

from axolotl.integrations.base import BasePlugin

from . import methods, no_cuda
from .args import DistillConfig
from .preflight import SetupError, check_raw_config, check_resources, packing_warning, switch_off_cuda_only

# A child of Axolotl's logger, so our start-up lines reach Axolotl's console and debug.log.
LOG = logging.getLogger("axolotl.distill_plugin")


def exits_on_setup_error(hook):
    """A ``SetupError`` in a hook ends the run: one line on stderr, exit code 2, no traceback."""

    @functools.wraps(hook)
    def wrapped(*args, **kwargs):
        try:
            return hook(*args, **kwargs)
        except SetupError as err:
            print(f"distill_plugin: error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapped


def distill_config_of(cfg) -> DistillConfig | None:
    """The validated ``distill:`` block of an Axolotl cfg, or None when absent."""
    block = cfg.get("distill") if hasattr(cfg, "get") else getattr(cfg, "distill", None)
    if not block:
        return None
    return block if isinstance(block, DistillConfig) else DistillConfig.model_validate(dict(block))


class DistillPlugin(BasePlugin):
    """Knowledge distillation for Axolotl (every method of ``distill_plugin.methods``)."""

    def __init__(self):
        super().__init__()
        # The cfg whose resources were checked (load_datasets, or pre_model_load when that is skipped).
        # Per cfg, not a flag: Axolotl 0.21 keeps one plugin instance across configs in a process.
        self.checked_cfg = None

    def get_input_args(self) -> str:
        return "distill_plugin.args.DistillArgs"

    @exits_on_setup_error
    def register(self, cfg: dict) -> None:
        check_raw_config(cfg)
        # Called by load_cfg before its CUDA peer-to-peer probe.
        no_cuda.skip_cuda_p2p_probe()
        no_cuda.build_meshes_on_cpu()
        no_cuda.fsdp2_on_cpu()

    @exits_on_setup_error
    def load_datasets(self, cfg, preprocess: bool = False):
        self._check_resources(cfg)
        return None  # Axolotl loads the data itself

    def _check_resources(self, cfg) -> None:
        config = distill_config_of(cfg)
        if config is not None and self.checked_cfg is not cfg:
            check_resources(cfg, config)
            self.checked_cfg = cfg
            for warning in (packing_warning(cfg, config), switch_off_cuda_only(cfg)):
                if warning:
                    LOG.warning("distill_plugin: %s", warning)

    @exits_on_setup_error
    def pre_model_load(self, cfg) -> None:
        self._check_resources(cfg)
        if distill_config_of(cfg) is not None:
            no_cuda.map_ranks_to_cpu(cfg.device_map)

    def get_trainer_cls(self, cfg):
        if distill_config_of(cfg) is None:
            return None
        from .axolotl_trainer import AxolotlDistillTrainer

        return AxolotlDistillTrainer

    def get_collator_cls_and_kwargs(self, cfg, is_eval: bool = False):
        config = distill_config_of(cfg)
        return None if config is None else methods.collator(cfg, config, is_eval)

    @exits_on_setup_error
    def post_trainer_create(self, cfg, trainer) -> None:
        from .modeling import keep_4bit_layers_trainable_on_cpu, unwrap_causal_lm

        keep_4bit_layers_trainable_on_cpu(trainer.model)
        config = distill_config_of(cfg)
        if config is None or not hasattr(trainer, "setup_distillation"):
            return

        setup = methods.Setup(config, trainer.processing_class, unwrap_causal_lm(trainer.model), trainer.args.device,
                              log=LOG)
        trainer.setup_distillation(config, methods.teacher_source(config, setup), methods.loss_terms(config, setup))
        LOG.info("distill_plugin: %s; divergence %s, T=%g, kd_weight %g, ce_weight %g; logged ppl = exp(ce_loss)",
                 ", ".join(m.name for m in methods.active(config)), config.divergence, config.temperature,
                 config.kd_weight, config.ce_weight)
