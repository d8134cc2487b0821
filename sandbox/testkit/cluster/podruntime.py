"""`PodRuntime`: a gateway replica run as the Helm chart's pod, by podman, inside its emulated node.

The chart is rendered with the real Helm engine (`sandbox.testkit.chart`) and the Deployment's pod
template is played as one pod per replica (`podman kube play` in the node's network and mount
namespaces: `sandbox.testkit.podman`), so the containers, commands, users, capabilities, volumes and
host paths are the chart's. What the sandbox changes, and why:
- `sandbox_values`: no containerPorts (podman 4.3 refuses port mappings on a host-network pod), a
  kubeconfig file instead of the projected token (podman cannot play projected volumes), the
  wireguard-go socket directory and the module directory on the node's own /run (so the kit reads
  the device as in the process sandbox, and nothing is created on the machine), the cluster's CIDRs
  and the kit's short timings as `extraArgs`;
- `playable_pod`: the Downward API's namespace and pod IP become plain values (podman 4.3 resolves
  only `metadata.name`).

Names are the containers' ("netagent", "wireguard", "tunnel", "natmap", "labeler"). A SIGKILL is
`podman kill` (podman then leaves the container stopped, as the process sandbox does until `start`);
a SIGTERM is `podman stop`, as the kubelet stops a container; `start` starts a stopped container again
(the kubelet's restart). The netagent's operator socket lives in its private emptyDir; `socket` is a
path under the replica's workdir that reaches it through a symlink (a path through /proc/PID/root
would pass the 108 bytes a Unix socket address can hold), in a short directory under /tmp.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from sandbox.testkit import chart
from sandbox.testkit.hosts import Node, NodeError
from sandbox.testkit.podman import NodePodman, PlayedPod, Podman, PodmanError, pod_from_template
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc

__all__ = ["NETAGENT_PRIVATE_DIR", "PodRuntime", "playable_pod", "readable_copy", "sandbox_values"]

NETAGENT = "netagent"
NETAGENT_PRIVATE_DIR = "/run/liqo/netagent"  # the chart's mount of the netagent's private emptyDir
OPERATOR_SOCKET = "private/netagent.sock"  # below it: the chart's --socket
NODE_WIREGUARD_DIR = "/run/wireguard"  # wireguard-go's socket directory (/var/run is /run)
NODE_MODULES_DIR = "/run/lib-modules"  # an empty "/lib/modules" on the node's tmpfs, not the machine's
STOP_TIMEOUT = 10


def sandbox_values(*, pod_cidr: str, external_cidr: str, service_cidr: str, kubeconfig: Path,
                   extra_args: Mapping[str, list[str]], overrides: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The chart values of a sandbox replica (see the module doc); `extra_args` by container,
    `overrides` deep-merged last (for instance `{"netagent": {"privileged": False}}`)."""
    values = chart.values(
        networking={"podCIDR": pod_cidr, "externalCIDR": external_cidr, "serviceCIDR": service_cidr},
        ports={"declare": False},
        kubeconfig={"hostPath": str(kubeconfig)},
        wireguard={"socketHostPath": NODE_WIREGUARD_DIR, "implementation": "userspace"},
        netagent={"modulesHostPath": NODE_MODULES_DIR, "extraArgs": list(extra_args.get("netagent", []))},
        tunnel={"extraArgs": list(extra_args.get("tunnel", []))},
        natmap={"extraArgs": list(extra_args.get("natmap", []))},
        labeler={"extraArgs": list(extra_args.get("labeler", []))},
        terminationGracePeriodSeconds=STOP_TIMEOUT,
    )
    return chart.merge(values, overrides or {})


