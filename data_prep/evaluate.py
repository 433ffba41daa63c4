"""``distill-data evaluate``: held-out accuracy and teacher fit of several models, resumable.

    distill-data evaluate heldout.jsonl --model out/kd --model out/sft --teacher teacher/ \\
        --task math --backend hf -n 4 -o eval/

Each model (the teacher first, when given) answers the held-out prompts through the ``generate``
stage (any backend; finished prompts are skipped on resume, failures recorded) and is graded by the
``verify`` stage (math-verify, the code sandbox, multiple choice), each into its own folder. Then,
when the teacher shares the model's tokenizer, the teacher fit (``distill_plugin.evaluation``:
token-mean KL(teacher ‖ model) and CE through the fused chunked loss) on the teacher's completions
(``fit_on="teacher"``: all n samples of every prompt) or on the data's (``fit_on="data"``: each row's
final assistant message; then the model's CE is reported even without a teacher). Layout of ``out``:

    prompts.jsonl              the held-out rows, canonical (id, prompt, answer, ..., reference)
    _settings.evaluate.json    input settings; a resume with other ones is refused (so is a model
                               folder resumed with other sampling: generate's own check)
    models/<name>/gen|ver/     generate's and verify's outputs (each resumes on its own)
    models/<name>/fit.json     the teacher fit and the key of what it scored (reused when it matches)
    report.json, report.md, report.png

Models: local directories (a LoRA adapter directory loads on its base model) or hub ids already in
the local cache, all checked before any work; with the openai backend, names the server serves (a
teacher fit needs local directories). A model whose tokenizer differs from the teacher's gets no
teacher fit — a warning and ``fit_skipped`` in the report say why — but its accuracy is measured.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from distill_plugin.evaluation import encode_completion, gap_closed, pass_at_1, teacher_fit, tokenizer_mismatch
from distill_plugin.generation import (ADAPTER_CONFIG, SamplingParams, adapter_base, load_causal_lm, load_tokenizer,
                                       render_chat)

from .evaluate_report import write_report
from .generate import GenerateConfig, generate
from .generation_errors import errored_ids
from .guards import prepare_generate, preflight, record_settings
from .io import InputError, SkipLog, read_jsonl, read_rows, write_jsonl_atomic
from .schema import FieldMap, canonical_row
from .trajectory import THINK_PREFILL, PromptStyle
from .verify import VerifyConfig, verify

log = logging.getLogger("data_prep")


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1)
    teacher: str | None = None
    baseline: str | None = None  # one of ``models`` (as given, or its name): the gap's 0
    backend: str = "hf"
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    prompt: PromptStyle = Field(default_factory=PromptStyle)
    fields: FieldMap = Field(default_factory=FieldMap)
    backend_options: dict = Field(default_factory=dict)
    chunk_size: int = Field(64, ge=1)
    limit: int | None = Field(None, ge=1)
    max_errors: float | None = Field(None, gt=0)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    fit_on: Literal["teacher", "data"] = "teacher"
    fit_batch_size: int = Field(8, ge=1)
    device: str | None = None  # teacher-fit device (default: cuda if available)


def model_names(paths: list[str]) -> list[str]:
    """A folder name per model: the path's last part, made file-safe, ``-2``, ``-3``… when repeated."""
    names: list[str] = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(p).rstrip("/")).name) or "model"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def check_model(model: str, backend: str) -> None:
    """Before any work: a local model/adapter directory, or a hub id in the local cache (hf, vllm)."""
    if backend in ("openai", "http"):
        return
    path = Path(model)
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / ADAPTER_CONFIG).is_file()):
            raise InputError(f"{model}: not a model directory (no config.json or {ADAPTER_CONFIG})")
        base = adapter_base(path)
        if base is not None and backend == "vllm":
            raise InputError(f"{model}: a LoRA adapter; the vllm backend takes merged models (use --backend hf)")
        if base is not None:
            check_model(base, backend)
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not a valid hub id either (HFValidationError)
        cached = None
    if not isinstance(cached, str):
        raise InputError(f"{model}: model directory not found (nor a hub model in the local cache)")


