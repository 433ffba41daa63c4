"""Cross-tokenizer KD: ``distill.cross_tokenizer: uld | hybrid``, a teacher with another tokenizer.

The collator (``alignment.collator``) adds the teacher's own tokenisation of each row's text and the
aligned positions (``alignment.spans``). Signal: ``AlignedLogits`` (the teacher's final hidden states
at the positions aligned to student rows + its lm_head). Term: ``uld`` (sorted-probability L1 per
aligned span), with ``hybrid`` also ``next_byte`` (the divergence between the two next-byte
distributions), and ``ce`` (``losses.uld``). It takes the place of online logit KD.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..errors import SetupError, first_line
from .base import FieldsBase, Method, Setup
from .online import check_placement, resolve_teacher

CROSS_TOKENIZER_ONLY = ("teacher_tokenizer", "uld_top_k", "uld_weight")


class CrossTokenizerFields(FieldsBase):
    cross_tokenizer: Literal["off", "uld", "hybrid"] = Field(
        "off", description="Teacher with another tokenizer: `uld` (sorted-probability L1 per aligned span) or `hybrid` (`divergence` between the two next-byte distributions + `uld_weight` × ULD)."
    )
    teacher_tokenizer: str | None = Field(
        None, description="Cross-tokenizer: the teacher's tokenizer (path or hub id); default: the teacher checkpoint's own."
    )
    uld_top_k: int | None = Field(
        None, gt=0, description="Cross-tokenizer: compare the sorted top-k probabilities of both sides (default: the full sorted vocabularies)."
    )
    uld_weight: float | None = Field(
        None, ge=0, description="Cross-tokenizer `hybrid`: the weight of ULD against the next-byte term (default 1; 0 = the next byte alone, no sort)."
    )

    @model_validator(mode="after")
    def _check_cross_tokenizer(self):
        if self.cross_tokenizer == "off":
            for name in CROSS_TOKENIZER_ONLY:
                if getattr(self, name) is not None:
                    raise ValueError(f"distill.{name} has no effect with cross_tokenizer 'off'; remove it or set `cross_tokenizer`")
            return self
        get = lambda name, default=None: getattr(self, name, default)  # noqa: E731 - the other methods' keys
        if get("teacher") is None or get("teacher_logits") is not None:
            raise ValueError("distill.cross_tokenizer needs the online `teacher` (run on its own tokens), not `teacher_logits`")
        if get("on_policy_fraction") or get("seq_kd"):
            raise ValueError("distill.cross_tokenizer: sampled completions (`on_policy_fraction` / `seq_kd`) across "
                             "tokenizers are not supported (the alignment is built by the collator, before sampling)")
        if get("hidden_weight"):
            raise ValueError("distill.cross_tokenizer: hidden-state KD (`hidden_weight`) across tokenizers is not supported")
        if not get("check_tokenizer", True):
            raise ValueError("distill.check_tokenizer has no effect with cross_tokenizer (tokenizers may differ); remove it")
        if self.cross_tokenizer == "uld" and get("divergence") != "forward_kl":
            raise ValueError("distill.divergence has no effect with cross_tokenizer 'uld' (used by 'hybrid'); remove it")
        if self.cross_tokenizer == "uld" and self.uld_weight is not None:
            raise ValueError("distill.uld_weight weighs ULD inside 'hybrid'; with cross_tokenizer 'uld' set kd_weight")
        if self.uld_weight == 0 and self.uld_top_k is not None:
            raise ValueError("distill.uld_top_k has no effect with uld_weight 0 (no ULD); remove it")
        return self


class CrossTokenizer(Method):
    name = "cross_tokenizer"
    key = "cross_tokenizer"
    Fields = CrossTokenizerFields
    replaces = ("online",)
    needs_collator = True

    def check_config(self, cfg: dict, config) -> None:
        check_placement(cfg, config)
        if cfg.get("sample_packing"):
            raise SetupError("distill.cross_tokenizer does not support `sample_packing: true` (the teacher would need one "
                             "sequence per packed document); set `sample_packing: false`")

    def check_resources(self, cfg, config, tokenizer) -> None:
        """The teacher resolves; both tokenizers load and are fast (offset mappings)."""
        from ..alignment.setup import check_pair, teacher_tokenizer_path

        resolve_teacher(config)
        key = "teacher_tokenizer" if config.teacher_tokenizer else "teacher"
        try:
            if tokenizer is not None:
                check_pair(tokenizer, config)
            else:
                from ..alignment.collator import load_teacher_tokenizer

                load_teacher_tokenizer(*teacher_tokenizer_path(config))
        except Exception as err:  # a missing tokenizer (OSError) or a slow one without offsets (ValueError)
            raise SetupError(f"distill.{key}: {first_line(err)}") from None

    def collator(self, cfg, config, is_eval: bool):
        from ..alignment.collator import cross_tokenizer_collator_cls_and_kwargs
        from ..alignment.setup import teacher_tokenizer_path

        return cross_tokenizer_collator_cls_and_kwargs(cfg, *teacher_tokenizer_path(config), is_eval=is_eval)

    def source(self, config, setup: Setup):
        from ..alignment.setup import aligned_teacher_source, check_pair

        setup.info("%s", check_pair(setup.tokenizer, config))
        teacher = setup.teacher()
        source = aligned_teacher_source(config, setup.tokenizer, teacher, setup.device)
        setup.info("teacher = online %s, dtype %s, device %s, attention %s; vocab %d teacher / %d student tokens",
                   config.teacher, next(teacher.parameters()).dtype, source.teacher_device,
                   teacher.config._attn_implementation, source.vocab_size, len(setup.tokenizer))
        return source

    def terms(self, config, setup: Setup) -> list:
        from ..losses.uld import CrossTokenizerTerms

        uld_weight = 1.0 if config.uld_weight is None else config.uld_weight
        return [CrossTokenizerTerms(config.kd_settings(), config.cross_tokenizer, config.uld_top_k, config.chunk_size,
                                    uld_weight)]
