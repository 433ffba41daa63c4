"""``distill-data run pipeline.yml``: the four stages from one YAML file, resumable.

Layout under ``workdir``: ``gen/`` (generation shards), ``ver/verified.jsonl``, ``kept/kept.jsonl``,
the export (``export.output``, default ``<workdir>/train.jsonl``, or the folder ``<workdir>/data``
with ``export.split``/``format: parquet``/``shard_size``) and ``report.json``.
Generation and verification append row by row and skip finished ids, so re-running the same
command after a crash continues where it stopped; filter and export are cheap, deterministic and
rewritten atomically on every run. Relative paths in the YAML are relative to the YAML's folder.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distill_plugin.generation import backend_class

from .export import ExportConfig, export
from .filters import FilterConfig, filter_rows
from .generate import GenerateConfig, generate
from .guards import prepare_generate
from .io import InputError
from .report import collect
from .verify import VerifyConfig, verify

log = logging.getLogger("data_prep")


class ExportStage(ExportConfig):
    output: str | None = None


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str]
    workdir: str
    generate: GenerateConfig
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    export: ExportStage = Field(default_factory=ExportStage)
    shard: str | None = None  # "i/n": this worker only generates its shard (then stops)


def _abs(base: Path, p: str | None) -> str | None:
    if p is None:
        return None
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q))


def _model_of(annotation) -> type[BaseModel] | None:
    """The pydantic model a field holds (``X``, ``X | None``), if any."""
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def unknown_key(model: type[BaseModel], raw: dict, prefix: str = "") -> str | None:
    """The first key of ``raw`` (at any depth) that ``model`` does not know, with the nearest
    valid one: ``unknown key 'generate.samplng' (did you mean 'generate.sampling'?)``."""
    fields = model.model_fields
    for key, val in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else "valid keys: " + ", ".join(fields)
            return f"unknown key '{prefix}{key}' ({hint})"
        sub = _model_of(fields[key].annotation)
        if sub is not None and isinstance(val, dict):
            found = unknown_key(sub, val, f"{prefix}{key}.")
            if found:
                return found
    return None


def unknown_backend_option(backend: str, options: dict) -> str | None:
    """A ``generate.backend_options`` key the backend's constructor does not take, if any."""
    try:
        cls = backend_class(backend)
        params = inspect.signature(cls.__init__).parameters
    except (ImportError, ValueError):  # unknown backend, or vllm not installed
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    valid = [k for k in params if k not in ("self", "model", "sampling", "style")]
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"did you mean 'generate.backend_options.{close[0]}'?" if close else "valid keys: " + ", ".join(valid)
            return f"unknown key 'generate.backend_options.{key}' for backend {backend} ({hint})"
    return None


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise InputError(f"{path}{where}: malformed YAML: {e.problem}") from e
    except yaml.YAMLError as e:
        raise InputError(f"{path}: malformed YAML: {e}") from e
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of keys (input, workdir, generate, ...), got {type(raw).__name__}")
    return raw


def load_config(path: str | Path) -> PipelineConfig:
    """Read and check a pipeline YAML; every error is one line naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    raw = _read_yaml(path)
    bad = unknown_key(PipelineConfig, raw)
    if bad:
        raise InputError(f"{path}: {bad}")
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        raise InputError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from e
    bad = unknown_backend_option(cfg.generate.backend, cfg.generate.backend_options)
    if bad:
        raise InputError(f"{path}: {bad}")
    base = path.resolve().parent
    cfg.input = [_abs(base, p) for p in ([cfg.input] if isinstance(cfg.input, str) else cfg.input)]
    cfg.workdir = _abs(base, cfg.workdir)
    cfg.filter.decontaminate = [_abs(base, p) for p in cfg.filter.decontaminate]
    cfg.export.output = _abs(base, cfg.export.output)
    for obj, key in ((cfg.generate, "model"), (cfg.filter, "tokenizer"), (cfg.export, "check_template"),
                     (cfg.export, "tokenizer")):
        val = getattr(obj, key)
        if val and (base / val).exists():  # a local path; hub names are left alone
            setattr(obj, key, str(base / val))
    return cfg


def run_pipeline(cfg: PipelineConfig | str | Path, backend=None) -> dict:
    """Run (or resume) all stages; returns the combined report (also ``<workdir>/report.json``)."""
    if not isinstance(cfg, PipelineConfig):
        cfg = load_config(cfg)
    work = Path(cfg.workdir)
    gen_dir, ver_dir, kept_dir = work / "gen", work / "ver", work / "kept"
    reports = {}
    prepare_generate(cfg.input, gen_dir, cfg.generate)
    r = generate(cfg.input, gen_dir, cfg.generate, shard=cfg.shard, backend=backend)
    reports["generate"] = r
    log.info(r.summary())
    if cfg.shard and cfg.shard.split("/")[1] != "1":
        log.info("shard %s done; run again without `shard` once every shard is finished", cfg.shard)
        return {k: v.as_dict() for k, v in reports.items()}
    reports["verify"] = verify(gen_dir, ver_dir, cfg.verify)
    reports["filter"] = filter_rows(ver_dir, kept_dir / "kept.jsonl", cfg.filter)
    out = Path(cfg.export.output or work / ("data" if cfg.export.to_folder else "train.jsonl"))
    reports["export"] = export(kept_dir, out, ExportConfig(**cfg.export.model_dump(exclude={"output"})))
    for rep in reports.values():
        log.info(rep.summary())
    combined = {
        "stages": {k: v.as_dict() for k, v in reports.items()},
        "all_reports": collect([gen_dir, ver_dir, kept_dir, out if cfg.export.to_folder else out.parent]),
        "overall_kept_fraction": (reports["export"].rows_out / reports["verify"].rows_out
                                  if reports["verify"].rows_out else None),
        "output": str(out),
    }
    (work / "report.json").write_text(json.dumps(combined, indent=2) + "\n")
    return combined
