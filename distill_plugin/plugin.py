"""The Axolotl plugin: ``plugins: [distill_plugin.DistillPlugin]`` plus a ``distill:`` block.

Hooks used: ``register`` (the raw YAML, before Axolotl validates it: a missing or misspelt
``distill:`` block, the block's own validation, refused engines; ``preflight.check_raw_config``),
``load_datasets`` (the validated cfg, before the data is tokenised and the student loads: teacher,
tokenizer and offline store; ``preflight.check_resources``; CUDA-only speed-ups switched off without
CUDA, ``preflight.switch_off_cuda_only``; ``pre_model_load`` runs it if a launcher skipped that hook;
both also fix multi-process runs without CUDA, see ``no_cuda``),
``get_input_args`` (declares the ``distill:`` block so Axolotl's loader keeps and
validates it), ``get_trainer_cls`` (our trainer class), ``get_collator_cls_and_kwargs`` (the
teacher-logit collator for offline KD; ``None`` otherwise, never ``(None, None)``, which would
disable Axolotl's default collator) and ``post_trainer_create`` (loads the teacher once per process
and attaches it). No training-args mixin is contributed, so the plugin does not depend on being
registered before ``axolotl.core.training_args`` is imported.
"""

from __future__ import annotations

import functools
import logging
import sys

from axolotl.integrations.base import BasePlugin

from . import no_cuda
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
    """Knowledge distillation for Axolotl (online logit KD, offline top-k KD, hidden-state KD)."""

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
        if config is not None and config.cross_tokenizer != "off":  # cross-tokenizer KD (issue #15)
            from .alignment.collator import cross_tokenizer_collator_cls_and_kwargs
            from .alignment.setup import teacher_tokenizer_path

            return cross_tokenizer_collator_cls_and_kwargs(cfg, *teacher_tokenizer_path(config), is_eval=is_eval)
        if config is None or config.teacher_logits is None:
            return None
        from .offline.collator import offline_collator_cls_and_kwargs

        return offline_collator_cls_and_kwargs(cfg, is_eval, store_path=config.teacher_logits, k=config.topk)

    @exits_on_setup_error
    def post_trainer_create(self, cfg, trainer) -> None:
        config = distill_config_of(cfg)
        if config is None or not hasattr(trainer, "setup_distillation"):
            return
        tokenizer = trainer.processing_class
        sources = []
        if config.teacher_server is not None:  # --- teacher_server (issue #16) ---
            from .teachers.server import connected_source

            sources.append(connected_source(config, tokenizer))
        if config.teacher_logits is not None:
            from .offline.store import check_compatible, read_meta
            from .teachers import StoredTopKSource

            meta = read_meta(config.teacher_logits)  # again, now with the tokenizer Axolotl built
            check_compatible(meta, tokenizer, k=config.topk, sequence_len=cfg.get("sequence_len"))
            sources.append(StoredTopKSource(meta.capture_temperature))
            LOG.info("distill_plugin: teacher = offline top-%d logits %s (teacher %s, captured at T=%g), "
                     "vocab %d shared tokens", config.topk or meta.k, config.teacher_logits, meta.teacher,
                     meta.capture_temperature, len(tokenizer))
        if config.teacher is not None:  # online KD, or the hidden states next to offline logits
            from .modeling import output_head, unwrap_causal_lm
            from .teachers import TeacherModelSource, check_same_tokenizer, load_teacher

            if config.check_tokenizer and config.cross_tokenizer == "off":
                check_same_tokenizer(tokenizer, config.teacher, config.teacher_revision)
            student = unwrap_causal_lm(trainer.model)
            attn = getattr(student.config, "_attn_implementation", None)
            teacher = load_teacher(config, trainer.args.device, attn)
            if config.cross_tokenizer != "off":  # cross-tokenizer KD (issue #15): the teacher reads its own tokens
                from .alignment.setup import aligned_teacher_source, check_pair

                LOG.info("distill_plugin: %s", check_pair(tokenizer, config))
                online = aligned_teacher_source(config, tokenizer, teacher, trainer.args.device)
            else:
                online = TeacherModelSource(teacher, len(tokenizer), logits=config.teacher_logits is None,
                                            device=trainer.args.device)
            sources.append(online)
            rows = (output_head(teacher).weight.shape[0], output_head(student).weight.shape[0])
            cut = "" if rows[0] == rows[1] == len(tokenizer) else f", lm_head rows teacher {rows[0]} / student {rows[1]} cut to it"
            vocab = f"vocab {len(tokenizer)} shared tokens{cut}"
            if config.cross_tokenizer != "off":
                vocab = f"vocab {online.vocab_size} teacher / {len(tokenizer)} student tokens"
            LOG.info("distill_plugin: teacher = online %s, dtype %s, device %s, attention %s; %s%s",
                     config.teacher, next(teacher.parameters()).dtype, online.teacher_device,
                     teacher.config._attn_implementation, vocab,
                     "; hidden states only (logits from the store)" if config.teacher_logits else "")
        from .teachers import CombinedSources

        source = sources[0] if len(sources) == 1 else CombinedSources(*sources)
        trainer.setup_distillation(config, source)
        LOG.info("distill_plugin: divergence %s, T=%g, kd_weight %g, ce_weight %g; logged ppl = exp(ce_loss)",
                 config.divergence, config.temperature, config.kd_weight, config.ce_weight)
