"""The vLLM engine needs vllm (and a GPU); skipped where it is not installed."""

import pytest

from data_prep.trajectory import PromptStyle
from distill_plugin.generation import SamplingParams, make_backend


def test_vllm_backend_generates(tiny_teacher):
    pytest.importorskip("vllm")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vllm needs a GPU")
    be = make_backend("vllm", str(tiny_teacher), gpu_memory_utilization=0.2, max_model_len=512)
    got = {}
    prompt = [{"role": "user", "content": "What is 2+3?\n\n" + PromptStyle().suffix}]
    be.generate([prompt], SamplingParams(n=2, max_tokens=40, seed=0, logprobs=True), lambda i, c: got.update({i: c}))
    assert len(got[0]) == 2 and all(c.finish_reason in ("stop", "length") for c in got[0])
    assert all(c.completion_tokens and c.prompt_tokens for c in got[0])
    assert all(len(c.logprobs) == len(c.token_ids) for c in got[0])


def test_vllm_backend_reports_missing_package():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install vllm"):
            make_backend("vllm", "x")
    else:
        pytest.skip("vllm installed")
