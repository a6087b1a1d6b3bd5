import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from deployments.shadow import ShadowComparison
from serve_app import metrics
from serve_app.config import parse_config
from serve_app.drift import DriftScores
from serve_app.metrics import (
    APP_METRICS,
    EXPORTED_METRIC_NAMES,
    METRIC_BY_EXPORTED_NAME,
    VLLM_ENGINE_METRICS,
    DriftMetrics,
    EngineLoadMetrics,
    FeedbackMetrics,
    MetricKind,
    MetricSpec,
    RaySink,
    RequestMetrics,
    RequestTimer,
    RequestTiming,
    RoutingMetrics,
    ShadowMetrics,
    models_of,
)

MODELS = {"v1": "builtin:tiny-v1", "v2": "/models/v2"}
ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter that imports this checkout, wherever pytest was started from."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT, env=env
    )


@dataclass
class RecordingSink:
    """Stand-in for RaySink: keeps every call as (method, metric name, value, tags)."""

    calls: list[tuple[str, str, float, dict[str, str]]] = field(default_factory=list)

    def inc(self, spec, value, tags):
        self.calls.append(("inc", spec.name, value, dict(tags)))

    def observe(self, spec, value, tags):
        self.calls.append(("observe", spec.name, value, dict(tags)))

    def set(self, spec, value, tags):
        self.calls.append(("set", spec.name, value, dict(tags)))

    def track(self, spec, read, tags):
        self.calls.append(("track", spec.name, read(), dict(tags)))

    def of(self, spec: MetricSpec):
        return [(method, value, tags) for method, name, value, tags in self.calls if name == spec.name]


# ---- names ----


def test_exported_names_follow_rays_rules():
    counter = MetricSpec("servefleet_x", MetricKind.COUNTER, "")
    gauge = MetricSpec("servefleet_g", MetricKind.GAUGE, "")
    histogram = MetricSpec("servefleet_h_seconds", MetricKind.HISTOGRAM, "", boundaries=(1.0,))
    assert counter.exported_names == ("ray_servefleet_x_total",)
    assert gauge.exported_names == ("ray_servefleet_g",)
    assert histogram.exported_names == (
        "ray_servefleet_h_seconds_bucket",
        "ray_servefleet_h_seconds_count",
        "ray_servefleet_h_seconds_sum",
    )


def test_app_metric_names_are_servefleet_prefixed_unique_and_unit_suffixed():
    names = [spec.name for spec in APP_METRICS]
    assert len(names) == len(set(names))
    assert all(name.startswith("servefleet_") and ":" not in name for name in names)
    # Counters get _total from the exporter; a name ending in it would read `_total_total` nowhere but confuse.
    assert not any(s.name.endswith("_total") for s in APP_METRICS)
    for spec in APP_METRICS:
        if spec.kind is MetricKind.HISTOGRAM:
            assert spec.boundaries and list(spec.boundaries) == sorted(set(spec.boundaries))
            assert all(b > 0 for b in spec.boundaries)  # Ray refuses bounds <= 0
        assert spec.tag_keys[:2] == ("variant", "model")


def test_latency_buckets_span_5ms_to_60s():
    assert metrics.LATENCY_BUCKETS_S[0] == 0.005 and metrics.LATENCY_BUCKETS_S[-1] == 60.0
    assert metrics.TTFT.boundaries == metrics.E2E.boundaries == metrics.LATENCY_BUCKETS_S


def test_vllm_names_are_sanitized_like_the_ray_stat_logger():
    names = {spec.name for spec in VLLM_ENGINE_METRICS}
    assert "vllm_num_requests_waiting" in names and "vllm_kv_cache_usage_perc" in names
    assert "ray_vllm_num_requests_waiting" in EXPORTED_METRIC_NAMES
    assert "ray_vllm_prompt_tokens_total" in EXPORTED_METRIC_NAMES
    assert METRIC_BY_EXPORTED_NAME["ray_vllm_time_to_first_token_seconds_bucket"].name == (
        "vllm_time_to_first_token_seconds"
    )


