"""Trainer glue: one ``compute_loss`` for Axolotl's trainer and for TRL's ``SFTTrainer``.

Per micro-batch: the teacher source turns the batch into teacher signals (no grad), then — inside
the wrapped student's own forward call (``modeling.inside_forward``), so DDP/FSDP/ZeRO machinery
around forward also surrounds the loss — the student runs with its lm_head bypassed (final hidden
states only), the supervised rows are kept and the loss terms (``losses.terms``) return their
weighted objective and per-component sums. The trainer divides by the supervised-token count of
the whole optimizer step (``num_items_in_batch``, summed over gradient-accumulation micro-batches
and, with ``average_tokens_across_devices``, over processes) and logs every component as
``<name>_loss`` (``eval_<name>_loss`` in evaluation), whatever the list of terms is.

Terms may own trainable modules (``term.trainable``: the hidden-state projectors). They live outside
the student model, so the trainer adds them to the optimizer as their own param group, averages
their gradients across processes itself (DDP only covers the model), and saves them apart from the
student in every checkpoint (``hidden.projector``), restoring them on resume.

A method may act on each optimizer step (``methods.StepHook``: on-policy sampling, a served
teacher's read-ahead). Its hook wraps the iterator at ``get_batch_samples``, where the Trainer
fetches all micro-batches of one optimizer step and then counts their supervised tokens (so a
step's completions can be regenerated before they are counted), and adds its values to each
training log.

Checkpoints under faults (``checkpoints``): a save that meets a full disk removes its torn
``checkpoint-N`` and stops in one line (exit 2); a checkpoint to resume from is checked before
anything loads, and a file that cannot be loaded stops in one line naming it. On a resume the
checkpoint's RNG state is restored before a step hook samples (``get_batch_samples``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from transformers import TrainerCallback

from . import methods
from .args import DistillConfig
from .losses.chunked import supervised_mask
from .hidden.capture import hidden_rows
from .hidden.projector import PROJECTOR_FILE, load_projectors, save_projectors
from .losses.terms import LossTerm, TermOutput, check_signals, metric_names, run_terms
from .modeling import (inside_forward, keep_4bit_layers_trainable_on_cpu, model_inputs, through_head, unwrap_causal_lm,
                       unwrap_distributed)
from .signals import LABELS, StudentRows


def hook_state_file(name: str) -> str:
    """The file holding a step hook's state (``StepHook.state_dict``) in a checkpoint."""
    return f"distill_{name}_state.safetensors"


class _ZeroGradsAfterStep(TrainerCallback):
    def __init__(self, params):
        self.params = params

    def on_optimizer_step(self, args, state, control, **kwargs):
        for param in self.params:
            param.grad = None


def student_objective(forward, model, labels, mask, terms, signals, **inputs):
    """Runs inside the student's forward call: hidden states → supervised rows → the loss terms.

    ``forward`` is the student's own forward (``inside_forward``), ``inputs`` the model inputs.
    Intermediate hidden states are captured only at the layers a term asks for (``student_layers``).
    The terms run as the lm_head's forward (``through_head``), where FSDP2/ZeRO-3 have gathered it.
    Returns ``TermOutput(objective, sums)``, both unnormalised.
    """
    wanted = {h for term in terms for h in getattr(term, "student_layers", ())}
    rows, layers = hidden_rows(model, inputs, mask, wanted, forward=forward)
    targets = labels[:, 1:][mask]

    def terms_on_head(head, head_rows):  # inside the lm_head's own call: its weight is whole here
        return run_terms(terms, StudentRows(head_rows, targets, head, layers), signals)

    return TermOutput(*through_head(model, terms_on_head, rows))


