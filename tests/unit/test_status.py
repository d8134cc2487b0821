"""`liqo-gateway status` on data: every diagnosis as a table row, present and absent, over plain
snapshots; the report's rows, their text and JSON forms, and the flags' exit codes."""

# ruff: noqa: E501  (one table row per line reads best)

from __future__ import annotations

import json
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
from services.status.main import EXIT_USAGE, build_parser, run, targets
from services.status.model import ERROR, WARNING, AgentRead, AgentTunnel, SecretState, Snapshot
from services.status.render import render_json, render_text
from services.status.report import build_report, format_bytes, format_duration

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


def slices(*eps: tuple[str, bool]) -> dict[str, list[dict[str, Any]]]:
    """The gateway Service's one EndpointSlice with (address, ready) endpoints."""
    return {"liqo-gateway": [{"endpoints": [{"addresses": [a], "conditions": {"ready": r}} for a, r in eps]}]}


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
    ("endpoints: the active pod", {"endpoint_slices": slices(("10.1.0.1", True))}, {}),
    ("endpoints: the standby not ready too", {"endpoint_slices": slices(("10.1.0.1", True), ("10.1.0.2", False))}, {}),
    ("endpoints: still the old pod", {"endpoint_slices": slices(("10.1.0.2", True))},
     {"service-endpoints-not-active": ERROR}),
    ("endpoints: both pods", {"endpoint_slices": slices(("10.1.0.1", True), ("10.1.0.2", True))},
     {"service-endpoints-not-active": ERROR}),
    ("no EndpointSlice for it: selector only", {"endpoint_slices": {"liqo-gateway": []}}, {}),
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


# --- the report, its rendering and the flags --------------------------------------------------

CONNECTED = AgentTunnel("cid-b", "liqo-tenant-b/b-tep", "CONNECTED", 0.004, 3.2, 6540, 6740, 2, NOW - 50)


def nat_mapping(cid: str, n: int) -> dict[str, object]:
    return {"metadata": {"name": f"nm-{cid}-{n}"},
            "spec": {"clusterID": cid, "clusterMappings": {f"10.0.0.{i}": f"10.70.0.{i}" for i in range(n)}}}


def test_report_rows_from_kubernetes_and_the_agents() -> None:
    snap = healthy(agents=[agent("gateway-1", tunnels=(CONNECTED,)), agent("gateway-2", "STANDBY")],
                   nat_mappings=[nat_mapping("cid-b", 2), nat_mapping("other", 5)])
    r = build_report(snap)
    assert [(p.pod, p.label, p.agent_role, p.epoch, p.lease_holder) for p in r.replicas] == [
        ("gateway-1", ACTIVE, "ACTIVE", 3, True), ("gateway-2", STANDBY, "STANDBY", 3, False)]
    assert r.lease is not None and r.lease.holder == "gateway-1"
    assert r.lease.held_for_s == pytest.approx(100, abs=0.01) and r.lease.transitions == 3
    (t,) = r.tunnels
    assert (t.name, t.cluster, t.status, t.latency, t.rx_bytes, t.nat_entries, t.agent_nat_entries) == (
        "liqo-tenant-b/b-tep", "b", "Connected", "4ms", 6540, 2, 2)
    assert t.handshake_age_s == pytest.approx(3.2)


def test_without_sockets_the_kubernetes_view_remains() -> None:
    r = build_report(healthy(agents=[]))
    assert [p.agent_role for p in r.replicas] == ["", ""]
    assert r.tunnels[0].rx_bytes is None and r.tunnels[0].status == "Connected"


def test_unreachable_and_unattributed_agents_have_rows() -> None:
    r = build_report(healthy(agents=[agent("gateway-1", error="UNAVAILABLE"), agent("")]))
    roles = {p.pod: p.agent_role for p in r.replicas}
    assert roles == {"gateway-1": "unreachable", "gateway-2": "", "(local netagent)": "ACTIVE"}


def test_text_and_json() -> None:
    snap = healthy(agents=[agent("gateway-1", tunnels=(CONNECTED,)), agent("gateway-2", "STANDBY")])
    bad = replace(snap, pods=[pod("gateway-1", STANDBY), pod("gateway-2", STANDBY)])
    findings = diagnose([bad], Options())
    text = render_text([build_report(bad)], findings)
    assert "REPLICA" in text and "gateway-1" in text and "holder" in text
    assert "liqo-tenant-b/b-tep" in text and "6.4 KiB" in text and "3.2s ago" in text
    assert "ERROR   [a] no-active-replica" in text and "fix: " in text
    doc = json.loads(render_json([build_report(bad)], findings))
    assert doc["healthy"] is False
    assert doc["clusters"][0]["tunnels"][0]["rx_bytes"] == 6540
    assert {f["code"] for f in doc["findings"]} >= {"no-active-replica"}
    assert "diagnosis: healthy" in render_text([build_report(snap)], [])
    assert KEY_A not in text  # the table never needs a key; the snapshot holds only public ones anyway


@pytest.mark.parametrize(("seconds", "text"), [(0.00085, "850µs"), (0.012, "12ms"), (4.24, "4.2s"),
                                               (190, "3m10s"), (7500, "2h05m")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("n", "text"), [(512, "512 B"), (6540, "6.4 KiB"), (3 * 2**20, "3.0 MiB")])
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


Row = tuple[str, str | None, tuple[tuple[str, str], ...]]


def _targets(*argv: str, env: dict[str, str] | None = None) -> list[Row]:
    args = build_parser().parse_args(["status", *argv])
    return [(t.name, t.kubeconfig, t.sockets) for t in targets(args, env or {})]


def test_targets_name_clusters_and_attribute_sockets() -> None:
    assert _targets("--kubeconfig", "a=/k/a", "--kubeconfig", "b=/k/b",
                    "--netagent-socket", "a/gateway-1=/s1", "--netagent-socket", "b/gateway-1=/s2") == [
        ("a", "/k/a", (("gateway-1", "/s1"),)), ("b", "/k/b", (("gateway-1", "/s2"),))]
    # one cluster: no CLUSTER/ needed; no POD=: the local pod from POD_NAME
    assert _targets("--kubeconfig", "a=/k/a", "--netagent-socket", "/s", env={"POD_NAME": "gw-x"}) == [
        ("a", "/k/a", (("gw-x", "/s"),))]


@pytest.mark.parametrize("argv", [
    ["--kubeconfig", "a=/k/a", "--kubeconfig", "b=/k/b", "--netagent-socket", "gateway-1=/s"],
    ["--kubeconfig", "a=/k/a", "--netagent-socket", "c/gateway-1=/s"],
    ["--kubeconfig", "a=/nonexistent/kubeconfig"],
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["status", *argv], env={}) == EXIT_USAGE
    assert "liqo-gateway status:" in capsys.readouterr().err


def test_bad_flag_exits_2() -> None:
    with pytest.raises(SystemExit) as e:
        run(["status", "--output", "yaml"], env={})
    assert e.value.code == EXIT_USAGE