def test_listed_vllm_metrics_exist_in_the_installed_vllm():
    """vLLM renames metrics between releases; this fails on an upgrade that drops one the dashboard uses.
    Reads vLLM's sources rather than importing it (an import costs seconds and pulls in torch)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vllm is not installed")
    root = Path(spec.origin).parent / "v1" / "metrics"
    source = (root / "loggers.py").read_text()
    assert "RayPrometheusStatLogger" in (root / "ray_wrappers.py").read_text()
    for metric in VLLM_ENGINE_METRICS:
        vllm_name = "vllm:" + metric.name.removeprefix("vllm_")
        assert f'name="{vllm_name}"' in source, vllm_name


_EXPORT_SCRIPT = """
import json, sys
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from ray._private.telemetry.open_telemetry_metric_recorder import OpenTelemetryMetricRecorder
from serve_app.metrics import APP_METRICS, VLLM_ENGINE_METRICS, MetricKind

recorder = OpenTelemetryMetricRecorder(gauge_metric_ttl_seconds=3600)
for spec in APP_METRICS + VLLM_ENGINE_METRICS:
    if spec.kind is MetricKind.COUNTER:
        recorder.register_counter_metric(spec.name, spec.description)
    elif spec.kind is MetricKind.GAUGE:
        recorder.register_gauge_metric(spec.name, spec.description)
    else:
        # vLLM's histograms are listed without their bounds; any bounds show the same names.
        recorder.register_histogram_metric(spec.name, spec.description, list(spec.boundaries) or [1.0])
    recorder.set_metric_value(spec.name, {key: "x" for key in spec.tag_keys}, 1.0)
