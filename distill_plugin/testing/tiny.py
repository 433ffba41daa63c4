"""Tiny, locally built tokenizer and Qwen2-style models.

Tests, the demo and the recipes' CPU twins use these instead of hub checkpoints (no network here):
the real loading code (`from_pretrained` on a directory) is exercised on the directories written
by this module.

The tokenizer is Qwen2's byte-level BPE with a 261-token vocabulary (bytes + specials) and a
Qwen/R1-like chat template whose assistant turns keep their ``<think>...</think>`` reasoning.
"""

from __future__ import annotations

from pathlib import Path

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


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2/Qwen convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


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
):
    """Build a randomly initialised Qwen2 causal LM sized for ``tokenizer``.

    ``vocab_pad_to`` pads the embedding matrix beyond the tokenizer's length, as real checkpoints of
    one family do (151,936 vs 152,064), so the vocab-padding path can be tested.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer or build_tokenizer()
    vocab = max(len(tokenizer), vocab_pad_to or 0)
    config = Qwen2Config(
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
        use_sliding_window=False,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
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


def prepare_tiny_run(root: str | Path = "runs/tiny", examples: int = 48, seed: int = 0) -> Path:
    """What ``recipes/tiny/*.yml`` point at: ``root/{teacher,student}`` (untrained, hidden 48 / 32,
    one tokenizer) and ``root/data.jsonl`` (the demo's two-digit addition chats)."""
    from distill_plugin.demo.task import make_split
    from distill_plugin.jsonl import write_jsonl_atomic

    root = Path(root)
    build_pair(root, teacher_hidden=48, student_hidden=32)
    write_jsonl_atomic(root / "data.jsonl", make_split(examples, seed=seed))
    return root


def main(argv: list[str] | None = None) -> None:
    """``python -m distill_plugin.testing.tiny [--out runs/tiny]``: build what the tiny recipes use."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m distill_plugin.testing.tiny", description=main.__doc__)
    parser.add_argument("--out", default="runs/tiny", help="directory the tiny recipes point at (default: runs/tiny)")
    parser.add_argument("--examples", type=int, default=48, help="rows of data.jsonl")
    args = parser.parse_args(argv)
    root = prepare_tiny_run(args.out, args.examples)
    print(f"wrote {root}/teacher, {root}/student and {root}/data.jsonl")


if __name__ == "__main__":
    main()
