"""The one typed config tree: a YAML file validated by pydantic before anything starts.

Order of precedence, lowest first (pinned by ``tests/unit/test_config.py``):
1. the YAML file (``serve_app/configs/default.yaml`` unless another is named);
2. environment overrides: ``SERVEFLEET_HOST``, ``SERVEFLEET_PORT``;
3. explicit overrides passed by the caller (the CLI's ``--host`` / ``--port``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deployments.sim_model import SimEngineConfig

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "configs" / "default.yaml"
BUILTIN_PREFIX = "builtin:"

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the offending field."""


class EngineArgs(BaseModel):
    """Arguments for vLLM's ``AsyncEngineArgs``.

    The common ones are typed here; anything else vLLM accepts goes into ``extra`` and is passed through as is,
    so a GPU deployment can set e.g. ``tensor_parallel_size`` without a schema change.
    """

    model_config = _FROZEN

    max_model_len: int | None = Field(
        default=None, gt=0, description="Context length; defaults to the model's own maximum."
    )
    max_num_seqs: int = Field(default=64, gt=0, description="Most sequences in one continuous batch.")
    dtype: str = Field(default="auto", description="Weights dtype: auto, float32, bfloat16, float16.")
    enforce_eager: bool = Field(
        default=True, description="Skip torch.compile/CUDA graphs: faster start, what the CPU wants."
    )
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="GPU only: fraction of GPU memory for weights and KV cache."
    )
    seed: int = Field(default=0, description="Engine seed, for reproducible sampling.")
    cpu_affinity: list[int] | None = Field(
        default=None,
        min_length=1,
        description=(
            "CPU build only: pin vLLM's engine-core and worker processes to these CPU ids, leaving the other "
            "cores to Ray and the serving path. vLLM's engine core spin-waits on its worker; unpinned, on a "
            "small box it starves the replicas that stream tokens out (stalls of seconds, see README). "
            "None leaves placement to the OS, which is right for GPU engines."
        ),
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Further AsyncEngineArgs fields, passed to vLLM unchanged."
    )


class AutoscalingConfig(BaseModel):
    """Ray Serve autoscaling for one pool. Absent means a fixed number of replicas."""

    model_config = _FROZEN

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas kept running.")
    max_replicas: int = Field(default=2, ge=1, description="Most replicas the pool may grow to.")
    target_ongoing_requests: float = Field(default=16, gt=0, description="Ongoing requests per replica to aim at.")
    upscale_delay_s: float = Field(default=5, ge=0, description="How long demand must stay high before adding.")
    downscale_delay_s: float = Field(default=30, ge=0, description="How long demand must stay low before removing.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


class VariantConfig(BaseModel):
    """One named model version with its own engine replica pool."""

    model_config = _FROZEN

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
        description="Public name; clients may ask for it as the `model` to pin this variant.",
    )
    model: str = Field(
        description="`builtin:<name>` for a model this project builds, a local Hugging Face folder, or a hub id."
    )
    tokenizer: str | None = Field(default=None, description="Tokenizer path or id; defaults to `model`.")
    weight: float = Field(default=0, ge=0, le=100, description="Percent of routed traffic (all weights sum to 100).")
    replicas: int = Field(default=1, ge=1, description="Fixed number of engine replicas (ignored with autoscaling).")
    autoscaling: AutoscalingConfig | None = Field(default=None, description="Autoscale the pool instead.")
    max_ongoing_requests: int = Field(
        default=64, gt=0, description="Requests one replica holds at once; sized to the engine's batch."
    )
    num_cpus: float = Field(default=1, ge=0, description="Ray CPUs reserved for each engine replica.")
    num_gpus: float = Field(default=0, ge=0, description="GPUs for each engine replica (0 on the CPU build).")
    engine: EngineArgs = Field(default_factory=EngineArgs, description="vLLM engine arguments.")
    backend: Literal["vllm", "sim"] = Field(
        default="vllm",
        description=(
            "`sim`: the SIMULATED engine (deployments/sim_engine.py), a test and capacity-planning tool that "
            "serves no model. Never the default."
        ),
    )
    sim: SimEngineConfig = Field(
        default_factory=SimEngineConfig, description="Costs and limits of the simulated engine (backend: sim)."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for the engine replica's processes."
    )

    @property
    def is_builtin(self) -> bool:
        return self.model.startswith(BUILTIN_PREFIX)

    @property
    def builtin_name(self) -> str | None:
        return self.model.removeprefix(BUILTIN_PREFIX) if self.is_builtin else None


