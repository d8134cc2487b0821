"""`liqo-gateway status`'s diagnoses as tables: each one present and absent, over plain snapshots."""

# ruff: noqa: E501  (one table row per line reads best)

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from services.common.leaderelection import micro_time
from services.common.vocabulary import (
    ACTIVE,
    GATEWAY_LABEL,
    GATEWAY_SELECTOR,
    LEASE_NAME,
    NODE_IP_ANNOTATION,
    PSA_ENFORCE_LABEL,
    PSA_PRIVILEGED,
    STANDBY,
)
from services.status.diagnose import Options, diagnose, has_errors
from services.status.model import ERROR, WARNING, AgentRead, AgentTunnel, SecretState, Snapshot

NOW = 1_800_000_000.0
NS = "liqo"
KEY_A, KEY_B = "A" * 43 + "=", "B" * 43 + "="


def pod(name: str, label: str | None, ip: str = "", deleting: bool = False) -> dict[str, Any]:
    labels = dict(GATEWAY_SELECTOR)
    if label is not None:
        labels[GATEWAY_LABEL] = label
    md: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels}
    if deleting:
        md["deletionTimestamp"] = "2027-01-01T00:00:00Z"
    return {"metadata": md, "spec": {"nodeName": f"node-{name}"}, "status": {"podIP": ip or f"10.1.0.{name[-1]}"}}


