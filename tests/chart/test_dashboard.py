"""The Grafana dashboard's ConfigMap: rendered only when asked, labelled for Grafana's sidecar, and
carrying the chart's dashboards/liqo-gateway.json unchanged (whose metric names
tests/contract/test_dashboard_metrics.py checks against what the code exports)."""

from __future__ import annotations

import json

from sandbox.testkit import chart

DASHBOARD = chart.CHART / "dashboards" / "liqo-gateway.json"


def dashboard_configmaps(values: dict[str, object]) -> list[dict[str, object]]:
    return chart.by_kind(chart.render(values), "ConfigMap")


def test_off_by_default() -> None:
    assert dashboard_configmaps(chart.values()) == []


def test_the_configmap_carries_the_dashboard_for_the_sidecar() -> None:
    (cm,) = dashboard_configmaps(chart.values(metrics={"grafanaDashboard": {"enabled": True}}))
    md = cm["metadata"]
    assert isinstance(md, dict) and isinstance(cm["data"], dict)
    assert md["namespace"] == "liqo"
    assert md["labels"]["grafana_dashboard"] == "1"
    assert md["labels"]["app.kubernetes.io/part-of"] == "liqo"
    assert "annotations" not in md
    assert list(cm["data"]) == ["liqo-gateway.json"]
    assert json.loads(cm["data"]["liqo-gateway.json"]) == json.loads(DASHBOARD.read_text())


def test_namespace_labels_and_annotations_follow_the_values() -> None:
    v = chart.values(metrics={"grafanaDashboard": {
        "enabled": True, "namespace": "monitoring", "labels": {"dashboards": "liqo"},
        "annotations": {"grafana_folder": "Liqo"}}})
    (cm,) = dashboard_configmaps(v)
    md = cm["metadata"]
    assert isinstance(md, dict)
    assert md["namespace"] == "monitoring"
    # Helm merges maps key by key: the default sidecar label stays unless set to null.
    assert md["labels"]["dashboards"] == "liqo" and md["labels"]["grafana_dashboard"] == "1"
    assert md["annotations"] == {"grafana_folder": "Liqo"}


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] == "liqo-gateway" and d["title"]
    panels = [p for p in d["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"]), "panel ids must be unique"
    for p in panels:
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"], p["title"]
