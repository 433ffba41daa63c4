"""What every generation backend shares: sampling settings, prompt building, the result record."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from pydantic import BaseModel, Field

from ..schema import join_reasoning, split_reasoning

R1_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
THINK_PREFILL = "<think>\n"


class Sampling(BaseModel):
    """Sampling settings (DeepSeek-R1 recommends temperature 0.6, top_p 0.95)."""

    n: int = Field(4, ge=1)
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = Field(16384, ge=1)
    seed: int | None = None


class PromptStyle(BaseModel):
    """How a prompt becomes chat messages (the teacher's own template renders them)."""

    system_prompt: str | None = None
    suffix: str | None = R1_SUFFIX  # appended to the user turn; None/"" = none
    prefill_think: bool = False  # start the assistant turn with "<think>\n"

    def messages(self, prompt) -> list[dict]:
        if isinstance(prompt, list):  # a chat given by the dataset
            msgs = [dict(m) for m in prompt]
        else:
            msgs = [{"role": "user", "content": str(prompt)}]
        if self.suffix:
            for m in reversed(msgs):
                if m.get("role") == "user":
                    m["content"] = f"{m['content'].rstrip()}\n\n{self.suffix}"
                    break
        if self.system_prompt and not any(m.get("role") == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return msgs


@dataclass
class Generation:
    """One sampled completion, as stored in the generation JSONL."""

    text: str  # the full assistant text, "<think>\n" prefill included when used
    reasoning: str
    content: str  # final answer text (after </think>)
    think_closed: bool
    finish_reason: str | None  # "stop" | "length" | ...
    prompt_tokens: int | None
    completion_tokens: int | None

    @classmethod
    def from_text(cls, text: str, finish_reason, prompt_tokens, completion_tokens,
                  prefilled: bool = False, reasoning_content: str | None = None) -> "Generation":
        """Build from raw text (+ a server's separate ``reasoning_content`` when it split it)."""
        if reasoning_content:
            full = join_reasoning(reasoning_content, text)
            return cls(full, reasoning_content.strip("\n"), text.strip(), True, finish_reason,
                       prompt_tokens, completion_tokens)
        if prefilled and not text.lstrip().startswith("<think>"):
            text = THINK_PREFILL + text
        s = split_reasoning(text)
        return cls(text, s.reasoning, s.content, s.closed, finish_reason, prompt_tokens,
                   completion_tokens)

    def as_dict(self) -> dict:
        return asdict(self)


# on_done(index_into_batch, [n generations]) is called once per prompt, when all n are done.
OnDone = Callable[[int, list[Generation]], None]


class Backend:
    """Interface: ``run(list_of_messages, on_done)``; may call ``on_done`` in any order."""

    name = "base"

    def run(self, batch: Sequence[list[dict]], on_done: OnDone) -> None:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict:
        return {"backend": self.name}

    def close(self) -> None:
        pass
