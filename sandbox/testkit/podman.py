"""The container engine for tests and the sandbox: podman with the project's own configuration and store,
and podman run *inside an emulated node* (sandbox/testkit/hosts.py), so that a `hostNetwork: true` pod
played there is that node's pod.

`Podman` is the project's podman: its configuration and its image store live under build/podman/ (made
by `make image`, scripts/podman-env.sh writes the same files). Image operations run in a private mount
namespace with a tmpfs on /run and an overlay on /var/lib, because podman 4.3 as root writes its blob
cache to /var/lib/containers/cache and runc its state to /run/runc whatever the configuration says.

`NodePodman` (`Podman.in_node(node)`) is podman run with `nsenter -t <holder> --net --mount`:
- the network namespace is the node's, so a `hostNetwork: true` pod is in the node (podman 4.3 refuses
  `kube play --network ns:PATH`; a host-network pod takes the namespace podman runs in);
- the mount namespace is the node's, so hostPath volumes (/run/netns, /var/run/wireguard) are the node's,
  and every mount podman makes (overlays, shm, bind mounts) lives and dies with the node;
- the node's /run is made a shared mount, so a `mountPropagation: Bidirectional` hostPath under it
  propagates both ways: a netns a container creates under /run/netns appears in the node's /run/netns;
- its configuration, graph root, run root and tmp dir are under the node's /run (a tmpfs of the node's
  own): a crashed node takes all of its podman state with it. The image comes from the project's store
  as a read-only additional image store (never copied per node).
What outlives a node is the cgroups podman made on the machine (cgroupfs under /sys/fs/cgroup/*/
libpod_parent): `NodePodman.close()` removes those of every pod and container it played, also after the
node was killed.

    with Podman().in_node(node) as engine:
        pod = engine.play(pod_yaml)                  # `podman kube play` in the node
        engine.exec(pod.container("netagent"), "id", "-u").stdout
        engine.restart(pod.container("netagent"))
    # leaving the block removes every pod and container of that node, and their cgroups
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from sandbox.testkit.hosts import Node
from sandbox.testkit.wait import wait_for

__all__ = [
    "IMAGE",
    "ContainerSecurity",
    "NodePodman",
    "PlayedPod",
    "Podman",
    "PodmanError",
    "default_podman_dir",
    "leaves_nothing",
    "machine_state",
    "pod_from_template",
]

IMAGE = "localhost/liqo-gateway:dev"
_REPO = Path(__file__).resolve().parents[2]
_NODE_DIR = "/run/liqo-podman"  # in the node's /run tmpfs; podman wants a run root under 50 characters
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_CGROUP_PARENT = "libpod_parent"  # podman's cgroup parent with the cgroupfs manager
_CGROUP_GONE_TIMEOUT = 10.0


class PodmanError(RuntimeError):
    """A podman command failed (the message carries its stderr)."""


def default_podman_dir() -> Path:
    """The project's podman directory: $LIQO_PODMAN_DIR, else build/podman/ of this checkout."""
    return Path(os.environ.get("LIQO_PODMAN_DIR") or _REPO / "build" / "podman")


def containers_conf(base: str, run: str | None = None) -> str:
    """containers.conf for a podman whose state lives under `base` (its tmp dir under `run`, default
    `base`).

    ulimits: the session has no CAP_SYS_RESOURCE, so the runtime may not raise them; runc: crun refuses
    a hybrid cgroup v1/v2 host; file events and file locks: nothing in journald or /dev/shm; the network
    config dir: podman never writes to /etc/cni."""
    return (
        "[containers]\n"
        'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n\n'
        "[network]\n"
        f'network_config_dir = "{base}/networks"\n\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        'lock_type = "file"\n'
        f'tmp_dir = "{run or base}/tmp"\n'
        f'image_copy_tmp_dir = "{base}/tmp/copy"\n'
    )


def storage_conf(graphroot: str, runroot: str) -> str:
    return f'[storage]\ndriver = "overlay"\ngraphroot = "{graphroot}"\nrunroot = "{runroot}"\n'


