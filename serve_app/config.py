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

from deployments.canary import RolloutConfig
from deployments.shadow import ShadowConfig
from deployments.sim_model import SimEngineConfig
from serve_app.admission import AdmissionConfig
from serve_app.auth import AuthConfig, is_loopback
from serve_app.errors import ConfigError
from serve_app.limits import LimitsConfig

__all__ = ["ConfigError"]  # re-exported: callers have always caught it from here

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "configs" / "default.yaml"
BUILTIN_PREFIX = "builtin:"

_FROZEN = ConfigDict(extra="forbid", frozen=True)


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
            "CPU build only: start vLLM's engine-core and worker processes on these CPU ids; a cluster that "
            "servefleet up starts keeps Ray, the serving path and HAProxy on the CPUs no engine names. vLLM's "
            "engine core spin-waits on its worker; unpinned, on a small box it starves the replicas that stream "
            "tokens out (stalls of seconds, see README), and anything else on its core slows every step. "
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
    look_back_period_s: float | None = Field(
        default=None, gt=0, description="Window the load signals are averaged over (Serve's default, 30 s, if unset)."
    )
    metrics_interval_s: float | None = Field(
        default=None,
        gt=0,
        description=(
            "How often replicas and handles report load (Serve's default, 10 s, if unset). Deprecated by Serve, "
            "but in Ray 2.60 still the only way to make replicas report faster."
        ),
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        look_back, interval = self.look_back_period_s, self.metrics_interval_s
        if look_back is not None and interval is not None and look_back <= interval:
            raise ValueError("look_back_period_s must be greater than metrics_interval_s")
        return self


class EngineAutoscalingConfig(AutoscalingConfig):
    """Autoscaling for an engine pool: Serve's request count, or that and the engines' own load signals."""

    policy: Literal["ongoing_requests", "engine_signals"] = Field(
        default="ongoing_requests",
        description=(
            "`ongoing_requests`: Serve's default rule (requests per replica vs target_ongoing_requests). "
            "`engine_signals`: the most replicas asked for by any of requests per replica, requests waiting in "
            "the engines' queues, and KV-cache use, as each replica reports them "
            "(deployments/autoscaling_policy.py); falls back to the request count when no replica reports."
        ),
    )
    target_waiting_requests: float = Field(
        default=2, gt=0, description="engine_signals: requests waiting in an engine's queue, per replica, to aim at."
    )
    target_kv_cache_usage: float = Field(
        default=0.8, gt=0, le=1, description="engine_signals: fraction of each engine's KV cache in use to aim at."
    )


class PoolConfig(BaseModel):
    """Replicas of one light pool (preprocess or postprocess): fixed, or autoscaled on requests per replica."""

    model_config = _FROZEN

    replicas: int = Field(default=1, ge=1, description="Fixed number of replicas (ignored with autoscaling).")
    autoscaling: AutoscalingConfig | None = Field(default=None, description="Autoscale the pool instead.")


class PoolsConfig(BaseModel):
    """The light pools around the engines, and where the light deployments may run."""

    model_config = _FROZEN

    route_and_prepare: Literal["ingress", "deployments"] = Field(
        default="ingress",
        description=(
            "Where a request is routed to a variant and preprocessed (chat template, tokens, limits): `ingress`, "
            "inside the ingress replica that received it, with no Ray hop; or `deployments`, in the router and "
            "preprocess deployments, a hop each, so that preprocessing scales in a pool of its own "
            "(`pools.preprocess`). The same code decides either way (README: Performance)."
        ),
    )
    preprocess: PoolConfig = Field(
        default_factory=PoolConfig,
        description="Chat template and tokenizer pool (with `route_and_prepare: deployments`).",
    )
    postprocess: PoolConfig = Field(default_factory=PoolConfig, description="Response shaping pool.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Custom Ray resources every light deployment (ingress, router, preprocess, postprocess) asks for, "
            "e.g. `{head: 0.01}` to keep them on the head node of `servefleet cluster up`."
        ),
    )

    @model_validator(mode="after")
    def _preprocess_pool_needs_its_deployment(self) -> PoolsConfig:
        # Compared with the default, not with the fields given, so that a dumped config loads again.
        if self.route_and_prepare == "ingress" and self.preprocess != PoolConfig():
            raise ValueError(
                "pools.preprocess sizes the preprocess deployment, which runs only with "
                "pools.route_and_prepare: deployments (the default, ingress, preprocesses inside the ingress)"
            )
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
    autoscaling: EngineAutoscalingConfig | None = Field(default=None, description="Autoscale the pool instead.")
    max_ongoing_requests: int = Field(
        default=64, gt=0, description="Requests one replica holds at once; sized to the engine's batch."
    )
    num_cpus: float = Field(default=1, ge=0, description="Ray CPUs reserved for each engine replica.")
    num_gpus: float = Field(default=0, ge=0, description="GPUs for each engine replica (0 on the CPU build).")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Custom Ray resources for each engine replica, e.g. `{engine: 1}` so that replicas land only on the "
            "worker nodes of `servefleet cluster up` (which offer `engine` slots) and spread across them."
        ),
    )
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
    frontend: Literal["auto", "haproxy", "ray-proxy"] = Field(
        default="auto",
        description=(
            "What takes HTTP on host:port. haproxy: Ray Serve's HAProxy mode, which forwards the connection to "
            "the ingress replica's own HTTP server (fewer hops, less CPU; README: Performance); single-node "
            "clusters only. ray-proxy: Ray Serve's Python proxy, which hands each request and every streamed "
            "chunk to the ingress replica over Ray. auto: haproxy on a cluster that servefleet up starts alone, "
            "unless the API is exposed off loopback without auth; ray-proxy otherwise. Fixed when the Ray "
            "cluster starts."
        ),
    )


