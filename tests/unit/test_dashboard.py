"""The Grafana dashboard and the Prometheus config against the metrics the app really exports.

Every PromQL expression in the dashboard is parsed for the metric names and labels it uses; a panel naming a
metric (or a label) that ``serve_app/metrics.py`` does not export fails here rather than showing "No data".
"""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.metrics import APP_METRICS, EXPORTED_METRIC_NAMES, METRIC_BY_EXPORTED_NAME

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cluster" / "grafana" / "servefleet-dashboard.json"
PROMETHEUS = ROOT / "cluster" / "prometheus" / "prometheus.yml"

_OPERATORS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}
_KEYWORDS = _OPERATORS | {"inf", "nan"}
_IDENT = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, labels or ranges."""
    text = _strip_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors, $__rate_interval included
    text = _GROUPING.sub(" ", text)  # by (...) and friends
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in _IDENT.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function call or an operator keyword
        names.add(match.group())
    return names


def matcher_labels(expr: str) -> dict[str, set[str]]:
    """Label names used in each metric's ``{...}`` matcher."""
    out: dict[str, set[str]] = {}
    for name, body in _SELECTOR.findall(_strip_strings(expr)):
        labels = {part.split("=")[0].rstrip("!~").strip() for part in body.split(",") if part.strip()}
        out.setdefault(name, set()).update(labels)
    return out


def grouping_labels(expr: str) -> set[str]:
    return {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()}


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    exprs = [
        (panel["title"], target["expr"])
        for panel in walk_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append((f"${variable['name']}", variable["definition"]))
    return exprs


def _label_values_to_promql(expr: str) -> str:
    # label_values(metric, label) is Grafana's, not PromQL: read it as a selector of that metric.
    return re.sub(r"label_values\(\s*([\w:]+)\s*,\s*(\w+)\s*\)", r"\1{\2!=''}", expr)


# ---- the parser itself, so that the checks below cannot pass by finding nothing ----


def test_parser_finds_metrics_and_skips_functions_labels_and_variables():
    expr = (
        'histogram_quantile(0.95, sum by (variant, le) (rate(ray_a_bucket{variant=~"$variant", x="y(z)"}'
        "[$__rate_interval]))) / scalar(sum(rate(ray_b_total[5m]))) and on(variant) ray_c offset 1m"
    )
    assert metric_names(expr) == {"ray_a_bucket", "ray_b_total", "ray_c"}
    assert matcher_labels(expr) == {"ray_a_bucket": {"variant", "x"}}
    assert grouping_labels(expr) == {"variant", "le"}
    assert metric_names("1e3 * ray_d") == {"ray_d"}


def test_parser_catches_a_metric_the_app_does_not_export():
    assert metric_names("sum(rate(ray_servefleet_request_total[5m]))") - EXPORTED_METRIC_NAMES == {
        "ray_servefleet_request_total"
    }


# ---- the dashboard ----


def test_every_panel_and_variable_queries_only_exported_metrics(dashboard):
    exprs = expressions(dashboard)
    assert len(exprs) >= 20
    for title, expr in exprs:
        names = metric_names(_label_values_to_promql(expr))
        assert names, f"{title}: no metric found in {expr!r}"
        unknown = names - EXPORTED_METRIC_NAMES
        assert not unknown, f"panel {title!r} queries metrics the app does not export: {sorted(unknown)}"


def test_every_label_a_panel_filters_or_groups_by_exists_on_its_metrics(dashboard):
    for title, expr in expressions(dashboard):
        expr = _label_values_to_promql(expr)
        available: set[str] = set()
        for name, labels in matcher_labels(expr).items():
            spec = METRIC_BY_EXPORTED_NAME[name]
            assert labels <= set(spec.tag_keys), f"{title!r}: {name} has no label(s) {labels - set(spec.tag_keys)}"
        for name in metric_names(expr):
            available |= set(METRIC_BY_EXPORTED_NAME[name].tag_keys)
            if name.endswith("_bucket"):
                available.add("le")
        missing = grouping_labels(expr) - available
        assert not missing, f"{title!r} groups by labels its metrics lack: {sorted(missing)}"


def test_every_app_metric_has_a_panel(dashboard):
    used = {name for _, expr in expressions(dashboard) for name in metric_names(_label_values_to_promql(expr))}
    unshown = [spec.name for spec in APP_METRICS if not set(spec.exported_names) & used]
    assert not unshown, f"metrics no panel shows: {unshown}"


def test_required_slo_panels_are_there(dashboard):
    titles = " | ".join(panel["title"].lower() for panel in walk_panels(dashboard["panels"]))
    for needed in (
        "request rate",
        "error rate",
        "time to first token",
        "inter-token",
        "end-to-end",
        "tokens per second",
        "ongoing",
        "waiting",
        "kv-cache",
        "routing split",
        "shadow exact-match",
        "drift",
        "feedback: mean",
    ):
        assert needed in titles, needed


def test_panels_are_well_formed(dashboard):
    panels = list(walk_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "variant"} <= variables
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']!r} overlaps another panel"
        occupied |= cells
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]


# ---- Prometheus ----


def test_prometheus_scrapes_rays_metrics_export_on_loopback():
    config = yaml.safe_load(PROMETHEUS.read_text())
    [job] = config["scrape_configs"]
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    assert targets and all(target.startswith("127.0.0.1:") for target in targets)
    assert job.get("metrics_path", "/metrics") == "/metrics"
    interval = config["global"]["scrape_interval"]
    assert re.fullmatch(r"\d+s", interval) and int(interval[:-1]) >= 5
