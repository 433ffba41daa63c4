"""Served top-k KD: ``distill.teacher_server``, a teacher in an OpenAI-compatible inference server.

Signal: ``TopKLogprobs`` from the server's prompt log-probs of each batch (``teachers.server``; T = 1:
vLLM applies no temperature to them, so they enter the top-k loss at capture temperature 1 and are
re-tempered there). Term: the fused ``kd`` + ``ce``. Step hook: the next steps' batches are read
ahead with their requests in flight, and ``teacher_wait_s`` is logged.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .base import FieldsBase, Method, Setup


class TeacherServerConfig(BaseModel):
    """``distill.teacher_server``: a teacher in an OpenAI-compatible inference server (vLLM, SGLang,
    ``python -m distill_plugin.serve``) scoring each batch's tokens (``teachers.server``).

    The API key is read from the environment variable named here, sent only in the Authorization
    header, never logged or stored.
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


class ServedFields(FieldsBase):
    teacher_server: TeacherServerConfig | None = Field(
        None, description="A served teacher's top-k log-probs (top-k KD over HTTP); keys below."
    )

    @model_validator(mode="after")
    def _check_served(self):
        if self.teacher_server is not None and (getattr(self, "teacher", None) is not None
                                                or getattr(self, "teacher_logits", None) is not None):
            raise ValueError("distill: `teacher_server` is the only teacher source when set; remove `teacher` / `teacher_logits`")
        return self


class ReadAheadHook:
    """The training batches read ahead, the next ``prefetch_steps`` steps' requests in flight."""

    def __init__(self, source):
        self.source = source

    def batches(self, trainer, iterator):
        return self.source.read_ahead(iterator, trainer.args.gradient_accumulation_steps)

    def logs(self, trainer) -> dict[str, float]:
        return self.source.pop_metrics(trainer.args.gradient_accumulation_steps)


class ServedTopK(Method):
    name = "served"
    key = "teacher_server"
    is_teacher_source = True
    Fields = ServedFields

    def check_resources(self, cfg, config, tokenizer) -> None:
        """Reachable, serves the model, gives k log-probs, tokenizes as the student does
        (``ServerSetupError``: a ``SetupError`` naming the URL)."""
        if tokenizer is None:
            return
        from ..teachers.server import ServerTopKSource

        with ServerTopKSource(config.teacher_server, tokenizer, config.check_tokenizer) as served:
            served.connect()

    def source(self, config, setup: Setup):
        from ..teachers.server import connected_source

        return connected_source(config, setup.tokenizer)

    def terms(self, config, setup: Setup) -> list:
        return [config.logit_terms()]

    def step_hook(self, config, trainer):
        return ReadAheadHook(trainer.teacher_source)