class DistillTrainerMixin:
    """Mix in before a ``transformers.Trainer`` subclass. Call ``setup_distillation`` before training."""

    distill_config: DistillConfig | None = None
    teacher_source = None
    loss_terms: tuple[LossTerm, ...] = ()
    distill_modules: torch.nn.ModuleList | None = None  # the terms' trainable modules (projectors)
    distill_hooks: dict = {}  # {method name: methods.StepHook}

    def setup_distillation(self, config: DistillConfig, teacher_source, terms: Sequence[LossTerm] | None = None) -> None:
        """Attach the teacher source, the loss terms (default: the config's, ``methods.loss_terms``, with
        the source's teacher model) and the methods' step hooks."""
        if terms is None:
            setup = methods.Setup(config, self.processing_class, unwrap_causal_lm(self.model), self.args.device,
                                  teacher_model=getattr(teacher_source, "model", None), load=False)
            terms = methods.loss_terms(config, setup)
        terms = tuple(terms)
        teacher_layers = {h for term in terms for h in getattr(term, "teacher_layers", ())}
        if teacher_layers:
            teacher_source.request_hidden(teacher_layers)
        check_signals(terms, teacher_source.produces)
        self.distill_config, self.teacher_source, self.loss_terms = config, teacher_source, terms
        trainable = [term.trainable for term in terms if getattr(term, "trainable", None) is not None]
        self.distill_modules = torch.nn.ModuleList(trainable).to(self.args.device)
        if self._distill_parameters():  # the Trainer zeroes the model's gradients only
            self.add_callback(_ZeroGradsAfterStep(self._distill_parameters()))
        self.distill_metrics = metric_names(terms)
        # We normalise by num_items_in_batch ourselves; make the Trainer compute and pass it, summed
        # over processes too (Axolotl turns that off), so N is the global supervised-token count.
        self.model_accepts_loss_kwargs = True
        self.args.average_tokens_across_devices = True
        # Running component sums stay on the device: no host sync per micro-batch, one per log.
        self._distill_sums = {"train": None, "eval": None}
        self._distill_counts = {"train": 0, "eval": 0}
        self.distill_hooks = methods.step_hooks(config, self)
        self._distill_steps = 0  # optimizer steps since the last train log

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

    def create_optimizer(self, *args, **kwargs):
        """The student's optimizer plus one param group per term with trainable modules (its
        ``trainable_lr``, else the student's learning rate)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for term in self.loss_terms:
            module = getattr(term, "trainable", None)
            params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
            if params and id(params[0]) not in present:  # create_optimizer may be called again
                lr = getattr(term, "trainable_lr", None) or self.args.learning_rate
                optimizer.add_param_group({"params": params, "lr": lr, "weight_decay": self.args.weight_decay})
        return optimizer

    def training_step(self, *args, **kwargs):
        from .teachers.outage import TeacherStopped, stop_for_outage

        try:
            loss = super().training_step(*args, **kwargs)
        except TeacherStopped as err:  # a served teacher down past max_outage_s, or malformed: checkpoint, one line, exit 2
            stop_for_outage(self, args[0] if args else kwargs["model"], err)
        # DDP all-reduces only the model's gradients. Averaging the accumulated projector gradients
        # after every backward is exact under accumulation too: avg(avg(a) + b) = avg(a) + avg(b).
        if self.accelerator.num_processes > 1 and torch.distributed.is_initialized():
            for param in self._distill_parameters():
                if param.grad is not None:
                    torch.distributed.all_reduce(param.grad)
                    param.grad /= self.accelerator.num_processes
        return loss

    def prediction_step(self, model, *args, **kwargs):
        from .teachers.outage import TeacherStopped, stop_for_outage

        try:
            return super().prediction_step(model, *args, **kwargs)
        except TeacherStopped as err:  # during evaluation, between steps: the last step is complete
            stop_for_outage(self, model, err)

    def _clip_grad_norm(self, model):
        """One norm over the student's and the projectors' gradients (``grad_norm`` covers both)."""
        params = self._distill_parameters()
        if not params or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_([*model.parameters(), *params], self.args.max_grad_norm)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        self._save_distill_modules(output_dir)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """A checkpoint to resume from is checked first (``checkpoints.check_checkpoint``): a damaged
        file stops the run in one line naming it, exit code 2."""
        from transformers.trainer_utils import get_last_checkpoint

        from .checkpoints import DamagedCheckpoint, check_checkpoint, stop

        folder = resume_from_checkpoint
        if folder is True:
            folder = get_last_checkpoint(self.args.output_dir)
        if isinstance(folder, (str, Path)) and self.is_world_process_zero():  # one reader of the files
            try:
                check_checkpoint(folder)
            except DamagedCheckpoint as err:
                stop(f"resume_from_checkpoint: {err}; resume from an earlier checkpoint-N or train from the start")
        self._distill_resumed_from = folder if isinstance(folder, (str, Path)) else None
        self._distill_rng_restored = False
        result = super().train(resume_from_checkpoint, *args, **kwargs)
        self._save_distill_modules(None)  # Axolotl saves its final model with save_pretrained
        return result

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint; on a full disk the torn folder is removed and the run stops in one
        line (``checkpoints.save_or_stop``)."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        from .checkpoints import save_or_stop

        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        save_or_stop(lambda: super(DistillTrainerMixin, self)._save_checkpoint(model, trial), folder,
                     self.args.should_save)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from .checkpoints import loading_or_stop

        with loading_or_stop(resume_from_checkpoint, self.args.should_save):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def get_batch_samples(self, epoch_iterator, num_batches, *args, **kwargs):
        """The step's micro-batches as the methods' step hooks give them (read ahead, regenerated); the
        Trainer counts ``num_items_in_batch`` over what this returns.

        On a resume mid-epoch the Trainer restores the checkpoint's RNG state only after this call has
        fetched the first step's batches, but a hook may draw from it here (on-policy sampling): the
        state is restored right after the first batch is fetched instead, before any hook draws, and
        the Trainer's own restore is then skipped (``_load_rng_state``)."""
        if self.distill_hooks:
            epoch_iterator = self._rng_restoring(epoch_iterator)
        for hook in self.distill_hooks.values():
            epoch_iterator = hook.batches(self, epoch_iterator)
        return super().get_batch_samples(epoch_iterator, num_batches, *args, **kwargs)

    def _distill_rng_pending(self) -> bool:
        return getattr(self, "_distill_resumed_from", None) is not None and not self._distill_rng_restored

    def _rng_restoring(self, iterator):
        """``iterator``, wrapped while a resume's RNG state is pending: one wrapper for the whole epoch
        (a hook may tell epochs apart by the iterator it is given: the served read-ahead)."""
        source, wrapped = getattr(self, "_distill_rng_wrap", (None, None))
        if source is iterator:
            return wrapped
        if not self._distill_rng_pending():
            return iterator
        wrapped = self._rng_restored_after_first_fetch(iterator)
        self._distill_rng_wrap = (iterator, wrapped)
        return wrapped

    def _rng_restored_after_first_fetch(self, iterator):
        for batch in iterator:
            if self._distill_rng_pending():
                self._load_rng_state(self._distill_resumed_from)
            yield batch

    def _load_rng_state(self, checkpoint):
        """Once per resume: the first of the Trainer's call and ours (``get_batch_samples``)."""
        if checkpoint is None or getattr(self, "_distill_rng_restored", False):
            return
        from .checkpoints import loading_or_stop

        with loading_or_stop(checkpoint, self.args.should_save):
            super()._load_rng_state(checkpoint)
        self._distill_rng_restored = True

    def _load_optimizer_and_scheduler(self, resume_from_checkpoint):
        """On resume, after the model's weights (the Trainer calls this under every engine, where it
        skips ``_load_from_checkpoint`` under DeepSpeed): the projectors and the step hooks' state."""
        from .checkpoints import loading_or_stop

        with loading_or_stop(resume_from_checkpoint, self.args.should_save):
            super()._load_optimizer_and_scheduler(resume_from_checkpoint)
        self._load_distill_state(resume_from_checkpoint)  # a missing file: FileNotFoundError naming it

    def _load_distill_state(self, resume_from_checkpoint) -> None:
        if resume_from_checkpoint is None:
            return
        if self._distill_parameters() and not load_projectors(self.distill_modules, resume_from_checkpoint):
            raise FileNotFoundError(f"distill_plugin: {resume_from_checkpoint} has no {PROJECTOR_FILE} to resume the projectors from")
        for name, hook in self.distill_hooks.items():
            if hasattr(hook, "load_state_dict"):
                from safetensors.torch import load_file

                path = Path(resume_from_checkpoint) / hook_state_file(name)
                if not path.exists():
                    raise FileNotFoundError(f"distill_plugin: {resume_from_checkpoint} has no {path.name} to resume {name} from")
                hook.load_state_dict(load_file(str(path)))

    def sum_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over all processes (on the accelerator's device for NCCL), back on the CPU."""
        return self.accelerator.reduce(values.to(self.accelerator.device), reduction="sum").cpu()

    def _distill_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.distill_modules.parameters()) if self.distill_modules is not None else []

    def _save_distill_modules(self, output_dir: str | None) -> None:
        """The terms' trainable modules and the step hooks' state, beside the student's weights."""
        if not self.args.should_save:
            return
        if self._distill_parameters():
            save_projectors(self.distill_modules, output_dir or self.args.output_dir)
        for name, hook in self.distill_hooks.items():
            if hasattr(hook, "state_dict"):
                from safetensors.torch import save_file

                state = {k: v.detach().contiguous().cpu() for k, v in hook.state_dict().items()}
                save_file(state, str(Path(output_dir or self.args.output_dir) / hook_state_file(name)))

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
        # The Trainer sets sync_gradients on the last micro-batch of each optimizer step, including
        # the shorter last step of an epoch whose batch count is not a multiple of the accumulation.
        if split == "train" and self.accelerator.sync_gradients:
            self._distill_steps += 1

    def _flush(self, split: str) -> dict[str, float]:
        count = self._distill_counts[split]
        if not count:
            return {}
        # Training components are fractions of the step's total: sum over the step's micro-batches,
        # average over the optimizer steps since the last log (counted, not count / accumulation: an
        # epoch's last step may hold fewer micro-batches). Eval batches are each normalised.
        per = max(self._distill_steps, 1) if split == "train" else count
        if split == "train":
            self._distill_steps = 0
        values = self._distill_sums[split].to(self.accelerator.device).reshape(1, -1) / max(per, 1e-12)
        # gather, not gather_for_metrics: at the end of a dataloader the latter keeps only `remainder`
        # rows (it takes them for duplicated samples), which dropped other ranks' values at an epoch's last step.
        values = self.accelerator.gather(values).reshape(-1, len(self.distill_metrics)).mean(0).tolist()
        self._distill_sums[split], self._distill_counts[split] = None, 0
        prefix = "eval_" if split == "eval" else ""
        return {f"{prefix}{name}": round(v, 6) for name, v in zip(self.distill_metrics, values)}

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.distill_config is not None:
            if "loss" in logs:
                logs.update(self._flush("train"))
                for hook in self.distill_hooks.values():
                    # a collective where a hook sums over processes: every process logs the train loss
                    # together, as _flush's gather above relies on too
                    logs.update(hook.logs(self))
            elif "eval_loss" in logs:
                logs.update(self._flush("eval"))
        super().log(logs, *args, **kwargs)


def make_trl_trainer_class():
    """``DistillSFTTrainer``: TRL's SFTTrainer with the distillation loss (import deferred)."""
    from trl import SFTTrainer

    class DistillSFTTrainer(DistillTrainerMixin, SFTTrainer):
        """SFTTrainer + KD. Pass ``teacher_model`` (a model or path) and ``distill_config`` (the
        ``distill:`` keys, e.g. a served teacher's). The sources and terms are built as the Axolotl
        plugin builds them (``methods``); methods that need the plugin's collator are refused."""

        def __init__(self, *args, teacher_model=None, distill_config: DistillConfig | dict | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            keep_4bit_layers_trainable_on_cpu(self.model)
            fields = dict(distill_config or {}) if not isinstance(distill_config, DistillConfig) else distill_config.model_dump()
            fields, teacher_model = methods.with_teacher_model(fields, teacher_model, self.args.device)
            config = DistillConfig.model_validate(fields)
            methods.refuse_outside_axolotl(config)
            setup = methods.Setup(config, self.processing_class, unwrap_causal_lm(self.model), self.args.device,
                                  teacher_model=teacher_model)
            self.setup_distillation(config, methods.teacher_source(config, setup), methods.loss_terms(config, setup))

    return DistillSFTTrainer