def playable_pod(objects: list[dict[str, Any]], name: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The Deployment's pod template as the Pod `name`, with every Downward-API variable named in
    `env` given that plain value instead (podman 4.3 resolves only metadata.name)."""
    pod = pod_from_template(chart.deployment(objects), name)
    for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
        for var in c.get("env", []):
            if var["name"] in env and "valueFrom" in var:
                del var["valueFrom"]
                var["value"] = env[var["name"]]
    return pod


class PodRuntime:
    """ReplicaRuntime (sandbox/testkit/cluster/runtime.py) playing the chart's pod `pod_name` in the
    replica's node of the moment (`node()`). `values` renders the chart; `env` replaces the Downward
    API. The pod is played at the first `start`, and again after a node reboot."""

    def __init__(self, node: Callable[[], Node | None], workdir: Path, *, pod_name: str,
                 values: Mapping[str, Any], env: Mapping[str, str], engine: Podman | None = None) -> None:
        self._node, self.workdir, self.pod_name = node, workdir, pod_name
        self.values, self.env = dict(values), dict(env)
        self.objects = chart.render(self.values)
        self.manifest = playable_pod(self.objects, pod_name, self.env)
        self.names = tuple(c["name"] for c in self.manifest["spec"]["containers"])
        self.engine = engine or Podman()
        self._podman: NodePodman | None = None
        self._pod: PlayedPod | None = None
        self._saved_logs: dict[str, str] = {}
        # A symlink to the private emptyDir once played; in a short directory of its own, because the
        # socket's path must fit a Unix socket address (108 bytes), whatever the workdir.
        digest = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:12]
        self._link_home = Path(tempfile.gettempdir()) / f"lgw-{digest}"
        self._agent_dir = self._link_home / "netagent-private"
        self.socket = self._agent_dir / OPERATOR_SOCKET

    # ---- the pod ------------------------------------------------------------------------------------------

    @property
    def podman(self) -> NodePodman:
        if self._podman is None:
            raise NodeError(f"{self.pod_name}: not played")
        return self._podman

    def container(self, name: str) -> str:
        """The podman name of container `name`."""
        if self._pod is None:
            raise NodeError(f"{self.pod_name}: not played")
        return self._pod.container(name)

    def _play(self, node: Node) -> None:
        self._podman = self.engine.in_node(node)
        node.run("mkdir", "-p", NODE_WIREGUARD_DIR, NODE_MODULES_DIR)
        # A Kubernetes emptyDir is root's with mode 0777. Podman gives a new volume to the user of
        # the first container that mounts it, and a netagent without CAP_DAC_OVERRIDE (capabilities
        # mode) could then not create its socket in a controller's volume: made as Kubernetes does.
        for vol in self.manifest["spec"].get("volumes", []):
            if "emptyDir" in vol:
                self._podman.run("volume", "create", "--opt", "o=uid=0,gid=0", vol["name"])
                path = self._podman.run("volume", "inspect", "--format", "{{.Mountpoint}}", vol["name"])
                node.run("chmod", "0777", path.stdout.strip())
        self._pod = self._podman.play(self.manifest)
        source = next(m["Source"] for m in self.podman.inspect(self.container(NETAGENT))["Mounts"]
                      if m["Destination"] == NETAGENT_PRIVATE_DIR)
        self._link_home.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._agent_dir.unlink()
        self._agent_dir.symlink_to(node.path(source))

    def _wait_serving(self, timeout: float = 60) -> None:
        def serving() -> bool:
            if not self.alive(NETAGENT):
                raise NodeError(f"{self.pod_name}: netagent container exited:\n{self.log(NETAGENT)[-3000:]}")
            try:
                with grpc.insecure_channel(f"unix:{self.socket}") as ch:
                    pb_grpc.NetAgentServiceStub(ch).GetInfo(pb.GetInfoRequest(), timeout=2)
                return True
            except grpc.RpcError:
                return False
        wait_for(f"{self.pod_name}: netagent serving", serving, timeout, 0.1)

    # ---- ReplicaRuntime -----------------------------------------------------------------------------------

    def start(self, name: str) -> None:
        node = self._node()
        if node is None:
            raise NodeError(f"{self.workdir.name}: node is down")
        if self._pod is None:
            self._play(node)  # every container starts
        elif not self.alive(name):
            self.podman.start(self.container(name))
        if name == NETAGENT:
            self._wait_serving()
        else:
            self._wait_ready(name)

    def _wait_ready(self, name: str, timeout: float = 60) -> None:
        """Until the container's readiness probe (the chart's) passes, run from inside it: a process
        in a starting container is not serving yet (a controller's imports take seconds under load)."""
        probe = next(c for c in self.manifest["spec"]["containers"] if c["name"] == name)["readinessProbe"]
        wait_for(f"{self.pod_name}: {name} ready", lambda: self.podman.probe(self.container(name), probe),
                 timeout, 0.2)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
        if self._pod is None or not self.alive(name):
            return
        ctr = self.container(name)
        if sig == signal.SIGKILL:
            self.podman.kill(ctr)
        elif sig == signal.SIGTERM:
            self.podman.stop(ctr, timeout=int(timeout))
        else:
            raise ValueError(f"a container stops on SIGTERM or SIGKILL, not {signal.Signals(sig).name}")
        self._saved_logs[name] = self.log(name)

    def alive(self, name: str) -> bool:
        if self._pod is None or self._node() is None:
            return False
        try:
            return self.podman.state(self.container(name)) == "running"
        except PodmanError:
            return False

    def exit_code(self, name: str) -> int | None:
        if self._pod is None or self._node() is None or self.alive(name):
            return None
        with contextlib.suppress(PodmanError):
            state = self.podman.inspect(self.container(name))["State"]
            if state["Status"] in ("exited", "stopped"):
                return int(state["ExitCode"])
        return None

    def started(self) -> list[str]:
        return list(self.names) if self._pod is not None or self._saved_logs else []

    def log(self, name: str) -> str:
        if self._pod is not None and self._node() is not None:
            with contextlib.suppress(PodmanError):
                return self.podman.logs(self.container(name))
        return self._saved_logs.get(name, "")

    def release(self) -> None:
        podman, self._podman, self._pod = self._podman, None, None
        if podman is not None:
            podman.close()
        with contextlib.suppress(FileNotFoundError):
            self._agent_dir.unlink()
        with contextlib.suppress(FileNotFoundError):
            self._link_home.rmdir()



def readable_copy(path: Path, dest: Path) -> Path:
    """`path` copied to `dest` with mode 0644: the controllers run as uids 10001-10003."""
    dest.write_bytes(path.read_bytes())
    os.chmod(dest, 0o644)
    return dest
