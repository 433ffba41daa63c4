"""The vLLM offline backend needs vllm (and a GPU); skipped where it is not installed."""

import pytest

from data_prep.backends import PromptStyle, Sampling, make_backend


def test_vllm_backend_generates(tiny_teacher):
    pytest.importorskip("vllm")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vllm needs a GPU")
    be = make_backend("vllm", str(tiny_teacher), Sampling(n=2, max_tokens=40, seed=0), PromptStyle(),
                      gpu_memory_utilization=0.2, max_model_len=512)
    got = {}
    be.run([[{"role": "user", "content": "What is 2+3?\n\n" + PromptStyle().suffix}]], lambda i, g: got.update({i: g}))
    assert len(got[0]) == 2 and all(g.finish_reason in ("stop", "length") for g in got[0])
    assert all(g.completion_tokens and g.prompt_tokens for g in got[0])


def test_vllm_backend_reports_missing_package():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install vllm"):
            make_backend("vllm", "x", Sampling(), PromptStyle())
    else:
        pytest.skip("vllm installed")