def load_heldout(inputs: list[str], out: Path, cfg: EvaluateConfig) -> list[dict]:
    """Canonical held-out rows; any bad line is an error naming file:line (an evaluation on a silently
    smaller set would not compare). A chat row (``messages`` ending in an assistant turn) gives the
    prompt and the data's ``reference`` completion."""
    files, skips = preflight(inputs, out), SkipLog(strict=True)
    rows, seen = [], set()
    for path, lineno, raw in read_rows(files, skips):
        messages, reference = raw.get("messages"), None
        if cfg.fields.pick(raw, "prompt") is None and isinstance(messages, list) and messages:
            last = messages[-1]
            if isinstance(last, dict) and last.get("role") == "assistant":
                reference, messages = last.get("content"), messages[:-1]
            raw = {**raw, "prompt": messages}
        row = canonical_row(raw, cfg.fields, (path, lineno), skips, Path(path).stem)
        if row["id"] in seen:
            raise InputError(f"{path}:{lineno}: duplicate id {row['id']!r}")
        if cfg.fit_on == "data" and not isinstance(reference, str):
            raise InputError(f"{path}:{lineno}: --fit-on data needs a row of `messages` ending in an assistant turn")
        seen.add(row["id"])
        rows.append({**row, "reference": reference})
        if cfg.limit and len(rows) >= cfg.limit:
            break
    return rows


def answer_and_grade(name: str, model: str, prompts: Path, out: Path, cfg: EvaluateConfig) -> dict:
    """Generate (resumable) and verify (resumable) one model; return its accuracy statistics."""
    gen_dir, ver_dir = out / "models" / name / "gen", out / "models" / name / "ver"
    gen_cfg = GenerateConfig(backend=cfg.backend, model=model, sampling=cfg.sampling, prompt=cfg.prompt,
                             backend_options=cfg.backend_options, chunk_size=cfg.chunk_size,
                             max_errors=cfg.max_errors, strict=True)
    log.info("evaluate: %s (%s)", name, model)
    prepare_generate([prompts], gen_dir, gen_cfg)
    generate([prompts], gen_dir, gen_cfg)
    rows = []
    if (gen_dir / "generations.jsonl").is_file() and (gen_dir / "generations.jsonl").stat().st_size:
        verify(gen_dir, ver_dir, cfg.verify)
        rows = [r for _, r in read_jsonl(ver_dir / "verified.jsonl")]
    gens = [g for r in rows for g in r["generations"]]
    lengths = [g["completion_tokens"] for g in gens if g.get("completion_tokens") is not None]
    return {
        "pass_at_1": pass_at_1([[g["correct"] for g in r["generations"]] for r in rows]).as_dict(),
        "prompts": len(rows), "samples": len(gens), "failed_prompts": len(errored_ids(gen_dir)),
        "mean_completion_tokens": sum(lengths) / len(lengths) if lengths else None,
        "truncation_rate": sum(g.get("finish_reason") == "length" for g in gens) / len(gens) if gens else None,
    }


def scored(tokenizer, request: list[dict], text: str, stopped: bool):
    """A completion as ``(prompt_ids, completion_ids)``; a ``<think>\\n`` already in the rendered prompt
    (our prefill or the template's own) is not scored twice (stored texts repeat it)."""
    if text.startswith(THINK_PREFILL) and render_chat(tokenizer, request).endswith(THINK_PREFILL):
        text = text[len(THINK_PREFILL):]
    return encode_completion(tokenizer, request, text, stopped)


def fit_sequences(tokenizer, rows: list[dict], teacher_dir: Path | None, cfg: EvaluateConfig) -> list:
    """The completions the fit scores: the data's references, or every teacher sample."""
    if cfg.fit_on == "data":
        return [scored(tokenizer, cfg.prompt.request(cfg.prompt.messages(r["prompt"])), r["reference"], True)
                for r in rows]
    gen = teacher_dir / "gen" / "generations.jsonl"
    return [scored(tokenizer, cfg.prompt.request(r["messages"]), g["text"], g.get("finish_reason") == "stop")
            for _, r in (read_jsonl(gen) if gen.is_file() else ()) for g in r["generations"]]


def fit_one(name: str, model: str, out: Path, teacher, sequences: list, key: dict, cfg: EvaluateConfig) -> dict:
    """The model's teacher fit, from ``fit.json`` when it holds the same ``key``, else computed and saved.
    ``teacher``: ``(load the teacher model, its tokenizer)``, or None (CE on the data only)."""
    path = out / "models" / name / "fit.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["fit"]
    tok = teacher[1] if teacher is not None else load_tokenizer(model)
    fit = teacher_fit(load_causal_lm(model, cfg.device), sequences, None if teacher is None else teacher[0](),
                      pad_id=_pad(tok), vocab_size=len(tok), batch_size=cfg.fit_batch_size,
                      desc=f"fit[{name}]").as_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "fit": fit}, indent=2) + "\n")
    return fit


