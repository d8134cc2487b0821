"""`liqo-gateway status` against the sandbox: the standard peered pair (A with two replicas, B with
one; every process real), healthy first, then each unhealthy state produced for real and undone.

One pair for the module (starting it costs ~30 s); each test mutates it, restores it in a `finally`
and waits until the command says healthy again, so the next test starts from a healthy pair.
States the sandbox cannot produce for real are tested on data in tests/unit/test_status_diagnose.py:
two ACTIVE netagents (fencing prevents it), two pods labelled active (the labeler reverts it at
once, so it would race the read), and an MTU mismatch (the MTU is fixed when a device is created).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sandbox.testkit.cluster import EmulatedCluster, Peering, Wan, peer
from sandbox.testkit.cluster.follower import SERVICE_NAME
from sandbox.testkit.cluster.standard import A_SEES_B, B_SEES_A
from sandbox.testkit.netagent import ROOT
from sandbox.testkit.resources import namespace as namespace_body
from sandbox.testkit.resources import tunnel_endpoint
from sandbox.testkit.wait import wait_for
from services.common.keys import generate
from services.common.kube import KubeError
from services.common.vocabulary import (
    ACTIVE,
    GATEWAY_LABEL,
    KEY_SECRET,
    NAMESPACES,
    PODS,
    PSA_ENFORCE_LABEL,
    PSA_PRIVILEGED,
    SECRETS,
    SERVICES,
    STANDBY,
    TUNNEL_ENDPOINTS,
)
from services.status.main import EXIT_FINDINGS, EXIT_HEALTHY, run

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not shutil.which("wireguard-go"):
    pytest.skip("needs root and wireguard-go", allow_module_level=True)


@dataclass
class Pair:
    a: EmulatedCluster
    b: EmulatedCluster
    peering: Peering

    def argv(self, *extra: str) -> list[str]:
        """The command line reading both clusters and every replica's operator socket."""
        out = ["status"]
        for c in (self.a, self.b):
            out += ["--kubeconfig", f"{c.name}={c.kubeconfig_path}"]
        for c in (self.a, self.b):
            out += [a for r in c.replicas for a in ("--netagent-socket", f"{c.name}/{r.name}={r.socket}")]
        return [*out, *extra]

    def status(self, *extra: str) -> tuple[int, dict[str, Any]]:
        """Runs the command in this process with --output json: (exit status, document)."""
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = run(self.argv("--output", "json", *extra), env={})
        return rc, json.loads(buf.getvalue())

    def codes(self, *extra: str) -> tuple[int, set[tuple[str, str]]]:
        rc, doc = self.status(*extra)
        return rc, {(f["cluster"], f["code"]) for f in doc["findings"]}

    def wait_healthy(self, timeout: float = 60) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def healthy() -> bool:
            nonlocal last
            rc, last = self.status()
            return rc == EXIT_HEALTHY
        try:
            wait_for("status healthy", healthy, timeout, 0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}\nlast findings: {last.get('findings')}") from None
        return last


PSA_LABELLED = {"metadata": {"labels": {PSA_ENFORCE_LABEL: PSA_PRIVILEGED}}}


def cluster(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in doc["clusters"] if c["name"] == name)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("status")
    with Wan() as wan, \
         EmulatedCluster("a", 1, wan, replicas=2, workdir=tmp / "a") as a, \
         EmulatedCluster("b", 2, wan, replicas=1, workdir=tmp / "b") as b:  # fmt: skip
        for c in (a, b):
            c.start()
        for c in (a, b):
            # What the installation does first (README "Install with Helm"); the kit leaves it out.
            c.client.patch(NAMESPACES, c.namespace, PSA_LABELLED)
            wait_for(f"{c.name}: a leader", lambda c=c: any(r.is_active() for r in c.replicas), 30, 0.1)
            c.public_key()
        p = Pair(a, b, peer(a, b, a_sees_b=A_SEES_B, b_sees_a=B_SEES_A))
        a.wait_connected(p.peering.in_a, 60)
        b.wait_connected(p.peering.in_b, 60)
        p.wait_healthy()
        yield p


