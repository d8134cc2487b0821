"""`liqo-gateway status`: the tables computed from a snapshot, their text and JSON forms, the flags."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from services.common.vocabulary import ACTIVE, STANDBY
from services.status.diagnose import Options, diagnose
from services.status.main import EXIT_USAGE, build_parser, run, targets
from services.status.model import AgentTunnel
from services.status.render import render_json, render_text
from services.status.report import build_report, format_bytes, format_duration
from tests.unit.test_status_diagnose import KEY_A, NOW, agent, healthy, pod

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