def _pad(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def _digest(sequences: list) -> str:
    return hashlib.blake2b(json.dumps(sequences).encode(), digest_size=16).hexdigest()


def evaluate(inputs: list[str], out: str | Path, cfg: EvaluateConfig) -> dict:
    """Run (or resume) the evaluation; returns the report (also ``out/report.json``, ``.md``, ``.png``)."""
    out = Path(out)
    names = model_names(([cfg.teacher] if cfg.teacher else []) + cfg.models)
    entries = [{"name": n, "path": p, "role": "teacher" if cfg.teacher and i == 0 else "student"}
               for i, (n, p) in enumerate(zip(names, ([cfg.teacher] if cfg.teacher else []) + cfg.models))]
    baseline = next((e for e in entries if cfg.baseline in (e["path"], e["name"]) and e["role"] == "student"), None)
    if cfg.baseline and baseline is None:
        raise InputError(f"--baseline {cfg.baseline}: not one of the --model values ({', '.join(cfg.models)})")
    for e in entries:
        check_model(e["path"], cfg.backend)
    rows = load_heldout(inputs, out, cfg)
    record_settings(out, "evaluate", {"inputs": [str(Path(i).resolve()) for i in inputs], "limit": cfg.limit,
                                      "fields": cfg.fields.model_dump(), "fit_on": cfg.fit_on}, resumable=True)
    prompts = out / "prompts.jsonl"
    write_jsonl_atomic(prompts, rows)
    for e in entries:
        e.update(answer_and_grade(e["name"], e["path"], prompts, out, cfg))
    add_teacher_fit(entries, rows, out, cfg)
    add_gaps(entries, baseline)
    report = {"settings": cfg.model_dump(exclude={"backend_options"}), "inputs": [str(i) for i in inputs],
              "prompts": len(rows), "baseline": baseline["name"] if baseline else None, "models": entries}
    write_report(out, report)
    return report


def add_teacher_fit(entries: list[dict], rows: list[dict], out: Path, cfg: EvaluateConfig) -> None:
    """``fit`` (or ``fit_skipped``, the reason) of every entry; the teacher's own CE on its row."""
    teacher_entry = entries[0] if entries[0]["role"] == "teacher" else None
    for e in entries:
        e["fit"], e["fit_skipped"] = None, None
    if teacher_entry is None and cfg.fit_on == "teacher":
        for e in entries:
            e["fit_skipped"] = "no --teacher"
        return
    local = {e["name"]: Path(e["path"]).is_dir() or cfg.backend not in ("openai", "http") for e in entries}
    teacher = None
    if teacher_entry is not None:
        if not local[teacher_entry["name"]]:
            for e in entries:
                e["fit_skipped"] = f"the teacher {teacher_entry['path']} is not a local model directory"
            return
        t_tok = load_tokenizer(teacher_entry["path"])
        sequences = fit_sequences(t_tok, rows, out / "models" / teacher_entry["name"], cfg)
        # loaded on first use only: a resumed run whose fits are all saved never loads it
        teacher = (functools.cache(lambda: load_causal_lm(teacher_entry["path"], cfg.device)), t_tok)
    for e in entries:
        if e is teacher_entry:
            continue
        if not local[e["name"]]:
            e["fit_skipped"] = f"{e['path']} is not a local model directory"
        elif teacher is not None and (why := tokenizer_mismatch(teacher[1], load_tokenizer(e["path"]))):
            e["fit_skipped"] = f"tokenizer differs from the teacher's ({why})"
        else:
            seqs = sequences if teacher is not None else fit_sequences(load_tokenizer(e["path"]), rows, None, cfg)
            key = {"fit_on": cfg.fit_on, "teacher": teacher_entry["path"] if teacher_entry else None,
                   "model": e["path"], "sequences": _digest(seqs)}
            e["fit"] = fit_one(e["name"], e["path"], out, teacher, seqs, key, cfg)
            continue
        log.warning("evaluate: no teacher fit for %s: %s", e["name"], e["fit_skipped"])
    fits = [e["fit"] for e in entries if e["fit"] and e["fit"].get("teacher_ce") is not None]
    if teacher_entry is not None and fits:  # the teacher's own CE on the same completions
        teacher_entry["fit"] = {"student_ce": fits[0]["teacher_ce"], "kl": 0.0, "teacher_ce": fits[0]["teacher_ce"],
                                "tokens": fits[0]["tokens"], "sequences": fits[0]["sequences"]}


def add_gaps(entries: list[dict], baseline: dict | None) -> None:
    """``gap_closed``: the fraction of the baseline→teacher gap each student closed (pass@1 and KL)."""
    teacher = entries[0] if entries[0]["role"] == "teacher" else None
    for e in entries:
        e["gap_closed"] = None
        if baseline is None or teacher is None or e["role"] == "teacher":
            continue
        acc = lambda x: x["pass_at_1"]["mean"]  # noqa: E731
        kl = lambda x: (x.get("fit") or {}).get("kl")  # noqa: E731
        e["gap_closed"] = {"pass_at_1": gap_closed(acc(e), acc(baseline), acc(teacher)),
                           "kl": gap_closed(kl(e), kl(baseline), 0.0, higher_is_better=False)}
