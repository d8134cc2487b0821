"""TunnelEndpoint -> EnsureTunnel request, latency formatting and status transitions, as tables."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.duration_pb2 import Duration

from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import KeyPair, KeySecretError, generate, parse_secret, public_key_of, secret_body
from services.common.tunnelspec import SpecError
from services.tunnel import status as st
from services.tunnel.mapping import is_dns_endpoint, tunnel_from_endpoint

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples/tunnelendpoint.yaml").read_text())


def tep(**spec: Any) -> dict[str, Any]:
    obj = copy.deepcopy(EXAMPLE)
    for k, v in spec.items():
        if v is None:
            obj["spec"].pop(k, None)
        else:
            obj["spec"][k] = v
    return dict(obj)


def test_example_maps_field_by_field() -> None:
    t = tunnel_from_endpoint(EXAMPLE)
    assert t == pb.Tunnel(
        cluster_id="0d7c2f7e-3b0a-4c5e-9f61-6a1b2c3d4e5f",
        cluster_name="cluster-b",
        local_pod_cidr="10.200.0.0/16",
        local_nat_pod_cidr="10.202.0.0/16",
        local_external_cidr="10.220.0.0/16",
        local_nat_external_cidr="None",
        remote_pod_cidr="10.200.0.0/16",
        remote_nat_pod_cidr="10.201.0.0/16",
        remote_external_cidr="10.230.0.0/16",
        remote_nat_external_cidr="None",
        endpoint="192.0.2.10",
        endpoint_port=5871,
        public_key="bWQ5Nzh4ZmJ0a2V5Zm9yZXhhbXBsZXB1cnBvc2VzMDA=",
    )
    assert not t.HasField("persistent_keepalive")


def test_missing_nat_fields_mean_none_and_keepalive_is_passed() -> None:
    t = tunnel_from_endpoint(
        tep(localNATPodCIDR=None, remoteNATPodCIDR=None, remotePodCIDR="10.240.0.0/16"),
        persistent_keepalive=25,
    )
    assert (t.local_nat_pod_cidr, t.remote_nat_pod_cidr) == ("None", "None")
    assert t.persistent_keepalive.seconds == 25


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"localPodCIDR": "10.200.0.1/16"}, "spec.localPodCIDR"),  # not canonical
        ({"remoteNATPodCIDR": "bogus"}, "spec.remoteNATPodCIDR"),
        ({"remotePodCIDR": None}, "spec.remotePodCIDR"),
        ({"endpointIP": "-bad-"}, "spec.endpointIP"),
        ({"backendType": "ipsec"}, "spec.backendType"),
        ({"backend_config": {"publicKey": "c2hvcnQ=", "port": "5871"}}, "spec.backend_config.publicKey"),
        (
            {"backend_config": {"publicKey": EXAMPLE["spec"]["backend_config"]["publicKey"], "port": "0"}},
            "spec.backend_config.port",
        ),
        (
            {"backend_config": {"publicKey": EXAMPLE["spec"]["backend_config"]["publicKey"], "port": "x"}},
            "spec.backend_config.port",
        ),
        ({"clusterIdentity": {"clusterName": "b"}}, "spec.clusterIdentity.clusterID"),
        ({"remoteNATPodCIDR": "10.220.0.0/16"}, "overlaps"),  # remote remapped onto our external CIDR
        ({"localNATPodCIDR": "10.202.0.0/24"}, "spec.localNATPodCIDR"),  # NETMAP needs equal sizes
    ],
)
def test_invalid_spec_raises_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        tunnel_from_endpoint(tep(**change))


@pytest.mark.parametrize(
    ("endpoint", "dns"),
    [("192.0.2.10", False), ("gw.example.com", True), ("lb.example.com.", True), ("localhost", True)],
)
def test_is_dns_endpoint(endpoint: str, dns: bool) -> None:
    assert is_dns_endpoint(endpoint) is dns


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "N/A"),
        (0.0, "N/A"),
        (0.000850, "850μs"),
        (0.000850999, "850μs"),  # truncated like Go's Duration.Microseconds
        (0.000001, "1μs"),
        (0.001, "1ms"),
        (0.012, "12ms"),
        (0.0129, "12ms"),
        (1.5, "1500ms"),
    ],
)
def test_format_latency(seconds: float | None, text: str) -> None:
    assert st.format_latency(seconds) == text


NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def ts(state: int, latency_ms: float | None = None) -> pb.TunnelStatus:
    s = pb.TunnelStatus(
        cluster_id="c",
        state=state,
        endpoint_ip="192.0.2.10",
        endpoint_port=5871,  # type: ignore[arg-type]
        public_key="K",
        allowed_ips=["10.201.0.0/16", "10.230.0.0/16"],
    )
    if latency_ms is not None:
        d = Duration()
        d.FromNanoseconds(int(latency_ms * 1e6))
        s.latency.CopyFrom(d)
    return s


def written(status: str, message: str, latency: str, at: datetime) -> dict[str, Any]:
    return {
        "connection": {
            "status": status,
            "statusMessage": message,
            "latency": {"value": latency, "timestamp": st.rfc3339(at)},
        }
    }


@pytest.mark.parametrize(
    ("state", "expect"),
    [
        (pb.TUNNEL_STATE_CONNECTING, ("Connecting", "Waiting VPN connection to be established", "N/A")),
        (pb.TUNNEL_STATE_CONNECTED, ("Connected", "VPN connection established", "12ms")),
        (pb.TUNNEL_STATE_DISCONNECTED, ("Error", "No network connectivity towards remote cluster", "N/A")),
    ],
)
def test_state_maps_to_liqo_strings(state: int, expect: tuple[str, str, str]) -> None:
    d = st.desired_status(ts(state, 12.3), {}, gateway_ip="10.0.0.5", now=NOW)
    assert d is not None
    c = d["connection"]
    assert (c["status"], c["statusMessage"], c["latency"]["value"]) == expect
    assert c["peerConfiguration"] == {
        "clusterID": "c",
        "publicKey": "K",
        "port": "5871",
        "endpointIP": "192.0.2.10",
        "allowedIPs": "10.201.0.0/16, 10.230.0.0/16",
    }
    assert d["gatewayIP"] == "10.0.0.5"


@pytest.mark.parametrize("state", [pb.TUNNEL_STATE_FENCED, pb.TUNNEL_STATE_UNSPECIFIED])
def test_fenced_or_unknown_is_not_written(state: int) -> None:
    assert st.desired_status(ts(state), {}, gateway_ip="x", now=NOW) is None


@pytest.mark.parametrize(
    ("current", "latency_ms", "latency_written"),
    [
        # Same state, latency written 10 s ago: the new latency waits (no write for it).
        (written("Connected", st.MSG_CONNECTED, "12ms", NOW - timedelta(seconds=10)), 15, False),
        # Same state, written 31 s ago: refreshed.
        (written("Connected", st.MSG_CONNECTED, "12ms", NOW - timedelta(seconds=31)), 15, True),
        # State changed 1 s after the last write: written at once.
        (written("Connecting", st.MSG_CONNECTING, "N/A", NOW - timedelta(seconds=1)), 15, True),
        # Nothing written yet.
        ({}, 15, True),
    ],
)
def test_latency_refresh_interval(current: dict[str, Any], latency_ms: float, latency_written: bool) -> None:
    d = st.desired_status(ts(pb.TUNNEL_STATE_CONNECTED, latency_ms), current, gateway_ip="g", now=NOW)
    assert d is not None
    assert ("latency" in d["connection"]) is latency_written
    if latency_written:
        assert d["connection"]["latency"] == {"value": "15ms", "timestamp": "2024-05-01T12:00:00Z"}


def test_key_pair_secret_roundtrip_and_validation() -> None:
    pair = generate()
    assert public_key_of(pair.private_key) == pair.public_key
    assert pair.private_key not in repr(pair) and pair.private_key not in str(pair)
    body = secret_body("wireguard-pubkey", pair)
    assert body["metadata"] == {"name": "wireguard-pubkey", "labels": {"net.liqo.io/key": "wireguard"}}
    assert parse_secret(body) == pair
    other = generate()
    bad = secret_body("x", KeyPair(pair.private_key, other.public_key))
    with pytest.raises(KeySecretError, match="does not match") as e:
        parse_secret(bad)
    assert pair.private_key not in str(e.value)
    with pytest.raises(KeySecretError, match="missing"):
        parse_secret({"data": {"publicKey": body["data"]["publicKey"]}})  # type: ignore[index]


def test_error_status_clears_what_the_last_valid_spec_reported() -> None:
    from services.common.kube.status import merge_patch_diff
    from services.tunnel.status import error_status

    current = {
        "connection": {
            "status": "Connected",
            "statusMessage": "VPN connection established",
            "peerConfiguration": {"endpointIP": "192.0.2.2", "port": "5871"},
            "latency": {"value": "2ms", "timestamp": "2026-11-26T09:00:00Z"},
        },
        "gatewayIP": "192.0.2.1",
    }
    patch = merge_patch_diff(current, error_status("remote_pod_cidr: bad", "192.0.2.1"))
    assert patch == {
        "connection": {
            "status": "Error",
            "statusMessage": "remote_pod_cidr: bad",
            "peerConfiguration": None,
            "latency": None,
        }
    }
    cleared = {
        "connection": {"status": "Error", "statusMessage": "remote_pod_cidr: bad"},
        "gatewayIP": "192.0.2.1",
    }
    assert merge_patch_diff(cleared, error_status("remote_pod_cidr: bad", "192.0.2.1")) is None


def test_error_status_of_an_owner_keeps_its_holder_record() -> None:
    """An owner's invalid edit keeps the record that it holds the cluster id and key (its last valid
    tunnel runs on), and only that of its peer configuration."""
    from services.common.kube.status import merge_patch_diff
    from services.tunnel.ownership import held_record
    from services.tunnel.status import error_status

    current = {
        "connection": {
            "status": "Connected",
            "statusMessage": "VPN connection established",
            "peerConfiguration": {"clusterID": "c", "publicKey": "K", "endpointIP": "192.0.2.2",
                                  "port": "5871", "allowedIPs": "10.60.0.0/16"},
        },
        "gatewayIP": "192.0.2.1",
    }
    held = held_record(current)
    assert held == {"clusterID": "c", "publicKey": "K"}
    patch = merge_patch_diff(current, error_status("spec.endpointIP: bad", "192.0.2.1", held))
    cleared = {"endpointIP": None, "port": None, "allowedIPs": None}
    assert patch == {"connection": {"status": "Error", "statusMessage": "spec.endpointIP: bad",
                                    "peerConfiguration": cleared}}
    after = {"connection": {"status": "Error", "statusMessage": "spec.endpointIP: bad",
                            "peerConfiguration": {"clusterID": "c", "publicKey": "K"}}}
    assert held_record(after) == held
