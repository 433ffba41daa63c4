"""Tiny, locally built tokenizer and Qwen2-style models.

Tests, the demo and the recipes' CPU twins use these instead of hub checkpoints (no network here):
the real loading code (`from_pretrained` on a directory) is exercised on the directories written
by this module.

The tokenizer is Qwen2's byte-level BPE with a 261-token vocabulary (bytes + specials) and a
Qwen/R1-like chat template whose assistant turns keep their ``<think>...</think>`` reasoning.

A second, genuinely different tokenizer (``build_sp_tokenizer``) serves cross-tokenizer tests: a
SentencePiece-style BPE (``▁`` marks a leading space, ``<0xNN>`` byte fallback) with its own merge
table learned here from a fixed corpus, its own special tokens and a Phi-3-like chat template
(``<|user|>``/``<|assistant|>``/``<|end|>``). ``build_cross_pair`` puts a teacher on the first
tokenizer and a student on the second.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from distill_plugin.alignment.tokens import byte_alphabet

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
PAD, BOS_EOS = "<|endoftext|>", "<|im_end|>"

# A ChatML template that keeps reasoning in assistant turns and can prefill ``<think>\n``.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{%- if message.get('reasoning_content') -%}"
    "{{- '<think>\n' + message['reasoning_content'] + '\n</think>\n' }}"
    "{%- endif -%}"
    "{{- message['content'] + '<|im_end|>' }}"
    "{%- endgeneration -%}"
    "{{- '\n' }}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking -%}{{- '<think>\n' }}{%- endif -%}"
    "{%- endif -%}"
)

# An R1-Distill-like template that strips reasoning from assistant turns (used to prove that the
# export check catches such templates).
STRIPPING_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(
    "{{- message['content'] + '<|im_end|>' }}",
    "{%- set c = message['content'] -%}{%- if '</think>' in c -%}"
    "{%- set c = c.split('</think>')[-1] -%}{%- endif -%}{{- c + '<|im_end|>' }}",
)


def build_tokenizer(out_dir: str | Path | None = None, chat_template: str = CHAT_TEMPLATE):
    """Build (and optionally save) the tiny tokenizer: Qwen2's byte-level BPE with no merges.

    Every byte is one token, so any UTF-8 text round-trips, and ``AutoTokenizer`` reloads the saved
    directory as the very same ``Qwen2Tokenizer`` (a custom tokenizer class would be replaced by
    Qwen2's on reload, because the tiny models are Qwen2 models).
    """
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(byte_alphabet())}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=PAD,
        pad_token=PAD,
        eos_token=BOS_EOS,
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tok.chat_template = chat_template
    tok.padding_side = "right"
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


SP_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SP_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|end|>' }}{%- endgeneration -%}{{- '\n' }}"
    "{%- else -%}{{- message['content'] + '<|end|>\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\n' }}{%- endif -%}"
)
SP_MERGES = 160


def _sp_corpus() -> list[str]:
    """Fixed text the second tokenizer's merges are learned from (arithmetic chats + plain English)."""
    from distill_plugin.testing.addition import make_split

    chats = [m["content"] for row in make_split(64, seed=1234) for m in row["messages"]]
    english = ["the quick brown fox jumps over the lazy dog", "what is the answer to this question",
               "tokenizers split words into pieces", "the teacher and the student see the same text"]
    return chats + english * 4


def learn_merges(corpus: list[str], merges: int) -> list[tuple[str, str]]:
    """Plain BPE on ``▁``-marked words: repeatedly merge the most frequent adjacent pair (ties: the
    lexicographically smallest pair), so the merge table is deterministic."""
    words = Counter(tuple(w) for text in corpus for w in re.split("(?=▁)", text.replace(" ", "▁")) if w)
    table = []
    for _ in range(merges):
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        table.append(best)
        merged = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return table


def build_sp_tokenizer(out_dir: str | Path | None = None, chat_template: str = SP_CHAT_TEMPLATE):
    """The second tiny tokenizer: SentencePiece-style BPE (``▁`` + byte fallback), its own merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    merges = learn_merges(_sp_corpus(), SP_MERGES)
    vocab = {token: i for i, token in enumerate(SP_SPECIAL_TOKENS)}
    alphabet = sorted({*map(chr, range(0x20, 0x7F)), "\n", "▁"} - {" "})
    for token in [f"<0x{b:02X}>" for b in range(256)] + alphabet + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", pad_token="</s>",
                                  eos_token="<|end|>", additional_special_tokens=SP_SPECIAL_TOKENS[3:])
    tok.chat_template = chat_template
    tok.padding_side = "right"
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def build_model(
    out_dir: str | Path | None = None,
    tokenizer=None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    vocab_pad_to: int | None = None,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    architecture: str = "qwen2",
):
    """Build a randomly initialised Qwen2 (or, ``architecture="llama"``, Llama) causal LM sized for
    ``tokenizer``. The second tokenizer's student is a Llama: for a ``qwen2`` config AutoTokenizer
    always rebuilds a Qwen2 tokenizer, whose byte-level pipeline would replace the saved one.

    ``vocab_pad_to`` pads the embedding matrix beyond the tokenizer's length, as real checkpoints of
    one family do (151,936 vs 152,064), so the vocab-padding path can be tested.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer or build_tokenizer()
    vocab = max(len(tokenizer), vocab_pad_to or 0)
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[architecture]
    extra = {"use_sliding_window": False} if architecture == "qwen2" else {}
    config = config_cls(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **extra,
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    if out_dir is not None:
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    return model


def build_reward_model(out_dir: str | Path | None = None, tokenizer=None, hidden_size: int = 32,
                       num_labels: int = 1, seed: int = 0):
    """A randomly initialised Qwen2 sequence-classification model (a reward model when
    ``num_labels`` is 1) on the tiny tokenizer: ``distill-data judge --reward-model`` in tests and
    examples."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = tokenizer or build_tokenizer()
    config = build_model(None, tokenizer, hidden_size=hidden_size, seed=seed).config
    config.num_labels = num_labels
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    if out_dir is not None:
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    return model


def build_pair(root: str | Path, teacher_hidden: int = 64, student_hidden: int = 32, **kw) -> tuple[Path, Path]:
    """Write a tiny teacher and student (sharing the tokenizer) under ``root``; return their paths."""
    root = Path(root)
    tok = build_tokenizer()
    build_model(root / "teacher", tok, hidden_size=teacher_hidden, seed=1, **kw)
    build_model(root / "student", tok, hidden_size=student_hidden, seed=2, **kw)
    return root / "teacher", root / "student"


def build_cross_pair(root: str | Path, teacher_hidden: int = 64, student_hidden: int = 32, **kw) -> tuple[Path, Path]:
    """A tiny teacher on the byte-level tokenizer and a tiny student on the SentencePiece-style one."""
    root = Path(root)
    build_model(root / "teacher", build_tokenizer(), hidden_size=teacher_hidden, seed=1, **kw)
    build_model(root / "student_sp", build_sp_tokenizer(), hidden_size=student_hidden, seed=2, architecture="llama", **kw)
    return root / "teacher", root / "student_sp"


# The pair every recipe's tiny twin trains (``distill_plugin.testing.twins``): widths are multiples of
# 64 (bitsandbytes' 4-bit CPU kernel, for the QLoRA twins), the student is narrower and shallower than
# the teacher (hidden-state KD needs projectors and a layer map), and the teacher's lm_head is scaled
# so its distributions are peaked, not near uniform: the KD term is then O(1), not ~0.01. ``middle``
# sits between them (the teacher's width, the student's depth): the middle stage of a progressive
# chain (``recipes/progressive/``), student of the teacher and then teacher of the student, its
# lm_head scaled as the teacher's (a few LoRA steps in the first stage leave it near where it started).
TWIN_PAIR = {"student": dict(hidden_size=64, num_layers=2, seed=2), "teacher": dict(hidden_size=128, num_layers=4, seed=1),
             "middle": dict(hidden_size=128, num_layers=2, seed=3)}
TEACHER_SHARPNESS = 20.0


def prepare_tiny_run(root: str | Path = "runs/tiny", examples: int = 64, seed: int = 0) -> Path:
    """What the recipes' tiny twins point at (``python -m distill_plugin.testing.twins``):
    ``root/{teacher,student,middle}`` (untrained, ``TWIN_PAIR``, one tokenizer), ``root/student_sp`` (the
    student of ``TWIN_PAIR`` on the second tokenizer, a Llama: cross-tokenizer twins) and
    ``root/data.jsonl`` (the demo's two-digit addition chats)."""
    import torch

    from distill_plugin.testing.addition import make_split
    from distill_plugin.jsonl import write_jsonl_atomic

    root, tok = Path(root), build_tokenizer()
    build_model(root / "student", tok, **TWIN_PAIR["student"])
    for name in ("teacher", "middle"):  # the models that teach (the middle one in a chain's second stage)
        model = build_model(None, tok, **TWIN_PAIR[name])
        with torch.no_grad():
            model.lm_head.weight.mul_(TEACHER_SHARPNESS)
        model.save_pretrained(str(root / name))
        tok.save_pretrained(str(root / name))
    build_model(root / "student_sp", build_sp_tokenizer(), architecture="llama", **TWIN_PAIR["student"])
    write_jsonl_atomic(root / "data.jsonl", make_split(examples, seed=seed))
    return root


def main(argv: list[str] | None = None) -> None:
    """``python -m distill_plugin.testing.tiny [--out runs/tiny]``: build what the recipes' tiny twins use."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m distill_plugin.testing.tiny", description=main.__doc__)
    parser.add_argument("--out", default="runs/tiny", help="directory the twins point at (default: runs/tiny)")
    parser.add_argument("--examples", type=int, default=64, help="rows of data.jsonl")
    args = parser.parse_args(argv)
    root = prepare_tiny_run(args.out, args.examples)
    print(f"wrote {root}/teacher, {root}/student, {root}/middle, {root}/student_sp and {root}/data.jsonl")


if __name__ == "__main__":
    main()