def service(selector: dict[str, str] | None = None, annotation: str | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {"name": "liqo-gateway", "namespace": NS}
    if annotation is not None:
        md["annotations"] = {NODE_IP_ANNOTATION: annotation}
    sel = {**GATEWAY_SELECTOR, GATEWAY_LABEL: ACTIVE} if selector is None else selector
    return {"metadata": md, "spec": {"selector": sel}}


def tep(name: str = "b-tep", status: str = "Connected", *, latency_ts: float | None = None,
        key: str = KEY_B, uid: str = "uid-1") -> dict[str, Any]:
    conn: dict[str, Any] = {"status": status, "statusMessage": "msg"}
    if latency_ts is not None:
        conn["latency"] = {"value": "N/A", "timestamp": micro_time(latency_ts)}
    return {
        "metadata": {"name": name, "namespace": "liqo-tenant-b", "uid": uid},
        "spec": {"clusterIdentity": {"clusterID": "cid-b", "clusterName": "b"}, "endpointIP": "192.0.2.1",
                 "backend_config": {"publicKey": key, "port": "5871"}},
        "status": {"connection": conn},
    }


def event(type_: str, at: float, uid: str = "uid-1") -> dict[str, Any]:
    return {"type": type_, "reason": "x", "lastTimestamp": micro_time(at),
            "involvedObject": {"kind": "TunnelEndpoint", "uid": uid}}


def agent(pod_name: str, role: str = "ACTIVE", *, mtu: int = 1340, key: str = KEY_A,
          tunnels: tuple[AgentTunnel, ...] = (), error: str = "") -> AgentRead:
    if error:
        return AgentRead(pod=pod_name, socket=f"/s/{pod_name}", error=error)
    return AgentRead(pod=pod_name, socket=f"/s/{pod_name}", role=role, epoch=3, mtu=mtu, public_key=key,
                     device_configured=True, tunnels=tunnels)


def disconnected(since: float) -> AgentTunnel:
    return AgentTunnel("cid-b", "liqo-tenant-b/b-tep", "DISCONNECTED", None, None, 0, 0, 0, since)


def healthy(**over: Any) -> Snapshot:
    """Cluster a: two replicas, gateway-1 leads; the Service, Secret and PSA label are right."""
    snap = Snapshot(
        name="a", namespace=NS, now=NOW,
        pods=[pod("gateway-1", ACTIVE), pod("gateway-2", STANDBY)],
        services=[service(annotation="10.1.0.1")],
        lease={"metadata": {"name": LEASE_NAME},
               "spec": {"holderIdentity": "gateway-1", "leaseDurationSeconds": 7, "leaseTransitions": 3,
                        "acquireTime": micro_time(NOW - 100), "renewTime": micro_time(NOW - 1)}},
        tunnel_endpoints=[tep()],
        namespace_obj={"metadata": {"name": NS, "labels": {PSA_ENFORCE_LABEL: PSA_PRIVILEGED}}},
        key_secret=SecretState.PRESENT, key_secret_name="wireguard-pubkey", key_public=KEY_A,
        agents=[agent("gateway-1"), agent("gateway-2", "STANDBY")],
    )
    return replace(snap, **over)


def codes(*snaps: Snapshot, grace: float = 60) -> dict[str, str]:
    """Finding code -> severity (each code once in these tables)."""
    return {f.code: f.severity for f in diagnose(list(snaps), Options(error_grace=grace))}


def test_healthy_has_no_finding() -> None:
    findings = diagnose([healthy()], Options())
    assert findings == []
    assert not has_errors(findings)


CASES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    # --- no active replica
    ("no pod labelled active", {"pods": [pod("gateway-1", STANDBY), pod("gateway-2", STANDBY)]},
     {"no-active-replica": ERROR}),
    ("the active pod is terminating", {"pods": [pod("gateway-1", ACTIVE, deleting=True), pod("gateway-2", STANDBY)]},
     {"no-active-replica": ERROR}),
    ("no gateway pod at all", {"pods": [], "agents": []}, {"no-gateway-pods": ERROR}),
    ("every agent answered, none ACTIVE", {"agents": [agent("gateway-1", "STANDBY"), agent("gateway-2", "STANDBY")]},
     {"no-active-agent": ERROR}),
    ("only one agent known, standby: no conclusion", {"agents": [agent("gateway-2", "STANDBY")]}, {}),
    ("no socket given: no agent finding", {"agents": []}, {}),
    # --- two active
    ("two pods labelled active", {"pods": [pod("gateway-1", ACTIVE), pod("gateway-2", ACTIVE)]},
     {"two-active-pods": ERROR}),
    ("two ACTIVE agents", {"agents": [agent("gateway-1"), agent("gateway-2")]}, {"two-active-agents": ERROR}),
    ("the local agent unattributed, ACTIVE, and the leader's", {"agents": [agent(""), agent("gateway-1")]},
     {"two-active-agents": ERROR}),
    # --- the Service
    ("the Service selects nothing", {"services": [service({"app": "nothing"})]}, {"service-not-active": ERROR}),
    ("the Service selects both pods", {"services": [service(dict(GATEWAY_SELECTOR))]},
     {"service-not-active": ERROR}),
    ("the Service selects the standby", {"services": [service({**GATEWAY_SELECTOR, GATEWAY_LABEL: STANDBY})]},
     {"service-not-active": ERROR}),
    ("a Service without selector", {"services": [service({})]}, {"service-not-active": ERROR}),
    ("no gateway Service", {"services": []}, {"no-gateway-service": WARNING}),
    ("stale gatewayNodeIP annotation", {"services": [service(annotation="10.1.0.2")]},
     {"service-annotation-stale": WARNING}),
    # --- TunnelEndpoint in Error
    ("Error, the agent says since 120 s", {"tunnel_endpoints": [tep(status="Error")],
                                           "agents": [agent("gateway-1", tunnels=(disconnected(NOW - 120),)),
                                                      agent("gateway-2", "STANDBY")]},
     {"tunnel-error": ERROR}),
    ("Error, the agent says since 10 s", {"tunnel_endpoints": [tep(status="Error")],
                                          "agents": [agent("gateway-1", tunnels=(disconnected(NOW - 10),)),
                                                     agent("gateway-2", "STANDBY")]}, {}),
    ("Error, its Warning Event 90 s old", {"tunnel_endpoints": [tep(status="Error", latency_ts=NOW - 5)],
                                           "events": [event("Normal", NOW - 200), event("Warning", NOW - 90)]},
     {"tunnel-error": ERROR}),
    ("Error, its Warning Event 5 s old", {"tunnel_endpoints": [tep(status="Error", latency_ts=NOW - 500)],
                                          "events": [event("Warning", NOW - 5)]}, {}),
    ("Error, another object's Event ignored", {"tunnel_endpoints": [tep(status="Error", latency_ts=NOW - 5)],
                                               "events": [event("Warning", NOW - 900, uid="other")]}, {}),
    ("Error, only the status timestamp, 70 s", {"tunnel_endpoints": [tep(status="Error", latency_ts=NOW - 70)]},
     {"tunnel-error": ERROR}),
    ("Error, since unknown", {"tunnel_endpoints": [tep(status="Error")]}, {"tunnel-error": ERROR}),
    ("Connecting is not Error", {"tunnel_endpoints": [tep(status="Connecting", latency_ts=NOW - 900)]}, {}),
    # --- MTU within a cluster
    ("replicas report different MTUs", {"agents": [agent("gateway-1"), agent("gateway-2", "STANDBY", mtu=1420)]},
     {"mtu-mismatch": ERROR}),
    # --- the key Secret
    ("key Secret missing", {"key_secret": SecretState.MISSING, "key_public": ""}, {"key-secret-missing": ERROR}),
    ("key Secret unusable", {"key_secret": SecretState.UNUSABLE, "key_public": ""}, {"key-secret-unusable": ERROR}),
    ("key Secret forbidden", {"key_secret": SecretState.UNKNOWN, "key_public": ""}, {"key-secret-unknown": WARNING}),
    ("an agent uses another key", {"agents": [agent("gateway-1", key=KEY_B), agent("gateway-2", "STANDBY")]},
     {"key-mismatch": ERROR}),
    # --- Pod Security Admission
    ("PSA label missing", {"namespace_obj": {"metadata": {"name": NS}}}, {"psa-label-missing": ERROR}),
    ("PSA label baseline", {"namespace_obj": {"metadata": {"name": NS, "labels": {PSA_ENFORCE_LABEL: "baseline"}}}},
     {"psa-label-missing": ERROR}),
    ("namespace unreadable", {"namespace_obj": None, "namespace_error": "403 Forbidden"}, {"psa-unknown": WARNING}),
    # --- reads
    ("API unreachable", {"read_errors": ["API server unreachable: x"], "pods": [], "services": [],
                         "namespace_obj": None, "agents": [], "key_secret": SecretState.UNKNOWN},
     {"read-failed": ERROR}),
    ("a netagent socket does not answer", {"agents": [agent("gateway-1"), agent("gateway-2", error="UNAVAILABLE")]},
     {"netagent-unreachable": WARNING}),
]


