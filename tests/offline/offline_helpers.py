"""Reference computations shared by the offline-logits tests."""

from __future__ import annotations


def exact_topk(model, input_ids, k, temperature=1.0):
    """Reference: top-k of the full-vocabulary fp32 log_softmax(logits / T) at every position."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([list(input_ids)])).logits[0].float()
    values, ids = torch.log_softmax(logits / temperature, -1).topk(k, -1)
    return ids.numpy(), values.numpy()


def by_id(ids, values):
    """Sort each position's candidates by id (the pairing id -> value is what must survive)."""
    import numpy as np

    order = np.argsort(ids, axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1), np.take_along_axis(values, order, 1)
