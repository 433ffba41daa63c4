"""The on-policy keys of ``distill:``: settings without effect and settings that cannot work are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from distill_plugin.args import DistillConfig
from distill_plugin.methods.on_policy import GENERATION_ONLY
from distill_plugin.preflight import SetupError, check_raw_config

ONLINE = {"teacher": "t", "divergence": "jsd"}


@pytest.mark.parametrize("key,value", [("max_new_tokens", 64), ("generation_temperature", 0.7),
                                       ("generation_top_p", 0.9), ("generation_backend", "vllm"),
                                       ("vllm_options", {"gpu_memory_utilization": 0.5})])
def test_sampling_keys_need_something_sampled(key, value):
    assert key in GENERATION_ONLY
    with pytest.raises(ValidationError, match=f"distill.{key} has no effect without"):
        DistillConfig(**ONLINE, **{key: value})
    vllm = {"generation_backend": "vllm"} if key == "vllm_options" else {}
    DistillConfig(**ONLINE, on_policy_fraction=0.5, **vllm, **{key: value})
    if key not in ("generation_backend", "vllm_options"):
        DistillConfig(**ONLINE, seq_kd=True, **{key: value})


@pytest.mark.parametrize("fields,message", [
    ({"teacher": None, "teacher_logits": "store", "on_policy_fraction": 0.5}, "need the online `teacher` alone"),
    ({"teacher_logits": "store", "hidden_weight": 1.0, "seq_kd": True}, "need the online `teacher` alone"),
    ({"on_policy_fraction": 1.0, "seq_kd": True}, "seq_kd has no effect"),
    ({"on_policy_fraction": 0.5, "ce_weight": 0.5}, "ce_weight > 0"),
    ({"seq_kd": True, "generation_backend": "vllm"}, "hf` backend only"),
    ({"on_policy_fraction": 0.5, "vllm_options": {"enforce_eager": True}}, "vllm_options has no effect without `generation_backend: vllm`"),
    ({"on_policy_fraction": 1.5}, "less than or equal to 1"),
])
def test_settings_that_cannot_work_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        DistillConfig(**{**ONLINE, **fields})


def test_seq_kd_may_use_the_data_ce_and_defaults_stay_valid():
    DistillConfig(**ONLINE, seq_kd=True, ce_weight=0.5)  # CE on the teacher's samples is SeqKD
    assert DistillConfig(**ONLINE).on_policy_fraction == 0.0


def test_sample_packing_is_refused_before_training():
    raw = {"distill": {**ONLINE, "on_policy_fraction": 0.5}, "sample_packing": True}
    with pytest.raises(SetupError, match="sample_packing: true"):
        check_raw_config(raw)
    check_raw_config({**raw, "sample_packing": False})
    check_raw_config({"distill": ONLINE, "sample_packing": True})
