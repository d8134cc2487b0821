"""End to end: the tunnel controllers of two "clusters" against the in-memory API server and REAL
netagents in two emulated nodes (sandbox.testkit), with overlapping pod CIDRs. A TunnelEndpoint on
each side must bring the WireGuard tunnel up and the status must reach Connected with a latency;
deleting it must remove the peer. The role is given to the agents with SetRole directly (the
labeler's election is tested on its own). Skipped when not root or without wireguard-go.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox.kubeapi import KubeAPIServer
from sandbox.testkit.hosts import Node, link_nodes
from sandbox.testkit.lab import CRDS, why_unavailable
from sandbox.testkit.netagent import NetAgent
from sandbox.testkit.resources import namespace, tunnel_endpoint
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.kube import Backoff, KubeClient, Manager
from services.common.vocabulary import NAMESPACES, TUNNEL_ENDPOINTS
from services.tunnel.controller import TunnelController, TunnelOptions

pytestmark = [pytest.mark.root]


@pytest.fixture
def two_nodes(node_factory: Callable[[str], Node]) -> tuple[Node, Node]:
    if why := why_unavailable():
        pytest.skip(f"real netagent unavailable: {why}")
    a, b = node_factory("ctl-a"), node_factory("ctl-b")
    link_nodes(a, "192.0.2.1", b, "192.0.2.2")
    return a, b


def side(cid: str, name: str, pod: str, remote_pod: str, nat_remote: str, nat_local: str, endpoint: str,
         key: str) -> dict[str, Any]:
    return tunnel_endpoint(
        name=name, namespace="tenant", cluster_id=cid, local_pod=pod, local_nat_pod=nat_local,
        remote_pod=remote_pod, remote_nat_pod=nat_remote,
        local_ext="10.220.0.0/16" if name == "b" else "10.230.0.0/16",
        remote_ext="10.230.0.0/16" if name == "b" else "10.220.0.0/16",
        endpoint=endpoint, public_key=key,
    )


def peers(node: Node) -> str:
    return node.exec_in_netns("liqo-netns", ["wg", "show", "liqo.tunnel", "peers"]).stdout


def test_tunnelendpoints_bring_up_a_real_tunnel(two_nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, b = two_nodes
    with contextlib.ExitStack() as stack:
        api_a = stack.enter_context(KubeAPIServer(crd_dirs=[str(CRDS)]))
        api_b = stack.enter_context(KubeAPIServer(crd_dirs=[str(CRDS)]))
        ctls = []
        for node, api, ip in ((a, api_a, "192.0.2.1"), (b, api_b, "192.0.2.2")):
            proc = NetAgent(node, tmp_path / node.name, socket="/run/liqo/netagent.sock",
                            state="/run/liqo/state.json", probe_interval=None)
            stack.callback(proc.close)
            proc.start(timeout=20)
            kube = KubeClient(api.api_client(), timeout=3)
            for ns in ("liqo", "tenant"):
                kube.create(NAMESPACES, namespace(ns))
            mgr = Manager("tunnel", kube, watch_timeout=10)
            agent = proc.client("tunnel")  # the controller gets only its own socket
            stack.callback(agent.close)
            labeler = proc.client("labeler")
            stack.callback(labeler.close)
            ctl = TunnelController(mgr, agent, TunnelOptions(pod_namespace="liqo", pod_ip=ip,
                                                             status_min_interval=0.5),
                                   backoff=Backoff(base=0.1, cap=1.0))
            mgr.start()
            stack.callback(mgr.shutdown)  # unwinds first: the controllers stop before their agents
            ctls.append((ctl, kube, labeler))
        for ctl, _, _ in ctls:
            assert ctl.device_ready.wait(20)
        for _, _, labeler in ctls:
            labeler.set_role(pb.ROLE_ACTIVE, epoch=1, ttl=60, reason="test")
        key_a = ctls[0][0].keys.public_key  # type: ignore[union-attr]
        key_b = ctls[1][0].keys.public_key  # type: ignore[union-attr]
        # Both clusters use 10.200.0.0/16 for pods: each reaches the other's through a remapping.
        t0 = time.monotonic()
        tep_b = side("cluster-b", "b", "10.200.0.0/16", "10.200.0.0/16",
                     "10.201.0.0/16", "10.202.0.0/16", "192.0.2.2", key_b)
        tep_a = side("cluster-a", "a", "10.200.0.0/16", "10.200.0.0/16",
                     "10.202.0.0/16", "10.201.0.0/16", "192.0.2.1", key_a)
        kube_a, kube_b = ctls[0][1], ctls[1][1]
        kube_a.create(TUNNEL_ENDPOINTS, tep_b, "tenant")
        kube_b.create(TUNNEL_ENDPOINTS, tep_a, "tenant")

        def connection() -> dict[str, Any]:
            status = kube_a.get(TUNNEL_ENDPOINTS, "b", "tenant").get("status") or {}
            conn: dict[str, Any] = status.get("connection") or {}
            return conn if conn.get("status") == "Connected" else {}

        conn = wait_for("TunnelEndpoint b Connected", connection, 30, 0.2)
        took = time.monotonic() - t0
        print(f"\nTunnelEndpoint created -> Connected: {took:.2f}s, latency {conn['latency']}")
        assert conn["latency"]["value"] != "N/A"
        assert key_b in peers(a)
        kube_a.delete(TUNNEL_ENDPOINTS, "b", "tenant")
        wait_for("B's peer removed from A", lambda: key_b not in peers(a), 15, 0.2)
