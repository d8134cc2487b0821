"""One gateway replica: an emulated node running the four gateway processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from sandbox.testkit.cluster.podruntime import PodRuntime, sandbox_values
from sandbox.testkit.cluster.runtime import ProcessRuntime, ReplicaRuntime
from sandbox.testkit.cluster.wan import plug
from sandbox.testkit.hosts import Node, NodeError
from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.netagent.config import AgentConfig
from services.netagent.kernel.wireguard.model import DeviceError
from services.netagent.kernel.wireguard.uapi import UapiClient

if TYPE_CHECKING:
    from sandbox.testkit.cluster.cluster import EmulatedCluster

__all__ = ["GATEWAY_NETNS", "PROCESSES", "WG_DEVICE", "GatewayReplica"]

# In start order: the others need the netagent's socket.
PROCESSES = ("netagent", "tunnel", "natmap", "labeler")
_CONSOLE_SCRIPTS = {
    "tunnel": "liqo-tunnel-controller",
    "natmap": "liqo-natmap-controller",
    "labeler": "liqo-labeler",
}
_AGENT_DEFAULTS = AgentConfig()
GATEWAY_NETNS = _AGENT_DEFAULTS.netns_name  # the netagent's network namespace on a gateway node
WG_DEVICE = _AGENT_DEFAULTS.wg_device  # its WireGuard device, inside GATEWAY_NETNS


class GatewayReplica:
    """One gateway pod: a Node running the four processes, as `gateway-<index>` in the API.

    `boot()` creates the node and plugs it into the LAN; `start()` starts the processes that are not
    running; `kill(name)`/`stop(name)` send SIGKILL/SIGTERM to one process (or all with no name) and
    wait for it; `crash()` kills every process of the node with SIGKILL at once and then removes the
    node (its namespaces, wireguard-go and kernel state vanish: a node crash). `boot()` + `start()`
    bring a crashed replica back (a rebooted node: fresh kernel state, the state file kept).
    The processes run behind `runtime` (a `ReplicaRuntime`): a `ProcessRuntime`, or with
    `ClusterOptions.pods` a `PodRuntime` (the chart's pod played by podman in the node; its
    containers are the names, "wireguard" included)."""

    def __init__(self, cluster: EmulatedCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"gateway-{index}"
        self.ip = f"{cluster.lan_prefix}.{index}"
        self.workdir = cluster.workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = self.workdir / "netagent.sock"  # the operator's: every method
        # Each controller's own socket: it is given only this one (--netagent-socket).
        self.role_sockets = {name: self.workdir / f"{name}.sock" for name in _CONSOLE_SCRIPTS}
        self.state = self.workdir / "netagent-state.json"
        self.node: Node | None = None
        env = {**os.environ, "POD_NAME": self.name, "POD_NAMESPACE": cluster.namespace, "POD_IP": self.ip,
               "PYTHONUNBUFFERED": "1"}
        self.runtime: ReplicaRuntime
        if cluster.options.pods:
            o = cluster.options
            values = sandbox_values(
                pod_cidr=o.pod_cidr, external_cidr=o.external_cidr, service_cidr=o.service_cidr,
                kubeconfig=cluster.pods_kubeconfig, overrides=o.pod_values,
                extra_args={"netagent": o.netagent_args, "tunnel": o.tunnel_args, "natmap": o.natmap_args,
                            "labeler": o.labeler_flags()})
            pod_env = {k: env[k] for k in ("POD_NAME", "POD_NAMESPACE", "POD_IP")}
            pods = PodRuntime(lambda: self.node, self.workdir, pod_name=self.name, values=values, env=pod_env)
            self.socket = pods.socket
            self.runtime = pods
        else:
            self.runtime = ProcessRuntime(
                lambda: self.node, self.workdir, command=self.argv, env=env, socket=self.socket,
                state=self.state,
                netagent_args=[*self._protected_cidrs(cluster), *cluster.options.netagent_args],
                role_sockets=self.role_sockets)

    @staticmethod
    def _protected_cidrs(cluster: EmulatedCluster) -> list[str]:
        """What the chart passes: the cluster's own CIDRs, which no tunnel may claim."""
        o = cluster.options
        return ["--pod-cidr", o.pod_cidr, "--external-cidr", o.external_cidr,
                "--service-cidr", o.service_cidr]

    # -- lifecycle --

    def boot(self) -> None:
        if self.node is not None:
            return
        node = Node(f"{self.cluster.name}-gw{self.index}")
        node.start()
        self.node = node
        try:
            plug(self.cluster.lb, "lan", node, f"{self.ip}/24")
            node.run("ip", "route", "add", "default", "via", self.cluster.lan_gateway)
            for pod in self.cluster.pods:
                self.cluster.route_to_pod(node, pod)
        except BaseException:
            self.node = None
            node.stop()
            raise

    def argv(self, name: str) -> list[str]:
        """The command line of controller `name` (the netagent's is the kit's `NetAgent.argv`)."""
        opts = self.cluster.options
        script = Path(sys.executable).parent / _CONSOLE_SCRIPTS[name]
        base = [str(script)] if script.exists() else [sys.executable, "-m", f"services.{name}.main"]
        common = ["--kubeconfig", str(self.cluster.replica_kubeconfig),
                  "--netagent-socket", str(self.role_sockets[name])]
        extra = {"tunnel": opts.tunnel_args, "natmap": opts.natmap_args,
                 "labeler": opts.labeler_flags()}[name]
        return [*base, *common, *extra]

    def start_process(self, name: str) -> None:
        """Starts `name` unless it runs (the netagent: returns once it answers GetInfo)."""
        self.runtime.start(name)

    def start(self) -> None:
        """Starts every process not running (the netagent first: the others need its socket)."""
        for name in PROCESSES:
            self.start_process(name)

    def _signal(self, name: str | None, sig: int, timeout: float) -> None:
        for n in ([name] if name else reversed(self.runtime.started() or PROCESSES)):
            self.runtime.stop(n, sig, timeout)

    def kill(self, name: str | None = None) -> None:
        """SIGKILL one process (or all four); kernel state and wireguard-go survive."""
        self._signal(name, signal.SIGKILL, 5)

    def stop(self, name: str | None = None, timeout: float = 15) -> None:
        """SIGTERM one process (or all four, labeler first) and wait for it to exit."""
        self._signal(name, signal.SIGTERM, timeout)

    def restart(self, name: str | None = None) -> None:
        """SIGTERM one process (or all four) and start it again (an agent restart keeps kernel state)."""
        self.stop(name)
        if name is None:
            self.start()
        else:
            self.start_process(name)

    def crash(self) -> None:
        """A node crash: every process of the node SIGKILLed at once, then the node removed."""
        if self.node is None:
            return
        for pid in self.node.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.shutdown()

    def shutdown(self) -> None:
        node, self.node = self.node, None
        if node is not None:
            node.stop()
        self.runtime.release()

    def alive(self, name: str) -> bool:
        return self.runtime.alive(name)

    def processes(self) -> list[str]:
        """The processes started at least once."""
        return self.runtime.started()

    def exit_codes(self) -> dict[str, int | None]:
        return {n: self.runtime.exit_code(n) for n in self.runtime.started()}

    # -- observing --

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def log(self, name: str) -> str:
        return self.runtime.log(name)

    def log_events(self, name: str, msg: str | None = None) -> list[dict[str, Any]]:
        """The process's JSON log lines (optionally only those with this `msg`), each with `t`, the
        line's timestamp as a POSIX time (comparable with time.time())."""
        out = []
        for line in self.log(name).splitlines():
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if msg is not None and ev.get("msg") != msg:
                continue
            with contextlib.suppress(KeyError, ValueError):
                ev["t"] = datetime.fromisoformat(ev["ts"].replace("Z", "+00:00")).timestamp()
            out.append(ev)
        return out

    def turned_active_after(self, t: float) -> float | None:
        """When the netagent first turned ACTIVE after `t` (a POSIX time), from its own log (its
        "role changed" line); None while it has not."""
        for ev in self.log_events("netagent", "role changed"):
            if ev.get("role") == "active" and ev.get("t", 0) > t:
                return float(ev["t"])
        return None

    def role(self, timeout: float = 2) -> pb.GetInfoResponse:
        """The netagent's GetInfo (role, epoch...), over its socket."""
        with grpc.insecure_channel(f"unix:{self.socket}") as ch:
            return pb_grpc.NetAgentServiceStub(ch).GetInfo(pb.GetInfoRequest(), timeout=timeout)

    def is_active(self) -> bool:
        try:
            return self.role().role == pb.ROLE_ACTIVE
        except grpc.RpcError:
            return False

    def wg_peers(self) -> list[str]:
        """`wg show liqo.tunnel peers` in the replica's liqo-netns ([] when the node or device is gone)."""
        if self.node is None:
            return []
        argv = ["wg", "show", WG_DEVICE, "peers"]
        cp = self.node.exec_in_netns(GATEWAY_NETNS, argv, check=False, timeout=10)
        return cp.stdout.split() if cp.returncode == 0 else []

    def uapi_peers(self) -> list[str] | None:
        """The device's peers (base64 public keys, as `wg show` prints them) read straight from
        wireguard-go's UAPI socket, the same source `wg show` reads, without forking: cheap enough
        to sample every 50 ms. [] when the node is gone (nothing can send), None when the socket
        could not be read."""
        node = self.node
        if node is None:
            return []
        try:
            path = str(node.path(f"/run/wireguard/{WG_DEVICE}.sock"))
        except NodeError:
            return []
        try:
            info = UapiClient(path, timeout=1).get()
        except (DeviceError, OSError):
            return [] if self.node is None else None
        return [p.public_key for p in info.peers]
