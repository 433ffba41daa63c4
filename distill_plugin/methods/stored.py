"""Offline top-k KD: ``distill.teacher_logits``, a store written by ``distill-data logits``.

Signal: ``TopKLogprobs`` (the stored top-k ids and log-probs at the capture temperature, put in each
batch by the offline collator; entry [b, t] predicts token t+1). Term: the fused ``kd`` + ``ce``
over the top-k and the tail (``topk_tail``); a sampled store (``distill-data logits --samples``)
gives the unbiased estimate ``log p̂`` instead, trained by ``losses.sampled`` (forward KL at the
capture temperature only; ``check_sampled_config`` refuses the rest at start-up).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from ..errors import SetupError, first_line
from .base import FieldsBase, Method, Setup


class StoredFields(FieldsBase):
    teacher_logits: str | None = Field(
        None, description="Directory written by `distill-data logits` (offline top-k KD)."
    )
    topk: int | None = Field(None, gt=0, description="Offline KD: use the first k of the stored top-K (default: all).")

    @model_validator(mode="after")
    def _check_stored(self):
        if self.teacher_logits is not None and getattr(self, "teacher", None) is not None \
                and not getattr(self, "hidden_weight", 0):
            # both only with hidden-state KD: the logits from the store, the hidden states online
            raise ValueError("distill: set exactly one of `teacher` (online KD), `teacher_logits` (offline top-k KD) "
                             "or `teacher_server` (top-k KD from a server)")
        if getattr(self, "teacher_server", None) is not None:
            source = "with a served teacher (`teacher_server`, whose `top_k` sets k)"
        else:
            source = "with an online teacher (`teacher`)"
        self.refuse_unless(["topk"], self.teacher_logits is not None, source)
        return self


def student_vocab_rows(cfg) -> int | None:
    """Rows of the student's output layer, from its config.json (None when it cannot be read)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.get("base_model"), trust_remote_code=bool(cfg.get("trust_remote_code")))
    except Exception:
        return None  # Axolotl reports an unloadable base_model itself
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "vocab_size", None)


def check_store_integrity(store: Path) -> None:
    """Every part of the offline store matches the checksum recorded at capture (``offline.checksums``,
    parts hashed in parallel, a progress bar for large stores). A corrupt part is a ``SetupError``
    naming the file and the command that re-captures it; parts without checksums (stores written
    before they were recorded) are logged as one warning and used."""
    import logging

    from ..offline.checksums import CorruptStoreError, unrecorded_warning, verify_store

    if store.is_file():  # a single part file outside a store directory: no meta.json to hold checksums
        return
    try:
        warning = unrecorded_warning(store, verify_store(store))
    except CorruptStoreError as err:
        raise SetupError(f"distill.teacher_logits: {err}") from None
    if warning:
        logging.getLogger("axolotl.distill_plugin").warning("distill_plugin: %s", warning)


def check_sampled_config(config, meta) -> None:
    """A sampled store trains forward KL at its capture temperature on every drawn id: ``SetupError``
    (one line) for ``topk`` (a cut of the draws is biased), ``topk_tail: renormalize`` (the estimate
    has no tail) and the divergences and temperatures ``losses.sampled.check_sampled`` refuses."""
    from ..losses.sampled import check_sampled

    why = f"with a sampled store ({meta.samples} draws per position): "
    if config.topk is not None:
        raise SetupError(f"distill.topk: {why}a cut of the drawn ids is a biased estimate; remove it")
    if config.topk_tail != "bucket":
        raise SetupError(f"distill.topk_tail: {why}the estimate covers the whole vocabulary, there is no tail; remove it")
    if config.kd_weight:
        try:
            check_sampled(config.kd_settings(), meta.capture_temperature)
        except ValueError as err:
            raise SetupError(f"distill: {err}") from None


class StoredTopK(Method):
    name = "stored"
    key = "teacher_logits"
    is_teacher_source = True
    Fields = StoredFields
    needs_collator = True

    def check_resources(self, cfg, config, tokenizer) -> None:
        """The store exists, matches the student's tokenizer, fits its vocabulary, and is intact."""
        from ..offline.store import StoreMismatchError, check_compatible, read_meta

        store = Path(config.teacher_logits)
        if not (store.exists() and (store.is_file() or (store / "meta.json").exists())):
            raise SetupError(f"distill.teacher_logits: no offline store at {str(store)!r} (write one with `distill-data logits`)")
        meta = read_meta(store)
        if tokenizer is not None:
            try:
                check_compatible(meta, tokenizer, k=config.topk, sequence_len=cfg.get("sequence_len"))
            except StoreMismatchError as err:
                raise SetupError(f"distill.teacher_logits: {first_line(err)}") from None
        rows = student_vocab_rows(cfg)
        largest = meta.vocab_size - 1  # capture cuts the teacher's padding rows: no stored id is larger
        if rows is not None and largest >= rows:
            raise SetupError(
                f"distill.teacher_logits: the store holds token ids up to {largest}, but the student "
                f"{cfg.get('base_model')!r} has {rows} vocabulary rows; capture with a teacher of the student's vocabulary"
            )
        if meta.sampled:
            check_sampled_config(config, meta)
        check_store_integrity(store)

    def collator(self, cfg, config, is_eval: bool):
        from ..offline.collator import offline_collator_cls_and_kwargs

        return offline_collator_cls_and_kwargs(cfg, is_eval, store_path=config.teacher_logits, k=config.topk)

    def source(self, config, setup: Setup):
        from ..offline.store import check_compatible, read_meta
        from ..teachers import StoredTopKSource

        meta = read_meta(config.teacher_logits)
        # checked before the student loaded (check_resources); now with the tokenizer the trainer built
        check_compatible(meta, setup.tokenizer, k=config.topk)
        if meta.sampled:
            check_sampled_config(config, meta)
            setup.info("teacher = offline sampled store %s (%d draws per position, proposal temperature %g, seed %d; "
                       "teacher %s, captured at T=%g), vocab %d shared tokens", config.teacher_logits, meta.samples,
                       meta.proposal_temperature, meta.seed, meta.teacher, meta.capture_temperature, len(setup.tokenizer))
        else:
            setup.info("teacher = offline top-%d logits %s (teacher %s, captured at T=%g), vocab %d shared tokens",
                       config.topk or meta.k, config.teacher_logits, meta.teacher, meta.capture_temperature,
                       len(setup.tokenizer))
        return StoredTopKSource(meta.capture_temperature, meta.sampled)

    def terms(self, config, setup: Setup) -> list:
        return [config.logit_terms()]
