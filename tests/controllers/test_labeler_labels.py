"""Tables for what the leader writes (services/labeler/labels.py)."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.vocabulary import GATEWAY_LABEL, NODE_IP_ANNOTATION
from services.labeler.labels import pod_label_patch, service_plan


def pod(name: str, label: str | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "gateway"} | ({GATEWAY_LABEL: label} if label else {})
    return {"metadata": {"name": name, "labels": labels}}


@pytest.mark.parametrize(
    ("obj", "want"),
    [
        (pod("me"), "active"),
        (pod("me", "standby"), "active"),
        (pod("me", "active"), None),
        (pod("other"), "standby"),
        (pod("other", "active"), "standby"),  # the old leader's label is taken away
        (pod("other", "standby"), None),
        ({"metadata": {"name": "other"}}, "standby"),  # no labels at all
    ],
)
def test_pod_label_patch(obj: dict[str, Any], want: str | None) -> None:
    got = pod_label_patch(obj, "me")
    assert got == (None if want is None else {"metadata": {"labels": {GATEWAY_LABEL: want}}})


def svc(name: str, ip: str | None = None, deleting: bool = False) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "annotations": {NODE_IP_ANNOTATION: ip} if ip else {}}
    if deleting:
        md["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {"metadata": md}


@pytest.mark.parametrize(
    ("services", "name", "patched", "problem"),
    [
        ([svc("gw")], "gw", True, ""),
        ([svc("gw", "10.0.0.9")], "gw", True, ""),
        ([svc("gw", "10.0.0.1")], "gw", False, ""),
        ([svc("gw"), svc("old", deleting=True)], "gw", True, ""),
        ([], None, False, "found 0"),
        ([svc("a"), svc("b")], None, False, "found 2: ['a', 'b']"),
    ],
)
def test_service_plan(services: list[dict[str, Any]], name: str | None, patched: bool, problem: str) -> None:
    plan = service_plan(services, "10.0.0.1")
    assert plan.name == name
    assert (plan.patch == {"metadata": {"annotations": {NODE_IP_ANNOTATION: "10.0.0.1"}}}) is patched
    assert (plan.patch is None) is (not patched)
    assert problem in plan.problem and bool(plan.problem) is bool(problem)