@pytest.mark.parametrize(("over", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_diagnosis(over: dict[str, Any], expected: dict[str, str]) -> None:
    assert codes(healthy(**over)) == expected


def test_error_grace_is_the_threshold() -> None:
    snap = healthy(tunnel_endpoints=[tep(status="Error")],
                   agents=[agent("gateway-1", tunnels=(disconnected(NOW - 30),)), agent("gateway-2", "STANDBY")])
    assert codes(snap, grace=29) == {"tunnel-error": ERROR}
    assert codes(snap, grace=31) == {}


def test_every_finding_names_a_fix_and_its_cluster() -> None:
    bad = healthy(pods=[pod("gateway-1", STANDBY)], key_secret=SecretState.MISSING, key_public="",
                  namespace_obj={"metadata": {"name": NS}}, tunnel_endpoints=[tep(status="Error")])
    findings = diagnose([bad], Options())
    assert {f.code for f in findings} >= {"no-active-replica", "key-secret-missing", "psa-label-missing",
                                          "tunnel-error"}
    for f in findings:
        assert f.cluster == "a" and f.fix
    psa = next(f for f in findings if f.code == "psa-label-missing")
    assert f"kubectl label namespace {NS} {PSA_ENFORCE_LABEL}={PSA_PRIVILEGED}" in psa.fix


def _pair(mtu_b: int) -> tuple[Snapshot, Snapshot]:
    """Cluster a peers with b (a's TunnelEndpoint names b's key); b's active agent has `mtu_b`."""
    a = healthy()
    b = healthy(name="b", key_public=KEY_B, tunnel_endpoints=[tep("a-tep", key=KEY_A)],
                agents=[agent("gateway-1", mtu=mtu_b, key=KEY_B)])
    return a, b


@pytest.mark.parametrize(("mtu_b", "expected"), [(1340, {}), (1420, {"mtu-mismatch": ERROR})])
def test_mtu_between_the_two_ends(mtu_b: int, expected: dict[str, str]) -> None:
    a, b = _pair(mtu_b)
    assert codes(a, b) == expected
    findings = [f for f in diagnose([a, b], Options()) if f.code == "mtu-mismatch"]
    assert len(findings) == len(expected)  # reported once per peering, not once per side


def test_mtu_other_end_unknown_is_silent() -> None:
    a, b = _pair(1420)
    assert codes(a) == {}  # b not given: nothing to compare with
    assert codes(a, replace(b, agents=[])) == {}  # b's netagent not reachable
