"""The CRDs: well-formed CustomResourceDefinitions, and their schemas accept the examples and reject
each kind of bad input (validated the way the API server does, with sandbox.kubeapi's validator)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sandbox.kubeapi.schema import admit

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "charts/liqo-gateway/crds"
EXAMPLES = ROOT / "examples"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def crd(name: str) -> dict[str, Any]:
    for f in CRDS.glob("*.yaml"):
        doc = load(f)
        if doc["metadata"]["name"] == name:
            return dict(doc)
    raise AssertionError(f"no CRD {name}")


def schema_of(name: str) -> dict[str, Any]:
    return dict(crd(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


TEP = "tunnelendpoints.net.liqo.io"
NM = "natmappings.net.liqo.io"


def causes(name: str, obj: dict[str, Any]) -> list[str]:
    _, errs, _ = admit(obj, schema_of(name))
    return [f"{c.field}: {c.message}" for c in errs]


@pytest.mark.parametrize("name", [TEP, NM])
def test_crd_is_a_valid_customresourcedefinition(name: str) -> None:
    kubernetes_validate.validate(crd(name), "1.30", strict=True)


def test_crd_shape() -> None:
    t, n = crd(TEP), crd(NM)
    assert t["spec"]["scope"] == "Namespaced" and n["spec"]["scope"] == "Cluster"
    for c in (t, n):
        assert c["spec"]["group"] == "net.liqo.io"
        assert "liqo" in c["spec"]["names"]["categories"]
        (v,) = c["spec"]["versions"]
        assert v["name"] == "v1alpha1" and v["served"] and v["storage"]
        assert v["subresources"] == {"status": {}}
    cols = [c["name"] for c in t["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert cols == ["Peering Cluster", "Endpoint IP", "Backend type", "Latency", "Connection status", "Age"]


def _walk_patterns(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            out.append(node["pattern"])
        for v in node.values():
            out.extend(_walk_patterns(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_walk_patterns(v))
    return out


def test_patterns_use_only_re2_syntax() -> None:
    # The real API server compiles patterns with Go's RE2: no lookaround, no backreferences.
    for name in (TEP, NM):
        for p in _walk_patterns(crd(name)):
            assert not re.search(r"\(\?[=!<]|\\[1-9]", p), p


def test_examples_validate() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        obj = load(f)
        name = TEP if obj["kind"] == "TunnelEndpoint" else NM
        _, errs, dropped = admit(obj, schema_of(name))
        assert errs == [], f"{f.name}: {errs}"
        assert dropped == [], f"{f.name}: unknown fields {dropped}"


def test_nat_cidrs_default_to_none() -> None:
    obj = load(EXAMPLES / "tunnelendpoint-dns.yaml")
    admitted, errs, _ = admit(obj, schema_of(TEP))
    assert not errs
    for f in ("localNATPodCIDR", "localNATExternalCIDR", "remoteNATPodCIDR", "remoteNATExternalCIDR"):
        assert admitted["spec"][f] == "None"


def _tep() -> dict[str, Any]:
    return dict(load(EXAMPLES / "tunnelendpoint.yaml"))


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    *parents, leaf = path.split(".")
    cur = obj
    for p in parents:
        cur = cur[p]
    if value is _DELETE:
        del cur[leaf]
    else:
        cur[leaf] = value
    return obj


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("spec.localPodCIDR", "10.200.0.0", "spec.localPodCIDR"),
        ("spec.localPodCIDR", "None", "spec.localPodCIDR"),  # None only for NAT fields
        ("spec.remotePodCIDR", "10.300.0.0/16", "spec.remotePodCIDR"),
        ("spec.remotePodCIDR", "10.0.0.0/33", "spec.remotePodCIDR"),
        ("spec.remoteNATPodCIDR", "none", "spec.remoteNATPodCIDR"),
        ("spec.localNATExternalCIDR", "fd00::/64", "spec.localNATExternalCIDR"),
        ("spec.endpointIP", "999.1.1.1", "spec.endpointIP"),
        ("spec.endpointIP", "gw_1.example.com", "spec.endpointIP"),
        ("spec.endpointIP", "", "spec.endpointIP"),
        ("spec.backendType", "ipsec", "spec.backendType"),
        ("spec.backend_config.port", "0", "spec.backend_config.port"),
        ("spec.backend_config.port", "65536", "spec.backend_config.port"),
        ("spec.backend_config.port", "51820x", "spec.backend_config.port"),
        ("spec.backend_config.port", 5871, "spec.backend_config.port"),  # a string, as in Liqo
        ("spec.backend_config.publicKey", "c2hvcnQ=", "spec.backend_config.publicKey"),
        ("spec.clusterIdentity.clusterID", "", "spec.clusterIdentity.clusterID"),
        ("spec.clusterIdentity.clusterID", "a b", "spec.clusterIdentity.clusterID"),
        ("spec.clusterIdentity.clusterName", 'x"y', "spec.clusterIdentity.clusterName"),
        ("spec.endpointIP", _DELETE, "spec.endpointIP"),
        ("spec.backend_config.publicKey", _DELETE, "spec.backend_config.publicKey"),
        ("spec.clusterIdentity", _DELETE, "spec.clusterIdentity"),
        ("spec.remoteExternalCIDR", _DELETE, "spec.remoteExternalCIDR"),
    ],
)
def test_invalid_tunnelendpoint_is_rejected(path: str, value: Any, field: str) -> None:
    errs = causes(TEP, _set(_tep(), path, value))
    assert any(e.startswith(field) for e in errs), errs


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.endpointIP", "gateway.example.com"),
        ("spec.endpointIP", "lb-1234.eu-west-1.elb.amazonaws.com."),
        ("spec.endpointIP", "10.0.0.1"),
        ("spec.backend_config.port", "1"),
        ("spec.backend_config.port", "65535"),
        ("spec.remoteNATExternalCIDR", "10.99.0.0/16"),
    ],
)
def test_valid_variants_are_accepted(path: str, value: Any) -> None:
    assert causes(TEP, _set(_tep(), path, value)) == []


@pytest.mark.parametrize(
    ("status", "ok"),
    [
        ({"connection": {"status": "Connected", "statusMessage": "VPN connection established",
                         "latency": {"value": "12ms", "timestamp": "2024-05-01T10:00:00Z"},
                         "peerConfiguration": {"port": "5871", "endpointIP": "192.0.2.10"}},
          "gatewayIP": "10.0.0.5"}, True),
        ({"connection": {"status": "Up"}}, False),
        ({"connection": {"latency": {"value": "1ms", "timestamp": "yesterday"}}}, False),
        ({"connection": {"peerConfiguration": {"port": 5871}}}, False),
    ],
)
def test_status_schema(status: dict[str, Any], ok: bool) -> None:
    obj = _tep()
    obj["status"] = status
    assert (causes(TEP, obj) == []) is ok


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.clusterID", _DELETE),
        ("spec.externalCIDR", "10.220.0.0"),
        ("spec.podCIDR", "None"),
        ("spec.clusterMappings", ["10.0.0.1"]),
    ],
)
def test_invalid_natmapping_is_rejected(path: str, value: Any) -> None:
    obj = load(EXAMPLES / "natmapping.yaml")
    assert causes(NM, _set(obj, path, value)) != []


def test_natmapping_values_must_be_ipv4() -> None:
    obj = load(EXAMPLES / "natmapping.yaml")
    obj["spec"]["clusterMappings"]["10.200.3.8"] = "10.220.0.300"
    errs = causes(NM, obj)
    assert errs and "clusterMappings" in errs[0]
