"""Status of a TunnelEndpoint from the netagent's tunnel status: pure functions, Liqo's strings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.api.netagent.v1 import netagent_pb2 as pb

CONNECTING = "Connecting"
CONNECTED = "Connected"
ERROR = "Error"
MSG_CONNECTING = "Waiting VPN connection to be established"
MSG_CONNECTED = "VPN connection established"
MSG_DISCONNECTED = "No network connectivity towards remote cluster"
LATENCY_NA = "N/A"

_STATES: dict[int, tuple[str, str]] = {
    pb.TUNNEL_STATE_CONNECTING: (CONNECTING, MSG_CONNECTING),
    pb.TUNNEL_STATE_CONNECTED: (CONNECTED, MSG_CONNECTED),
    pb.TUNNEL_STATE_DISCONNECTED: (ERROR, MSG_DISCONNECTED),
}


def format_latency(seconds: float | None) -> str:
    """Liqo's format: 0 or unknown -> N/A; >= 1 ms -> whole milliseconds; else whole microseconds."""
    if seconds is None or seconds <= 0:
        return LATENCY_NA
    us = int(round(seconds * 1e6, 3))  # guard against 0.012 * 1e6 = 11999.999...
    if us >= 1000:
        return f"{us // 1000}ms"
    return f"{us}μs" if us > 0 else LATENCY_NA


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(s: Any) -> datetime | None:
    if not isinstance(s, str) or not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def peer_configuration(ts: pb.TunnelStatus) -> dict[str, str]:
    """What is programmed for the peer; `clusterID` with `publicKey` is also the gateway's record that
    this TunnelEndpoint holds them (services.tunnel.ownership)."""
    return {
        "clusterID": ts.cluster_id,
        "publicKey": ts.public_key,
        "port": str(ts.endpoint_port) if ts.endpoint_port else "",
        "endpointIP": ts.endpoint_ip,
        "allowedIPs": ", ".join(ts.allowed_ips),
    }


def desired_status(
    ts: pb.TunnelStatus,
    current: dict[str, Any],
    *,
    gateway_ip: str,
    now: datetime,
    latency_interval: float = 30.0,
) -> dict[str, Any] | None:
    """The status to write for a tunnel whose netagent status is `ts`, given the CR's `current`
    status; None when the tunnel's state is not one to report (fenced/unspecified).

    Latency is rewritten only when the connection state changes or the written value is older than
    `latency_interval` (Liqo's 30 s), so a steady tunnel costs one status write per interval."""
    mapped = _STATES.get(ts.state)
    if mapped is None:
        return None
    status, message = mapped
    cur_conn = current.get("connection") or {}
    state_changed = cur_conn.get("status") != status or cur_conn.get("statusMessage") != message
    conn: dict[str, Any] = {
        "status": status,
        "statusMessage": message,
        "peerConfiguration": peer_configuration(ts),
    }
    if status == CONNECTED and ts.HasField("latency"):
        value = format_latency(ts.latency.ToNanoseconds() / 1e9)
    else:
        value = LATENCY_NA
    cur_lat = cur_conn.get("latency") or {}
    written = _parse_time(cur_lat.get("timestamp"))
    stale = written is None or (now - written).total_seconds() >= latency_interval
    if state_changed or stale or (value == LATENCY_NA) != (cur_lat.get("value") == LATENCY_NA):
        conn["latency"] = {"value": value, "timestamp": rfc3339(now)}
    return {"connection": conn, "gatewayIP": gateway_ip}


def error_status(message: str, gateway_ip: str, held: dict[str, str] | None = None) -> dict[str, Any]:
    """Status for a TunnelEndpoint the gateway cannot program (invalid spec, refused by the netagent).

    The peer configuration and latency of an earlier, valid spec are removed: they no longer
    describe what this object asks for (Liqo's Error carries neither). `held`, the holder record of
    the tunnel that keeps running (ownership.held_record), stays: an owner's invalid edit must not
    hand its cluster id to the next claimant after a failover."""
    peer: dict[str, Any] | None = None
    if held:
        peer = {"port": None, "endpointIP": None, "allowedIPs": None,
                "clusterID": held["clusterID"], "publicKey": held.get("publicKey") or None}
    return {
        "connection": {"status": ERROR, "statusMessage": message, "peerConfiguration": peer, "latency": None},
        "gatewayIP": gateway_ip,
    }
