"""Checks that need no model, run by the plugin before the student loads (``plugin.DistillPlugin``).

Two stages, each as early as its input exists:

    check_raw_config     the raw YAML dict, at plugin registration (before Axolotl's validation):
                         a ``distill:`` block exists (a near-miss key such as ``distil:`` is named),
                         the block validates, no sharded-parameter engine (ZeRO-3 / FSDP) is set
    check_resources      the validated cfg, before the data is tokenised and the student loads:
                         the teacher path or hub id resolves, its tokenizer equals the student's,
                         the offline store exists, matches the tokenizer and fits the student

Every failure is a ``SetupError``: one line that names the key. The plugin turns it into exit code 2.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

from pydantic import ValidationError

from .args import DistillConfig

BLOCK = "distill"


class SetupError(ValueError):
    """A user error found before training starts; its message is one line naming the key."""


def _near_misses(keys) -> list[str]:
    return [k for k in keys if isinstance(k, str) and k != BLOCK
            and (k.lower().startswith("distil") or difflib.get_close_matches(k.lower(), [BLOCK], cutoff=0.75))]


def one_line(err: ValidationError, prefix: str = BLOCK) -> str:
    """``distill.<field>: <message>`` for each pydantic error, joined on one line."""
    parts = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(msg if not loc else f"{prefix}.{loc}: {msg} (got {e.get('input')!r})")
    return "; ".join(parts)


def check_raw_config(cfg: dict) -> DistillConfig:
    """The raw config of a run that lists the plugin; returns its validated ``distill:`` block."""
    near = _near_misses(cfg.keys())
    if not cfg.get(BLOCK):
        hint = f" but has `{near[0]}:` — did you mean `{BLOCK}:`?" if near else "; add one (README: `distill:` reference) or remove the plugin"
        raise SetupError(f"`plugins:` lists distill_plugin.DistillPlugin, but the config has no `{BLOCK}:` block{hint}")
    if near:
        raise SetupError(f"unknown top-level key `{near[0]}:` next to `{BLOCK}:` (Axolotl would drop it silently); merge it into `{BLOCK}:`")
    try:
        config = DistillConfig.model_validate(dict(cfg[BLOCK]))
    except ValidationError as err:
        raise SetupError(one_line(err)) from None
    check_engine(cfg)
    return config


def check_engine(cfg: dict) -> None:
    """Refuse parameter sharding: the fused loss reads the whole lm_head weight (#14 adds it)."""
    supported = "supported: one process, or DDP over several (`accelerate launch` / `torchrun`); ZeRO-3/FSDP support is issue #14"
    for key in ("fsdp", "fsdp_config", "fsdp_version"):
        if cfg.get(key):
            raise SetupError(f"`{key}:` (FSDP) shards the lm_head the distillation loss reads whole; {supported}")
    deepspeed = cfg.get("deepspeed")
    if not deepspeed:
        return
    if isinstance(deepspeed, (str, os.PathLike)):
        try:
            deepspeed = json.loads(Path(deepspeed).read_text())
        except (OSError, ValueError) as err:
            raise SetupError(f"`deepspeed:` {cfg.get('deepspeed')!r} is not a readable JSON file ({err})") from None
    stage = (deepspeed.get("zero_optimization") or {}).get("stage", 0) if isinstance(deepspeed, dict) else 0
    if stage == 3:
        raise SetupError(f"`deepspeed:` ZeRO stage 3 shards the lm_head the distillation loss reads whole; {supported}")


def student_tokenizer(cfg):
    """The student's tokenizer as Axolotl will load it (before any tokens are added)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        cfg.get("tokenizer_config") or cfg.get("base_model"),
        trust_remote_code=bool(cfg.get("trust_remote_code")),
        revision=cfg.get("revision_of_model") or None,
    )


def resolve_teacher(config: DistillConfig):
    """The teacher's ``PretrainedConfig``: proves the path or hub id resolves (config.json only)."""
    from transformers import AutoConfig

    teacher = config.teacher
    try:
        return AutoConfig.from_pretrained(teacher, revision=config.teacher_revision)
    except Exception as err:  # transformers raises OSError, ValueError or hub errors for a bad id
        if Path(teacher).expanduser().exists():
            raise SetupError(f"distill.teacher: {teacher!r} exists but holds no loadable config.json ({first_line(err)})") from None
        if teacher.startswith((".", "/", "~")) or teacher.count("/") > 1:
            raise SetupError(f"distill.teacher: no such directory {teacher!r}") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        where = "not in the local hub cache and HF_HUB_OFFLINE is set" if offline else first_line(err)
        raise SetupError(f"distill.teacher: hub id {teacher!r} cannot be resolved: {where}") from None


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def student_vocab_rows(cfg) -> int | None:
    """Rows of the student's output layer, from its config.json (None when it cannot be read)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.get("base_model"), trust_remote_code=bool(cfg.get("trust_remote_code")))
    except Exception:
        return None  # Axolotl reports an unloadable base_model itself
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "vocab_size", None)


# Attention implementations that keep packed documents apart in Axolotl 0.19: varlen kernels read
# position_ids; with sdpa/eager Axolotl drops the attention mask and transformers builds a
# block-diagonal one from position_ids (``attn_decontaminates_packing`` in Axolotl's config).
PACKING_SAFE = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def packing_warning(cfg, config: DistillConfig) -> str | None:
    """Why packed documents would attend to each other (student or teacher), or None."""
    if not cfg.get("sample_packing"):
        return None
    safe = cfg.get("attn_decontaminates_packing")
    if safe is None:  # a cfg that did not go through Axolotl's validation
        safe = cfg.get("attn_implementation") in PACKING_SAFE
    if not safe:
        return (f"sample_packing with attn_implementation={cfg.get('attn_implementation')!r}: packed documents attend "
                f"to each other in the student and in the teacher, whose logits then describe other documents too; "
                f"set `attn_implementation: sdpa` (CPU) or `flash_attention_2`")
    teacher_attn = config.teacher_attn_implementation
    if config.teacher is not None and teacher_attn and teacher_attn not in PACKING_SAFE:
        return (f"sample_packing with distill.teacher_attn_implementation={teacher_attn!r}: packed documents attend to "
                f"each other in the teacher; leave it unset to follow the student's {cfg.get('attn_implementation')!r}")
    return None


def check_resources(cfg, config: DistillConfig) -> None:
    """Checks that read files, never a model's weights.

    A student tokenizer that cannot be loaded is Axolotl's to report (it names ``base_model``); the
    tokenizer comparisons then happen once Axolotl has loaded it (``post_trainer_create``).
    """
    try:
        tokenizer = student_tokenizer(cfg)
    except Exception:
        tokenizer = None
    if config.teacher_server is not None:  # --- teacher_server (issue #16): reachable, model, k, tokenizer ---
        if tokenizer is not None:
            from .teachers.server import ServerTopKSource

            with ServerTopKSource(config.teacher_server, tokenizer, config.check_tokenizer) as served:
                served.connect()
        return
    if config.teacher is not None:
        resolve_teacher(config)
        if config.check_tokenizer and tokenizer is not None:
            from .teachers import check_same_tokenizer

            try:
                check_same_tokenizer(tokenizer, config.teacher, config.teacher_revision)
            except ValueError as err:
                raise SetupError(first_line(err)) from None
        return
    from .offline.store import StoreMismatchError, check_compatible, read_meta

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
