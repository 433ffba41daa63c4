"""Learned projectors from the student's width to the teacher's, one per layer pair.

They are training-only: the trainer puts them in the student's optimizer (their own param group,
``hidden_projector_lr`` or the student's LR) and saves them in ``PROJECTOR_FILE`` beside each
checkpoint — never inside the student's weights, so a checkpoint loads with
``AutoModelForCausalLM`` / ``PeftModel.from_pretrained`` with no unexpected keys — and restores
them on ``resume_from_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

PROJECTOR_FILE = "distill_projectors.safetensors"


class Projectors(nn.Module):
    """``forward(rows)``: rows[p] [N, H_s] → [N, H_t] through pair p's map, in fp32.

    ``linear``: a learned affine map per pair, initialised to the identity when widths match.
    ``none``: no parameters; widths must match.
    """

    def __init__(self, pairs: int, student_width: int, teacher_width: int, kind: str = "linear"):
        super().__init__()
        if kind == "none" and student_width != teacher_width:
            raise ValueError(
                f"distill.hidden_projector: none needs equal widths, but the student's hidden size is "
                f"{student_width} and the teacher's {teacher_width}; use `hidden_projector: linear`"
            )
        self.maps = nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in range(pairs if kind == "linear" else 0))
        if student_width == teacher_width:
            for linear in self.maps:
                nn.init.eye_(linear.weight)
                nn.init.zeros_(linear.bias)

    def forward(self, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        if not len(self.maps):
            return [r.float() for r in rows]
        return [linear(r.float()) for linear, r in zip(self.maps, rows, strict=True)]


def save_projectors(module: nn.Module, directory: str | Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if state:
        Path(directory).mkdir(parents=True, exist_ok=True)
        save_file(state, str(Path(directory) / PROJECTOR_FILE))


def load_projectors(module: nn.Module, directory: str | Path) -> bool:
    """Load ``PROJECTOR_FILE`` from ``directory`` into ``module``; False when there is none."""
    from safetensors.torch import load_file

    path = Path(directory) / PROJECTOR_FILE
    if not path.exists():
        return False
    module.load_state_dict(load_file(str(path), device=str(next(module.parameters()).device)))
    return True
