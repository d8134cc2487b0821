"""End to end: the tunnel controllers of two "clusters" against the in-memory API server and REAL
netagents in two emulated nodes (sandbox.testkit.hosts), with overlapping pod CIDRs. A TunnelEndpoint on
each side must bring the WireGuard tunnel up and the status must reach Connected with a latency;
deleting it must remove the peer. The role is given to the agents with SetRole directly (the
labeler's election is tested on its own).

Skipped until the netagent runs (`liqo-netagent serve` with its kernel layers) and when not root.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.kubeapi import KubeAPIServer
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.kube import Backoff, KubeClient, Manager
from services.common.netagent_client import NetAgentClient
from services.common.vocabulary import TUNNEL_ENDPOINTS
from services.tunnel.controller import TunnelController, TunnelOptions

ROOT = Path(__file__).resolve().parents[2]
TEP = yaml.safe_load((ROOT / "examples/tunnelendpoint.yaml").read_text())


def _netagent_runs() -> str | None:
    """None when `liqo-netagent` can start, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("wireguard-go"):
        return "wireguard-go is not installed"
    r = subprocess.run([sys.executable, "-c", "import services.netagent.main"], capture_output=True,
                       text=True, cwd=ROOT, timeout=30)
    if r.returncode != 0:
        return f"liqo-netagent does not import yet: {r.stderr.strip().splitlines()[-1:]}"
    return None


pytestmark = [pytest.mark.root]
WHY = _netagent_runs()


@pytest.fixture
def two_nodes() -> Iterator[tuple[Any, Any]]:
    if WHY:
        pytest.skip(f"real netagent unavailable: {WHY}")
    from sandbox.testkit.hosts import Node, link_nodes

    with Node("ctl-a") as a, Node("ctl-b") as b:
        link_nodes(a, "192.0.2.1", b, "192.0.2.2")
        yield a, b


def start_agent(node: Any) -> tuple[Any, str]:
    proc = node.popen([str(ROOT / ".venv/bin/liqo-netagent"), "serve", "--socket", "/run/liqo/netagent.sock",
                       "--state-path", "/run/liqo/state.json"])
    sock = str(node.path("/run/liqo/netagent.sock"))
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError("netagent did not start")
        time.sleep(0.1)
    return proc, sock


def side(tep: dict[str, Any], cid: str, name: str, pod: str, remote_pod: str, nat_remote: str,
         nat_local: str, endpoint: str, key: str) -> dict[str, Any]:
    t = copy.deepcopy(tep)
    t["metadata"] = {"name": name, "namespace": "tenant"}
    t["spec"].update({
        "clusterIdentity": {"clusterID": cid, "clusterName": name},
        "localPodCIDR": pod, "localNATPodCIDR": nat_local, "remotePodCIDR": remote_pod,
        "remoteNATPodCIDR": nat_remote,
        "localExternalCIDR": "10.220.0.0/16" if name == "b" else "10.230.0.0/16",
        "remoteExternalCIDR": "10.230.0.0/16" if name == "b" else "10.220.0.0/16",
        "localNATExternalCIDR": "None", "remoteNATExternalCIDR": "None",
        "endpointIP": endpoint, "backend_config": {"publicKey": key, "port": "5871"},
    })
    return t


def test_tunnelendpoints_bring_up_a_real_tunnel(two_nodes: tuple[Any, Any]) -> None:
    a, b = two_nodes
    procs, mgrs, agents = [], [], []
    with KubeAPIServer(crd_dirs=[str(ROOT / "charts/liqo-gateway/crds")]) as api_a, \
         KubeAPIServer(crd_dirs=[str(ROOT / "charts/liqo-gateway/crds")]) as api_b:
        try:
            ctls = []
            for node, api, ip in ((a, api_a, "192.0.2.1"), (b, api_b, "192.0.2.2")):
                proc, sock = start_agent(node)
                procs.append(proc)
                kube = KubeClient(api.api_client(), timeout=3)
                for ns in ("liqo", "tenant"):
                    kube.request("POST", "/api/v1/namespaces",
                                 body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
                mgr = Manager("tunnel", kube, watch_timeout=10)
                agent = NetAgentClient(sock)
                ctl = TunnelController(mgr, agent, TunnelOptions(pod_namespace="liqo", pod_ip=ip,
                                                                 status_min_interval=0.5),
                                       backoff=Backoff(base=0.1, cap=1.0))
                mgr.start()
                mgrs.append(mgr)
                agents.append(agent)
                ctls.append((ctl, kube))
            for ctl, _ in ctls:
                assert ctl.device_ready.wait(20)
            for agent in agents:
                agent.set_role(pb.ROLE_ACTIVE, epoch=1, ttl=60, reason="test")
            key_a = ctls[0][0].keys.public_key  # type: ignore[union-attr]
            key_b = ctls[1][0].keys.public_key  # type: ignore[union-attr]
            # Both clusters use 10.200.0.0/16 for pods: each reaches the other's through a remapping.
            t0 = time.monotonic()
            tep_b = side(TEP, "cluster-b", "b", "10.200.0.0/16", "10.200.0.0/16",
                         "10.201.0.0/16", "10.202.0.0/16", "192.0.2.2", key_b)
            tep_a = side(TEP, "cluster-a", "a", "10.200.0.0/16", "10.200.0.0/16",
                         "10.202.0.0/16", "10.201.0.0/16", "192.0.2.1", key_a)
            ctls[0][1].create(TUNNEL_ENDPOINTS, tep_b, "tenant")
            ctls[1][1].create(TUNNEL_ENDPOINTS, tep_a, "tenant")
            deadline = time.monotonic() + 30
            conn: dict[str, Any] = {}
            while time.monotonic() < deadline:
                status = ctls[0][1].get(TUNNEL_ENDPOINTS, "b", "tenant").get("status") or {}
                conn = status.get("connection") or {}
                if conn.get("status") == "Connected":
                    break
                time.sleep(0.2)
            assert conn.get("status") == "Connected", conn
            took = time.monotonic() - t0
            print(f"\nTunnelEndpoint created -> Connected: {took:.2f}s, latency {conn['latency']}")
            assert conn["latency"]["value"] != "N/A"
            wg = a.exec_in_netns("liqo-netns", ["wg", "show", "liqo.tunnel", "peers"]).stdout
            assert key_b in str(wg)
            ctls[0][1].delete(TUNNEL_ENDPOINTS, "b", "tenant")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and key_b in str(
                    a.exec_in_netns("liqo-netns", ["wg", "show", "liqo.tunnel", "peers"]).stdout):
                time.sleep(0.2)
            peers = a.exec_in_netns("liqo-netns", ["wg", "show", "liqo.tunnel", "peers"]).stdout
            assert key_b not in str(peers)
        finally:
            for mgr in mgrs:
                mgr.shutdown()
            for agent in agents:
                agent.close()
            for p in procs:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
