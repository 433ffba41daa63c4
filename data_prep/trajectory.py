"""R1-style trajectories on top of the generation layer: prompt style and the stored sample record.

``PromptStyle`` turns a dataset prompt into the chat sent to the teacher (the R1 suffix, a system
prompt, an optional ``<think>\\n`` prefill, which the generation layer sends as a final assistant
message to continue). ``Generation`` is one sample as stored in ``generations.jsonl``: the
completion's text split into reasoning and answer, with finish reason and token usage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pydantic import BaseModel

from distill_plugin.generation import Completion

from .schema import join_reasoning, split_reasoning

R1_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
THINK_PREFILL = "<think>\n"


class PromptStyle(BaseModel):
    """How a prompt becomes chat messages (the teacher's own template renders them)."""

    system_prompt: str | None = None
    suffix: str | None = R1_SUFFIX  # appended to the user turn; None/"" = none
    prefill_think: bool = False  # start the assistant turn with "<think>\n"

    def messages(self, prompt) -> list[dict]:
        """The conversation stored with the row (without the prefill)."""
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

    def request(self, messages: list[dict]) -> list[dict]:
        """What the backend is sent: the conversation, plus the ``<think>\\n`` prefill if asked."""
        return messages + [{"role": "assistant", "content": THINK_PREFILL}] if self.prefill_think else messages


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

    @classmethod
    def from_completion(cls, c: Completion, style: PromptStyle) -> "Generation":
        """A completion of ``style.request(...)``: the output starts inside ``<think>`` when the prompt
        was prefilled, by us or by the teacher's own template (R1-Distill templates open it)."""
        prefilled = style.prefill_think or (c.prompt_text or "").endswith(THINK_PREFILL)
        return cls.from_text(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens,
                             prefilled=prefilled, reasoning_content=c.reasoning)

    def as_dict(self) -> dict:
        return asdict(self)