class RoutingConfig(BaseModel):
    model_config = _FROZEN

    public_model: str = Field(
        default="tiny", description="The model name clients ask for to be routed across variants by weight."
    )
    sticky_header: str = Field(
        default="x-servefleet-user",
        description="Request header whose value pins a user/session to one variant (the body's `user` also works).",
    )
    override_header: str = Field(
        default="x-servefleet-variant", description="Request header that pins a variant by name, for testing."
    )
    salt: str = Field(default="servefleet", description="Mixed into sticky hashing; change it to reshuffle users.")

    @field_validator("sticky_header", "override_header")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class ServerConfig(BaseModel):
    model_config = _FROZEN

    host: str = Field(default="127.0.0.1", description="Address the HTTP proxy binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the HTTP proxy listens on.")
    request_timeout_s: float = Field(default=300, gt=0, description="Whole-request timeout in the HTTP proxy.")


class StreamConfig(BaseModel):
    model_config = _FROZEN

    coalesce_ms: float = Field(
        default=100,
        ge=0,
        description=(
            "Upper bound of the coalescing window: tokens arriving within it travel as one chunk. The first "
            "visible text is never held."
        ),
    )
    coalesce_per_stream_ms: float = Field(
        default=2,
        ge=0,
        description=(
            "The window grows by this much per stream the replica is serving, so that its chunk rate (what "
            "costs CPU on every hop) stays about constant as concurrency rises: one stream gets near "
            "token-by-token output, 64 streams get up to coalesce_ms."
        ),
    )


class GenerationDefaults(BaseModel):
    model_config = _FROZEN

    max_tokens: int = Field(default=256, gt=0, description="Used when a chat request gives no max_tokens.")
    completion_max_tokens: int = Field(
        default=16, gt=0, description="Used when a completion request gives none (OpenAI's own default)."
    )


class ServeFleetConfig(BaseModel):
    """The whole app: variants, routing, server, streaming."""

    model_config = _FROZEN

    app_name: str = Field(default="servefleet", description="Ray Serve application name.")
    variants: list[VariantConfig] = Field(min_length=1, description="Model variants, each with its own pool.")
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)

    @model_validator(mode="after")
    def _cross_field(self) -> ServeFleetConfig:
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(duplicates)}")
        if self.routing.public_model in names:
            raise ValueError(f"routing.public_model {self.routing.public_model!r} clashes with a variant name")
        total = sum(v.weight for v in self.variants)
        if not math.isclose(total, 100.0, abs_tol=1e-6):
            raise ValueError(f"variant weights must sum to 100, they sum to {total:g}")
        return self

    def variant(self, name: str) -> VariantConfig:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)

    @property
    def weights(self) -> dict[str, float]:
        return {v.name: v.weight for v in self.variants}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    server: dict[str, Any] = {}
    if "SERVEFLEET_HOST" in environ:
        server["host"] = environ["SERVEFLEET_HOST"]
    if "SERVEFLEET_PORT" in environ:
        server["port"] = environ["SERVEFLEET_PORT"]
    return {"server": server} if server else {}


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = "<dict>",
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServeFleetConfig:
    """Validate raw config data, applying environment then explicit overrides."""
    merged = _merge(dict(data), _env_overrides(os.environ if environ is None else environ))
    merged = _merge(merged, overrides or {})
    try:
        return ServeFleetConfig.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from error


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServeFleetConfig:
    """Read and validate a YAML config file; errors name the file and the field."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"config file not found: {path}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return parse_config(data, source=str(path), environ=environ, overrides=overrides)