def _check(cp: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if cp.returncode != 0:
        raise PodmanError(f"{what} exited {cp.returncode}: {cp.stderr.strip() or cp.stdout.strip()}")
    return cp


# A private mount namespace for image operations: writes to /var/lib land in an overlay of ours (one
# per call: concurrent calls may not share an upper dir), /run is a fresh tmpfs (runc's state dir, and
# the store's run root and tmp dir: a checkout's path may be too long for a run root); all are gone after
# the call. Kept in step with scripts/podman-env.sh's pm().
_STORE_RUN = "/run/liqo-podman"
_PRIVATE_NS_SCRIPT = """
mkdir -p "$D/varlib" && V=$(mktemp -d "$D/varlib/XXXXXX") && mkdir "$V/upper" "$V/work" &&
mount -n -t tmpfs -o mode=0755 tmpfs /run && mkdir -p "$R/run" "$R/tmp" &&
mount -n -t overlay overlay -o "lowerdir=/var/lib,upperdir=$V/upper,workdir=$V/work" /var/lib || exit 125
"$@"
rc=$?
umount -n /var/lib && rm -rf "$V"
exit $rc
"""


class Podman:
    """The project's podman: configuration and store under `directory` (default build/podman/)."""

    def __init__(self, directory: Path | None = None, image: str = IMAGE) -> None:
        self.dir = (directory or default_podman_dir()).resolve()
        self.image = image
        self.storage = self.dir / "storage"

    # ---- configuration -----------------------------------------------------------------------------

    def write_config(self) -> None:
        for sub in ("storage", "tmp/copy", "networks"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "containers.conf").write_text(containers_conf(str(self.dir), _STORE_RUN))
        (self.dir / "storage.conf").write_text(storage_conf(str(self.storage), f"{_STORE_RUN}/run"))

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.dir / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.dir / "storage.conf"),
            "TMPDIR": str(self.dir / "tmp" / "copy"),
        }

    def argv(self, *args: str) -> list[str]:
        """podman on the project's store (run it in run()'s private namespace: see _STORE_RUN)."""
        return ["podman", "--root", str(self.storage), "--runroot", f"{_STORE_RUN}/run",
                "--tmpdir", f"{_STORE_RUN}/tmp", *args]

    # ---- commands on the project's store -----------------------------------------------------------

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`podman ARGS` on the project's store, in a private mount namespace (see the module doc).
        For image operations: a container started here would die with that namespace."""
        if not (self.dir / "containers.conf").exists():
            self.write_config()
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _PRIVATE_NS_SCRIPT,
                "sh", *self.argv(*args)]
        env = {**self.env(), "D": str(self.dir), "R": _STORE_RUN}
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        return _check(cp, f"podman {' '.join(args)}") if check else cp

    def image_exists(self, image: str | None = None) -> bool:
        if not self.storage.exists():
            return False
        return self.run("image", "exists", image or self.image, check=False).returncode == 0

    def ensure_pause_image(self) -> None:
        """Podman builds its pod infra ("pause") image on first use: done here, in the project's store,
        so that a node's podman finds it there instead of building it (which would write the machine's
        /var/lib/containers)."""
        listed = self.run("images", "-q", "--filter", "reference=localhost/podman-pause").stdout.strip()
        if not listed:
            pod_id = self.run("pod", "create", "--name", "liqo-pause-image").stdout.strip()
            self.run("pod", "rm", "-f", "liqo-pause-image")
            remove_cgroups([pod_id], sweep_parent=True)

    def in_node(self, node: Node) -> NodePodman:
        """A podman running in `node`'s network and mount namespaces (see NodePodman)."""
        if not self.image_exists():
            raise PodmanError(f"{self.image} is not in {self.storage}: run `make image`")
        self.ensure_pause_image()
        return NodePodman(self, node)


# ---- inside a node ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlayedPod:
    """A pod played by `kube play`: its name and its containers (podman names them POD-CONTAINER)."""

    name: str
    id: str
    containers: tuple[str, ...]

    def container(self, name: str) -> str:
        """The podman name of the pod's container `name` (as named in the pod's YAML)."""
        if name not in self.containers:
            raise KeyError(f"pod {self.name} has no container {name!r}: {self.containers}")
        return f"{self.name}-{name}"


