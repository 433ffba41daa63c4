"""Prompt/completion split and the masks of generated rows, on hand-built batches."""

from __future__ import annotations

import pytest
import torch

from distill_plugin.losses.chunked import supervised_mask
from distill_plugin.onpolicy.batch import build_rows, completion_length, replace_completions, split_prompts

PAD, EOS, X = 0, 9, -100


def right_padded():
    # row 0: prompt [1 2 3], answer [4 5 EOS]; row 1: prompt [1 2 3 6 7], answer [8 EOS] + padding;
    # row 2: all padding (nothing supervised).
    input_ids = torch.tensor([[1, 2, 3, 4, 5, EOS, PAD], [1, 2, 3, 6, 7, 8, EOS], [PAD] * 7])
    labels = torch.tensor([[X, X, X, 4, 5, EOS, X], [X, X, X, X, X, 8, EOS], [X] * 7])
    attention = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1] * 7, [0] * 7])
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def test_prompts_of_right_and_left_padded_rows():
    batch = right_padded()
    assert split_prompts(batch["input_ids"], batch["labels"], batch["attention_mask"]) == [[1, 2, 3], [1, 2, 3, 6, 7], None]
    # the same rows left-padded give the same prompts
    left = {k: torch.stack([torch.roll(row, int((batch["attention_mask"][b] == 0).sum())) for b, row in enumerate(v)])
            for k, v in batch.items()}
    assert left["attention_mask"][0, 0] == 0  # row 0 really is left-padded now
    assert split_prompts(left["input_ids"], left["labels"], left["attention_mask"]) == [[1, 2, 3], [1, 2, 3, 6, 7], None]


def test_prompt_ends_at_the_last_assistant_turn():
    """Two assistant turns supervised: the prompt keeps the first answer and the second question."""
    ids = torch.tensor([[1, 2, 4, 5, EOS, 1, 3, 6, 7, EOS]])
    labels = torch.tensor([[X, X, 4, 5, EOS, X, X, 6, 7, EOS]])
    assert split_prompts(ids, labels) == [[1, 2, 4, 5, EOS, 1, 3]]


def test_packed_rows_are_refused():
    batch = right_padded()
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3]] * 3)
    with pytest.raises(ValueError, match="packing"):
        split_prompts(batch["input_ids"], batch["labels"], batch["attention_mask"], positions)


@pytest.mark.parametrize("pad", [PAD, EOS], ids=["pad!=eos", "pad==eos"])
def test_masks_of_generated_rows(pad):
    batch = right_padded()
    prompts = split_prompts(batch["input_ids"], batch["labels"], batch["attention_mask"])
    # row 0 stops mid-completion (tokens after its EOS are garbage/padding the engine left), row 1
    # runs out of tokens without an EOS; row 2 has no prompt.
    completions = [[11, EOS, 12, pad, pad], [13, 14, 15, 16], None]
    out = build_rows(prompts, completions, pad, [EOS], passthrough=batch)
    assert out["input_ids"].tolist() == [
        [1, 2, 3, 11, EOS, pad, pad, pad, pad],
        [1, 2, 3, 6, 7, 13, 14, 15, 16],
        [pad] * 9,
    ]
    assert out["attention_mask"].tolist() == [[1] * 5 + [0] * 4, [1] * 9, [0] * 9]
    assert out["labels"].tolist() == [
        [X, X, X, 11, EOS, X, X, X, X],
        [X, X, X, X, X, 13, 14, 15, 16],
        [X] * 9,
    ]
    # shift convention: row t predicts t+1; supervised rows = last prompt position .. before the EOS
    mask = supervised_mask(out["labels"])
    assert torch.nonzero(mask).tolist() == [[0, 2], [0, 3], [1, 4], [1, 5], [1, 6], [1, 7]]


def test_completion_length_and_passthrough_of_unsupervised_real_rows():
    assert completion_length([5, 6, EOS, EOS, 7], [EOS]) == 3
    assert completion_length([5, 6], [EOS]) == 2
    assert completion_length([], [EOS]) == 0
    # a row with real tokens but no supervised label is kept as it was (nothing to train on)
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4], [5, 6, PAD, PAD]]),
             "labels": torch.tensor([[X, X, 3, 4], [X, X, X, X]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
             "position_ids": torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])}
    prompts = split_prompts(batch["input_ids"], batch["labels"], batch["attention_mask"])
    out = replace_completions(batch, [[7, EOS, 8], None], prompts, PAD, [EOS])
    assert out["input_ids"].tolist() == [[1, 2, 7, EOS], [5, 6, PAD, PAD]]
    assert out["labels"].tolist() == [[X, X, 7, EOS], [X, X, X, X]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3]] * 2
    assert set(out) == {"input_ids", "labels", "attention_mask", "position_ids"}
