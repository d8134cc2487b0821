"""`liqo-netagent cleanup` removes everything Liqo created on a node, and nothing else."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.netagent import ROLES, NetAgent, activate
from sandbox.testkit.resources import SAMPLE_OWNER
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import generate

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

CLEANUP = (sys.executable, "-m", "services.netagent.main", "cleanup")


def node_state(node: Node) -> dict[str, str]:
    return {
        "rules": node.run("ip", "rule", "show").stdout,
        "routes": node.run("ip", "route", "show", "table", "all").stdout,
        "links": node.run("ip", "-o", "link").stdout,
        "netns": node.run("ip", "netns", "list").stdout,
        "wg sockets": node.run("ls", "/run/wireguard").stdout,
    }


def processes_on(node: Node) -> list[str]:
    """Command names of the processes in the node's network namespace."""
    net = os.stat(f"/proc/{node.pid}/ns/net").st_ino
    names = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == net:
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return names


def test_cleanup_removes_all_liqo_state_and_keeps_the_rest(
    tmp_path: Path, node_factory: Callable[[str], Node]
) -> None:
    peer = generate().public_key
    node = node_factory("clean")
    # Foreign state the node had before Liqo: must survive the uninstall.
    # (a veth: these kernels have no dummy module)
    node.run("ip", "link", "add", "foreign0", "type", "veth", "peer", "name", "foreign1")
    node.run("ip", "link", "set", "foreign0", "up")
    # The kernel's link watcher marks the link LOWERLAYERDOWN (its peer is down) and the routes then on
    # it "linkdown" asynchronously (a second later on a slow machine): let it pass before any route.
    wait_for("foreign0 settled", lambda: "state LOWERLAYERDOWN" in node.run(
        "ip", "-o", "link", "show", "foreign0").stdout, 10)
    node.run("ip", "addr", "add", "198.51.100.1/24", "dev", "foreign0")
    node.run("ip", "rule", "add", "from", "198.51.100.0/24", "lookup", "100", "priority", "18952")
    node.run("ip", "route", "add", "203.0.113.0/24", "via", "198.51.100.254", "table", "100")
    before = node_state(node)

    agent = NetAgent(node, tmp_path)
    try:
        agent.start()
        activate(agent, generate().private_key)
        agent.api.EnsureTunnel(
            pb.EnsureTunnelRequest(
                tunnel=pb.Tunnel(
                    cluster_id="gone",
                    local_pod_cidr="10.0.0.0/16",
                    local_external_cidr="10.201.0.0/16",
                    remote_pod_cidr="10.1.0.0/16",
                    remote_external_cidr="10.202.0.0/16",
                    endpoint="192.0.2.50",
                    endpoint_port=5871,
                    public_key=peer,
                ),
                owner=SAMPLE_OWNER,
            )
        )
        assert node_state(node) != before
        agent.stop(signal.SIGTERM)
    finally:
        agent.close()

    role_sockets = [f"--{role}-socket={agent.role_socket(role)}" for role in ROLES]
    for role in ROLES:  # what a SIGKILLed agent leaves behind (a stopped one removes its sockets)
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(agent.role_socket(role)))
    r = node.run(*CLEANUP, "--socket", str(agent.socket), "--state-path", str(agent.state), *role_sockets)
    assert r.returncode == 0, r.stderr
    assert node_state(node) == before
    assert "wireguard-go" not in processes_on(node)
    assert not agent.state.exists() and not agent.socket.exists()
    assert not any(agent.role_socket(role).exists() for role in ROLES)
    # A second cleanup has nothing to do and still succeeds.
    again = node.run(*CLEANUP, "--state-path", str(agent.state))
    assert again.returncode == 0 and node_state(node) == before


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b'{"version": 1, "tunnels": [{"x": 1}]}'])
def test_cleanup_works_with_an_unreadable_state_file(
    tmp_path: Path, node_factory: Callable[[str], Node], content: bytes
) -> None:
    """Uninstall never depends on the state file: garbage in it (or a file it cannot parse) does not
    stop `cleanup`, which removes the file too."""
    node = node_factory("cleanbad")
    agent = NetAgent(node, tmp_path)
    try:
        agent.start()
        activate(agent, generate().private_key)
        agent.stop(signal.SIGTERM)
    finally:
        agent.close()
    Path(agent.state).write_bytes(content)
    r = node.run(*CLEANUP, "--socket", str(agent.socket), "--state-path", str(agent.state), check=False)
    assert r.returncode == 0, r.stderr
    assert not Path(agent.state).exists()
    assert "liqo-netns" not in node.run("ip", "netns", "list").stdout