@dataclass(frozen=True)
class ContainerSecurity:
    """What a container's main process really runs with, read from inside it (/proc/1/status and
    /proc/1/mounts), plus podman's inspect for `privileged` and the configured user."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    cap_effective: int  # bit mask, as in /proc/PID/status
    no_new_privs: bool
    seccomp: int  # 0 off, 2 filter
    read_only_root: bool  # the root mount is "ro" in the container's /proc/1/mounts
    privileged: bool  # podman's inspect
    config_user: str  # the image's or the pod's user, as podman sees it

    def has_cap(self, number: int) -> bool:
        return bool(self.cap_effective >> number & 1)


@dataclass
class NodePodman:
    """Podman inside an emulated node; use as a context manager (or call close())."""

    base: Podman
    node: Node
    dir: str = _NODE_DIR
    pods: list[PlayedPod] = field(default_factory=list)
    _ids: set[str] = field(default_factory=set)  # every pod and container id played: their cgroups

    def __post_init__(self) -> None:
        d = self.dir
        host = self.node.path(d)
        for sub in ("storage", "run", "tmp/copy", "networks", "pods"):
            (host / sub).mkdir(parents=True, exist_ok=True)
        (host / "containers.conf").write_text(containers_conf(d))
        (host / "storage.conf").write_text(storage_conf(f"{d}/storage", f"{d}/run"))
        # Bidirectional hostPaths need a shared source: mounts made by a container under the node's /run
        # (a netns under /run/netns) then appear in the node. Shared within the node only: the node's
        # mount namespace has no peer outside.
        self.node.run("mount", "--make-rshared", "/run")

    def __enter__(self) -> NodePodman:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---- raw commands -----------------------------------------------------------------------------------

    def argv(self, *args: str) -> list[str]:
        d = self.dir
        # podman 4.3 drops storage.conf's options (additionalimagestores) when --root is given: repeat
        # the additional image store on the command line.
        return ["nsenter", "-t", str(self.node.pid), "--net", "--mount", "--", "env",
                f"CONTAINERS_CONF={d}/containers.conf", f"CONTAINERS_STORAGE_CONF={d}/storage.conf",
                f"TMPDIR={d}/tmp/copy",
                "podman", "--root", f"{d}/storage", "--runroot", f"{d}/run", "--tmpdir", f"{d}/tmp",
                "--storage-opt", f"additionalimagestore={self.base.storage}", *args]

    def run(self, *args: str, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`podman ARGS` in the node; raises PodmanError when `check` and it failed."""
        cp = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                            input=input, check=False)
        return _check(cp, f"{self.node.name}: podman {' '.join(args)}") if check else cp

    # ---- pods -------------------------------------------------------------------------------------------

    def play(self, pod_yaml: str | dict[str, Any], timeout: float = 120,
             drop_ports: bool = True) -> PlayedPod:
        """`podman kube play` of one Pod (YAML text or a manifest dict) in the node; returns it once
        every container was started. The pod must be `hostNetwork: true` (else podman would make a
        network of its own, with links in the machine's root namespace): refused otherwise.

        `drop_ports`: podman 4.3 refuses any containerPort unless it makes the network ("PortMappings
        can only be used with Bridge or slirp4netns networking"); on a hostNetwork pod they only inform
        the scheduler, so they are dropped from what is played (the caller's manifest is untouched)."""
        manifest = yaml.safe_load(pod_yaml) if isinstance(pod_yaml, str) else copy.deepcopy(pod_yaml)
        if manifest.get("kind") != "Pod":
            raise ValueError(f"play takes one Pod, not {manifest.get('kind')!r}")
        if not manifest.get("spec", {}).get("hostNetwork"):
            raise ValueError("play takes hostNetwork pods only (podman's own networks touch the machine)")
        if drop_ports:
            for container in manifest["spec"].get("containers", []):
                container.pop("ports", None)
        name = manifest["metadata"]["name"]
        path = f"{self.dir}/pods/{name}.yaml"
        self.node.path(path).write_text(yaml.safe_dump(manifest))
        self.run("kube", "play", path, timeout=timeout)
        info = self.pod_inspect(name)
        pod = PlayedPod(
            name=name,
            id=info["Id"],
            containers=tuple(c["name"] for c in manifest["spec"]["containers"]),
        )
        self._ids.add(pod.id)
        self._ids.update(c["Id"] for c in info.get("Containers", []))
        self.pods.append(pod)
        return pod

    def pod_inspect(self, pod: str) -> dict[str, Any]:
        out = self.run("pod", "inspect", pod).stdout
        data = json.loads(out)
        return data[0] if isinstance(data, list) else data  # type: ignore[no-any-return]

    def stop_pod(self, pod: str, timeout: int = 10) -> None:
        """Stops every container of the pod (SIGTERM, SIGKILL after `timeout` s); the pod stays."""
        self.run("pod", "stop", "-t", str(timeout), pod, timeout=timeout + 60)

    def start_pod(self, pod: str) -> None:
        """Starts every container of a stopped pod again."""
        self.run("pod", "start", pod)

    def remove_pod(self, pod: str, timeout: int = 10) -> None:
        """Stops (SIGTERM, then SIGKILL after `timeout` s) and removes the pod and its containers."""
        self.run("pod", "rm", "-f", "-t", str(timeout), pod, timeout=timeout + 60)
        self.pods = [p for p in self.pods if p.name != pod]

    # ---- containers -------------------------------------------------------------------------------------

    def stop(self, container: str, timeout: int = 10) -> None:
        self.run("stop", "-t", str(timeout), container, timeout=timeout + 60)

    def start(self, container: str) -> None:
        self.run("start", container)

    def restart(self, container: str, timeout: int = 10) -> None:
        self.run("restart", "-t", str(timeout), container, timeout=timeout + 60)

    def kill(self, container: str, signal: str = "KILL") -> None:
        """`podman kill`: podman counts it as stopped by the user, so the restart policy does NOT restart
        it (use crash() for that)."""
        self.run("kill", "--signal", signal, container)

    def crash(self, container: str) -> int:
        """SIGKILLs the container's main process from outside (as a crash or the OOM killer would): the
        pod's restartPolicy then applies (Always: podman starts it again). Returns the killed PID."""
        pid = self.pid(container)
        if pid <= 0:
            raise PodmanError(f"{container} is not running")
        os.kill(pid, 9)
        return pid

    def exec(self, container: str, *argv: str, user: str | None = None, check: bool = False,
             timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Runs `argv` in a running container (as `user` if given, else the container's user).
        The CompletedProcess's args are the command inside the container."""
        opts = ["--user", user] if user is not None else []
        if input is not None:
            opts.append("--interactive")
        cp = self.run("exec", *opts, container, *argv, check=False, timeout=timeout, input=input)
        result = subprocess.CompletedProcess(list(argv), cp.returncode, cp.stdout, cp.stderr)
        if check:
            _check(result, f"{self.node.name}: exec in {container}: {' '.join(argv)}")
        return result

    def inspect(self, container: str) -> dict[str, Any]:
        data = json.loads(self.run("container", "inspect", container).stdout)
        return data[0]  # type: ignore[no-any-return]

    def state(self, container: str) -> str:
        """"running", "exited", "created", ... (podman's State.Status)."""
        return str(self.inspect(container)["State"]["Status"])

    def wait_state(self, container: str, state: str = "running", timeout: float = 30) -> None:
        """Waits until the container's State.Status is `state` (e.g. after a crash, for the restart)."""
        wait_for(f"{self.node.name}: {container} to be {state}", lambda: self.state(container) == state,
                 timeout=timeout, interval=0.1)

    def pid(self, container: str) -> int:
        """The container's main process, as the machine sees it (0 when not running)."""
        return int(self.inspect(container)["State"]["Pid"])

    def logs(self, container: str, tail: int | None = None) -> str:
        """stdout and stderr of the container (merged, in order of arrival)."""
        args = ["logs", *(["--tail", str(tail)] if tail is not None else []), container]
        cp = self.run(*args)
        return cp.stdout + cp.stderr

    def security(self, container: str) -> ContainerSecurity:
        """The container's main process as it really runs (read from inside it)."""
        info = self.inspect(container)
        status = self.exec(container, "cat", "/proc/1/status", check=True).stdout
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        # The root mount's options as the container's own process sees them (any user can read them).
        mounts = self.exec(container, "cat", "/proc/1/mounts", check=True).stdout.splitlines()
        root = [line.split() for line in mounts if len(line.split()) > 3 and line.split()[1] == "/"]
        if not root:
            raise PodmanError(f"{container}: no root mount in /proc/1/mounts")
        read_only = "ro" in root[-1][3].split(",")  # the last mount on / is the one in effect
        return ContainerSecurity(
            uid=int(fields["Uid"].split()[1]),  # effective
            gid=int(fields["Gid"].split()[1]),
            groups=tuple(int(g) for g in fields.get("Groups", "").split()),
            cap_effective=int(fields["CapEff"].strip(), 16),
            no_new_privs=fields.get("NoNewPrivs", "0").strip() == "1",
            seccomp=int(fields.get("Seccomp", "0").strip()),
            read_only_root=read_only,
            privileged=bool(info["HostConfig"].get("Privileged")),
            config_user=str(info["Config"].get("User", "")),
        )

    def probe(self, container: str, probe: dict[str, Any], timeout: float = 10) -> bool:
        """Runs a Kubernetes probe (httpGet, tcpSocket or exec, as in the pod's YAML) once, from inside
        the container; True when it succeeds. Podman 4.3 does not run them here: it turns a liveness
        probe into a healthcheck that needs systemd timers (absent on these machines) and, for httpGet,
        curl (absent from the image); readiness probes it ignores."""
        if "exec" in probe:
            return self.exec(container, *probe["exec"]["command"], timeout=timeout).returncode == 0
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"{get.get('scheme', 'HTTP').lower()}://{get.get('host', '127.0.0.1')}:{get['port']}"
            code = ("import sys, urllib.request as u\n"
                    "try:\n"
                    f"    r = u.urlopen({url + get.get('path', '/')!r}, timeout={timeout})\n"
                    "    sys.exit(0 if 200 <= r.status < 400 else 1)\n"
                    "except Exception:\n"
                    "    sys.exit(1)\n")
            return self.exec(container, "python3", "-c", code, timeout=timeout + 5).returncode == 0
        if "tcpSocket" in probe:
            sock = probe["tcpSocket"]
            code = ("import socket\n"
                    f"socket.create_connection(({sock.get('host', '127.0.0.1')!r}, {sock['port']}), "
                    f"timeout={timeout}).close()\n")
            return self.exec(container, "python3", "-c", code, timeout=timeout + 5).returncode == 0
        raise ValueError(f"unsupported probe: {sorted(probe)}")

    def containers(self, all_: bool = True) -> list[dict[str, Any]]:
        """`podman ps` as JSON (every container of this node's store with `all_`)."""
        cp = self.run("ps", "--format", "json", *(["--all"] if all_ else []))
        return json.loads(cp.stdout or "[]")  # type: ignore[no-any-return]

    # ---- clean-up ---------------------------------------------------------------------------------------

    def remove_all(self, timeout: int = 5) -> None:
        """Stops and removes every pod, container and volume of this node's podman (the node lives)."""
        self.run("pod", "rm", "--all", "--force", "-t", str(timeout), timeout=timeout + 120)
        self.run("rm", "--all", "--force", "-t", str(timeout), timeout=timeout + 120)
        self.run("volume", "rm", "--all", "--force")
        self.pods.clear()

    def close(self, timeout: int = 5) -> None:
        """Removes everything of this node's podman: pods, containers, volumes, the store on the node's
        /run, and the cgroups on the machine. Works after the node crashed or was stopped."""
        alive = self.node._holder is not None and self.node._holder.poll() is None
        try:
            if alive:
                self.remove_all(timeout)
                _unmount_below(self.node, self.dir)
                shutil.rmtree(self.node.path(self.dir), ignore_errors=True)
        finally:
            remove_cgroups(sorted(self._ids), sweep_parent=True)
            self._ids.clear()
            self.pods.clear()


def pod_from_template(workload: dict[str, Any], name: str) -> dict[str, Any]:
    """A Pod manifest named `name` from a Deployment's (or any workload's) pod template, with the
    template's labels and annotations: what `play` takes, one replica per node."""
    template = copy.deepcopy(workload["spec"]["template"])
    meta = template.get("metadata", {})
    namespace = workload.get("metadata", {}).get("namespace")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **({"namespace": namespace} if namespace else {}),
                     "labels": meta.get("labels", {}), "annotations": meta.get("annotations", {})},
        "spec": template["spec"],
    }


