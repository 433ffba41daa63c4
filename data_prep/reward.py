"""A sequence-classification reward model scoring (prompt, answer) pairs in batches.

The pair is rendered with the reward model's own chat template (``[user turns…, assistant:
answer]``, no generation prompt) and scored by ``AutoModelForSequenceClassification`` with one
output (``num_labels == 1``, as Skywork-Reward, ArmoRM's head, InternLM2-Reward…): ``score`` is that
logit, read at the last non-padding token (the model's own pooling). A pair longer than
``max_length`` tokens is not truncated (a cut answer would be scored as another answer): it gets
status ``too_long`` and no score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice

from .dedup import prompt_text
from .io import InputError
from .rubric import answer_of


class RewardModel:
    name = "reward_model"

    def __init__(self, path: str, batch_size: int = 8, max_length: int = 4096, device: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path, self.batch_size, self.max_length = str(path), batch_size, max_length
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok = AutoTokenizer.from_pretrained(self.path)
        if not self.tok.chat_template:
            raise InputError(f"{path}: the reward model's tokenizer has no chat template to render (prompt, answer)")
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path).to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise InputError(f"{path}: a reward model has one output (num_labels 1); this one has "
                             f"{self.model.config.num_labels} (a classifier?)")
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        if self.model.config.pad_token_id is None:  # the pooling finds the last non-pad token by this id
            self.model.config.pad_token_id = self.tok.pad_token_id

    def conversation(self, row: dict, answer: str) -> list[dict]:
        p = row["prompt"]
        turns = [dict(m) for m in p] if isinstance(p, list) else [{"role": "user", "content": prompt_text(p)}]
        return turns + [{"role": "assistant", "content": answer}]

    def encode(self, row: dict, answer: str) -> list[int]:
        text = self.tok.apply_chat_template(self.conversation(row, answer), tokenize=False)
        return self.tok(text, add_special_tokens=False)["input_ids"]  # the template wrote the specials

    def score_ids(self, batch: list[list[int]]) -> list[float]:
        """The reward of each token-id sequence (right-padded into one forward pass)."""
        import torch

        width = max(map(len, batch))
        pad = self.tok.pad_token_id
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=self.device)
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        return logits[:, 0].float().cpu().tolist()

    def score(self, pairs: Iterable[tuple[dict, dict]], on_done: Callable[[int, float | None, str], None]) -> None:
        """``on_done(i, score, status)`` for the i-th (row, generation) pair, in order."""
        it = enumerate(pairs)
        while chunk := list(islice(it, self.batch_size)):
            encoded = [(i, self.encode(row, answer_of(g))) for i, (row, g) in chunk]
            fits = [(i, ids) for i, ids in encoded if len(ids) <= self.max_length]
            scores = dict(zip((i for i, _ in fits), self.score_ids([ids for _, ids in fits]))) if fits else {}
            for i, _ in encoded:
                on_done(i, scores[i], "ok") if i in scores else on_done(i, None, "too_long")

    def describe(self) -> dict:
        return {"reward_model": self.path, "max_length": self.max_length}

    def close(self) -> None:
        pass
