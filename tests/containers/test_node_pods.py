"""`podman kube play` of a hostNetwork pod inside an emulated node (sandbox/testkit/podman.py): the pod is
the node's (its addresses, its /run/netns both ways through a Bidirectional hostPath, its hostPath files),
its containers can be stopped, started, restarted, killed and exec'd into, and nothing is left behind:
neither after a clean removal nor after the node crashed (every process SIGKILLed, then the node gone)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable
from typing import Any

import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.podman import (
    IMAGE,
    NodePodman,
    Podman,
    leaves_nothing,
    mounts_matching,
    pod_from_template,
)
from sandbox.testkit.wait import wait_for

pytestmark = pytest.mark.root

NODE_IP = "192.0.2.77"
# PID 1 has no default signal handlers: trap TERM so that a stop is immediate.
IDLE = "trap 'exit 0' TERM; echo started; sleep infinity & wait"
HTTP_PORT = 5999
SERVE = (f"trap 'exit 0' TERM; python3 -m http.server {HTTP_PORT} --bind 127.0.0.1 --directory /run/netns"
         " >/dev/null 2>&1 & sleep infinity & wait")


def pod(name: str = "gw") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "hostNetwork": True,
            "restartPolicy": "Always",
            "containers": [
                {
                    "name": "agent",
                    "image": IMAGE,
                    "command": ["sh", "-c", SERVE],
                    # podman 4.3 refuses containerPorts on a host-network pod: play() drops them.
                    "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"}],
                    "securityContext": {"privileged": True, "runAsUser": 0},
                    "volumeMounts": [
                        {"name": "netns", "mountPath": "/run/netns", "mountPropagation": "Bidirectional"},
                        {"name": "wg", "mountPath": "/var/run/wireguard"},
                    ],
                },
                {
                    "name": "ctl",
                    "image": IMAGE,
                    "command": ["sh", "-c", IDLE],
                    "securityContext": {
                        "runAsUser": 10001, "runAsGroup": 10001, "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                    },
                },
            ],
            "volumes": [
                {"name": "netns", "hostPath": {"path": "/run/netns", "type": "DirectoryOrCreate"}},
                {"name": "wg", "hostPath": {"path": "/run/wireguard", "type": "DirectoryOrCreate"}},
            ],
        },
    }


def _machine_addresses() -> set[str]:
    import subprocess

    out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"inet (\S+)/", out)) - {"127.0.0.1"}


def test_pod_is_the_nodes(node_engine: tuple[Node, NodePodman]) -> None:
    node, engine = node_engine
    node.run("ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo")  # no dummy links here (no modules)
    mounts_before = sorted(mounts_matching('', node.pid))

    played = engine.play(pod())
    agent, ctl = played.container("agent"), played.container("ctl")

    # The node's network namespace: its address, none of the machine's.
    seen = set(re.findall(r"inet (\S+)/", engine.exec(agent, "ip", "-o", "-4", "addr", check=True).stdout))
    assert NODE_IP in seen
    assert not seen & _machine_addresses()

    # A netns made by the container under the Bidirectional /run/netns is the node's, and usable there.
    engine.exec(agent, "ip", "netns", "add", "lgt-from-pod", check=True)
    assert "lgt-from-pod" in node.run("ip", "netns", "list").stdout
    node.run("ip", "netns", "exec", "lgt-from-pod", "ip", "link", "set", "lo", "up")
    # ... and one made by the node is visible in the container (both ways).
    node.run("ip", "netns", "add", "lgt-from-node")
    assert "lgt-from-node" in engine.exec(agent, "ip", "netns", "list", check=True).stdout

    # A hostPath file is the node's (/var/run is /run).
    engine.exec(agent, "sh", "-c", "echo hi > /var/run/wireguard/probe", check=True)
    assert node.path("/run/wireguard/probe").read_text() == "hi\n"

    # The restricted container runs as the pod says.
    sec = engine.security(ctl)
    assert (sec.uid, sec.gid, sec.cap_effective, sec.read_only_root) == (10001, 10001, 0, True)
    assert sec.no_new_privs and not sec.privileged
    agent_sec = engine.security(agent)
    assert agent_sec.privileged and not agent_sec.read_only_root and agent_sec.uid == 0
    assert agent_sec.has_cap(12)  # CAP_NET_ADMIN

    # Stop, remove: nothing of the pod stays in the node (the netns it made is the node's: deleted here).
    engine.stop_pod(played.name, timeout=5)
    assert {engine.state(agent), engine.state(ctl)} <= {"exited", "stopped"}
    engine.remove_pod(played.name)
    assert engine.containers() == []
    node.run("ip", "netns", "del", "lgt-from-pod")
    node.run("ip", "netns", "del", "lgt-from-node")
    assert node.pids(comm="conmon") == []
    leftover = [m for m in sorted(mounts_matching('', node.pid)) if m not in mounts_before]
    assert leftover == [], leftover


def test_container_lifecycle(node_engine: tuple[Node, NodePodman]) -> None:
    _node, engine = node_engine
    manifest = pod()
    deployment = {"kind": "Deployment", "metadata": {"name": "gw", "namespace": "liqo"},
                  "spec": {"template": {"metadata": {"labels": {"app": "gw"}}, "spec": manifest["spec"]}}}
    played = engine.play(pod_from_template(deployment, "gw-0"))
    ctl = played.container("ctl")
    assert ctl == "gw-0-ctl"
    assert engine.pod_inspect("gw-0")["Labels"] == {"app": "gw"}
    engine.stop_pod(played.name, timeout=5)
    engine.wait_state(ctl, "exited")
    engine.start_pod(played.name)
    assert engine.state(ctl) == "running"
    cp = engine.exec(ctl, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (cp.returncode, cp.stdout, cp.stderr, cp.args) == (3, "out\n", "err\n",
                                                            ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert engine.exec(ctl, "cat", input="piped").stdout == "piped"
    assert engine.exec(ctl, "id", "-u", user="0").stdout.strip() == "0"
    assert "started" in engine.logs(ctl)

    engine.stop(ctl, timeout=5)
    assert engine.state(ctl) == "exited"
    engine.start(ctl)
    assert engine.state(ctl) == "running"
    first = engine.pid(ctl)
    engine.restart(ctl, timeout=5)
    assert engine.state(ctl) == "running" and engine.pid(ctl) != first

    # restartPolicy Always: podman restarts a crashed container by itself (as the kubelet would) ...
    before = engine.crash(ctl)
    wait_for("the crashed container to be restarted",
             lambda: engine.state(ctl) == "running" and engine.pid(ctl) not in (0, before), timeout=30)
    engine.wait_state(ctl, "running")
    assert engine.logs(ctl).count("started") >= 4
    assert engine.inspect(ctl)["RestartCount"] >= 1
    restarts = engine.inspect(ctl)["RestartCount"]
    # ... but not one stopped by `podman kill` (podman counts it as stopped by the user).
    engine.kill(ctl)
    engine.wait_state(ctl, "exited")
    assert engine.inspect(ctl)["RestartCount"] == restarts
    engine.start(ctl)
    assert engine.state(ctl) == "running"


def test_probes(node_engine: tuple[Node, NodePodman]) -> None:
    """Podman runs no probe here (see NodePodman.probe): the kit runs them from inside the container."""
    _node, engine = node_engine
    played = engine.play(pod())
    agent, ctl = played.container("agent"), played.container("ctl")
    http = {"httpGet": {"host": "127.0.0.1", "port": HTTP_PORT, "path": "/"}}
    # The server is up once it answers: wait, then every form of probe both ways.
    wait_for("the agent's HTTP server", lambda: engine.probe(agent, http), timeout=30)
    assert engine.probe(ctl, http)  # another container of the pod: the pod's (node's) loopback
    assert not engine.probe(ctl, {"httpGet": {"port": HTTP_PORT + 1, "path": "/"}})
    assert engine.probe(ctl, {"tcpSocket": {"port": HTTP_PORT}})
    assert not engine.probe(ctl, {"tcpSocket": {"port": HTTP_PORT + 1}})
    assert engine.probe(ctl, {"exec": {"command": ["true"]}})
    assert not engine.probe(ctl, {"exec": {"command": ["false"]}})


def test_node_crash_leaves_nothing(node_engine: tuple[Node, NodePodman]) -> None:
    """What the sandbox's node crash does: SIGKILL every process of the node, then the node goes; the
    engine's close() still cleans the machine (checked by the `nothing_left` fixture)."""
    node, engine = node_engine
    played = engine.play(pod())
    engine.exec(played.container("agent"), "ip", "netns", "add", "lgt-crash", check=True)
    assert node.pids(comm="conmon")

    def all_dead() -> bool:
        victims = node.pids()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not victims

    wait_for("every process of the node to be dead", all_dead, timeout=30)
    node.stop()
    engine.close()


