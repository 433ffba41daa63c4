"""The distillation methods, one module each, and the one assembly both trainers use.

    online           distill.teacher             online logit KD (``online.py``)
    stored           distill.teacher_logits      offline top-k KD (``stored.py``)
    served           distill.teacher_server      top-k KD from an inference server (``served.py``)
    hidden           distill.hidden_weight       hidden-state KD (``hidden.py``)
    attention        distill.attention_weight    attention transfer (``attention.py``)
    on_policy        distill.on_policy_fraction  on-policy distillation, GKD (``on_policy.py``)
    cross_tokenizer  distill.cross_tokenizer     cross-tokenizer KD, ULD / hybrid (``cross_tokenizer.py``)
    ema              distill.ema_decay           EMA self-distillation, no teacher model (``ema.py``)
    teacher_stats    distill.log_teacher_stats   teacher entropy and top-1 agreement in the logs (``teacher_stats.py``)

The Axolotl plugin and TRL's ``DistillSFTTrainer`` call the functions below and nothing
method-specific: ``check_config`` and ``check_resources`` at start-up (``preflight``), ``collator``,
``teacher_source`` and ``loss_terms`` when the trainer is built, ``step_hooks`` by the trainer.

Adding a method: write ``<name>.py`` here with a ``Fields`` model (its keys, descriptions and
validators) and a ``Method`` subclass (``base.py`` says what each hook is for), add an instance to
``METHODS``, then its test, its doc page under docs/methods/ and a recipe. Nothing else changes:
``args.DistillConfig`` mixes every method's ``Fields`` in, and the generated configuration table
(``scripts/gen_config_table.py --write``) lists the new keys.
"""

from __future__ import annotations

from .attention import AttentionTransfer
from .base import FieldsBase, Method, Setup, StepHook
from .cross_tokenizer import CrossTokenizer
from .ema import EMASelfDistill
from .hidden import HiddenStateKD
from .loss_fields import LossFields
from .on_policy import OnPolicy
from .online import OnlineLogits, with_teacher_model
from .served import ServedTopK
from .stored import StoredTopK
from .teacher_stats import TeacherStats

__all__ = ["METHODS", "FieldsBase", "LossFields", "Method", "Setup", "StepHook", "active", "check_config",
           "check_resources", "collator", "loss_terms", "packing_warning", "refuse_outside_axolotl", "step_hooks", "teacher_source", "with_teacher_model"]

METHODS: tuple[Method, ...] = (OnlineLogits(), StoredTopK(), ServedTopK(), HiddenStateKD(), AttentionTransfer(), OnPolicy(),
                               CrossTokenizer(), EMASelfDistill(), TeacherStats())


def active(config) -> list[Method]:
    """The methods ``config`` uses, less those another active method takes the place of."""
    on = [m for m in METHODS if m.active(config)]
    replaced = {name for m in on for name in m.replaces}
    return [m for m in on if m.name not in replaced]


def check_config(cfg: dict, config) -> None:
    for method in active(config):
        method.check_config(cfg, config)


def check_resources(cfg, config, tokenizer) -> None:
    for method in active(config):
        method.check_resources(cfg, config, tokenizer)


def packing_warning(cfg, config) -> str | None:
    """The first active method's packing warning (``Method.packing_warning``), or None."""
    return next((w for m in active(config) if (w := m.packing_warning(cfg, config))), None)


def collator(cfg, config, is_eval: bool = False):
    """The one collator the config's methods need, or None (Axolotl's default collator)."""
    found = [(m.key, c) for m in active(config) if (c := m.collator(cfg, config, is_eval)) is not None]
    if len(found) > 1:
        raise ValueError(f"distill: {' and '.join(f'`{key}`' for key, _ in found)} each need their own collator; "
                         "use one of them")
    return found[0][1] if found else None


def teacher_source(config, setup: Setup):
    """The source of every teacher signal the config's terms consume (one, or ``CombinedSources``)."""
    from ..teachers import CombinedSources

    sources = [s for m in active(config) if (s := m.source(config, setup)) is not None]
    return sources[0] if len(sources) == 1 else CombinedSources(*sources)


def loss_terms(config, setup: Setup) -> list:
    """Every active method's loss terms, in ``METHODS`` order (the logged components' order)."""
    return [term for m in active(config) for term in m.terms(config, setup)]


def step_hooks(config, trainer) -> dict[str, StepHook]:
    """``{method name: hook}`` for the methods that act on the trainer's optimizer steps."""
    return {m.name: hook for m in active(config) if (hook := m.step_hook(config, trainer)) is not None}


def refuse_outside_axolotl(config) -> None:
    """Methods whose batches need the plugin's collator cannot run in a trainer the plugin does not build."""
    for method in active(config):
        if method.needs_collator:
            raise ValueError(f"distill.{method.key} is supported through Axolotl (the plugin supplies the collator), "
                             "not DistillSFTTrainer; use `teacher_model` or `teacher_server`")
