"""The ``distill:`` block of an Axolotl YAML (also the config object of the TRL trainer).

Axolotl drops top-level keys that no pydantic model declares, so every key lives in the declared,
nested ``distill:`` block, which forbids unknown keys: a typo is an error naming the key, not a
silently ignored setting.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .hidden.layer_map import check_spec
from .losses.divergences import DIVERGENCES
from .losses.hidden import HiddenLoss
from .losses.kd import KDSettings
from .losses.topk import TailMode

# Above this both distributions are near uniform for any realistic logit range: a typo, not a setting.
MAX_TEMPERATURE = 20.0
# Fields that only mean something for one teacher source or divergence: set away from their default
# where they do nothing, they are refused (a user who sets them expects an effect).
ONLINE_ONLY = ("teacher_dtype", "teacher_load_in_4bit", "teacher_load_in_8bit", "teacher_attn_implementation",
               "teacher_device", "teacher_revision", "teacher_placement")
CHECKED_TOKENIZER = ("check_tokenizer",)  # an online or a served teacher
OFFLINE_ONLY = ("topk",)
SPARSE_ONLY = ("topk_tail",)  # the top-k loss: stored (`teacher_logits`) or served (`teacher_server`)
# On-policy distillation (GKD): sampling settings, meaningful only when something is sampled.
GENERATION_ONLY = ("max_new_tokens", "generation_temperature", "generation_top_p", "generation_backend")
DIVERGENCE_ONLY = {"beta": ("jsd",), "skew": ("skew_forward_kl", "skew_reverse_kl")}
CROSS_TOKENIZER_ONLY = ("teacher_tokenizer", "uld_top_k", "uld_weight")

# The choices come from the registries, so a new divergence or tail mode is one edit in losses/.
Divergence = Literal[DIVERGENCES]


# --- teacher_server (issue #16) ---
class TeacherServerConfig(BaseModel):
    """``distill.teacher_server``: a teacher in an OpenAI-compatible inference server (vLLM, SGLang,
    ``python -m distill_plugin.serve``) scoring each batch's tokens (``teachers.server``).

    The server's prompt log-probs are of the raw logits (T = 1: vLLM applies no temperature to
    them), so they enter the top-k loss at capture temperature 1 and are re-tempered there. The API
    key is read from the environment variable named here, sent only in the Authorization header,
    never logged or stored.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(description="Base URL of the server's OpenAI API, e.g. `http://10.0.0.2:8000/v1`.")
    model: str = Field(description="Model name the server serves (checked against its `/models`).")
    top_k: int = Field(
        20, gt=0, description="Teacher log-probs per position; at most the server's limit (vLLM: `--max-logprobs`, default 20)."
    )
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (none: no key sent).")
    timeout_s: float = Field(120.0, gt=0, description="Seconds per request before it is retried (5xx and timeouts are retried with backoff).")
    max_concurrency: int = Field(8, gt=0, description="Requests in flight at once, per process.")
    prefetch_steps: int = Field(
        1, ge=0, description="Optimizer steps of batches whose teacher requests are sent ahead of training; 0 = on demand."
    )
    max_outage_s: float = Field(
        600.0, ge=0, description="Seconds the server may stay unreachable during training (a restart, a node drain) while "
        "requests are retried with capped exponential backoff; then the last completed step is saved as a checkpoint "
        "and the run stops (exit 2)."
    )
# --- end teacher_server ---


