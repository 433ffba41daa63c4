"""Checks that need no model, run by the plugin before the student loads (``plugin.DistillPlugin``).

Two stages, each as early as its input exists:

    check_raw_config     the raw YAML dict, at plugin registration (before Axolotl's validation):
                         a ``distill:`` block exists (a near-miss key such as ``distil:`` is named),
                         the block validates, the engine is supported (FSDP1 is refused), then each
                         method's own checks (``methods``: engine, teacher placement, packing)
    check_resources      the validated cfg, before the data is tokenised and the student loads:
                         every line of the local JSON-lines datasets parses (``check_datasets``),
                         each method's files (a teacher's config.json and tokenizer, a store, a
                         server)
    switch_off_cuda_only the validated cfg, same moment: CUDA-only speed-ups on a machine without
                         CUDA are switched off, with one warning (see its docstring for why)

Every failure is a ``SetupError``: one line that names the key. The plugin turns it into exit code 2.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from pydantic import ValidationError

from . import methods
from .args import DistillConfig
from .errors import SetupError
from .modeling import PACKING_SAFE
from .teachers.placement import engine_of

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
    check_engine(cfg)  # first: it names an unreadable `deepspeed:` file
    methods.check_config(cfg, config)
    return config


def check_engine(cfg: dict) -> None:
    """The training engine is one the loss supports.

    DDP, FSDP2 and DeepSpeed ZeRO 0-3 students are accepted: the fused loss runs as the lm_head's own
    forward, where each engine has gathered the weight (``modeling.through_head``). FSDP1 is refused.
    Each method then checks the engine against its own needs (``Method.check_config``).
    """
    try:
        engine = engine_of(cfg)
    except (OSError, ValueError) as err:
        raise SetupError(f"`deepspeed:` {cfg.get('deepspeed')!r} is not a readable JSON file ({err})") from None
    if engine == "fsdp1":
        raise SetupError("FSDP1 (`fsdp:` / `fsdp_config:` without `fsdp_version: 2`) is not supported by the distillation "
                         "loss; set `fsdp_version: 2` (FSDP2), or use DeepSpeed ZeRO (`deepspeed:`)")


def student_tokenizer(cfg):
    """The student's tokenizer as Axolotl will load it (before any tokens are added)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        cfg.get("tokenizer_config") or cfg.get("base_model"),
        trust_remote_code=bool(cfg.get("trust_remote_code")),
        revision=cfg.get("revision_of_model") or None,
    )


def packing_warning(cfg, config: DistillConfig) -> str | None:
    """Why packed documents would attend to each other (student, or a method's model), or None."""
    if not cfg.get("sample_packing"):
        return None
    safe = cfg.get("attn_decontaminates_packing")
    if safe is None:  # a cfg that did not go through Axolotl's validation
        safe = cfg.get("attn_implementation") in PACKING_SAFE
    if not safe:
        return (f"sample_packing with attn_implementation={cfg.get('attn_implementation')!r}: packed documents attend "
                f"to each other in the student and in the teacher, whose logits then describe other documents too; "
                f"set `attn_implementation: sdpa` (CPU) or `flash_attention_2`")
    return methods.packing_warning(cfg, config)


def check_resources(cfg, config: DistillConfig) -> None:
    """Checks that read files, never a model's weights: each method's (``Method.check_resources``).

    A student tokenizer that cannot be loaded is Axolotl's to report (it names ``base_model``); the
    tokenizer comparisons then happen once Axolotl has loaded it (the methods' sources).
    """
    check_datasets(cfg)
    try:
        tokenizer = student_tokenizer(cfg)
    except Exception:
        tokenizer = None
    methods.check_resources(cfg, config, tokenizer)


def local_jsonl_files(entry) -> list[Path]:
    """The local JSON-lines files a ``datasets:`` entry names (``path``: a ``.jsonl`` file or a folder
    of them; ``data_files``), or none (a hub dataset, another format)."""
    get = entry.get if hasattr(entry, "get") else lambda key, default=None: getattr(entry, key, default)
    named = [get("path")] + list(get("data_files") or [])
    found = []
    for name in named:
        path = Path(str(name)) if isinstance(name, (str, Path)) else None
        if path is None or not path.exists():
            continue
        found += sorted(path.glob("*.jsonl")) if path.is_dir() else [path] if path.suffix == ".jsonl" else []
    return found


def check_datasets(cfg) -> None:
    """Every line of the local JSON-lines datasets parses as a JSON object (one pass over each file);
    the first one that does not is a ``SetupError`` naming ``file:line`` (Axolotl's loader would stop
    on it with a traceback from deep inside ``datasets``)."""
    for group in ("datasets", "test_datasets"):
        for i, entry in enumerate(cfg.get(group) or []):
            for path in local_jsonl_files(entry):
                where = bad_jsonl_line(path)
                if where:
                    raise SetupError(f"{group}[{i}].path: {where}; fix or remove that line")


def bad_jsonl_line(path: Path) -> str | None:
    """``file:line: reason`` of the first line of ``path`` that is not a JSON object, else None."""
    with open(path, "rb", buffering=1 << 20) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError as err:  # JSONDecodeError, invalid UTF-8
                torn = " (a torn last line: the file was cut short)" if not raw.endswith(b"\n") else ""
                return f"{path}:{lineno}: malformed JSON ({getattr(err, 'msg', err)}){torn}"
            if not isinstance(row, dict):
                return f"{path}:{lineno}: not a JSON object ({type(row).__name__})"
    return None


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
