"""The app's Prometheus metrics, defined in one place, and small recorders that the deployments call.

Metrics go through ``ray.util.metrics``: every Ray process reports them to its node's metrics agent, which
serves them to Prometheus on Ray's metrics export port. How a name here becomes a Prometheus name (checked
against Ray's own exporter by ``tests/unit/test_metrics.py``):

- Ray prefixes every name with ``ray_``;
- a counter named ``x`` is exported as ``ray_x_total`` (so names here carry no ``_total``);
- a histogram ``x`` as ``ray_x_bucket`` / ``ray_x_count`` / ``ray_x_sum``; a gauge ``x`` as ``ray_x``.

Ray rebuilds histograms in its agent from bucket counts, so a histogram's ``_sum`` is approximate (bucket
midpoints): quantiles from ``_bucket`` are exact to the bucket, means from ``_sum / _count`` are not. Ray also
keeps the first bucket bounds registered for a name on a node, so bounds here never vary at run time.

Nothing Ray-side is created at import: the metric objects are made on first use in a process (a replica), so
importing this module needs no Ray connection and unit tests swap in a recording ``MetricSink``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from deployments.shadow import ShadowComparison
    from serve_app.config import ServeFleetConfig
    from serve_app.drift import DriftScores

logger = logging.getLogger(__name__)

RAY_PREFIX = "ray_"

# Labels whose value is not known (a request refused before routing has no variant) read as this.
NONE_LABEL = "none"
# A label value outside its allowed set is recorded as this, so a bug can never blow up cardinality.
OTHER_LABEL = "other"

# 5 ms .. 60 s, about 1.5x apart: TTFT and end-to-end latency from a CPU toy model to a long GPU generation.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
)  # fmt: skip
# Inter-token latency sits well under TTFT (5 ms at one stream on the tiny model), so it starts at 1 ms.
ITL_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
)  # fmt: skip
# |shadow - primary| output length in tokens; 0 (same length) falls in the first bucket.
LENGTH_DIFF_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# shadow latency / primary latency. A ratio rather than a signed difference because Ray histogram bounds must
# be positive, and because it reads the same for a 10-token and a 1,000-token answer.
LATENCY_RATIO_BUCKETS: tuple[float, ...] = (
    0.25, 0.5, 0.67, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 4.0,
)  # fmt: skip

VARIANT_TAGS = ("variant", "model")


class MetricKind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric as Ray knows it (``name``) and as Prometheus shows it (``exported_names``)."""

    name: str
    kind: MetricKind
    description: str
    tag_keys: tuple[str, ...] = VARIANT_TAGS
    boundaries: tuple[float, ...] = ()

    @property
    def family(self) -> str:
        """The Prometheus metric family name."""
        base = RAY_PREFIX + self.name
        return base + "_total" if self.kind is MetricKind.COUNTER else base

    @property
    def exported_names(self) -> tuple[str, ...]:
        """Every sample name this metric shows up under in a scrape."""
        if self.kind is MetricKind.HISTOGRAM:
            return tuple(f"{self.family}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
        return (self.family,)


def _counter(name: str, description: str, *extra_tags: str) -> MetricSpec:
    return MetricSpec(name, MetricKind.COUNTER, description, VARIANT_TAGS + extra_tags)


def _gauge(name: str, description: str, *extra_tags: str) -> MetricSpec:
    return MetricSpec(name, MetricKind.GAUGE, description, VARIANT_TAGS + extra_tags)


def _histogram(name: str, description: str, boundaries: tuple[float, ...], *extra_tags: str) -> MetricSpec:
    return MetricSpec(name, MetricKind.HISTOGRAM, description, VARIANT_TAGS + extra_tags, boundaries)


REQUESTS = _counter(
    "servefleet_requests",
    "Requests finished, by outcome status code (a stream that fails after its headers went out counts with "
    "the status of its error) and error type ('none' on success).",
    "status",
    "error_type",
)
TTFT = _histogram(
    "servefleet_time_to_first_token_seconds",
    "Streaming requests: time from arrival at the ingress to the first visible text.",
    LATENCY_BUCKETS_S,
)
ITL = _histogram(
    "servefleet_inter_token_latency_seconds",
    "Streaming requests: mean time between output tokens, (last text - first text) / (tokens - 1), one "
    "observation per request, as the load tests measure it.",
    ITL_BUCKETS_S,
)
E2E = _histogram(
    "servefleet_e2e_request_latency_seconds",
    "Time from arrival at the ingress to the last byte of the answer.",
    LATENCY_BUCKETS_S,
)
PROMPT_TOKENS = _counter("servefleet_prompt_tokens", "Prompt tokens of finished requests.")
GENERATION_TOKENS = _counter("servefleet_generation_tokens", "Output tokens of finished requests.")
ONGOING = _gauge("servefleet_ongoing_requests", "Requests in flight at one ingress replica, per variant.")
# Set from inside each engine replica, read from the engine every second (``RaySink.track``), so the series
# are continuous; vLLM's own gauges of the same things vanish between Ray's report intervals when idle.
ENGINE_WAITING = _gauge(
    "servefleet_engine_requests_waiting", "Requests queued in one engine replica, not yet scheduled.", "replica"
)
ENGINE_RUNNING = _gauge("servefleet_engine_requests_running", "Requests in one engine replica's batch.", "replica")
ENGINE_KV_CACHE = _gauge("servefleet_engine_kv_cache_usage", "KV-cache use of one engine replica, 1 = full.", "replica")
ROUTING = _counter(
    "servefleet_routing_decisions", "Router decisions, by variant and the rule that picked it.", "reason"
)
VARIANT_WEIGHT = _gauge("servefleet_variant_weight_percent", "Configured routing weight of each variant, in %.")
SHADOW_COMPARISONS = _counter(
    "servefleet_shadow_comparisons",
    "Shadow copies compared with their primary: outcome is match, mismatch (exact text) or shadow_error. "
    "variant/model are the shadow's, primary the variant that answered the client.",
    "primary",
    "outcome",
)
SHADOW_LENGTH_DIFF = _histogram(
    "servefleet_shadow_length_diff_tokens",
    "|shadow - primary| output length in tokens.",
    LENGTH_DIFF_BUCKETS,
    "primary",
)
SHADOW_LATENCY_RATIO = _histogram(
    "servefleet_shadow_latency_ratio",
    "Shadow end-to-end latency divided by the primary's (above 1: the shadow is slower).",
    LATENCY_RATIO_BUCKETS,
    "primary",
)
DRIFT_PSI = _gauge(
    "servefleet_input_drift_psi",
    "Population stability index of the inputs, current window against reference (0.1 moderate, 0.25 large).",
    "feature",
)
FEEDBACK_RESPONSES = _counter("servefleet_feedback_responses", "Feedback ratings received (new ones only).")
FEEDBACK_SCORE = _counter(
    "servefleet_feedback_score", "Sum of feedback scores (1..5); divide by responses for the mean."
)

APP_METRICS: tuple[MetricSpec, ...] = (
    REQUESTS,
    TTFT,
    ITL,
    E2E,
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    ONGOING,
    ENGINE_WAITING,
    ENGINE_RUNNING,
    ENGINE_KV_CACHE,
    ROUTING,
    VARIANT_WEIGHT,
    SHADOW_COMPARISONS,
    SHADOW_LENGTH_DIFF,
    SHADOW_LATENCY_RATIO,
    DRIFT_PSI,
    FEEDBACK_RESPONSES,
    FEEDBACK_SCORE,
)


def _vllm(source_name: str, kind: MetricKind, description: str, *extra_tags: str) -> MetricSpec:
    """A metric the engine's vLLM exports through ``RayPrometheusStatLogger``, which turns ``:`` into ``_``.

    Labelled ``model_name`` (the served model name, which ``engine.py`` sets to the variant name), ``engine``
    and ``ReplicaId``. ``source_name`` is vLLM's own name, kept so a test can find it in vLLM's sources.
    """
    tags = ("model_name", "engine", *extra_tags, "ReplicaId")
    return MetricSpec(source_name.replace(":", "_"), kind, description, tags)


# Listed, not created: vLLM creates these in each engine replica when the engine is built with
# ``stat_loggers=[RayPrometheusStatLogger]``. Kept here so the dashboard test knows they exist.
VLLM_ENGINE_METRICS: tuple[MetricSpec, ...] = (
    _vllm("vllm:num_requests_running", MetricKind.GAUGE, "Requests in the engine's running batch."),
    _vllm("vllm:num_requests_waiting", MetricKind.GAUGE, "Requests queued in the engine, not yet scheduled."),
    _vllm("vllm:kv_cache_usage_perc", MetricKind.GAUGE, "KV-cache use, 1 = full."),
    _vllm("vllm:num_preemptions", MetricKind.COUNTER, "Preempted sequences (KV cache ran out)."),
    _vllm("vllm:prompt_tokens", MetricKind.COUNTER, "Prefill tokens processed."),
    _vllm("vllm:generation_tokens", MetricKind.COUNTER, "Generation tokens processed."),
    _vllm("vllm:request_success", MetricKind.COUNTER, "Requests the engine finished.", "finished_reason"),
    _vllm("vllm:prefix_cache_queries", MetricKind.COUNTER, "Prefix-cache lookups, in tokens."),
    _vllm("vllm:prefix_cache_hits", MetricKind.COUNTER, "Prefix-cache hits, in tokens."),
    _vllm("vllm:time_to_first_token_seconds", MetricKind.HISTOGRAM, "Engine-side TTFT."),
    _vllm("vllm:inter_token_latency_seconds", MetricKind.HISTOGRAM, "Engine-side inter-token latency."),
    _vllm("vllm:e2e_request_latency_seconds", MetricKind.HISTOGRAM, "Engine-side request latency."),
    _vllm("vllm:request_queue_time_seconds", MetricKind.HISTOGRAM, "Time requests waited in the engine queue."),
)


def exported_names(specs: tuple[MetricSpec, ...]) -> frozenset[str]:
    return frozenset(name for spec in specs for name in spec.exported_names)


APP_METRIC_NAMES: frozenset[str] = exported_names(APP_METRICS)
VLLM_ENGINE_METRIC_NAMES: frozenset[str] = exported_names(VLLM_ENGINE_METRICS)
# Every sample name a Prometheus scrape of the cluster holds for this app: what dashboards may query.
EXPORTED_METRIC_NAMES: frozenset[str] = APP_METRIC_NAMES | VLLM_ENGINE_METRIC_NAMES
# Sample name -> its metric, e.g. to check the labels a query uses.
METRIC_BY_EXPORTED_NAME: dict[str, MetricSpec] = {
    name: spec for spec in APP_METRICS + VLLM_ENGINE_METRICS for name in spec.exported_names
}


# ---- where values go ----


class MetricSink(Protocol):
    """Receives every recorded value; ``RaySink`` in a replica, a recording fake in tests."""

    def inc(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None: ...

    def observe(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None: ...

    def set(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None: ...

    def track(self, spec: MetricSpec, read: Callable[[], float], tags: Mapping[str, str]) -> None:
        """Keep gauge ``spec`` at ``read()``, read again at every export (like prometheus_client's
        ``set_function``)."""


GAUGE_REFRESH_S = 1.0


class RaySink:
    """Records into ``ray.util.metrics`` objects, each made on first use and kept for the process's life.

    A failure to record is logged once per metric and otherwise ignored: metrics must never fail a request.
    ``strict=True`` raises instead, for tests.
    """

    def __init__(self, *, strict: bool = False, gauge_refresh_s: float = GAUGE_REFRESH_S) -> None:
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._strict = strict
        self._warned: set[str] = set()
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[MetricSpec, float]] = {}
        self._tracked: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[MetricSpec, Callable[[], float]]] = {}
        self._gauge_refresh_s = gauge_refresh_s
        self._refresher: threading.Thread | None = None

    def _metric(self, spec: MetricSpec) -> Any:
        metric = self._metrics.get(spec.name)
        if metric is None:
            with self._lock:
                metric = self._metrics.get(spec.name)
                if metric is None:
                    metric = self._metrics[spec.name] = _make_ray_metric(spec)
        return metric

    def _record(self, spec: MetricSpec, method: str, value: float, tags: Mapping[str, str]) -> None:
        try:
            # float(): Ray type-checks for int/float, which a numpy integer is not.
            getattr(self._metric(spec), method)(float(value), tags=dict(tags))
        except Exception:
            if self._strict:
                raise
            if spec.name not in self._warned:
                self._warned.add(spec.name)
                logger.warning("cannot record metric %s (tags %s)", spec.name, dict(tags), exc_info=True)

    def inc(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        if value > 0:  # Ray refuses increments <= 0; a zero increment changes nothing anyway.
            self._record(spec, "inc", value, tags)

    def observe(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        self._record(spec, "observe", value, tags)

    def set(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        self._record(spec, "set", value, tags)
        with self._lock:
            self._gauges[(spec.name, tuple(sorted(tags.items())))] = (spec, float(value))
            self._start_refresher()

    def track(self, spec: MetricSpec, read: Callable[[], float], tags: Mapping[str, str]) -> None:
        self._record(spec, "set", read(), tags)
        with self._lock:
            self._tracked[(spec.name, tuple(sorted(tags.items())))] = (spec, read)
            self._start_refresher()

    def _start_refresher(self) -> None:
        if self._refresher is None:
            self._refresher = threading.Thread(target=self._refresh_gauges, name="gauge-refresh", daemon=True)
            self._refresher.start()

    def _refresh_gauges(self) -> None:
        # Ray 2.60 exports a gauge value only in the report interval it was set in, then drops the series
        # (measured: gone from the agent's /metrics two seconds after one set). A gauge that changes rarely
        # (weights, ongoing requests at rest, drift) would read as missing; so every value is set again.
        while True:
            time.sleep(self._gauge_refresh_s)
            with self._lock:
                current = list(self._gauges.items())
                tracked = list(self._tracked.items())
            for (_, tags), (spec, value) in current:
                self._record(spec, "set", value, dict(tags))
            for (_, tags), (spec, read) in tracked:
                try:
                    value = read()
                except Exception:  # a reader that fails skips this export; metrics never fail the replica
                    logger.debug("cannot read gauge %s", spec.name, exc_info=True)
                    continue
                self._record(spec, "set", value, dict(tags))


def _make_ray_metric(spec: MetricSpec) -> Any:
    from ray.util import metrics

    if spec.kind is MetricKind.COUNTER:
        return metrics.Counter(spec.name, spec.description, tag_keys=spec.tag_keys)
    if spec.kind is MetricKind.GAUGE:
        return metrics.Gauge(spec.name, spec.description, tag_keys=spec.tag_keys)
    return metrics.Histogram(spec.name, spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tag_keys)


_default_sink: RaySink | None = None
_default_lock = threading.Lock()


def default_sink() -> RaySink:
    """One ``RaySink`` per process, so each Ray metric object exists once however many recorders there are."""
    global _default_sink
    with _default_lock:
        if _default_sink is None:
            _default_sink = RaySink()
        return _default_sink


# ---- recorders: what the deployments call ----


class _Recorder:
    """Fills the ``variant``/``model`` labels: ``model`` is the variant's configured checkpoint (from the
    config, so bounded), which tells a re-pointed variant's series apart."""

    def __init__(self, models: Mapping[str, str], sink: MetricSink | None = None) -> None:
        self._models = dict(models)
        self._sink: MetricSink = sink if sink is not None else default_sink()

    def _tags(self, variant: str | None, **extra: str) -> dict[str, str]:
        if variant is None:
            return {"variant": NONE_LABEL, "model": NONE_LABEL, **extra}
        if variant not in self._models:
            return {"variant": OTHER_LABEL, "model": OTHER_LABEL, **extra}
        return {"variant": variant, "model": self._models[variant], **extra}


def models_of(config: ServeFleetConfig) -> dict[str, str]:
    """``{variant name: model}`` from a ``ServeFleetConfig``, the mapping every recorder takes."""
    return {variant.name: variant.model for variant in config.variants}


@dataclass(frozen=True, slots=True)
class RequestTiming:
    """What one request's clock says, in seconds; ``None`` where it does not apply (no stream, one token)."""

    e2e_s: float
    ttft_s: float | None = None
    itl_s: float | None = None
    output_tokens: int = 0


class RequestTimer:
    """Times one request from the chunks the client receives, with the load tests' definitions.

    Pure: the caller passes the clock readings (``time.monotonic()``), so a test passes made-up ones.
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self._first_text: float | None = None
        self._last_text: float | None = None
        self._tokens = 0

    def on_chunk(self, now: float, num_tokens: int, has_text: bool) -> None:
        self._tokens += num_tokens
        if has_text:
            if self._first_text is None:
                self._first_text = now
            self._last_text = now

    def finish(self, now: float, *, streamed: bool = True, output_tokens: int | None = None) -> RequestTiming:
        """``streamed=False`` for a non-streaming answer: its client sees no first token, only the whole."""
        tokens = self._tokens if output_tokens is None else output_tokens
        if not streamed or self._first_text is None or self._last_text is None:
            return RequestTiming(e2e_s=now - self.started, output_tokens=tokens)
        itl = (self._last_text - self._first_text) / (tokens - 1) if tokens > 1 else None
        return RequestTiming(
            e2e_s=now - self.started, ttft_s=self._first_text - self.started, itl_s=itl, output_tokens=tokens
        )


class RequestMetrics(_Recorder):
    """The ingress's request metrics. One per ingress replica (it owns that replica's ongoing counts)."""

    def __init__(self, models: Mapping[str, str], sink: MetricSink | None = None) -> None:
        super().__init__(models, sink)
        self._ongoing: dict[str, int] = {}

    def request_started(self, variant: str) -> None:
        """Call once the variant is known; pair with ``request_ended`` in a ``finally``."""
        self._set_ongoing(variant, +1)

    def request_ended(self, variant: str) -> None:
        self._set_ongoing(variant, -1)

    def _set_ongoing(self, variant: str, delta: int) -> None:
        tags = self._tags(variant)
        key = tags["variant"]
        self._ongoing[key] = max(0, self._ongoing.get(key, 0) + delta)
        self._sink.set(ONGOING, self._ongoing[key], tags)

    def observe_finished(
        self,
        variant: str | None,
        status: int,
        timing: RequestTiming,
        *,
        prompt_tokens: int = 0,
        error_type: str | None = None,
    ) -> None:
        """Record one finished request, successful or not.

        ``variant`` is None when the request was refused before routing (a 400 body, a 404 model).
        ``error_type`` must come from a bounded set (``ServeFleetError.code or .error_type``,
        ``"client_disconnected"``), never from free text.
        """
        tags = self._tags(variant)
        self._sink.inc(REQUESTS, 1, {**tags, "status": str(status), "error_type": error_type or NONE_LABEL})
        self._sink.observe(E2E, timing.e2e_s, tags)
        if timing.ttft_s is not None:
            self._sink.observe(TTFT, timing.ttft_s, tags)
        if timing.itl_s is not None:
            self._sink.observe(ITL, timing.itl_s, tags)
        self._sink.inc(PROMPT_TOKENS, prompt_tokens, tags)
        self._sink.inc(GENERATION_TOKENS, timing.output_tokens, tags)


ROUTING_REASONS = frozenset({"override", "model", "sticky", "weighted", "canary"})


def replica_label() -> str:
    """This Serve replica's id, for per-replica series; ``local`` outside Serve (tests, scripts)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # not inside a replica: Serve raises RayServeException
        return "local"


class EngineLoadMetrics(_Recorder):
    def track(self, variant: str, replica: str, read: Callable[[], Mapping[str, float]]) -> None:
        """Export one engine replica's load as it is at each export. ``read`` returns the engine's signals
        (``EngineStats.extra``: num_requests_waiting, num_requests_running, kv_cache_usage_perc)."""
        tags = self._tags(variant, replica=replica)
        for spec, key in (
            (ENGINE_WAITING, "num_requests_waiting"),
            (ENGINE_RUNNING, "num_requests_running"),
            (ENGINE_KV_CACHE, "kv_cache_usage_perc"),
        ):
            self._sink.track(spec, lambda key=key: float(read().get(key, 0.0)), tags)


class RoutingMetrics(_Recorder):
    def observe_decision(self, variant: str, reason: str) -> None:
        """``reason`` is ``RouteDecision.reason`` (override/model/sticky/weighted), or ``canary``."""
        label = reason if reason in ROUTING_REASONS else OTHER_LABEL
        self._sink.inc(ROUTING, 1, self._tags(variant, reason=label))

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Call at start and after every weight change, so the dashboard shows configured beside observed."""
        for variant, weight in weights.items():
            self._sink.set(VARIANT_WEIGHT, float(weight), self._tags(variant))


class ShadowMetrics(_Recorder):
    def observe_comparison(self, primary: str, shadow: str, comparison: ShadowComparison) -> None:
        primary_label = self._tags(primary)["variant"]
        tags = self._tags(shadow, primary=primary_label)
        outcome = "match" if comparison.exact_match else "mismatch"
        self._sink.inc(SHADOW_COMPARISONS, 1, {**tags, "outcome": outcome})
        self._sink.observe(SHADOW_LENGTH_DIFF, abs(comparison.length_delta_tokens), tags)
        if comparison.latency_ratio is not None:
            self._sink.observe(SHADOW_LATENCY_RATIO, comparison.latency_ratio, tags)

    def observe_shadow_error(self, primary: str, shadow: str) -> None:
        tags = self._tags(shadow, primary=self._tags(primary)["variant"])
        self._sink.inc(SHADOW_COMPARISONS, 1, {**tags, "outcome": "shadow_error"})


DRIFT_FEATURES = frozenset({"prompt_length", "token_ids"})


class DriftMetrics(_Recorder):
    def set_psi(self, variant: str, feature: str, psi: float) -> None:
        label = feature if feature in DRIFT_FEATURES else OTHER_LABEL
        self._sink.set(DRIFT_PSI, psi, self._tags(variant, feature=label))

    def set_scores(self, variant: str, scores: DriftScores) -> None:
        self.set_psi(variant, "prompt_length", scores.prompt_length)
        self.set_psi(variant, "token_ids", scores.token_ids)


class FeedbackMetrics(_Recorder):
    def observe_feedback(self, variant: str, score: float) -> None:
        """Call for new ratings only (``FeedbackStore.record`` returns True), so a re-rating is not counted
        twice; scores are 1..5, so the sum counter only ever grows."""
        tags = self._tags(variant)
        self._sink.inc(FEEDBACK_RESPONSES, 1, tags)
        self._sink.inc(FEEDBACK_SCORE, score, tags)