class DistillConfig(BaseModel):
    """Distillation settings. Exactly one teacher source: ``teacher`` (online), ``teacher_logits``
    (stored top-k) or ``teacher_server`` (top-k from an inference server).

    Every field's ``description`` is the README's ``distill:`` reference (``scripts/gen_config_table.py``).
    """

    # strict: `temperature: "2"` or `teacher_load_in_4bit: "yes"` is an error, not a coercion.
    model_config = ConfigDict(extra="forbid", strict=True)

    teacher: str | None = Field(
        None, description="Online teacher: local path or hub id. Exactly one of `teacher` / `teacher_logits` / `teacher_server`."
    )
    teacher_logits: str | None = Field(
        None, description="Directory written by `distill-data logits` (offline top-k KD)."
    )
    teacher_server: TeacherServerConfig | None = Field(
        None, description="A served teacher's top-k log-probs (top-k KD over HTTP); keys below."
    )
    teacher_dtype: Literal["bfloat16", "float16", "float32", "auto"] = Field(
        "bfloat16", description="Dtype the online teacher is loaded in (compute dtype when quantised)."
    )
    teacher_load_in_4bit: bool = Field(
        False, description="Load the teacher 4-bit (bitsandbytes NF4, double quant); lm_head stays unquantised."
    )
    teacher_load_in_8bit: bool = Field(
        False, description="Load the teacher 8-bit (bitsandbytes); exclusive with `teacher_load_in_4bit`."
    )
    teacher_attn_implementation: str | None = Field(
        None, description="`attn_implementation` of the teacher (e.g. `sdpa`); default: the student's, so packing behaves the same."
    )
    teacher_device: str | None = Field(
        None, description="Device of the online teacher (e.g. `cuda:1`, `cpu`); default: the student's. Its lm_head is copied to the student's device."
    )
    teacher_revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the teacher.")
    teacher_placement: Literal["replicate", "shard", "device_map"] = Field(
        "replicate", description="Online teacher across devices: a whole copy per process, `shard` its decoder layers over all processes (FSDP2), or `device_map` (one process, layers spread over all GPUs). README: Scaling out."
    )

    divergence: Divergence = Field(
        "forward_kl", description="KD divergence between teacher P and student Q (see the maths below)."
    )
    beta: float = Field(0.5, ge=0.0, le=1.0, description="JSD mixture weight of the teacher; 0 = forward KL, 1 = reverse KL.")
    skew: float = Field(0.1, ge=0.0, le=1.0, description="Skew-KL λ (DistiLLM).")
    temperature: float = Field(
        1.0, gt=0.0, le=MAX_TEMPERATURE,
        description=f"T, dividing teacher and student logits inside the loss (CE stays at T = 1); at most {MAX_TEMPERATURE:g}.",
    )
    temperature_squared: bool = Field(True, description="Multiply the KD term by T² (Hinton).")
    kd_weight: float = Field(1.0, ge=0.0, description="Weight of the KD component: loss = (kd_weight·T²·ΣKD + ce_weight·ΣCE) / N.")
    ce_weight: float = Field(0.0, ge=0.0, description="Weight of the hard-label CE component; not both weights 0.")
    chunk_size: int | None = Field(
        None, gt=0, description="Rows per loss chunk; default keeps one fp32 [chunk, V] buffer ≈ 256 MiB (256 rows at V = 151,936)."
    )

    topk_tail: TailMode = Field(
        "bucket", description="Top-k KD (stored or served): add a (k+1)-th tail bucket on both sides, or renormalise over the top-k."
    )
    topk: int | None = Field(None, gt=0, description="Offline KD: use the first k of the stored top-K (default: all).")
    check_tokenizer: bool = Field(True, description="Refuse an online or served teacher whose tokenizer differs from the student's.")

    # Hidden-state KD (README "Hidden-state KD"); needs the online `teacher`.
    hidden_weight: float = Field(0.0, ge=0.0, description="Weight of the hidden-state component `hidden`; 0 = off.")
    hidden_loss: HiddenLoss = Field("cosine", description="Per-row hidden-state loss: `cosine`, `mse` or `normalized_mse`.")
    hidden_layers: str | list[tuple[int, int]] = Field(
        "uniform:4", description="Layer map: `uniform:N`, `last:N` or `[[student, teacher], ...]` hidden-state indices (0 = embeddings, L = final)."
    )
    hidden_projector: Literal["linear", "none"] = Field(
        "linear", description="`linear`: a learned map per pair, student → teacher width (saved beside the checkpoint); `none`: equal widths."
    )
    hidden_projector_lr: float | None = Field(None, gt=0.0, description="Projectors' learning rate (default: the student's).")

    @model_validator(mode="after")
    def _check(self):
        if self.teacher_server is not None and (self.teacher is not None or self.teacher_logits is not None):
            raise ValueError("distill: `teacher_server` is the only teacher source when set; remove `teacher` / `teacher_logits`")
        if (self.teacher is None) == (self.teacher_logits is None) and not (self.teacher and self.hidden_weight) \
                and self.teacher_server is None:
            raise ValueError("distill: set exactly one of `teacher` (online KD), `teacher_logits` (offline top-k KD) "
                             "or `teacher_server` (top-k KD from a server)")
        if self.teacher_load_in_4bit and self.teacher_load_in_8bit:
            raise ValueError("distill: `teacher_load_in_4bit` and `teacher_load_in_8bit` are mutually exclusive")
        if self.teacher_placement != "replicate" and self.teacher_device is not None:
            raise ValueError(f"distill: `teacher_device` places a whole teacher; it has no meaning with `teacher_placement: {self.teacher_placement}`")
        if self.teacher_placement == "shard" and (self.teacher_load_in_4bit or self.teacher_load_in_8bit):
            raise ValueError("distill: `teacher_placement: shard` cannot split a bitsandbytes-quantised teacher; use `device_map` or `replicate`")
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise ValueError("distill: `kd_weight` and `ce_weight` are both 0; nothing would be trained")
        self._refuse_settings_without_effect()
        return self

    def _refuse_settings_without_effect(self) -> None:
        # With hidden-state KD both sources can be set (logits from the store, hidden states online).
        other = "a served teacher (`teacher_server`)" if self.teacher_server else "an offline teacher (`teacher_logits`)"
        unused = [(name, other) for name in ONLINE_ONLY if self.teacher is None]
        unused += [(name, other) for name in CHECKED_TOKENIZER if self.teacher is None and self.teacher_server is None]
        source = "a served teacher (`teacher_server`, whose `top_k` sets k)" if self.teacher_server else "an online teacher (`teacher`)"
        unused += [(name, source) for name in OFFLINE_ONLY if self.teacher_logits is None]
        unused += [(name, source) for name in SPARSE_ONLY if self.teacher_logits is None and self.teacher_server is None]
        unused += [(name, f"divergence {self.divergence!r}; it is used by {', '.join(users)}")
                   for name, users in DIVERGENCE_ONLY.items() if self.divergence not in users]
        for name, why in unused:
            # Compared with the default, not `model_fields_set`: Axolotl's loader hands the block back
            # with every field filled in.
            if getattr(self, name) != type(self).model_fields[name].default:
                raise ValueError(f"distill.{name} has no effect with {why}; remove it")

    # --- On-policy distillation (README "On-policy distillation (GKD)"; distill_plugin.onpolicy) ---
    on_policy_fraction: float = Field(
        0.0, ge=0.0, le=1.0,
        description="λ: probability that an optimizer step trains on completions the student samples (drawn per step, seeded, resumable); 0 = off.",
    )
    seq_kd: bool = Field(False, description="Steps that are not on-policy use completions the teacher samples instead of the data's.")
    max_new_tokens: int = Field(256, gt=0, description="Tokens sampled per completion at most (on-policy / seq_kd).")
    generation_temperature: float = Field(
        1.0, ge=0.0, description="Sampling temperature of the completions (0 = greedy); the loss keeps its own `temperature`."
    )
    generation_top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling of the completions.")
    generation_backend: Literal["hf", "vllm"] = Field(
        "hf", description="`hf`: the training model's `generate`; `vllm`: a colocated vLLM engine, student weights synced before each step."
    )

    @model_validator(mode="after")
    def _check_on_policy(self):
        sampled = self.on_policy_fraction > 0 or self.seq_kd
        if not sampled:
            for name in GENERATION_ONLY:
                if getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(f"distill.{name} has no effect without `on_policy_fraction` > 0 or `seq_kd`; remove it")
            return self
        if self.teacher is None or self.teacher_logits is not None:
            raise ValueError("distill: `on_policy_fraction` / `seq_kd` need the online `teacher` alone: stored "
                             "`teacher_logits` cannot score freshly sampled completions")
        if self.seq_kd and self.on_policy_fraction >= 1:
            raise ValueError("distill.seq_kd has no effect with `on_policy_fraction: 1` (every step samples from the student); remove it")
        if self.on_policy_fraction > 0 and self.ce_weight > 0:
            raise ValueError("distill.ce_weight > 0 with `on_policy_fraction` > 0 would train the student on the likelihood "
                             "of its own samples; set `ce_weight: 0` (GKD trains on the divergence alone)")
        if self.seq_kd and self.generation_backend == "vllm":
            raise ValueError("distill.seq_kd samples from the teacher with the `hf` backend only; set `generation_backend: hf`")
        return self

    # Cross-tokenizer KD (README "Cross-tokenizer distillation", issue #15); needs the online `teacher`.
    cross_tokenizer: Literal["off", "uld", "hybrid"] = Field(
        "off", description="Teacher with another tokenizer: `uld` (sorted-probability L1 per aligned span) or `hybrid` (`divergence` between the two next-byte distributions + `uld_weight` × ULD)."
    )
    teacher_tokenizer: str | None = Field(
        None, description="Cross-tokenizer: the teacher's tokenizer (path or hub id); default: the teacher checkpoint's own."
    )
    uld_top_k: int | None = Field(
        None, gt=0, description="Cross-tokenizer: compare the sorted top-k probabilities of both sides (default: the full sorted vocabularies)."
    )
    uld_weight: float | None = Field(
        None, ge=0, description="Cross-tokenizer `hybrid`: the weight of ULD against the next-byte term (default 1; 0 = the next byte alone, no sort)."
    )

    @model_validator(mode="after")
    def _check_cross_tokenizer(self):
        if self.cross_tokenizer == "off":
            for name in CROSS_TOKENIZER_ONLY:
                if getattr(self, name) is not None:
                    raise ValueError(f"distill.{name} has no effect with cross_tokenizer 'off'; remove it or set `cross_tokenizer`")
            return self
        if self.teacher is None or self.teacher_logits is not None:
            raise ValueError("distill.cross_tokenizer needs the online `teacher` (run on its own tokens), not `teacher_logits`")
        if self.on_policy_fraction or self.seq_kd:
            raise ValueError("distill.cross_tokenizer: sampled completions (`on_policy_fraction` / `seq_kd`) across "
                             "tokenizers are not supported (the alignment is built by the collator, before sampling)")
        if self.hidden_weight:
            raise ValueError("distill.cross_tokenizer: hidden-state KD (`hidden_weight`) across tokenizers is not supported")
        if not self.check_tokenizer:
            raise ValueError("distill.check_tokenizer has no effect with cross_tokenizer (tokenizers may differ); remove it")
        if self.cross_tokenizer == "uld" and self.divergence != "forward_kl":
            raise ValueError("distill.divergence has no effect with cross_tokenizer 'uld' (used by 'hybrid'); remove it")
        if self.cross_tokenizer == "uld" and self.uld_weight is not None:
            raise ValueError("distill.uld_weight weighs ULD inside 'hybrid'; with cross_tokenizer 'uld' set kd_weight")
        if self.uld_weight == 0 and self.uld_top_k is not None:
            raise ValueError("distill.uld_top_k has no effect with uld_weight 0 (no ULD); remove it")
        return self

    @model_validator(mode="after")
    def _check_hidden(self):
        try:
            self.hidden_layers = check_spec(self.hidden_layers)
        except ValueError as error:
            raise ValueError(str(error)) from None
        if self.hidden_weight and self.teacher is None:
            raise ValueError(
                "distill: `hidden_weight` > 0 needs the online `teacher` for its hidden states; with offline "
                "`teacher_logits` set both (the logits then come from the store, the hidden states from `teacher`)"
            )
        return self

    def loss_terms(self, student=None, teacher=None) -> list:
        """The loss terms of this config (``losses.terms``): the logit term (``kd`` + ``ce``) and, when
        ``hidden_weight`` > 0, the hidden-state term, whose layer map and projectors need the
        ``student`` and ``teacher`` models (their depths and widths)."""
        from .losses.terms import LogitTerms

        if self.cross_tokenizer != "off":
            from .losses.uld import CrossTokenizerTerms

            uld_weight = 1.0 if self.uld_weight is None else self.uld_weight
            return [CrossTokenizerTerms(self.kd_settings(), self.cross_tokenizer, self.uld_top_k, self.chunk_size, uld_weight)]
        terms = [LogitTerms(self.kd_settings(), self.topk_tail, self.chunk_size)]
        if self.hidden_weight:
            if student is None or teacher is None:
                raise ValueError("distill: hidden-state KD needs the student and teacher models to build its layer map")
            terms.append(self.hidden_term(student, teacher))
        return terms

    def hidden_term(self, student, teacher):
        from .hidden.capture import depth_and_width
        from .hidden.layer_map import resolve
        from .hidden.projector import Projectors
        from .losses.hidden import HiddenTerm

        (student_depth, student_width), (teacher_depth, teacher_width) = depth_and_width(student), depth_and_width(teacher)
        pairs = resolve(self.hidden_layers, student_depth, teacher_depth)
        projector = Projectors(len(pairs), student_width, teacher_width, self.hidden_projector)
        return HiddenTerm(pairs, projector, self.hidden_loss, self.hidden_weight)

    def kd_settings(self) -> KDSettings:
        return KDSettings(
            divergence=self.divergence,
            temperature=self.temperature,
            beta=self.beta,
            skew=self.skew,
            kd_weight=self.kd_weight,
            ce_weight=self.ce_weight,
            temperature_squared=self.temperature_squared,
        )


class DistillArgs(BaseModel):
    """Axolotl input args contributed by the plugin (merged into Axolotl's config model)."""

    distill: DistillConfig | None = None
