"""The netagent's HTTP endpoints and device lifecycle as the pod runs it: /healthz and /readyz on
--health-address (a STANDBY agent is ready), /metrics on --metrics-address, an external-mode agent
that starts before its wireguard container, and a spawn-mode daemon killed behind the agent's back."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.testkit.hosts import Node, dies_with_us
from sandbox.testkit.netagent import ROOT, NetAgent, activate
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import generate

pytestmark = pytest.mark.root

# The netagent's ports (README.md, The controllers), in the node's own netns.
HEALTH, METRICS = "127.0.0.1:5876", "127.0.0.1:5872"
GET = ("import sys, urllib.request, urllib.error\n"
       "try:\n"
       "    r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status); print(r.read().decode())\n"
       "except urllib.error.HTTPError as e:\n"
       "    print(e.code)\n")


def http_get(node: Node, url: str) -> tuple[int, str]:
    out = node.run(sys.executable, "-c", GET, url).stdout
    code, _, body = out.partition("\n")
    return int(code), body


def wireguard_container(node: Node, log: Path) -> subprocess.Popen[bytes]:
    with log.open("a") as logf:
        return node.popen(dies_with_us([sys.executable, "-m", "services.netagent.main", "wireguard",
                                        "--wireguard-implementation", "userspace", "--wg-device",
                                        "liqo.tunnel"]), stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)


def test_health_and_metrics_endpoints(node_factory: Callable[[str], Node], tmp_path: Path) -> None:
    node = node_factory("health")
    with NetAgent(node, tmp_path, args=("--health-address", HEALTH, "--metrics-address", METRICS)) as agent:
        assert agent.api.GetInfo(pb.GetInfoRequest()).role == pb.ROLE_STANDBY
        assert http_get(node, f"http://{HEALTH}/healthz")[0] == 200
        assert http_get(node, f"http://{HEALTH}/readyz")[0] == 200, "a standby agent is ready"
        assert http_get(node, f"http://{HEALTH}/metrics")[0] == 404, "metrics are not on the health port"
        code, body = http_get(node, f"http://{METRICS}/metrics")
        assert code == 200 and "liqo_wireguard_implementation" in body
        assert http_get(node, f"http://{METRICS}/healthz")[0] == 404


def test_busy_port_in_the_node_exits_2_before_touching_the_kernel(
    node_factory: Callable[[str], Node], tmp_path: Path
) -> None:
    node = node_factory("busy")
    holder = node.popen([sys.executable, "-c", "import socket, time\ns = socket.socket()\n"
                         "s.bind(('127.0.0.1', 5876)); s.listen(); print('up', flush=True); time.sleep(600)"],
                        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"up\n"
        agent = NetAgent(node, tmp_path, args=("--health-address", HEALTH))
        cp = node.run(*agent.argv(), check=False)
        assert cp.returncode == 2, cp.stderr
        assert cp.stderr == f"liqo-netagent: --health-address {HEALTH}: Address already in use\n"
        assert "liqo-netns" not in node.run("ip", "netns", "list").stdout, "the kernel was touched"
    finally:
        holder.kill()
        holder.wait(5)


def test_external_mode_starts_before_its_wireguard_container(
    node_factory: Callable[[str], Node], tmp_path: Path
) -> None:
    """The agent serves (and is ready) without wireguard-go; the device is programmed as soon as the
    wireguard container's TUN appears, with the key ConfigureDevice gave meanwhile refused as
    UNAVAILABLE, then given again."""
    node = node_factory("ext")
    args = ("--wireguard-go-mode", "external", "--wireguard-implementation", "userspace",
            "--health-address", HEALTH)
    with NetAgent(node, tmp_path, args=args) as agent:
        info = agent.api.GetInfo(pb.GetInfoRequest())
        assert not info.device_configured
        assert info.wireguard_implementation == pb.WIREGUARD_IMPLEMENTATION_USERSPACE
        assert http_get(node, f"http://{HEALTH}/readyz")[0] == 200
        assert node.pids("wireguard-go") == [], "external mode never starts wireguard-go"
        wg = wireguard_container(node, tmp_path / "wireguard.log")
        try:
            t0 = time.monotonic()
            wait_for("device placed in liqo-netns", lambda: "liqo.tunnel" in node.exec_in_netns(
                "liqo-netns", ["ip", "-o", "link"]).stdout, 10)
            placed = time.monotonic() - t0
            key = generate()
            activate(agent, key.private_key)
            assert agent.api.GetInfo(pb.GetInfoRequest()).public_key == key.public_key
            print(f"  external device placed {placed:.3f} s after the wireguard container started")
        finally:
            wg.send_signal(signal.SIGTERM)
            wg.wait(10)


def test_spawn_mode_respawns_a_killed_daemon_at_once(
    node_factory: Callable[[str], Node], tmp_path: Path
) -> None:
    """Spawn mode (the default): a wireguard-go killed behind the agent's back is started again and
    re-programmed from memory at once. Before, the agent itself never re-created the device (its resync
    did not look at it): it came back only with the tunnel controller's ConfigureDevice at its 10 s
    device check, and its routes and peers at the next resync after that."""
    node = node_factory("spawn")
    with NetAgent(node, tmp_path, args=("--resync-interval", "60")) as agent:
        key = generate()
        activate(agent, key.private_key)
        (pid,) = node.pids("wireguard-go")
        t0 = time.monotonic()
        node.run("kill", "-KILL", str(pid))
        wait_for("a new wireguard-go with the key",
                 lambda: node.pids("wireguard-go") not in ([], [pid])
                 and agent.api.GetInfo(pb.GetInfoRequest()).public_key == key.public_key, 5, 0.02)
        print(f"  spawn mode: daemon back with its key {time.monotonic() - t0:.3f} s after SIGKILL")
        shown = node.exec_in_netns("liqo-netns", ["wg", "show", "liqo.tunnel"]).stdout
        assert "listening port: 5871" in shown