def test_two_nodes_play_the_same_pod_apart(podman: Podman, nothing_left: None,
                                           node_factory: Callable[[str], Node]) -> None:
    """Two replicas, each in its own node: same pod and volume names, separate stores, addresses and
    emptyDirs (one store per node: podman would otherwise share an emptyDir between same-named pods)."""
    nodes = [node_factory("r0"), node_factory("r1")]
    engines = [podman.in_node(n) for n in nodes]
    try:
        for i, (node, engine) in enumerate(zip(nodes, engines, strict=True)):
            node.run("ip", "addr", "add", f"192.0.2.{10 + i}/32", "dev", "lo")
            manifest = pod()
            manifest["spec"]["containers"][1]["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"}]
            manifest["spec"]["volumes"].append({"name": "scratch", "emptyDir": {}})
            ctl = engine.play(manifest).container("ctl")
            engine.exec(ctl, "sh", "-c", f"echo {i} > /scratch/who", check=True)
        for i, engine in enumerate(engines):
            ctl = engine.pods[0].container("ctl")
            assert engine.exec(ctl, "cat", "/scratch/who").stdout == f"{i}\n"
            addrs = engine.exec(ctl, "ip", "-o", "-4", "addr").stdout
            assert f"192.0.2.{10 + i}/" in addrs and f"192.0.2.{11 - i}/" not in addrs
            assert len(engine.containers()) == 3  # infra + 2: the other node's are not in this store
    finally:
        for engine in engines:
            engine.close()


def test_a_leftover_is_caught(node_engine: tuple[Node, NodePodman]) -> None:
    """The leftover check can fail: a pod still running when the block ends is reported."""
    _node, engine = node_engine
    with pytest.raises(AssertionError, match="conmon"), leaves_nothing(grace=1):
        engine.play(pod())
    engine.remove_all()  # the fixture's own check then passes
