"""What the batch collators share: the Axolotl collator they wrap, named by a dotted path."""

from __future__ import annotations

import importlib

DEFAULT_BASE_COLLATOR = "axolotl.utils.collators.batching.DataCollatorForSeq2Seq"


def resolve_class(cls_or_path):
    """A class, or the class a dotted path names (collators are passed either way)."""
    if isinstance(cls_or_path, str):
        module, _, name = cls_or_path.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return cls_or_path


def cfg_get(obj, name):
    """``obj[name]`` or ``obj.name`` (Axolotl's cfg is a dict-like ``DictDefault``); None when absent."""
    if obj is None:
        return None
    return obj.get(name) if hasattr(obj, "get") else getattr(obj, name, None)


def base_collator_path(cfg, is_eval: bool = False) -> str:
    """The collator Axolotl's ``HFCausalTrainerBuilder.build_collator`` would pick for this cfg."""
    packing = cfg_get(cfg, "eval_sample_packing") if is_eval else cfg_get(cfg, "sample_packing")
    if not packing:
        return DEFAULT_BASE_COLLATOR
    from axolotl.monkeypatch.multipack import SUPPORTED_MULTIPACK_MODEL_TYPES

    attn = cfg_get(cfg, "attn_implementation")
    model_type = cfg_get(cfg, "model_config_type")
    if attn == "flex_attention" or model_type in SUPPORTED_MULTIPACK_MODEL_TYPES or (
            model_type == "llama" and attn != "flash_attention_2"):
        return "axolotl.utils.collators.batching.V2BatchSamplerDataCollatorForSeq2Seq"
    return "axolotl.utils.collators.batching.BatchSamplerDataCollatorForSeq2Seq"
