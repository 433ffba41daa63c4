"""Sampling from a model in training: its state before and after, the KV cache, LoRA adapters active."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill_plugin.generation import SamplingParams
from distill_plugin.generation.rollout import Rollout, generation_mode, load_weights_into_vllm, merged_state_dict

PROMPTS = [[1, 2, 3, 4], [5, 6]]


def student(tiny_pair):
    return AutoModelForCausalLM.from_pretrained(tiny_pair[1], dtype=torch.float32), AutoTokenizer.from_pretrained(tiny_pair[1])


def test_training_state_is_restored_and_the_kv_cache_is_used(tiny_pair):
    model, tok = student(tiny_pair)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # what the trainers set for training
    model.train()
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append((m.training, args[0].shape[1])))
    rollout = Rollout(tok, SamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=6))
    out = rollout.sample(model, PROMPTS)
    hook.remove()
    assert len(out) == 2 and all(1 <= len(c) <= 6 for c in out)
    assert seen and not any(training for training, _ in seen), "sampling must run in eval mode"
    # with the KV cache each step after the first feeds one new token, not the whole prefix
    assert seen[0][1] == 4 and all(width == 1 for _, width in seen[1:])
    assert model.training and model.is_gradient_checkpointing and model.config.use_cache is False


def test_completions_stop_after_the_first_stop_token(tiny_pair):
    model, tok = student(tiny_pair)
    eos = tok.eos_token_id
    # EOS lifted far above every other logit: each completion is that one token, nothing after it
    handle = model.lm_head.register_forward_hook(lambda m, a, out: out.index_fill(-1, torch.tensor([eos]), 50.0))
    out = Rollout(tok, SamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=6)).sample(model, PROMPTS)
    handle.remove()
    assert out == [[eos], [eos]]


def lora_student(tiny_pair):
    from peft import LoraConfig, get_peft_model

    model, tok = student(tiny_pair)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter (B starts at 0, which would change nothing)
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.5)
    return peft_model, tok


def test_lora_adapters_are_active_while_sampling(tiny_pair):
    peft_model, tok = lora_student(tiny_pair)
    greedy = Rollout(tok, SamplingParams(n=1, temperature=0.0, max_tokens=8))
    with_adapters = greedy.sample(peft_model, PROMPTS)
    with peft_model.disable_adapter():
        without = greedy.sample(peft_model, PROMPTS)
    merged = greedy.sample(peft_model.merge_and_unload(), PROMPTS)
    assert with_adapters == merged
    assert with_adapters != without


def test_merged_state_dict_has_base_names_and_merged_values(tiny_pair):
    """What the vllm backend loads into its engine: the base checkpoint's names, LoRA merged in."""
    peft_model, tok = lora_student(tiny_pair)
    x = torch.tensor([PROMPTS[0]])
    before = peft_model(input_ids=x).logits
    weights = dict(merged_state_dict(peft_model))
    base_names = set(AutoModelForCausalLM.from_pretrained(tiny_pair[1]).state_dict())
    assert set(weights) == base_names
    merged = peft_model.merge_and_unload().state_dict()
    for name, value in merged.items():
        torch.testing.assert_close(weights[name], value)
    assert not torch.equal(weights["model.layers.0.self_attn.q_proj.weight"],
                           AutoModelForCausalLM.from_pretrained(tiny_pair[1]).state_dict()["model.layers.0.self_attn.q_proj.weight"])


def test_generation_mode_restores_eval_models_too(tiny_pair):
    model, _ = student(tiny_pair)
    model.eval()
    with generation_mode(model):
        assert not model.training and model.config.use_cache
    assert not model.training


class EngineModel:
    """Where vLLM keeps its model: ``load_weights`` takes (name, tensor) pairs in checkpoint names."""

    def __init__(self):
        self.loaded = {}

    def load_weights(self, weights):
        self.loaded.update((name, tensor.clone()) for name, tensor in weights)


def nested(path: str, leaf):
    """An object with ``leaf`` at the dotted ``path`` (the attribute chains of vLLM's engines)."""
    from types import SimpleNamespace

    for attr in reversed(path.split(".")):
        leaf = SimpleNamespace(**{attr: leaf})
    return leaf


@pytest.mark.parametrize("path", ["llm_engine.model_executor.driver_worker.model_runner.model",
                                  "llm_engine.model_executor.driver_worker.worker.model_runner.model",
                                  "llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner.model",
                                  "collective_rpc"])
def test_weights_reach_the_engine_model_in_each_vllm_layout(tiny_pair, path):
    """vLLM's in-process layouts are found by their attribute chain; otherwise the weights go to the
    worker through ``collective_rpc`` (which calls the function with the worker first). vLLM itself is
    not installed here: the stand-ins hold only what the sync touches."""
    model, _ = student(tiny_pair)
    engine = EngineModel()
    if path == "collective_rpc":
        worker = nested("model_runner.model", engine)
        llm = nested("llm_engine", object())
        llm.collective_rpc = lambda fn, args=(): [fn(worker, *args)]
    else:
        llm = nested(path, engine)
    load_weights_into_vllm(llm, model)
    expected = model.state_dict()
    assert engine.loaded.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(engine.loaded[name], value)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (optional, GPU only)")
def test_vllm_rollout_samples_the_current_student_weights(tiny_pair):  # pragma: no cover - GPU machines
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    model, tok = student(tiny_pair)
    model = model.cuda()
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=8)
    hf = Rollout(tok, greedy)
    vllm = Rollout(tok, greedy, backend="vllm", vllm_options={"gpu_memory_utilization": 0.2})
    assert vllm.sample(model, PROMPTS) == hf.sample(model, PROMPTS)
    # the engine loaded the checkpoint from disk at start-up: after the weights change (a training
    # step would) only the sync before each call can make it follow the student
    before = hf.sample(model, PROMPTS)
    with torch.no_grad():
        generator = torch.Generator(device="cuda").manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, device=p.device, generator=generator), alpha=0.5)
    after = hf.sample(model, PROMPTS)
    assert after != before, "the perturbation must change the greedy completions for this test to mean anything"
    assert vllm.sample(model, PROMPTS) == after
