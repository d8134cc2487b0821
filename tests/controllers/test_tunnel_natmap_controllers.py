"""Tunnel and NatMapping controllers against the in-memory API server and an IN-PROCESS FAKE
netagent gRPC servicer (`sandbox.testkit.fakeagent.FakeNetAgent`).

What this proves: the controllers' Kubernetes side and their use of the netagent API (role gating,
finalizers, validation, status from the status stream, orphan collection, retries when a cluster's
tunnel is not ready, catching up after an API outage). It does NOT prove the dataplane: the fake
records calls and programs nothing. The dataplane proof is test_controllers_e2e.py with a real
netagent.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.kubeapi import KubeAPIServer
from sandbox.testkit.fakeagent import FakeNetAgent, serve
from sandbox.testkit.resources import namespace
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import parse_secret
from services.common.kube import EVENTS, SECRETS, Backoff, KubeClient, Manager
from services.common.netagent_client import NetAgentClient
from services.common.vocabulary import FINALIZER, NAMESPACES, NAT_MAPPINGS, TUNNEL_ENDPOINTS
from services.natmap.controller import NatMappingController
from services.tunnel.controller import TunnelController, TunnelOptions

ROOT = Path(__file__).resolve().parents[2]
NS = "liqo-tenant-cluster-b"
GW_NS = "liqo"
TEP = yaml.safe_load((ROOT / "examples/tunnelendpoint.yaml").read_text())
NM = yaml.safe_load((ROOT / "examples/natmapping.yaml").read_text())
CID = TEP["spec"]["clusterIdentity"]["clusterID"]


@pytest.fixture
def env() -> Iterator[tuple[KubeAPIServer, KubeClient, FakeNetAgent, str]]:
    fake = FakeNetAgent()
    # The socket's directory goes as a whole once the server has stopped (a stopping gRPC server
    # removes its socket itself: checking, then unlinking, would race with it).
    with tempfile.TemporaryDirectory(prefix="liqo-ctl-") as tmp:
        sock = os.path.join(tmp, "agent.sock")
        server = serve(fake, sock)
        try:
            with KubeAPIServer(crd_dirs=[str(ROOT / "charts/liqo-gateway/crds")]) as api:
                kube = KubeClient(api.api_client(), timeout=3)
                for ns in (NS, GW_NS):
                    kube.create(NAMESPACES, namespace(ns))
                yield api, kube, fake, sock
        finally:
            server.stop(0).wait()


def start_tunnel(api: KubeAPIServer, sock: str) -> tuple[Manager, TunnelController, NetAgentClient]:
    kube = KubeClient(api.api_client(), timeout=3)
    mgr = Manager("liqo-tunnel-controller", kube, watch_timeout=5)
    agent = NetAgentClient(sock, timeout=3, retry_deadline=2)
    ctl = TunnelController(mgr, agent, TunnelOptions(pod_namespace=GW_NS, pod_ip="10.0.0.5", dns_refresh=1.0,
                                                     status_min_interval=0.1, device_check_interval=0.5),
                           workers=2, resync_period=30, backoff=Backoff(base=0.05, cap=0.5))
    mgr.start()
    return mgr, ctl, agent


def get_tep(kube: KubeClient, name: str = TEP["metadata"]["name"]) -> dict[str, Any]:
    return kube.get(TUNNEL_ENDPOINTS, name, NS)


def reasons(kube: KubeClient, ns: str) -> list[str]:
    return [e["reason"] for e in kube.list(EVENTS, ns)["items"]]


def test_tunnel_controller_lifecycle(env: tuple[KubeAPIServer, KubeClient, FakeNetAgent, str]) -> None:
    api, kube, fake, sock = env
    fake.tunnels["orphan-cluster"] = pb.Tunnel(cluster_id="orphan-cluster", endpoint="192.0.2.99",
                                               endpoint_port=1, remote_pod_cidr="10.99.0.0/16",
                                               remote_external_cidr="10.98.0.0/16")
    kube.create(TUNNEL_ENDPOINTS, TEP, NS)
    mgr, ctl, agent = start_tunnel(api, sock)
    try:
        # The key Secret is created and handed to the agent, even while standby.
        secret = wait_for("key Secret created and device configured",
                          lambda: fake.public_key and kube.get(SECRETS, "wireguard-pubkey", GW_NS), 10.0)
        assert parse_secret(secret).public_key == fake.public_key
        assert secret["metadata"]["labels"] == {"net.liqo.io/key": "wireguard"}
        time.sleep(0.5)
        # Standby: nothing mutated, no finalizer, orphan untouched.
        assert not [c for c in fake.calls if c.startswith(("EnsureTunnel", "DeleteTunnel"))]
        assert FINALIZER not in (get_tep(kube)["metadata"].get("finalizers") or [])

        t0 = time.monotonic()
        fake.set_role(pb.ROLE_ACTIVE)
        wait_for("EnsureTunnel", lambda: CID in fake.tunnels, 10.0)
        assert FINALIZER in get_tep(kube)["metadata"]["finalizers"]
        wait_for("orphan removed", lambda: "orphan-cluster" not in fake.tunnels, 10.0)
        st = wait_for("status", lambda: (get_tep(kube).get("status") or {}).get("connection"), 10.0)
        assert st["status"] == "Connecting"
        assert st["statusMessage"] == "Waiting VPN connection to be established"
        assert get_tep(kube)["status"]["gatewayIP"] == "10.0.0.5"
        assert st["peerConfiguration"]["allowedIPs"] == "10.201.0.0/16, 10.230.0.0/16"
        t = fake.tunnels[CID]
        assert (t.remote_nat_pod_cidr, t.local_nat_external_cidr) == ("10.201.0.0/16", "None")
        assert t.endpoint_port == 5871

        fake.set_state(CID, pb.TUNNEL_STATE_CONNECTED)
        conn = wait_for("Connected", lambda: (get_tep(kube)["status"]["connection"]["status"] == "Connected")
                        and get_tep(kube)["status"]["connection"], 10.0)
        print(f"\nCR active -> Connected in status: {time.monotonic() - t0:.3f}s")
        assert conn["latency"]["value"] == "12ms"
        assert conn["statusMessage"] == "VPN connection established"

        # Editing the spec converges (new key and endpoint).
        obj = get_tep(kube)
        new_key = "c2Vjb25kZXhhbXBsZWtleWZvcmNsdXN0ZXJjMTIzNDU="
        kube.patch(TUNNEL_ENDPOINTS, obj["metadata"]["name"],
                   {"spec": {"endpointIP": "192.0.2.77",
                             "backend_config": {"publicKey": new_key, "port": "5872"}}}, NS)
        wait_for("converged edit", lambda: (fake.tunnels[CID].public_key, fake.tunnels[CID].endpoint)
                 == (new_key, "192.0.2.77"), 10.0)

        # An invalid spec (passes the schema, fails semantics): Error + Event, no netagent call.
        bad = copy.deepcopy(TEP)
        bad["metadata"]["name"] = "bad"
        bad["spec"]["clusterIdentity"]["clusterID"] = "other-cluster"
        bad["spec"]["remoteNATPodCIDR"] = "10.220.0.0/16"  # on our external CIDR
        kube.create(TUNNEL_ENDPOINTS, bad, NS)
        st = wait_for("bad status", lambda: (get_tep(kube, "bad").get("status") or {}).get("connection"),
                      10.0)
        assert st["status"] == "Error" and "overlaps" in st["statusMessage"]
        assert "InvalidSpec" in wait_for("events", lambda: reasons(kube, NS), 10.0)
        assert "other-cluster" not in fake.tunnels
        assert not [c for c in fake.calls if "other-cluster" in c]

        # Standby again: mutations stop at once.
        fake.set_role(pb.ROLE_STANDBY)
        wait_for("paused", lambda: ctl.controller.paused, 10.0)
        n_calls = len(fake.calls)
        late = copy.deepcopy(TEP)
        late["metadata"]["name"] = "late"
        late["spec"]["clusterIdentity"]["clusterID"] = "late-cluster"
        late["spec"]["remotePodCIDR"] = "10.240.0.0/16"
        late["spec"]["remoteNATPodCIDR"] = "None"
        late["spec"]["remoteExternalCIDR"] = "10.250.0.0/16"
        kube.create(TUNNEL_ENDPOINTS, late, NS)
        time.sleep(1.0)
        assert [c for c in fake.calls[n_calls:] if not c.startswith("ConfigureDevice")] == []
        # ... and resume with a full resync.
        fake.set_role(pb.ROLE_ACTIVE)
        wait_for("late tunnel after resume", lambda: "late-cluster" in fake.tunnels, 10.0)

        # Deletion removes the tunnel and the finalizer.
        kube.delete(TUNNEL_ENDPOINTS, TEP["metadata"]["name"], NS)
        wait_for("DeleteTunnel", lambda: CID not in fake.tunnels, 10.0)

        def gone() -> bool:
            try:
                get_tep(kube)
                return False
            except Exception:
                return True
        wait_for("object gone", gone, 10.0)
    finally:
        mgr.shutdown()
        agent.close()


def test_natmap_controller(env: tuple[KubeAPIServer, KubeClient, FakeNetAgent, str]) -> None:
    api, kube, fake, sock = env
    fake.set_role(pb.ROLE_ACTIVE)
    mgr = Manager("liqo-natmap-controller", KubeClient(api.api_client(), timeout=3), watch_timeout=5)
    agent = NetAgentClient(sock, timeout=3, retry_deadline=2)
    ctl = NatMappingController(mgr, agent, workers=2, resync_period=30, backoff=Backoff(base=0.05, cap=0.5))
    mgr.start()
    try:
        nm = copy.deepcopy(NM)
        nm["spec"]["clusterMappings"]["10.200.3.9"] = "10.99.0.1"  # outside externalCIDR: reported
        kube.create(NAT_MAPPINGS, nm)
        # No tunnel yet: retried with backoff, reported.
        wait_for("TunnelNotReady event", lambda: "TunnelNotReady" in reasons(kube, "default"), 10.0)
        assert CID not in fake.nat
        # The tunnel appears (TunnelEndpoint + netagent tunnel): applied without waiting for a resync.
        fake.tunnels[CID] = pb.Tunnel(cluster_id=CID, endpoint="192.0.2.10", endpoint_port=5871,
                                      remote_pod_cidr="10.201.0.0/16", remote_external_cidr="10.230.0.0/16")
        kube.create(TUNNEL_ENDPOINTS, TEP, NS)
        wait_for("mappings applied", lambda: CID in fake.nat, 10.0)
        assert fake.nat[CID] == {"169.254.0.1": "10.220.0.1", "10.200.3.7": "10.220.0.2",
                                 "192.168.1.20": "10.220.0.3"}
        assert "InvalidMappings" in reasons(kube, "default")
        # Change.
        kube.patch(NAT_MAPPINGS, nm["metadata"]["name"], {"spec": {"clusterMappings": {"10.200.3.7": None}}})
        wait_for("mapping removed", lambda: "10.200.3.7" not in fake.nat.get(CID, {"10.200.3.7": ""}), 10.0)
        # API outage: nothing crashes; changes made meanwhile are caught up afterwards.
        api.hooks.pause(3)
        time.sleep(3.5)
        kube.patch(NAT_MAPPINGS, nm["metadata"]["name"],
                   {"spec": {"clusterMappings": {"10.200.4.4": "10.220.0.4"}}})
        wait_for("caught up after the outage",
                 lambda: fake.nat.get(CID, {}).get("10.200.4.4") == "10.220.0.4", 15)
        # Deletion.
        kube.delete(NAT_MAPPINGS, nm["metadata"]["name"])
        wait_for("DeleteNatMappings", lambda: CID not in fake.nat, 10.0)
        assert ctl.controller.alive()
    finally:
        mgr.shutdown()
        agent.close()


def test_resource_exhausted_is_retried_with_backoff_and_reported(
    env: tuple[KubeAPIServer, KubeClient, FakeNetAgent, str]
) -> None:
    """A netagent bound (--max-tunnels, --max-nat-entries): a Warning Event, retries with backoff
    (not a tight loop), and the object is applied once there is room."""
    api, kube, fake, sock = env
    fake.set_role(pb.ROLE_ACTIVE)
    fake.exhausted = {"EnsureTunnel", "SetNatMappings"}
    mgr, _ctl, agent = start_tunnel(api, sock)
    nm_mgr = Manager("liqo-natmap-controller", KubeClient(api.api_client(), timeout=3), watch_timeout=5)
    nm_agent = NetAgentClient(sock, timeout=3, retry_deadline=2)
    NatMappingController(nm_mgr, nm_agent, workers=2, resync_period=30, backoff=Backoff(base=0.2, cap=0.5))
    nm_mgr.start()
    try:
        kube.create(TUNNEL_ENDPOINTS, TEP, NS)
        wait_for("ResourceExhausted on the TunnelEndpoint",
                 lambda: "ResourceExhausted" in reasons(kube, NS), 10.0)
        t0 = time.monotonic()
        time.sleep(1.0)
        with fake.lock:
            ensures = sum(c.startswith("EnsureTunnel") for c in fake.calls)
        assert 1 <= ensures <= 12, f"{ensures} EnsureTunnel calls in {time.monotonic() - t0:.1f} s"
        fake.exhausted.discard("EnsureTunnel")
        wait_for("EnsureTunnel once there is room", lambda: CID in fake.tunnels, 10.0)
        kube.create(NAT_MAPPINGS, copy.deepcopy(NM))
        wait_for("ResourceExhausted on the NatMapping",
                 lambda: "ResourceExhausted" in reasons(kube, "default"), 10.0)
        assert CID not in fake.nat
        fake.exhausted.clear()
        wait_for("mappings applied once there is room", lambda: CID in fake.nat, 10.0)
    finally:
        nm_mgr.shutdown()
        nm_agent.close()
        mgr.shutdown()
        agent.close()


def test_device_without_key_on_watchrole_is_configured_at_once(
    env: tuple[KubeAPIServer, KubeClient, FakeNetAgent, str]
) -> None:
    """WatchRole saying `device_configured: false` (wireguard-go restarted while the agent had no key
    in memory) makes the device keeper call ConfigureDevice at once, not at its device check."""
    api, _kube, fake, sock = env
    kube = KubeClient(api.api_client(), timeout=3)
    mgr = Manager("liqo-tunnel-controller", kube, watch_timeout=5)
    agent = NetAgentClient(sock, timeout=3, retry_deadline=2)
    ctl = TunnelController(mgr, agent, TunnelOptions(pod_namespace=GW_NS, pod_ip="10.0.0.5",
                                                     device_check_interval=60.0),
                           workers=1, resync_period=30, backoff=Backoff(base=0.05, cap=0.5))
    mgr.start()
    try:
        assert ctl.device_ready.wait(10), "the first ConfigureDevice never came"
        key = fake.public_key
        time.sleep(0.3)  # the stream has said "configured" by now
        configured = fake.calls.count("ConfigureDevice")
        t0 = time.monotonic()
        fake.lose_key()
        wait_for("ConfigureDevice again", lambda: fake.calls.count("ConfigureDevice") > configured, 5, 0.01)
        took = time.monotonic() - t0
        print(f"\nWatchRole device_configured=false -> ConfigureDevice: {took:.3f}s")
        assert took < 1.0, f"the device keeper waited {took:.3f}s (its device check is 60 s away)"
        assert fake.public_key == key, "the same key pair, from the Secret"
    finally:
        mgr.shutdown()
        agent.close()
        kube.close()
