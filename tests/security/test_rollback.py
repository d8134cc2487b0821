"""A call that fails part-way leaves the kernel, ListTunnels and the state file as they were: proven on
a real kernel and a real wireguard-go, not only on fake layers (tests/unit/test_agent_rules.py).

EnsureTunnel of a new, valid tunnel while the node's wireguard-go is frozen (SIGSTOP): routes and
iptables are written first, then programming the peer times out on the UAPI socket, so the call
fails after the kernel was touched. The agent answers UNAVAILABLE and rolls the routes and rules
back; the peer write the frozen wireguard-go still had queued lands when it thaws, and the resync
removes it. In the end everything is as before the call, and the legitimate tunnel still works.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sandbox.testkit.netagent import LIQO_NETNS
from sandbox.testkit.nodes import NodeFactory
from sandbox.testkit.uplink import Secure, peers, route_gets, snapshot, start_secure, tunnel
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


@pytest.fixture
def agent(module_nodes: NodeFactory) -> Iterator[Secure]:
    with tempfile.TemporaryDirectory(prefix="liqo-rollback-") as tmp:
        sec = start_secure(module_nodes, Path(tmp), "rollback", args=("--resync-interval", "0.5"))
        try:
            yield sec
        finally:
            sec.close()


def claims(agent: Secure) -> list[tuple[bytes, str, int]]:
    """What ListTunnels says the agent holds (its status, a probe's view, moves on its own)."""
    return [(t.tunnel.SerializeToString(deterministic=True), t.owner, t.nat_mapping_count)
            for t in agent.listed()]


def test_a_call_failing_after_the_kernel_was_touched_leaves_everything_as_before(agent: Secure) -> None:
    node = agent.node
    before, listed, state = snapshot(node), claims(agent), agent.state_bytes()
    gets = route_gets(node)
    [wg] = node.pids("wireguard-go")
    newcomer = tunnel(cluster_id="naples", cluster_name="naples", endpoint="172.31.0.9",
                      remote_nat_pod_cidr="10.61.0.0/16", remote_nat_external_cidr="10.71.0.0/16")
    os.kill(wg, signal.SIGSTOP)
    try:
        with pytest.raises(grpc.RpcError) as failed:
            agent.stub("tunnel").EnsureTunnel(
                pb.EnsureTunnelRequest(tunnel=newcomer, owner="liqo-tenant-naples/tep"), timeout=60)
        # The routes were rolled back at once; the peers cannot be read while wireguard-go is frozen.
        assert "10.61.0.0/16" not in node.run("ip", "route", "show", "table", "all").stdout
    finally:
        os.kill(wg, signal.SIGCONT)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
    assert "wireguard" in (failed.value.details() or ""), failed.value.details()

    wait_for("the kernel as before the call", lambda: snapshot(node) == before, 20)
    assert claims(agent) == listed
    assert agent.state_bytes() == state
    assert route_gets(node) == gets
    assert peers(node) == [agent.legit.public_key]
    agent.ensure_legit(endpoint="172.31.0.3")  # the legitimate tenant's tunnel is still updatable
    assert "172.31.0.3" in node.exec_in_netns(LIQO_NETNS, ["wg", "show", "all", "endpoints"]).stdout
