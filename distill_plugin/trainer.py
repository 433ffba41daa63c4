"""Trainer glue: one ``compute_loss`` for Axolotl's trainer and for TRL's ``SFTTrainer``.

Per micro-batch: the teacher source turns the batch into teacher signals (no grad), then — inside
the wrapped student's own forward call (``modeling.inside_forward``), so DDP/FSDP/ZeRO machinery
around forward also surrounds the loss — the student runs with its lm_head bypassed (final hidden
states only), the supervised rows are kept and the loss terms (``losses.terms``) return their
weighted objective and per-component sums. The trainer divides by the supervised-token count of
the whole optimizer step (``num_items_in_batch``, summed over gradient-accumulation micro-batches
and, with ``average_tokens_across_devices``, over processes) and logs every component as
``<name>_loss`` (``eval_<name>_loss`` in evaluation), whatever the list of terms is.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch

from .args import DistillConfig
from .losses.chunked import supervised_mask
from .losses.terms import LossTerm, check_signals, component_names, run_terms
from .modeling import final_hidden_states, inside_forward, model_inputs, output_head, unwrap_distributed
from .signals import LABELS, StudentRows


def student_objective(forward, model, labels, mask, terms, signals, **inputs):
    """Runs inside the student's forward call: hidden states → supervised rows → the loss terms.

    ``forward`` is the student's own forward (``inside_forward``), ``inputs`` the model inputs.
    Returns ``TermOutput(objective, sums)``, both unnormalised.
    """
    hidden = final_hidden_states(model, inputs, forward=forward)
    student = StudentRows(hidden[:, :-1][mask], labels[:, 1:][mask], output_head(model))
    return run_terms(terms, student, signals)


class DistillTrainerMixin:
    """Mix in before a ``transformers.Trainer`` subclass. Call ``setup_distillation`` before training."""

    distill_config: DistillConfig | None = None
    teacher_source = None
    loss_terms: tuple[LossTerm, ...] = ()

    def setup_distillation(self, config: DistillConfig, teacher_source, terms: Sequence[LossTerm] | None = None) -> None:
        """Attach the teacher source and the loss terms (default: ``config.loss_terms()``)."""
        terms = tuple(config.loss_terms() if terms is None else terms)
        check_signals(terms, teacher_source.produces)
        self.distill_config, self.teacher_source, self.loss_terms = config, teacher_source, terms
        self.distill_metrics = tuple(f"{name}_loss" for name in component_names(terms))
        # We normalise by num_items_in_batch ourselves; make the Trainer compute and pass it, summed
        # over processes too (Axolotl turns that off), so N is the global supervised-token count.
        self.model_accepts_loss_kwargs = True
        self.args.average_tokens_across_devices = True
        # Running component sums stay on the device: no host sync per micro-batch, one per log.
        self._distill_sums = {"train": None, "eval": None}
        self._distill_counts = {"train": 0, "eval": 0}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.teacher_source is None:
            raise RuntimeError(
                "distill_plugin: the trainer has no teacher; was the plugin's post_trainer_create hook run "
                "(Axolotl) or setup_distillation called (TRL)?"
            )
        labels = inputs[LABELS]
        mask = supervised_mask(labels)
        signals = self.teacher_source.signals(inputs, mask)
        fn = partial(student_objective, model=unwrap_distributed(model), labels=labels, mask=mask,
                     terms=self.loss_terms, signals=signals)
        objective, sums = inside_forward(model, fn, **model_inputs(inputs))
        normalizer = num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp(min=1)
        if torch.is_tensor(normalizer):
            normalizer = normalizer.to(objective.device).float()
        scale = self._loss_scale(num_items_in_batch)
        loss = objective / normalizer * scale
        self._record("train" if model.training else "eval", sums / normalizer * scale)
        return (loss, {"loss": loss.detach()}) if return_outputs else loss

    def _loss_scale(self, num_items_in_batch) -> float:
        """Mirror transformers.Trainer: a loss normalised by a count summed over processes is
        multiplied by the process count, because DDP averages gradients across processes."""
        if num_items_in_batch is not None and getattr(self.args, "average_tokens_across_devices", False):
            return float(self.accelerator.num_processes)
        return 1.0

    def _record(self, split: str, components: torch.Tensor) -> None:
        parts = components.detach().double()
        sums = self._distill_sums[split]
        self._distill_sums[split] = parts if sums is None else sums + parts
        self._distill_counts[split] += 1

    def _flush(self, split: str) -> dict[str, float]:
        count = self._distill_counts[split]
        if not count:
            return {}
        # Training components are fractions of the step's total: sum over the step's micro-batches,
        # average over the optimizer steps since the last log. Eval batches are each normalised.
        per = count / self.args.gradient_accumulation_steps if split == "train" else count
        values = self._distill_sums[split].to(self.accelerator.device).reshape(1, -1) / max(per, 1e-12)
        values = self.accelerator.gather_for_metrics(values).reshape(-1, len(self.distill_metrics)).mean(0).tolist()
        self._distill_sums[split], self._distill_counts[split] = None, 0
        prefix = "eval_" if split == "eval" else ""
        return {f"{prefix}{name}": round(v, 6) for name, v in zip(self.distill_metrics, values)}

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.distill_config is not None:
            if "loss" in logs:
                logs.update(self._flush("train"))
            elif "eval_loss" in logs:
                logs.update(self._flush("eval"))
        super().log(logs, *args, **kwargs)


def make_trl_trainer_class():
    """``DistillSFTTrainer``: TRL's SFTTrainer with the distillation loss (import deferred)."""
    from trl import SFTTrainer

    class DistillSFTTrainer(DistillTrainerMixin, SFTTrainer):
        """SFTTrainer + KD. Pass ``teacher_model`` (a model or path) and ``distill_config``."""

        def __init__(self, *args, teacher_model=None, distill_config: DistillConfig | dict | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            from .teachers import TeacherModelSource, check_same_tokenizer, load_teacher

            fields = dict(distill_config or {}) if not isinstance(distill_config, DistillConfig) else distill_config.model_dump()
            if isinstance(teacher_model, torch.nn.Module):
                fields["teacher"] = getattr(teacher_model, "name_or_path", "") or "<in-memory teacher>"
            elif teacher_model is not None:
                fields["teacher"] = teacher_model
            config = DistillConfig.model_validate(fields)
            if isinstance(teacher_model, torch.nn.Module):
                teacher = teacher_model.to(config.teacher_device or self.args.device).eval().requires_grad_(False)
            else:
                if config.check_tokenizer:
                    check_same_tokenizer(self.processing_class, config.teacher, config.teacher_revision)
                attn = getattr(unwrap_distributed(self.model).config, "_attn_implementation", None)
                teacher = load_teacher(config, self.args.device, attn)
            self.setup_distillation(config, TeacherModelSource(teacher, len(self.processing_class), device=self.args.device))

    return DistillSFTTrainer
