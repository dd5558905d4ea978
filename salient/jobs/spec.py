"""The job spec: a YAML file validated before any work (pydantic v2, unknown keys are errors).

```yaml
model: efficientnet-lite0            # any load_model spec, or {name: SPEC, weights:, score:, input_size:, ...}
source: {images: "photos/**/*.jpg"}  # or {manifest: items.parquet} (columns path, and optional id, label, mask, box)
targets: top1                        # top1, topK, a class id or a label; a method may override it
methods:
  - {name: rise, n_masks: 2000}      # parameters are checked against the registered method
  - {name: dida, targets: top3}
metrics: [insertion, deletion]       # or {kinds: [insertion, deletion], step: 896, substrate: blur}
                                     # localisation: object_share, pointing_game (tolerance: 15), ...
executor: {kind: local}              # kind local|ray, workers, threads, address, gpus_per_worker, accelerator,
                                     # batch_size, device, precision (fp32|bf16|fp16), kernels (auto|torch|cupy),
                                     # cuda_graphs, max_live, fuse, incremental (CPU fast paths, default true)
seed: 0
out: audit/
store: {shard_items: 64}             # optional: shard_items, flush_rows, checkpoint_seconds, compressor
audit: {context: [only_fg, mixed_rand]}  # optional: context variants per item (salient.audit), flag threshold
```
Relative paths (source, manifest, model files, out) are relative to the YAML file's directory.
Every error names its field (``methods.1.n_masks: ...``) and what it expected.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from ..errors import SalientError, short_repr
from ..kernels import check_fill
from ..methods import get_method
from ..methods.metric import METRICS
from ..models.loader import OPTION_KEYS
from ..store.schema import COMPRESSORS
from . import (
    slide_source,  # noqa: F401 - registers the "slides" source kind (tile mode)
    video_source,  # noqa: F401 - registers the "videos" source kind (clips along t)
)
from .sources import SOURCE_KINDS

# Fields whose change changes the results: a store refuses to mix runs that differ in them.
RESULT_FIELDS = ("model", "source", "targets", "methods", "metrics", "seed")
MAX_ERRORS = 10  # a message lists at most this many errors (and says how many more)
FAST_PATHS = ("fuse", "incremental")  # executor switches that change the last bits of the maps


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """A load_model spec and its options."""

    name: str = Field(min_length=1)
    weights: str | None = None
    score: Literal["softmax", "logit", "sigmoid"] | None = None
    input_size: int | str | list[int] | None = None
    mean: str | list[float] | None = None
    std: str | list[float] | None = None
    seed: int | None = None
    labels: str | list[str] | None = None
    output: Literal["classes", "reconstruction", "embedding"] | None = None

    def options(self) -> dict[str, Any]:
        return {k: v for k in OPTION_KEYS if (v := getattr(self, k, None)) is not None}


class MethodSpec(BaseModel):
    """``{name: METHOD, targets: ..., **parameters}``; parameters are checked by the method itself."""

    model_config = ConfigDict(extra="allow")

    name: str
    targets: str | int | None = None

    @model_validator(mode="after")
    def _check(self) -> MethodSpec:
        try:
            method = get_method(self.name)
            checked = method.check_params(dict(self.model_extra or {}))
        except SalientError as e:
            raise ValueError(str(e)) from None
        object.__setattr__(self, "__pydantic_extra__", checked)
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MetricsSpec(_Strict):
    kinds: list[str] = Field(default_factory=list)
    step: int | None = Field(default=None, ge=1)
    substrate: str | float | None = None
    tolerance: float | None = Field(default=None, ge=0)  # pointing game, pixels of the map (default 15)

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        d = handler(self)
        if d.get("tolerance") is None:  # not given: specs (and store hashes) read as before it existed
            d.pop("tolerance", None)
        return d

    @field_validator("kinds")
    @classmethod
    def _known(cls, kinds: list[str]) -> list[str]:
        for k in kinds:
            if k not in METRICS:
                raise ValueError(f"unknown metric {k!r}; expected one of {', '.join(METRICS)}")
        if len(set(kinds)) != len(kinds):
            raise ValueError("a metric is listed twice")
        return kinds

    @field_validator("substrate")
    @classmethod
    def _substrate(cls, v: str | float | None) -> str | float | None:
        if v is not None:
            check_fill(v, "substrate")  # before any work (a FillError is a ValueError); the value is kept as given
        return v


class ExecutorSpec(_Strict):
    kind: Literal["local", "ray"] = "local"
    workers: int | None = Field(default=None, ge=1)
    address: str | None = None
    gpus_per_worker: float | None = Field(default=None, gt=0)  # Ray: 0.5 puts two workers on one GPU
    accelerator: str | None = None  # Ray: pin GPU workers to an accelerator type (H100, A100, ...)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast of the masked forwards (salient.engine.worker)
    kernels: Literal["auto", "torch", "cupy"] = "auto"  # the mask kernels (salient.kernels.backend)
    cuda_graphs: bool = False  # replay a captured forward per batch shape (CUDA)
    batch_size: int | None = Field(default=None, ge=1)
    device: str | None = None
    threads: int | None = Field(default=None, ge=1)  # intra-op threads per worker
    max_live: int | None = Field(default=None, ge=1)  # tasks alive at once (None: the engine's default)
    fuse: bool = True  # CPU: masked forwards through the fused module (salient.engine.fuse)
    incremental: bool = True  # CPU: boxes recompute only what they change (salient.engine.incremental)

    def options(self) -> dict[str, Any]:
        """Keyword options for the executor (only those given or off their defaults, and the fast paths turned
        off)."""
        keys = ("workers", "address", "gpus_per_worker", "accelerator", "batch_size", "device", "threads")
        opts = {k: v for k in keys if (v := getattr(self, k)) is not None}
        defaults = {"precision": "fp32", "kernels": "auto", "cuda_graphs": False}
        opts.update({k: v for k, d in defaults.items() if (v := getattr(self, k)) != d})
        return {**opts, **{k: False for k in FAST_PATHS if not getattr(self, k)}}


class StoreSpec(_Strict):
    shard_items: int = Field(default=64, ge=1)
    flush_rows: int = Field(default=256, ge=1)
    checkpoint_seconds: float = Field(default=60.0, gt=0)
    compressor: Literal[COMPRESSORS] = "lz4"  # type: ignore[valid-type]


class AuditSpec(_Strict):
    """``audit: {context: [only_fg, mixed_rand, "perturb:blur:3", ...], flag_context_share: 0.5}``: the
    context variants scored for every item (:mod:`salient.audit.variants`) and the context share above
    which ``salient audit`` flags an item."""

    context: list[str] = Field(default_factory=list)
    flag_context_share: float = Field(default=0.5, ge=0, le=1)

    @field_validator("context")
    @classmethod
    def _variants(cls, v: list[str]) -> list[str]:
        from ..audit.variants import parse_variant

        for i, name in enumerate(v):
            try:
                parse_variant(name)
            except SalientError as e:
                raise ValueError(f"context.{i}: {e}") from None
        if len(set(v)) != len(v):
            raise ValueError("context: a variant is listed twice")
        return v


class JobSpec(_Strict):
    model: ModelSpec
    source: dict[str, Any]
    targets: str | int = "top1"
    methods: list[MethodSpec] = Field(min_length=1)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    seed: int = Field(default=0, ge=0)
    out: str = Field(min_length=1)
    store: StoreSpec = Field(default_factory=StoreSpec)
    audit: AuditSpec | None = None
    base_dir: str = Field(default=".", exclude=True)  # the YAML file's directory (not a YAML key)

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, v: Any) -> Any:
        if v is None:
            return {}
        return {"kinds": v} if isinstance(v, list) else v

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError(f"expected a mapping with one of the keys {', '.join(SOURCE_KINDS)}, got {short_repr(v)}")
        kinds = [k for k in SOURCE_KINDS if k in v]
        if len(kinds) != 1:
            raise ValueError(f"expected exactly one of the keys {', '.join(SOURCE_KINDS)}, got {sorted(v)}")
        try:
            return SOURCE_KINDS[kinds[0]].Spec.model_validate(v).model_dump()
        except ValidationError as e:
            raise ValueError(format_errors(e, prefix="source")) from None

    @model_validator(mode="after")
    def _unique(self) -> JobSpec:
        names = [m.name for m in self.methods]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise ValueError(f"methods.{i}: method {n!r} is listed twice (one array per method)")
        return self

    @property
    def source_kind(self) -> str:
        return next(k for k in SOURCE_KINDS if k in self.source)

    def path(self, p: str) -> Path:
        """A spec path resolved against the YAML file's directory."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir) / q

    def results_dict(self) -> dict[str, Any]:
        """The fields that decide the results (RESULT_FIELDS and a fixed batch size), JSON-safe."""
        d = self.model_dump(mode="json", exclude={"base_dir"})
        out = {k: d[k] for k in RESULT_FIELDS}
        out["batch_size"] = self.executor.batch_size
        if self.audit is not None and self.audit.context:  # only when given: other stores keep their hash
            out["audit"] = d["audit"]["context"]
        for k in FAST_PATHS:  # off, the last bits of the scores differ (the defaults leave old hashes alone)
            if not getattr(self.executor, k):
                out[k] = False
        if self.executor.precision != "fp32":  # another precision, other maps (fp32 leaves old hashes alone)
            out["precision"] = self.executor.precision
        return out

    def spec_hash(self) -> str:
        blob = json.dumps(self.results_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def format_errors(err: ValidationError, prefix: str = "") -> str:
    """One line: ``field.path: what was expected`` for each error (the first ``MAX_ERRORS``), joined by ``; ``."""
    parts = []
    for e in err.errors()[:MAX_ERRORS]:
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        elif e["type"].startswith(("int_", "float_", "string_", "literal_", "bool_", "list_", "dict_", "model_")):
            msg = f"{msg} (got {short_repr(e['input'])})"
        where = ".".join(p for p in (prefix, loc) if p)
        if where and msg.startswith(where + "."):  # a nested spec already named the full path
            where = ""
        parts.append(f"{where}: {msg}" if where else msg)
    more = err.error_count() - len(parts)
    return "; ".join(parts) + (f"; ... and {more} more" if more > 0 else "")


def parse_spec(data: Any, base_dir: str | Path = ".", name: str = "job spec") -> JobSpec:
    """Validate a mapping (already parsed YAML) as a JobSpec; SalientError naming each bad field."""
    if not isinstance(data, dict):
        raise SalientError(f"{name}: expected a mapping of keys (model, source, methods, out, ...), "
                           f"got {type(data).__name__}")
    if "base_dir" in data:
        raise SalientError(f"{name}: base_dir: unknown key")
    try:
        return JobSpec.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as e:
        raise SalientError(f"{name}: {format_errors(e)}") from None


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a job YAML (``yaml.safe_load``: no code runs from the file)."""
    p = Path(path)
    if not p.is_file():
        raise SalientError(f"job spec {p}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SalientError(f"job spec {p}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise SalientError(f"job spec {p}: not a text file") from None
    return parse_spec(data, p.resolve().parent, f"job spec {p}")