@pytest.mark.timeout(120)
def test_healthy_pair(pair: Pair) -> None:
    # Bytes and a handshake come with the probe's traffic; wait for the tables to carry them.
    def with_traffic() -> dict[str, Any] | None:
        rc, doc = pair.status()
        t = cluster(doc, "a")["tunnels"]
        return doc if rc == EXIT_HEALTHY and t and t[0]["rx_bytes"] and t[0]["handshake_age_s"] is not None \
            else None
    doc = wait_for("a's tunnel with bytes and a handshake", with_traffic, 30, 0.5)
    assert doc["healthy"] is True and doc["findings"] == []
    a = cluster(doc, "a")
    leader = a["lease"]["holder"]
    standby = next(r.name for r in pair.a.replicas if r.name != leader)
    assert {(r["pod"], r["label"], r["agent_role"]) for r in a["replicas"]} == {
        (leader, ACTIVE, "ACTIVE"), (standby, STANDBY, "STANDBY")}
    assert [r["pod"] for r in a["replicas"] if r["lease_holder"]] == [leader]
    assert all(r["mtu"] == 1340 and r["epoch"] is not None for r in a["replicas"])
    (tep,) = a["tunnels"]
    assert tep["name"] == "/".join(reversed(pair.peering.in_a)) and tep["status"] == "Connected"
    assert tep["latency"] not in ("", "N/A") and tep["rx_bytes"] > 0 and tep["tx_bytes"] > 0
    b = cluster(doc, "b")
    assert [(r["pod"], r["label"], r["agent_role"]) for r in b["replicas"]] == [
        ("gateway-1", ACTIVE, "ACTIVE")]
    assert b["tunnels"][0]["status"] == "Connected"
    # The console script's text form, as an operator runs it: exit 0 and the tables.
    cp = subprocess.run([sys.executable, "-m", "services.status.main", *pair.argv()], cwd=ROOT,
                        capture_output=True, text=True, timeout=60, check=False)
    print(cp.stdout)
    assert cp.returncode == EXIT_HEALTHY, cp.stdout + cp.stderr
    assert "cluster a (namespace liqo)" in cp.stdout and "Connected" in cp.stdout
    assert f"holder {leader}" in cp.stdout and "diagnosis: healthy" in cp.stdout
    # Without any socket the Kubernetes view alone is still healthy.
    kube_only = ["status", "--kubeconfig", f"a={pair.a.kubeconfig_path}", "--output", "json"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run(kube_only, env={}) == EXIT_HEALTHY
    assert cluster(json.loads(buf.getvalue()), "a")["tunnels"][0]["rx_bytes"] is None
    # A socket that does not answer is a warning: still exit 0.
    rc, doc = pair.status("--netagent-socket", f"a/gateway-9={pair.a.workdir / 'absent.sock'}")
    assert rc == EXIT_HEALTHY
    assert [(f["cluster"], f["code"], f["severity"]) for f in doc["findings"]] == [
        ("a", "netagent-unreachable", "warning")]


@pytest.mark.timeout(120)
def test_api_server_unreachable(pair: Pair) -> None:
    """A's API server refuses connections for a while (the kit's staged outage): exit 1, B still read."""
    pair.a.pause_api(4)
    rc, doc = pair.status()
    assert rc == EXIT_FINDINGS
    assert {(f["cluster"], f["code"]) for f in doc["findings"]} == {("a", "read-failed")}
    assert cluster(doc, "a")["read_errors"] and cluster(doc, "b")["tunnels"][0]["status"] == "Connected"
    pair.wait_healthy()


@pytest.mark.timeout(120)
def test_key_secret_missing(pair: Pair) -> None:
    b = pair.b
    r = b.replicas[0]
    secret = b.client.get(SECRETS, KEY_SECRET, b.namespace)  # kept in memory only, never printed
    body = {"metadata": {k: v for k, v in secret["metadata"].items() if k in ("name", "labels")},
            "type": secret.get("type", "Opaque"), "data": secret["data"]}
    # The tunnel controller would create a new pair within its 10 s device check: stop it meanwhile.
    r.stop("tunnel")
    try:
        b.client.delete(SECRETS, KEY_SECRET, b.namespace)
        rc, codes = pair.codes()
        assert rc == EXIT_FINDINGS
        assert codes == {("b", "key-secret-missing")}
    finally:
        with contextlib.suppress(KubeError):
            b.client.create(SECRETS, body, b.namespace)
        r.start_process("tunnel")
    pair.wait_healthy()


@pytest.mark.timeout(120)
def test_psa_label_missing(pair: Pair) -> None:
    a = pair.a
    a.client.patch(NAMESPACES, a.namespace, {"metadata": {"labels": {PSA_ENFORCE_LABEL: None}}})
    try:
        rc, codes = pair.codes()
        assert rc == EXIT_FINDINGS and codes == {("a", "psa-label-missing")}
    finally:
        a.client.patch(NAMESPACES, a.namespace, PSA_LABELLED)
    pair.wait_healthy()


@pytest.mark.timeout(120)
def test_service_selects_nothing(pair: Pair) -> None:
    a = pair.a
    a.client.patch(SERVICES, SERVICE_NAME, {"spec": {"selector": {GATEWAY_LABEL: "nobody"}}}, a.namespace)
    try:
        rc, doc = pair.status()
        assert rc == EXIT_FINDINGS
        (f,) = doc["findings"]
        assert (f["cluster"], f["code"], f["severity"]) == ("a", "service-not-active", "error")
        assert "selects no pod" in f["message"] and f["fix"]
    finally:
        a.client.patch(SERVICES, SERVICE_NAME, {"spec": {"selector": {GATEWAY_LABEL: ACTIVE}}}, a.namespace)
    pair.wait_healthy()


@pytest.mark.timeout(150)
def test_tunnel_endpoint_in_error(pair: Pair) -> None:
    """A TunnelEndpoint towards a gateway nobody runs: the probe gives up and its status turns Error;
    the command flags it only once it is older than --error-grace (the agent's state_since)."""
    a = pair.a
    ns, name = "liqo-tenant-ghost", "ghost-tep"
    tep = tunnel_endpoint(name=name, namespace=ns, cluster_id="ghost-cluster", local_pod=a.pod_cidr,
                          local_ext=a.external_cidr, remote_pod="10.61.0.0/16", remote_ext="10.71.0.0/16",
                          endpoint="172.31.0.99", public_key=generate().public_key)
    with contextlib.suppress(KubeError):
        a.client.create(NAMESPACES, namespace_body(ns))
    a.client.create(TUNNEL_ENDPOINTS, tep, ns)
    try:
        def in_error() -> bool:
            return (a.tunnel_status(name, ns).get("connection") or {}).get("status") == "Error"
        wait_for("ghost TunnelEndpoint in Error", in_error, 30, 0.2)
        rc, codes = pair.codes("--error-grace", "600")
        assert rc == EXIT_HEALTHY and codes == set()  # in Error, but for less than the grace
        def flagged() -> bool:
            rc, codes = pair.codes("--error-grace", "1")
            return rc == EXIT_FINDINGS and codes == {("a", "tunnel-error")}
        wait_for("tunnel-error finding with --error-grace 1", flagged, 20, 0.5)
        _, doc = pair.status()
        row = next(t for t in cluster(doc, "a")["tunnels"] if t["name"] == f"{ns}/{name}")
        assert row["status"] == "Error" and row["handshake_age_s"] is None
    finally:
        with contextlib.suppress(KubeError):
            a.client.delete(TUNNEL_ENDPOINTS, name, ns)
        wait_for("ghost TunnelEndpoint gone", lambda: not _exists(a, name, ns), 30, 0.2)
    pair.wait_healthy()


def _exists(c: EmulatedCluster, name: str, ns: str) -> bool:
    try:
        c.client.get(TUNNEL_ENDPOINTS, name, ns)
        return True
    except KubeError as e:
        if e.not_found:
            return False
        raise


@pytest.mark.timeout(150)
def test_no_active_replica(pair: Pair) -> None:
    """B's only labeler stopped: it sets its netagent STANDBY and releases the Lease; its pod keeps
    the label nobody rewrites (no-active-agent). Labelled standby by hand: no-active-replica too."""
    b = pair.b
    r = b.replicas[0]
    r.stop("labeler")
    try:
        wait_for("b's netagent standby", lambda: not r.is_active(), 20, 0.1)
        rc, codes = pair.codes()
        assert rc == EXIT_FINDINGS and ("b", "no-active-agent") in codes
        b.client.patch(PODS, r.name, {"metadata": {"labels": {GATEWAY_LABEL: STANDBY}}}, b.namespace)
        rc, codes = pair.codes()
        assert rc == EXIT_FINDINGS
        assert {("b", "no-active-replica"), ("b", "no-active-agent")} <= codes
        assert not any(c == "a" and code != "tunnel-error" for c, code in codes)  # A's side is fine
    finally:
        r.start_process("labeler")
    pair.wait_healthy(90)
