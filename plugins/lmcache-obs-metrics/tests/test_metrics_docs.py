"""The metric catalogue, docs/observability.md and the Grafana dashboard agree with the code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from lmcache_obs_metrics import docs
from lmcache_obs_metrics.catalogue import (
    BLEND_PREFIX,
    METRICS,
    PREFIX,
    SCRAPE,
    exported_sample_names,
)
from lmcache_obs_metrics.subscriber import MetricsSubscriber
from prometheus_client.parser import text_string_to_metric_families

from lmcache_core.observability.events import EventType

ROOT = Path(__file__).resolve().parents[3]  # the checkout: plugins/<dist>/tests/<file>
PAGE = ROOT / "docs" / "observability.md"
DASHBOARD = ROOT / "docs" / "grafana" / "lmcache-dashboard.json"
NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def test_catalogue_names_are_unique_prometheus_names() -> None:
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    for metric in METRICS:
        assert NAME.match(metric.full_name), metric.name
        assert metric.full_name.startswith(
            BLEND_PREFIX if metric.source.startswith("cb.") else PREFIX
        )
        assert not metric.name.endswith("_total"), "the client adds _total to counters"
        assert metric.help and metric.labels == tuple(dict.fromkeys(metric.labels))
        if metric.source == SCRAPE:
            assert metric.kind != "histogram"
        else:
            assert metric.kind != "gauge", "gauges are read at scrape time"
            EventType(metric.source)  # a published event type
        assert (metric.kind == "histogram") == bool(metric.buckets)


def test_the_exposition_declares_every_event_fed_metric() -> None:
    text = MetricsSubscriber("docs", 0.5).exposition().decode()
    families = {f.name for f in text_string_to_metric_families(text)}
    expected = {m.full_name for m in METRICS if m.source != SCRAPE}
    assert families == expected


def test_observability_page_is_current() -> None:
    assert docs.main(["--check", str(PAGE)]) == 0, (
        "docs/observability.md is stale: run python -m lmcache_obs_metrics.docs"
    )


def test_check_mode_detects_a_stale_page(tmp_path: Path) -> None:
    page = tmp_path / "observability.md"
    page.write_text(PAGE.read_text().replace("`lmcache_mp_lookups_total`", "`gone`", 1))
    assert docs.main(["--check", str(page)]) == 1
    assert docs.main([str(page)]) == 0
    assert docs.main(["--check", str(page)]) == 0
    page.write_text("# no markers\n")
    with pytest.raises(ValueError, match="markers"):
        docs.main([str(page)])


def test_page_has_its_sections_and_every_metric() -> None:
    text = PAGE.read_text()
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    wanted = ["Event bus", "Metrics", "Logging", "Tracing", "Lookup-hash log"]
    # In this order; other sections may add their own headings around them.
    assert [h for h in headings if h in wanted] == wanted
    for metric in METRICS:
        assert f"`{metric.series_name}`" in text
    for event_type in EventType:
        assert f"`{event_type.value}`" in text
    assert "observability.md" in (ROOT / "mkdocs.yml").read_text()


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_is_a_grafana_10_model_with_a_datasource_variable(
    dashboard: dict[str, Any],
) -> None:
    assert dashboard["schemaVersion"] >= 36  # Grafana 9.x/10.x models
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance_id"]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"]
    for target in _targets(dashboard):
        assert target["datasource"]["uid"] == "${datasource}"
        assert 'instance_id=~"$instance_id"' in target["expr"]


def test_dashboard_queries_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_sample_names()
    queried = {
        name for t in _targets(dashboard) for name in re.findall(r"lmcache_mp_\w+", t["expr"])
    }
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, sorted(queried - exported)


def test_dashboard_covers_the_required_panels(dashboard: dict[str, Any]) -> None:
    queried = " ".join(t["expr"] for t in _targets(dashboard))
    for metric in (
        "lmcache_mp_lookup_hit_tokens_total",  # hit rate per tier
        "lmcache_mp_store_bytes_total",  # throughput
        "lmcache_mp_retrieve_bytes_total",
        "lmcache_mp_l1_memory_usage_bytes",  # usage
        "lmcache_mp_l2_usage_bytes",
        "lmcache_mp_l1_evicted_keys_total",  # evictions
        "lmcache_mp_l2_evicted_keys_total",
        "lmcache_mp_store_failures_total",  # failures
        "lmcache_mp_l1_allocation_failures_total",
        "lmcache_mp_event_bus_dropped_events_total",  # bus drops
    ):
        assert metric in queried, metric