def _unmount_below(node: Node, prefix: str) -> None:
    """Unmounts whatever podman left mounted under `prefix` in the node (deepest first)."""
    mounts = node.run("cat", "/proc/self/mountinfo").stdout.splitlines()
    points = [line.split()[4] for line in mounts if len(line.split()) > 4]
    for point in sorted((p for p in points if p.startswith(prefix + "/")), key=len, reverse=True):
        node.run("umount", "-l", point, check=False)


def _cgroup_dirs(ids: Sequence[str]) -> list[Path]:
    """The cgroups podman made for these pod and container ids, under every controller."""
    found: list[Path] = []
    wanted = set(ids)
    for parent in _CGROUP_ROOT.glob(f"*/{_CGROUP_PARENT}"):
        for entry in parent.iterdir():
            name = entry.name.removeprefix("libpod-")
            if entry.is_dir() and (name in wanted or name.removeprefix("conmon-") in wanted):
                found.append(entry)
    return found


def _rmdir_tree(top: Path) -> None:
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
        os.rmdir(dirpath)


def remove_cgroups(ids: Sequence[str], sweep_parent: bool = False,
                   timeout: float = _CGROUP_GONE_TIMEOUT) -> None:
    """Removes podman's cgroups of `ids` (pods and containers), waiting up to `timeout` for their last
    processes to be gone (a killed process leaves its cgroup only once reaped). With `sweep_parent`, also
    podman's common parent when it became empty (it is shared: another user's podman keeps it busy)."""
    def removed() -> bool:
        busy = False
        for top in _cgroup_dirs(ids):
            try:
                _rmdir_tree(top)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                busy = True
        return not busy

    wait_for(f"podman's cgroups of {len(ids)} pods and containers to be removable", removed, timeout)
    if sweep_parent:
        for parent in _CGROUP_ROOT.glob(f"*/{_CGROUP_PARENT}"):
            for sub in (parent / "conmon", parent):
                with contextlib.suppress(OSError):  # busy or not empty: in use by someone else
                    sub.rmdir()