class StreamConfig(BaseModel):
    model_config = _FROZEN

    coalesce_ms: float = Field(
        default=400,
        ge=0,
        description=(
            "Upper bound of the coalescing window: tokens arriving within it travel as one chunk. The first "
            "visible text is never held."
        ),
    )
    coalesce_per_stream_ms: float = Field(
        default=10,
        ge=0,
        description=(
            "The window grows by this much per stream the replica is serving, so that its chunk rate (what "
            "costs CPU on every hop) stays about constant as concurrency rises: one stream gets near "
            "token-by-token output, 40 or more get coalesce_ms (README: Performance)."
        ),
    )


class GenerationDefaults(BaseModel):
    model_config = _FROZEN

    max_tokens: int = Field(default=256, gt=0, description="Used when a chat request gives no max_tokens.")
    completion_max_tokens: int = Field(
        default=16, gt=0, description="Used when a completion request gives none (OpenAI's own default)."
    )


class DriftConfig(BaseModel):
    """Input drift: prompts compared against a reference window of the first ones (serve_app/drift.py)."""

    model_config = _FROZEN

    reference_size: int = Field(default=1000, ge=1, description="Prompts in the fixed reference window.")
    window_size: int = Field(default=1000, ge=1, description="Prompts in the rolling current window.")
    min_current: int = Field(default=200, ge=1, description="Prompts the current window needs before scoring.")
    report_every: int = Field(default=50, ge=1, description="Update the drift gauges every this many prompts.")


class FeedbackConfig(BaseModel):
    model_config = _FROZEN

    path: str | None = Field(
        default=None,
        description="SQLite file that POST /v1/feedback writes (default: <cache>/feedback/feedback.sqlite3).",
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
    pools: PoolsConfig = Field(default_factory=PoolsConfig, description="Preprocess/postprocess pools, placement.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys; off by default (loopback only).")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Per-request size and time limits.")
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="Refuse new work (429) while an engine pool is saturated."
    )
    shadow: ShadowConfig | None = Field(
        default=None, description="Mirror a fraction of requests to a variant, compare, never return its output."
    )
    rollout: RolloutConfig | None = Field(
        default=None, description="Canary rollout of a candidate against a baseline, with automatic rollback."
    )
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Input drift monitoring per variant.")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="Where user ratings are kept.")
    log_text: bool = Field(
        default=False, description="Put prompt and output text in the JSON logs (off: they may hold user data)."
    )

    def _exposed_without_auth(self) -> bool:
        return not self.auth.enabled and not is_loopback(self.server.host)

    def engine_cpus(self) -> set[int]:
        """Every CPU an engine is pinned to (``engine.cpu_affinity``); the cluster keeps its own processes off them."""
        return {cpu for v in self.variants for cpu in (v.engine.cpu_affinity or [])}

    def frontends(self) -> tuple[str, ...]:
        """The frontends this config may run behind, the one to start a cluster with first. ``auto`` prefers
        HAProxy, except with the API exposed off loopback without auth: behind HAProxy every client reaches
        the ingress from loopback, and admin routes could not refuse remote callers."""
        if self.server.frontend != "auto":
            return (self.server.frontend,)
        return ("ray-proxy",) if self._exposed_without_auth() else ("haproxy", "ray-proxy")

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
        for section, name in (
            ("shadow.variant", self.shadow and self.shadow.variant),
            ("rollout.baseline", self.rollout and self.rollout.baseline),
            ("rollout.candidate", self.rollout and self.rollout.candidate),
        ):
            if name and name not in names:
                raise ValueError(f"{section} names unknown variant {name!r} (known: {', '.join(names)})")
        if self.server.frontend == "haproxy" and self._exposed_without_auth():
            # Behind HAProxy every client reaches the ingress from HAProxy's own (loopback) address, so the
            # loopback-only rule for admin routes cannot tell a remote client from a local one.
            raise ValueError(
                "server.frontend haproxy on a non-loopback server.host needs auth.enabled: true (admin routes "
                "then require an admin key)"
            )
        if self.limits.request_timeout_s > self.server.request_timeout_s:
            raise ValueError(
                f"limits.request_timeout_s ({self.limits.request_timeout_s:g}) must not exceed "
                f"server.request_timeout_s ({self.server.request_timeout_s:g}), or the proxy cuts requests first"
            )
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
