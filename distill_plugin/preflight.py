"""Checks that need no model, run by the plugin before the student loads (``plugin.DistillPlugin``).

Two stages, each as early as its input exists:

    check_raw_config     the raw YAML dict, at plugin registration (before Axolotl's validation):
                         a ``distill:`` block exists (a near-miss key such as ``distil:`` is named),
                         the block validates, the engine (DDP, FSDP2, ZeRO) and the teacher
                         placement can work together (FSDP1 is refused), no sample packing with
                         on-policy sampling
    check_resources      the validated cfg, before the data is tokenised and the student loads:
                         the teacher path or hub id resolves, its tokenizer equals the student's,
                         the offline store exists, matches the tokenizer and fits the student
    switch_off_cuda_only the validated cfg, same moment: CUDA-only speed-ups on a machine without
                         CUDA are switched off, with one warning (see its docstring for why)

Every failure is a ``SetupError``: one line that names the key. The plugin turns it into exit code 2.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from pydantic import ValidationError

from .args import DistillConfig
from .errors import SetupError
from .teachers.placement import engine_of, placement_error, world_size

BLOCK = "distill"


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
    check_engine(cfg, config)  # first: it names an unreadable `deepspeed:` file
    check_on_policy(cfg, config)
    return config


def check_on_policy(cfg: dict, config: DistillConfig) -> None:
    """Sampled completions (on-policy / seq_kd) need one document per row: sample packing is refused,
    not switched off behind the user's back (it also changes the off-policy steps' batches)."""
    if (config.on_policy_fraction or config.seq_kd) and cfg.get("sample_packing"):
        raise SetupError("`sample_packing: true` with distill.on_policy_fraction / distill.seq_kd: generated steps need "
                         "one prompt per row; set `sample_packing: false`")
    engine = engine_of(cfg) if (config.on_policy_fraction or config.seq_kd) else "ddp"
    if engine in ("fsdp2", "zero3"):
        raise SetupError(f"distill.on_policy_fraction / distill.seq_kd: sampling needs whole weights in every process, and "
                         f"{engine} shards them; train with DDP or ZeRO-1/2, or remove the sampling settings")


def check_engine(cfg: dict, config: DistillConfig) -> None:
    """The training engine and the teacher placement (``teachers.placement``) can work together.

    DDP, FSDP2 and DeepSpeed ZeRO 0-3 students are accepted: the fused loss runs as the lm_head's own
    forward, where each engine has gathered the weight (``modeling.through_head``). FSDP1 is refused.
    """
    try:
        engine = engine_of(cfg)
    except (OSError, ValueError) as err:
        raise SetupError(f"`deepspeed:` {cfg.get('deepspeed')!r} is not a readable JSON file ({err})") from None
    if engine == "fsdp1":
        raise SetupError("FSDP1 (`fsdp:` / `fsdp_config:` without `fsdp_version: 2`) is not supported by the distillation "
                         "loss; set `fsdp_version: 2` (FSDP2), or use DeepSpeed ZeRO (`deepspeed:`)")
    if config.hidden_weight and engine != "ddp":
        raise SetupError(f"distill.hidden_weight: hidden-state KD runs under DDP only (its projectors live outside the "
                         f"{engine} engine's optimizer); remove `hidden_weight` or train with DDP")
    if config.teacher is None:
        return
    error = placement_error(config.teacher_placement, world_size(), engine)
    if error:
        raise SetupError(f"distill.teacher_placement: {error}")


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


def check_cross_tokenizer(cfg, config: DistillConfig, tokenizer) -> None:
    """Cross-tokenizer KD (issue #15): no packing, and both tokenizers are fast (offset mappings).
    The same-tokenizer check becomes the plugin's "tokenizers differ, alignment in use" line."""
    from .alignment.setup import check_pair, teacher_tokenizer_path

    if cfg.get("sample_packing"):
        raise SetupError("distill.cross_tokenizer does not support `sample_packing: true` (the teacher would need one "
                         "sequence per packed document); set `sample_packing: false`")
    key = "teacher_tokenizer" if config.teacher_tokenizer else "teacher"
    try:
        if tokenizer is not None:
            check_pair(tokenizer, config)
        else:
            from .alignment.collator import load_teacher_tokenizer

            load_teacher_tokenizer(*teacher_tokenizer_path(config))
    except Exception as err:  # a missing tokenizer (OSError) or a slow one without offsets (ValueError)
        raise SetupError(f"distill.{key}: {first_line(err)}") from None


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
        if config.cross_tokenizer != "off":
            check_cross_tokenizer(cfg, config, tokenizer)
        elif config.check_tokenizer and tokenizer is not None:
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
    check_store_integrity(store)


def check_store_integrity(store: Path) -> None:
    """Every part of the offline store matches the checksum recorded at capture (``offline.checksums``,
    parts hashed in parallel, a progress bar for large stores). A corrupt part is a ``SetupError``
    naming the file and the command that re-captures it; parts without checksums (stores written
    before they were recorded) are logged as one warning and used."""
    import logging

    from .offline.checksums import CorruptStoreError, unrecorded_warning, verify_store

    if store.is_file():  # a single part file outside a store directory: no meta.json to hold checksums
        return
    try:
        warning = unrecorded_warning(store, verify_store(store))
    except CorruptStoreError as err:
        raise SetupError(f"distill.teacher_logits: {err}") from None
    if warning:
        logging.getLogger("axolotl.distill_plugin").warning("distill_plugin: %s", warning)


# Axolotl's Triton LoRA kernels: the same LoRA forward and backward as PEFT's modules, fused, CUDA only.
# Without CUDA they fail at the first step: module 'torch._C' has no attribute '_cuda_getCurrentRawStream'.
CUDA_ONLY_SPEEDUPS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")


def switch_off_cuda_only(cfg, cuda: bool | None = None) -> str | None:
    """Without CUDA, switch off the CUDA-only speed-ups set in ``cfg``; return the one warning, or None.

    Switched off with a warning rather than refused, because (1) they change the speed, not the
    result: the kernels compute the LoRA layers PEFT computes without them; (2) the user often did not
    set them: Axolotl switches them on by itself for LoRA/QLoRA with dropout 0; (3) a recipe written
    for the GPU machine should run unedited on a CPU (a tiny twin, a smoke test). Settings that would
    change the result are never switched silently. ``cfg`` is edited in place: Axolotl reads these keys
    after the model loads, i.e. after this check. ``cuda``: whether CUDA is usable (default: ask torch).
    """
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    on = [key for key in CUDA_ONLY_SPEEDUPS if cfg.get(key)]
    if cuda or not on:
        return None
    for key in on:
        cfg[key] = False
    return (f"no CUDA device: switched off {', '.join(on)} (Axolotl's Triton LoRA kernels need CUDA; "
            f"PEFT's own LoRA layers compute the same thing, slower)")
