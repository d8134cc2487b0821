"""Table negotiation: ``meta.k8s.io`` v1 or v1beta1, whichever the Accept header names first."""

from __future__ import annotations

import json
import urllib.request

import pytest

from sandbox.kubeapi import KubeAPIServer, tables

KUBECTL_ACCEPT = (  # what kubectl 1.20 and 1.32 both send for `kubectl get`
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
    "application/json"
)


@pytest.mark.parametrize(
    ("accept", "version"),
    [
        (KUBECTL_ACCEPT, "v1"),
        ("application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json", "v1beta1"),
        ("application/json; as=Table; v=v1beta1; g=meta.k8s.io", "v1beta1"),
        ("application/json;as=Table;v=v2;g=meta.k8s.io,application/json;as=Table;v=v1;g=meta.k8s.io", "v1"),
        ("application/json;as=Table;v=v1;g=example.com", None),
        ("application/json", None),
        ("", None),
    ],
)
def test_table_version(accept: str, version: str | None) -> None:
    assert tables.table_version(accept) == version


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_list_as_table_in_the_version_asked(version: str) -> None:
    with KubeAPIServer() as api:
        req = urllib.request.Request(
            f"{api.url}/api/v1/namespaces",
            headers={"Accept": f"application/json;as=Table;v={version};g=meta.k8s.io"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            table = json.loads(resp.read())
    assert (table["kind"], table["apiVersion"]) == ("Table", f"meta.k8s.io/{version}")
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Status", "Age"]
    assert ["default", "Active"] in [r["cells"][:2] for r in table["rows"]]
    assert {r["object"]["apiVersion"] for r in table["rows"]} == {f"meta.k8s.io/{version}"}
