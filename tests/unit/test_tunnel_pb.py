"""The one TunnelSpec <-> Tunnel message conversion (services/common/tunnel_pb.py), as tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.tunnel_pb import duration, spec_from_pb, spec_to_pb
from services.common.tunnelspec import NONE_CIDR, SpecError, TunnelSpec

KEY = "V1Ch/nG2SnyJesu3mttrJJAlsT4wHoHLc0OhXYKUTng="
BASE: dict[str, Any] = {
    "cluster_id": "cluster-b",
    "local_pod_cidr": "10.200.0.0/16",
    "local_external_cidr": "10.220.0.0/16",
    "remote_pod_cidr": "10.201.0.0/16",
    "remote_external_cidr": "10.221.0.0/16",
    "endpoint": "192.0.2.10",
    "endpoint_port": 5871,
    "public_key": KEY,
}


def spec(**change: Any) -> TunnelSpec:
    return TunnelSpec.parse(**{**BASE, **change})


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"cluster_name": "cluster-b"},
        {"local_nat_pod_cidr": "10.202.0.0/16", "local_nat_external_cidr": "10.222.0.0/16"},
        {"remote_nat_pod_cidr": "10.203.0.0/16", "remote_nat_external_cidr": "10.223.0.0/16"},
        {"endpoint": "gw.cluster-b.example"},
        {"persistent_keepalive": 25},
        {"persistent_keepalive": 3600},
    ],
)
def test_round_trip(change: dict[str, Any]) -> None:
    s = spec(**change)
    assert spec_from_pb(spec_to_pb(s)) == s


@pytest.mark.parametrize(
    ("change", "field", "want"),
    [
        ({}, "local_nat_pod_cidr", NONE_CIDR),
        ({}, "remote_nat_external_cidr", NONE_CIDR),
        ({"remote_nat_pod_cidr": "10.203.0.0/16"}, "remote_nat_pod_cidr", "10.203.0.0/16"),
        ({"endpoint_port": 51820}, "endpoint_port", 51820),
    ],
)
def test_wire_form(change: dict[str, Any], field: str, want: object) -> None:
    assert getattr(spec_to_pb(spec(**change)), field) == want


@pytest.mark.parametrize(("keepalive", "present"), [(0, False), (25, True)])
def test_zero_keepalive_is_an_absent_field(keepalive: int, present: bool) -> None:
    t = spec_to_pb(spec(persistent_keepalive=keepalive))
    assert t.HasField("persistent_keepalive") is present
    assert t.persistent_keepalive.seconds == keepalive


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cluster_id": ""}, "cluster_id"),
        ({"local_pod_cidr": "10.200.0.1/16"}, "local_pod_cidr"),
        ({"remote_nat_pod_cidr": "not-a-cidr"}, "remote_nat_pod_cidr"),
        ({"endpoint_port": 0}, "endpoint_port"),
        ({"public_key": "short"}, "public_key"),
    ],
)
def test_parse_names_the_bad_field(change: dict[str, Any], field: str) -> None:
    t = pb.Tunnel(**{**BASE, **change})
    with pytest.raises(SpecError, match=field):
        spec_from_pb(t)


@pytest.mark.parametrize(("seconds", "nanos"), [(0.0, 0), (1.5, 1_500_000_000), (0.0123, 12_300_000)])
def test_duration(seconds: float, nanos: int) -> None:
    assert duration(seconds).ToNanoseconds() == nanos


def test_the_netagent_never_imports_the_kubernetes_runtime() -> None:
    code = (
        "import sys, services.netagent.main, services.netagent.server\n"
        "bad = [m for m in sys.modules if m == 'kubernetes' or m.startswith(('kubernetes.', "
        "'services.common.kube', 'services.common.component', 'services.common.rolegate'))]\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
