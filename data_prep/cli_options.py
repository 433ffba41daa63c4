"""Option groups that several ``distill-data`` verbs share, each flag declared once.

``generate``, ``judge`` and ``evaluate`` drive the same generation engines (hf | openai | vllm), and
``generate`` and ``evaluate`` render and sample prompts the same way. A group is a dataclass whose
fields are the flags (type, typer help, default); a verb takes the group as one parameter::

    @app.command("generate")
    @option_groups
    def generate_cmd(prompts: ..., engine: EngineOptions, prompting: PromptOptions): ...

and :func:`option_groups` spreads the group's fields into the verb's command-line signature
(``--base-url``, ``-n``, ``--field-prompt`` …) and hands the verb the group object built from them.
No ``from __future__ import annotations`` here: typer reads these annotations as objects.
"""

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Annotated, Optional, get_type_hints

import typer

from distill_plugin.generation import SamplingParams

from .schema import FieldMap
from .trajectory import PromptStyle


@dataclass(frozen=True)
class EngineOptions:
    """How to reach the engine (the flags each backend reads; ``backend`` and ``--batch-size`` are the
    verb's own, their defaults and help differ between verbs)."""

    base_url: Annotated[str, typer.Option(help="openai backend: server URL ending in /v1.")] = "http://127.0.0.1:8000/v1"
    api_key_env: Annotated[str, typer.Option(help="openai backend: env variable holding the API key.")] = "OPENAI_API_KEY"
    concurrency: Annotated[int, typer.Option(help="openai backend: requests in flight.")] = 16
    timeout: Annotated[float, typer.Option(help="openai backend: seconds per request.")] = 600.0
    max_retries: Annotated[int, typer.Option(help="openai backend: retries of a failed request.")] = 5
    tensor_parallel_size: Annotated[int, typer.Option(help="vllm backend.")] = 1

    def backend_options(self, backend: str, batch_size: int) -> dict:
        """The engine's own options (``make_backend``'s keyword arguments)."""
        return {"hf": {"batch_size": batch_size},
                "openai": {"base_url": self.base_url, "api_key_env": self.api_key_env, "concurrency": self.concurrency,
                           "timeout_s": self.timeout, "max_retries": self.max_retries},
                "vllm": {"tensor_parallel_size": self.tensor_parallel_size}}.get(backend, {})


SUFFIX_HELP = "Appended to the user turn (default: R1's 'reason step by step … \\boxed{}'); '' for none."


@dataclass(frozen=True)
class PromptOptions:
    """Which prompts, rendered how, sampled how (``generate`` and ``evaluate``)."""

    n: Annotated[int, typer.Option("-n", help="Samples per prompt.")] = 4
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 16384
    seed: Optional[int] = None
    system_prompt: Optional[str] = None
    suffix: Annotated[Optional[str], typer.Option(help=SUFFIX_HELP)] = None
    prefill_think: Annotated[bool, typer.Option(help="Start the assistant turn with '<think>\\n'.")] = False
    field_id: Optional[str] = None
    field_prompt: Optional[str] = None
    field_answer: Optional[str] = None
    field_tests: Optional[str] = None
    field_choices: Optional[str] = None
    chunk_size: Annotated[int, typer.Option(help="Prompts handed to the backend per call.")] = 64
    limit: Optional[int] = None

    def style(self) -> PromptStyle:
        style = PromptStyle(system_prompt=self.system_prompt, prefill_think=self.prefill_think)
        if self.suffix is not None:
            style.suffix = self.suffix or None  # '' switches the default suffix off
        return style

    def sampling(self) -> SamplingParams:
        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              seed=self.seed)

    def fields(self) -> FieldMap:
        return FieldMap(id=self.field_id, prompt=self.field_prompt, answer=self.field_answer, tests=self.field_tests,
                        choices=self.field_choices)


GROUPS = (EngineOptions, PromptOptions)


def option_groups(verb):
    """Spread each parameter of ``verb`` annotated with a group class into that group's flags (typer
    reads ``__signature__``); the verb is called with the group object built from them."""
    own = inspect.signature(verb, eval_str=True)
    groups = {p.name: p.annotation for p in own.parameters.values() if p.annotation in GROUPS}
    # Every flag keyword-only (typer passes them by name), so a group may sit anywhere in the list
    # and its flags show in --help where the verb put it.
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = []
    for p in own.parameters.values():
        if p.name not in groups:
            params.append(p.replace(kind=keyword))
            continue
        hints = get_type_hints(p.annotation, include_extras=True)
        params += [inspect.Parameter(f.name, keyword, default=f.default, annotation=hints[f.name])
                   for f in dataclasses.fields(p.annotation)]

    @functools.wraps(verb)
    def command(**kwargs):
        for name, cls in groups.items():
            kwargs[name] = cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls)})
        return verb(**kwargs)

    command.__signature__ = own.replace(parameters=params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command
