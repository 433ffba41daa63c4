"""The tiny training runs of the training rows of the fault matrix: one trainer per teacher source.

``make_trainer(kind, pair, data, out, extra)`` for ``kind`` in ``KINDS``: TRL's ``DistillSFTTrainer``
(online, served, on-policy, hidden: the ``distill:`` keys of ``DISTILL``; ``extra`` is the served
teacher's URL), or for ``stored`` (whose batches need the offline collator, which only the Axolotl
plugin supplies) a ``transformers.Trainer`` with the trainer mixin and ``OfflineTopKCollator`` on the
rows the store was captured from (``extra``: the store, ``capture_store``). Checkpoints every 2 steps.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

K = 8
STEPS = 8
MODEL = "tiny-teacher"
SEQUENCE_LEN = 128
KINDS = ("online", "stored", "served", "on-policy", "hidden")
DISTILL = {
    "online": {"kd_weight": 0.5, "ce_weight": 0.5},
    "stored": {"kd_weight": 0.5, "ce_weight": 0.5},
    "served": {"kd_weight": 0.5, "ce_weight": 0.5},
    # every step samples its completions from the student: a resumed step must draw the same samples
    "on-policy": {"kd_weight": 1.0, "ce_weight": 0.0, "on_policy_fraction": 1.0, "max_new_tokens": 8},
    # the projectors train beside the student and must be restored with it
    "hidden": {"kd_weight": 0.5, "ce_weight": 0.5, "hidden_weight": 1.0, "hidden_layers": "uniform:2"},
}
COMMON = dict(max_steps=STEPS, per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1, report_to=[],
              use_cpu=True, save_strategy="steps", save_steps=2, lr_scheduler_type="cosine", seed=7, disable_tqdm=True)


def make_trainer(kind: str, pair, data, out, extra=None, callbacks=()):
    if kind == "stored":
        return stored_trainer(pair, data, out, extra, callbacks)
    from datasets import load_dataset
    from trl import SFTConfig

    from distill_plugin.trainer import make_trl_trainer_class

    tokenizer = AutoTokenizer.from_pretrained(pair[0])
    dataset = load_dataset("json", data_files=str(data), split="train").select_columns(["messages"])
    args = SFTConfig(output_dir=str(out), assistant_only_loss=True, max_length=SEQUENCE_LEN, **COMMON)
    distill, teacher = dict(DISTILL[kind]), None
    if kind == "served":
        distill["teacher_server"] = {"url": extra, "model": MODEL, "top_k": K}
    else:
        teacher = str(pair[0])
    return make_trl_trainer_class()(model=str(pair[1]), args=args, train_dataset=dataset, processing_class=tokenizer,
                                    teacher_model=teacher, distill_config=distill, callbacks=list(callbacks))


def stored_trainer(pair, data, out, store, callbacks=()):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from distill_plugin.args import DistillConfig
    from distill_plugin.offline.capture import examples_from_jsonl
    from distill_plugin.offline.collator import OfflineTopKCollator
    from distill_plugin.offline.store import read_meta
    from distill_plugin.teachers import StoredTopKSource
    from distill_plugin.trainer import DistillTrainerMixin

    class StoredTrainer(DistillTrainerMixin, Trainer):
        pass

    tokenizer = AutoTokenizer.from_pretrained(pair[1])
    rows = [dict(input_ids=e.input_ids, labels=e.labels, attention_mask=[1] * len(e.input_ids))
            for e in examples_from_jsonl(data, tokenizer, SEQUENCE_LEN)]
    collator = OfflineTopKCollator(tokenizer, store_path=str(store), padding=True, return_tensors="pt")
    trainer = StoredTrainer(model=AutoModelForCausalLM.from_pretrained(pair[1]),
                            args=TrainingArguments(output_dir=str(out), remove_unused_columns=False, **COMMON),
                            train_dataset=rows, processing_class=tokenizer, data_collator=collator,
                            callbacks=list(callbacks))
    config = DistillConfig(teacher_logits=str(store), **DISTILL["stored"])
    trainer.setup_distillation(config, StoredTopKSource(read_meta(store).capture_temperature))
    return trainer


def capture_store(pair, data, store: Path) -> Path:
    """The teacher's top-``K`` on ``data``'s rows, as ``distill-data logits`` stores them."""
    from transformers import AutoModelForCausalLM

    from distill_plugin.generation.hf import HFBackend
    from distill_plugin.offline import capture as cap

    tokenizer = AutoTokenizer.from_pretrained(pair[0])
    teacher = AutoModelForCausalLM.from_pretrained(pair[0])
    meta = cap.make_meta(MODEL, tokenizer, K, 1.0, SEQUENCE_LEN, teacher.config.vocab_size)
    cap.capture(cap.examples_from_jsonl(data, tokenizer, SEQUENCE_LEN), HFBackend(teacher, chunk_positions=16), store,
                meta, progress=False)
    return store


def losses(trainer) -> dict[int, dict[str, float]]:
    """Per optimizer step, every logged ``*loss`` (the total and each component)."""
    return {h["step"]: {k: v for k, v in h.items() if k.endswith("loss")} for h in trainer.state.log_history if "loss" in h}


def train(kind, pair, data, out, extra=None, resume=None, callbacks=()):
    trainer = make_trainer(kind, pair, data, out, extra, callbacks)
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        if kind == "served":
            trainer.teacher_source.close()
    return losses(trainer)
