"""The teacher's own rendering of a conversation the student saw through its chat template.

When the two tokenizers carry different chat templates (ChatML for the student, Llama 3 headers for
the teacher, say), the teacher is run on its *own* template: it was trained on that markup, and
scoring the student's markup with it would make its predictions around the answer meaningless.
When the templates are equal, or the teacher has none, the teacher reads the student's text as is.

The collator only has the student's tokens (Axolotl tokenises before collating), so the messages
are recovered from the student's text by *probing* each template with placeholder contents:

    render([system?] + [user, assistant] × m, contents = ⟨0⟩, ⟨1⟩, …)  →  g₀ ⟨0⟩ g₁ ⟨1⟩ … gₙ

The gaps gᵢ are the template's markup for that role sequence. The student's text is matched
against ``g₀ (.*?) g₁ (.*?) … gₙ`` (m = 1, 2, …, with and without a system turn; the first full match
wins), which yields the contents; the teacher's text is then h₀ c₀ h₁ c₁ … hₙ with the teacher's own
gaps hᵢ. Contents are inserted verbatim (a template that trims whitespace is not re-applied to them),
so each content is an identical region of both texts (``spans.Region``) — the answer span is located
on both sides by these offsets. A conversation no probe matches (a truncated example, a role
sequence other than [system] user/assistant alternation) gets no alignment: it trains on CE only,
and the collator counts it. The text may stop early inside the last gap or the last content (a
trailing newline dropped, a sequence cut at ``sequence_len``): the last gap matches any prefix of itself.
"""

from __future__ import annotations

import re

from .spans import Region

MAX_TURNS = 32  # user/assistant pairs probed


def _placeholder(i: int) -> str:
    return f"\ue000{i}\ue001"  # private-use characters: never in real data, never trimmed


def _roles(turns: int, system: bool) -> tuple[str, ...]:
    return (("system",) if system else ()) + ("user", "assistant") * turns


def _gaps(render, roles: tuple[str, ...]) -> tuple[str, ...] | None:
    """The markup around the contents of ``roles`` in ``render``'s template (None: it refuses them)."""
    messages = [{"role": role, "content": _placeholder(i)} for i, role in enumerate(roles)]
    try:
        text = render(messages)
    except Exception:  # a template may raise for a role sequence it does not support (system, say)
        return None
    parts = re.split("\ue000\\d+\ue001", text)
    return tuple(parts) if len(parts) == len(roles) + 1 else None


def _any_prefix(gap: str) -> str:
    """A regex matching any prefix of ``gap`` (""  included): the text may stop inside the last
    gap — a trailing newline left out, or a sequence cut at ``sequence_len`` — or inside the last content."""
    pattern = ""
    for ch in reversed(gap):
        pattern = f"(?:{re.escape(ch)}{pattern})?"
    return pattern


class TemplatePair:
    """Translate the student's rendering into the teacher's: ``teacher_text(student_text)``."""

    def __init__(self, student_tokenizer, teacher_tokenizer):
        self.student_template = getattr(student_tokenizer, "chat_template", None)
        self.teacher_template = getattr(teacher_tokenizer, "chat_template", None)
        self.same = not self.teacher_template or self.teacher_template == self.student_template
        self._tokenizers = {"student": student_tokenizer, "teacher": teacher_tokenizer}
        # A tokenizer that adds its BOS on top of a template that writes one gives the student's text
        # one more BOS than the probes: tried again without it.
        self.bos = getattr(student_tokenizer, "bos_token", None) or None
        self._cache: dict[tuple, tuple[str, ...] | None] = {}  # probes are rendered once per role sequence

    def gaps(self, side: str, roles: tuple[str, ...]) -> tuple[str, ...] | None:
        key = (side, roles)
        if key not in self._cache:
            tokenizer = self._tokenizers[side]
            self._cache[key] = _gaps(lambda m: tokenizer.apply_chat_template(m, tokenize=False), roles)
        return self._cache[key]

    def teacher_text(self, text: str) -> tuple[str, list[Region]] | None:
        """The teacher's text and the regions identical in both, or None when no probe matches."""
        if self.same:
            return text, [Region(0, len(text.encode()), 0)]
        prefixes = [""] + ([self.bos] if self.bos and text.startswith(self.bos) else [])
        for prefix in prefixes:
            for turns in range(1, MAX_TURNS + 1):
                for system in (False, True):
                    found = self._match(text, _roles(turns, system), prefix)
                    if found is not None:
                        return found
        return None

    def _match(self, text: str, roles: tuple[str, ...], prefix: str = ""):
        student, teacher = self.gaps("student", roles), self.gaps("teacher", roles)
        if student is None or teacher is None:
            return None
        pattern = re.escape(prefix) + "(.*?)".join(re.escape(gap) for gap in student[:-1]) + "(.*?)" + _any_prefix(student[-1])
        match = re.fullmatch(pattern, text, flags=re.DOTALL)
        if match is None:
            return None
        contents = match.groups()
        pieces, regions, t_bytes = [], [], 0
        for i, content in enumerate(contents):
            pieces.append(teacher[i])
            t_bytes += len(teacher[i].encode())
            s_start = len(text[: match.start(i + 1)].encode())
            size = len(content.encode())
            regions.append(Region(s_start, s_start + size, t_bytes))
            pieces.append(content)
            t_bytes += size
        pieces.append(teacher[-1])
        return "".join(pieces), regions