names = sorted(
    sample.name
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode())
    for sample in family.samples
    if sample.name.startswith(("ray_servefleet_", "ray_vllm_"))
)
json.dump(names, sys.stdout)
"""


def test_exported_names_match_what_rays_metrics_agent_serves():
    """Feeds every metric through the recorder Ray's metrics agent uses and reads the Prometheus text it
    serves, in a separate process because it installs process-wide OpenTelemetry and Prometheus state."""
    result = run_python(_EXPORT_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == EXPORTED_METRIC_NAMES


def test_importing_the_module_does_not_import_ray():
    result = run_python("import sys, serve_app.metrics; print(sorted(m for m in sys.modules if m.startswith('ray')))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---- the Ray sink, with real ray.util.metrics objects (no cluster needed to create and record) ----


def test_ray_sink_records_every_recorder_call_with_complete_tags():
    sink = RaySink(strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an invalid name would only warn, and its metric be dropped
        requests = RequestMetrics(MODELS, sink)
        requests.request_started("v1")
        requests.observe_finished("v1", 200, RequestTiming(1.0, 0.1, 0.01, 20), prompt_tokens=np.int64(7))
        requests.observe_finished(None, 404, RequestTiming(0.001), error_type="model_not_found")
        requests.request_ended("v1")
        RoutingMetrics(MODELS, sink).observe_decision("v2", "sticky")
        RoutingMetrics(MODELS, sink).set_weights({"v1": 90, "v2": 10})
        shadow = ShadowMetrics(MODELS, sink)
        shadow.observe_comparison("v1", "v2", ShadowComparison(False, -3, 0.2, 1.2, True))
        shadow.observe_shadow_error("v1", "v2")
        DriftMetrics(MODELS, sink).set_scores("v1", DriftScores(0.3, 0.01, 100, 100))
        FeedbackMetrics(MODELS, sink).observe_feedback("v2", 4.5)
        EngineLoadMetrics(MODELS, sink).track("v1", "r1", lambda: {"num_requests_waiting": 2.0})
    assert sink._metric(metrics.REQUESTS) is sink._metric(metrics.REQUESTS)
    made = {name: metric.info for name, metric in sink._metrics.items()}
    for spec in APP_METRICS:
        assert made[spec.name]["tag_keys"] == spec.tag_keys
    assert made[metrics.TTFT.name]["boundaries"] == list(metrics.LATENCY_BUCKETS_S)


def test_ray_metrics_refuse_missing_tags_so_the_strict_sink_test_above_means_something():
    with pytest.raises(ValueError, match="Missing value for tag key"):
        RaySink(strict=True).inc(metrics.REQUESTS, 1, {"variant": "v1", "model": "m"})


def test_a_failing_record_is_logged_once_and_never_raised(caplog):
    sink = RaySink()
    with caplog.at_level("WARNING", logger="serve_app.metrics"):
        sink.inc(metrics.REQUESTS, 1, {"variant": "v1", "model": "m"})
        sink.inc(metrics.REQUESTS, 1, {"variant": "v1", "model": "m"})
    warnings_logged = [r for r in caplog.records if "servefleet_requests" in r.getMessage()]
    assert len(warnings_logged) == 1


# ---- recorders ----


def test_observe_finished_records_outcome_latencies_and_tokens():
    sink = RecordingSink()
    RequestMetrics(MODELS, sink).observe_finished(
        "v1", 200, RequestTiming(e2e_s=2.0, ttft_s=0.25, itl_s=0.02, output_tokens=40), prompt_tokens=12
    )
    tags = {"variant": "v1", "model": "builtin:tiny-v1"}
    assert sink.of(metrics.REQUESTS) == [("inc", 1, {**tags, "status": "200", "error_type": "none"})]
    assert sink.of(metrics.E2E) == [("observe", 2.0, tags)]
    assert sink.of(metrics.TTFT) == [("observe", 0.25, tags)]
    assert sink.of(metrics.ITL) == [("observe", 0.02, tags)]
    assert sink.of(metrics.PROMPT_TOKENS) == [("inc", 12, tags)]
    assert sink.of(metrics.GENERATION_TOKENS) == [("inc", 40, tags)]


def test_a_request_refused_before_routing_has_no_variant_and_no_stream_timings():
    sink = RecordingSink()
    RequestMetrics(MODELS, sink).observe_finished(None, 404, RequestTiming(0.003), error_type="model_not_found")
    [(_, _, tags)] = sink.of(metrics.REQUESTS)
    assert tags == {"variant": "none", "model": "none", "status": "404", "error_type": "model_not_found"}
    assert sink.of(metrics.TTFT) == [] and sink.of(metrics.ITL) == []
    assert len(sink.of(metrics.E2E)) == 1


def test_unknown_variant_names_are_clamped_to_keep_cardinality_bounded():
    sink = RecordingSink()
    RequestMetrics(MODELS, sink).observe_finished("made-up", 200, RequestTiming(1.0))
    RoutingMetrics(MODELS, sink).observe_decision("v1", "a-new-reason")
    assert sink.of(metrics.E2E)[0][2] == {"variant": "other", "model": "other"}
    assert sink.of(metrics.ROUTING)[0][2]["reason"] == "other"


def test_ongoing_gauge_goes_up_and_down_per_variant_and_never_below_zero():
    sink = RecordingSink()
    recorder = RequestMetrics(MODELS, sink)
    recorder.request_started("v1")
    recorder.request_started("v1")
    recorder.request_started("v2")
    recorder.request_ended("v1")
    recorder.request_ended("v2")
    recorder.request_ended("v2")  # an unpaired end must not report -1
    values = [(tags["variant"], value) for _, value, tags in sink.of(metrics.ONGOING)]
    assert values == [("v1", 1), ("v1", 2), ("v2", 1), ("v1", 1), ("v2", 0), ("v2", 0)]


def test_routing_metrics_count_decisions_and_publish_weights():
    sink = RecordingSink()
    recorder = RoutingMetrics(MODELS, sink)
    recorder.observe_decision("v2", "canary")
    recorder.set_weights({"v1": 75, "v2": 25})
    assert sink.of(metrics.ROUTING) == [("inc", 1, {"variant": "v2", "model": "/models/v2", "reason": "canary"})]
    assert [(tags["variant"], value) for _, value, tags in sink.of(metrics.VARIANT_WEIGHT)] == [
        ("v1", 75.0),
        ("v2", 25.0),
    ]


def test_shadow_metrics_label_the_shadow_and_its_primary():
    sink = RecordingSink()
    recorder = ShadowMetrics(MODELS, sink)
    recorder.observe_comparison("v1", "v2", ShadowComparison(True, -4, -0.1, 0.9, True))
    recorder.observe_comparison("v1", "v2", ShadowComparison(False, 2, 0.1, None, False))
    recorder.observe_shadow_error("v1", "v2")
    outcomes = [tags["outcome"] for _, _, tags in sink.of(metrics.SHADOW_COMPARISONS)]
    assert outcomes == ["match", "mismatch", "shadow_error"]
    assert all(tags["variant"] == "v2" and tags["primary"] == "v1" for *_, tags in sink.calls)
    assert [value for _, value, _ in sink.of(metrics.SHADOW_LENGTH_DIFF)] == [4, 2]  # absolute
    assert [value for _, value, _ in sink.of(metrics.SHADOW_LATENCY_RATIO)] == [0.9]  # None skipped


def test_drift_and_feedback_metrics():
    sink = RecordingSink()
    scores = DriftScores(prompt_length=0.4, token_ids=0.02, reference_size=1, current_size=1)
    DriftMetrics(MODELS, sink).set_scores("v1", scores)
    FeedbackMetrics(MODELS, sink).observe_feedback("v2", 4.0)
    assert {tags["feature"]: value for _, value, tags in sink.of(metrics.DRIFT_PSI)} == {
        "prompt_length": 0.4,
        "token_ids": 0.02,
    }
    assert sink.of(metrics.FEEDBACK_RESPONSES)[0][1] == 1
    assert sink.of(metrics.FEEDBACK_SCORE)[0][1] == 4.0


def test_models_of_reads_the_config(two_variant_config):
    assert models_of(two_variant_config) == {"v1": "/m/v1", "v2": "/m/v2"}
    assert models_of(parse_config({"variants": [{"name": "a", "model": "x", "weight": 100}]}, environ={})) == {"a": "x"}


# ---- timing a request from its chunks ----


def test_timer_measures_like_the_load_tests():
    timer = RequestTimer(started=10.0)
    timer.on_chunk(10.2, num_tokens=1, has_text=False)  # a partial character: nothing visible yet
    timer.on_chunk(10.5, num_tokens=1, has_text=True)
    timer.on_chunk(10.6, num_tokens=3, has_text=True)
    timer.on_chunk(10.9, num_tokens=5, has_text=True)
    timing = timer.finish(11.0)
    assert timing.ttft_s == pytest.approx(0.5)
    assert timing.itl_s == pytest.approx((10.9 - 10.5) / (10 - 1))
    assert timing.e2e_s == pytest.approx(1.0)
    assert timing.output_tokens == 10


def test_timer_without_a_stream_or_with_one_token():
    timer = RequestTimer(started=0.0)
    timer.on_chunk(1.0, num_tokens=30, has_text=True)
    assert timer.finish(1.5, streamed=False) == RequestTiming(e2e_s=1.5, output_tokens=30)
    one = RequestTimer(started=0.0)
    one.on_chunk(0.2, num_tokens=1, has_text=True)
    assert one.finish(0.3) == RequestTiming(e2e_s=0.3, ttft_s=0.2, itl_s=None, output_tokens=1)
    assert RequestTimer(0.0).finish(2.0, output_tokens=0) == RequestTiming(e2e_s=2.0)


def test_tracked_engine_gauges_follow_the_engine_at_every_export(monkeypatch):
    import time as _time

    from serve_app import metrics as module

    calls: list[tuple[str, float, dict]] = []

    class FakeGauge:
        def __init__(self, name: str) -> None:
            self.name = name

        def set(self, value, tags):
            calls.append((self.name, value, tags))

    monkeypatch.setattr(module, "_make_ray_metric", lambda spec: FakeGauge(spec.name))
    sink = module.RaySink(strict=True, gauge_refresh_s=0.01)
    load = {"num_requests_waiting": 3.0, "num_requests_running": 5.0, "kv_cache_usage_perc": 0.5}
    EngineLoadMetrics(MODELS, sink).track("v1", "r1", lambda: dict(load))
    tags = {"variant": "v1", "model": MODELS["v1"], "replica": "r1"}
    assert (module.ENGINE_WAITING.name, 3.0, tags) in calls  # exported at once, not only at the next refresh
    load.update(num_requests_waiting=0.0, kv_cache_usage_perc=0.0)
    deadline = _time.monotonic() + 5
    while (module.ENGINE_WAITING.name, 0.0, tags) not in calls and _time.monotonic() < deadline:
        _time.sleep(0.01)
    assert (module.ENGINE_WAITING.name, 0.0, tags) in calls
    assert (module.ENGINE_KV_CACHE.name, 0.0, tags) in calls
    assert (module.ENGINE_RUNNING.name, 5.0, tags) in calls


def test_ray_sink_sets_gauges_again_so_ray_keeps_exporting_them(monkeypatch):
    import time as _time

    from serve_app import metrics as module

    calls: list[tuple[float, dict]] = []

    class FakeGauge:
        def set(self, value, tags):
            calls.append((value, tags))

    monkeypatch.setattr(module, "_make_ray_metric", lambda spec: FakeGauge())
    sink = module.RaySink(strict=True, gauge_refresh_s=0.01)
    sink.set(module.VARIANT_WEIGHT, 25.0, {"variant": "a", "model": "m"})
    deadline = _time.monotonic() + 5
    while len(calls) < 3 and _time.monotonic() < deadline:
        _time.sleep(0.01)
    assert len(calls) >= 3
    assert all(call == (25.0, {"variant": "a", "model": "m"}) for call in calls)