def podman_cgroups() -> list[str]:
    """Every cgroup below podman's parent on the machine (for tests checking nothing is left)."""
    out = []
    for parent in _CGROUP_ROOT.glob(f"*/{_CGROUP_PARENT}"):
        out += [str(p) for p in parent.rglob("*") if p.is_dir()]
    return sorted(out)


def mounts_matching(pattern: str, pid: int | str = "self") -> list[str]:
    """Mount points in `pid`'s mount namespace whose line matches `pattern` (a regular expression)."""
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if re.search(pattern, line)]


_MACHINE_PATHS = ("/var/lib/containers", "/run/runc", "/run/libpod", "/run/containers",
                  "/dev/shm/libpod_lock")


def machine_state() -> dict[str, list[str]]:
    """What podman could leave on the machine: live conmon processes, cgroups under podman's parent,
    mounts (overlays, podman's, /run/netns) in this mount namespace, and podman's default paths."""
    return {
        "conmon": sorted(str(p) for p in iter_conmons()),
        "cgroups": podman_cgroups(),
        "mounts": mounts_matching(r"overlay|podman|liqo-podman|/run/netns"),
        "paths": [p for p in _MACHINE_PATHS if os.path.exists(p)],
    }


@contextlib.contextmanager
def leaves_nothing(grace: float = 10.0) -> Iterator[None]:
    """Raises AssertionError when the block left anything of podman's on the machine (machine_state()
    grew). An exec's conmon exits on its own shortly after the exec returned: `grace` seconds for that."""
    before = machine_state()
    yield

    def new() -> dict[str, list[str]]:
        after = machine_state()
        return {k: [x for x in after[k] if x not in before[k]] for k in after if after[k] != before[k]}

    with contextlib.suppress(AssertionError):
        wait_for("podman's leftovers to go", lambda: not new(), timeout=grace)
    left = new()
    assert not left, f"left behind on the machine: {left}"


def iter_conmons() -> Iterator[int]:
    """PIDs of every live (not zombie) conmon process on the machine."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(entry.path, "stat").read_text()
                comm, rest = stat.split("(", 1)[1].rsplit(")", 1)
                if comm == "conmon" and rest.split()[0] not in ("Z", "X"):
                    yield int(entry.name)
