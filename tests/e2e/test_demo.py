"""`make demo` (sandbox/demo.py): its pure helpers as tables, and, as root, the real thing run as a
subprocess: exit code, the key lines of its output, and that nothing is left behind.

What "nothing left behind" means here, checked against the machine rather than the demo's word:
every process the demo starts inherits a random environment tag, and a sampler records the network
and mount namespaces of the tagged processes (node holders, pods, agents, wireguard-go) and the
named netns inside the nodes while the demo runs. Afterwards no tagged process may live, no process
may be in any recorded namespace, the demo's TMPDIR must be empty, and the root namespace must have
no new named netns, link or WireGuard socket.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandbox.demo import format_table, netmap, printer_table, tunnel_endpoints_table
from sandbox.testkit.traffic import PingSummary, parse_ping
from services.common.vocabulary import NAMESPACES, TUNNEL_ENDPOINTS

ROOT = Path(__file__).resolve().parents[2]
TAG_VAR = "LIQO_DEMO_TEST_TAG"
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("wireguard-go"),
                                reason="needs root and wireguard-go")


# ---- the pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "src", "dst", "want"),
    [
        ("10.0.1.5", "10.0.0.0/16", "10.80.0.0/16", "10.80.1.5"),
        ("10.0.2.7", "10.0.0.0/16", "10.60.0.0/16", "10.60.2.7"),
        ("10.0.255.255", "10.0.0.0/16", "192.168.0.0/16", "192.168.255.255"),
        ("172.16.3.4", "172.16.3.0/24", "10.9.9.0/24", "10.9.9.4"),
    ],
)
def test_netmap_keeps_the_host_part(ip: str, src: str, dst: str, want: str) -> None:
    assert netmap(ip, src, dst) == want


@pytest.mark.parametrize(("ip", "src", "dst"), [("10.1.0.1", "10.0.0.0/16", "10.80.0.0/16"),
                                                ("10.0.0.1", "10.0.0.0/16", "10.80.0.0/24")])
def test_netmap_rejects_outside_or_mismatched(ip: str, src: str, dst: str) -> None:
    with pytest.raises(ValueError):
        netmap(ip, src, dst)


PING_D = """PING 10.60.2.7 (10.60.2.7) 56(84) bytes of data.
[1000.00] 64 bytes from 10.60.2.7: icmp_seq=1 ttl=61 time=0.5 ms
[1000.05] 64 bytes from 10.60.2.7: icmp_seq=2 ttl=61 time=0.4 ms
[1005.10] 64 bytes from 10.60.2.7: icmp_seq=4 ttl=61 time=4950 ms
[1005.10] 64 bytes from 10.60.2.7: icmp_seq=5 ttl=61 time=4900 ms
[1005.15] 64 bytes from 10.60.2.7: icmp_seq=6 ttl=61 time=0.6 ms

--- 10.60.2.7 ping statistics ---
7 packets transmitted, 5 received, 28.5714% packet loss, time 5150ms
rtt min/avg/max/mdev = 0.400/1970.300/4950.000/2400.000 ms
"""


def test_parse_ping_with_timestamps() -> None:
    p = parse_ping(PING_D)
    assert (p.sent, p.received, p.lost, p.rtt_avg_ms) == (7, 5, 2, 1970.3)
    assert p.replies[2] == (1005.10, 4, 4950.0)
    assert p.missing() == (1, 6)  # seq 3; seq 7 was still in flight when ping stopped
    assert p.delayed(500) == [4950.0, 4900.0]
    assert p.longest_gap_after(1000.02) == pytest.approx((1000.05, 1005.10))
    assert p.longest_gap_after(1006) == (1006, 1006)
    assert p.lost_between(1000.0, 1005.2) == (1, 6) and p.lost_between(1005.11, 1006) == (0, 1)
    assert p.lost_between(2000, 3000) == (0, 0)


def test_parse_ping_plain_and_total_loss() -> None:
    p = parse_ping("--- x ping statistics ---\n"
                   "1 packets transmitted, 0 received, 100% packet loss, time 0ms\n")
    assert (p.sent, p.received, p.rtt_avg_ms, p.replies) == (1, 0, None, ())
    assert p.missing() == (1, 1) and p.longest_gap_after(0) == (0, 0)
    with pytest.raises(ValueError):
        parse_ping("ping: connect: Network is unreachable\n")


def test_format_table_pads_like_kubectl() -> None:
    assert format_table(["NAME", "STATUS"], [["b-tep", "Connected"], ["longer-name", "Error"]]) == (
        "NAME          STATUS\nb-tep         Connected\nlonger-name   Error")


def test_printer_table_uses_the_crd_columns() -> None:
    cols = [{"name": "Peering Cluster", "type": "string", "jsonPath": ".spec.clusterIdentity.clusterName"},
            {"name": "Latency", "type": "string", "jsonPath": ".status.connection.latency.value",
             "priority": 1},
            {"name": "Connection status", "type": "string", "jsonPath": ".status.connection.status"}]
    items = [{"metadata": {"name": "b-tep", "namespace": "liqo-tenant-b"},
              "spec": {"clusterIdentity": {"clusterName": "b"}},
              "status": {"connection": {"status": "Connected", "latency": {"value": "2ms"}}}},
             {"metadata": {"name": "c-tep", "namespace": "liqo-tenant-c"},
              "spec": {"clusterIdentity": {"clusterName": "c"}}}]
    header, rows = printer_table(cols, items, 0.0)
    assert header == ["NAMESPACE", "NAME", "PEERING CLUSTER", "LATENCY", "CONNECTION STATUS"]
    assert rows == [["liqo-tenant-b", "b-tep", "b", "2ms", "Connected"],
                    ["liqo-tenant-c", "c-tep", "c", "<none>", "<none>"]]
    header, rows = printer_table(cols, items, 0.0, wide=False)
    assert "LATENCY" not in header and rows[0] == ["liqo-tenant-b", "b-tep", "b", "Connected"]


def test_ping_summary_without_replies() -> None:
    assert PingSummary(3, 0, None).missing() == (3, 3)


def test_table_without_kubectl_matches_kubectl(tmp_path: Path) -> None:
    """The fallback for a machine without kubectl prints what `kubectl get -o wide` prints."""
    from sandbox.kubeapi import KubeAPIServer
    from services.common.kube import KubeClient

    with KubeAPIServer(crd_dirs=[str(ROOT / "charts/liqo-gateway/crds")]) as api:
        kc = tmp_path / "kc"
        api.write_kubeconfig(kc)
        client = KubeClient.from_kubeconfig(str(kc))
        try:
            client.create(NAMESPACES, {"metadata": {"name": "liqo-tenant-b"}})
            tep = {"apiVersion": "net.liqo.io/v1alpha1", "kind": "TunnelEndpoint",
                   "metadata": {"name": "b-tep", "namespace": "liqo-tenant-b"},
                   "spec": {"clusterIdentity": {"clusterID": "b-id", "clusterName": "b"},
                            "localPodCIDR": "10.0.0.0/16", "localExternalCIDR": "10.201.0.0/16",
                            "remotePodCIDR": "10.0.0.0/16", "remoteExternalCIDR": "10.201.0.0/16",
                            "endpointIP": "172.31.0.12", "backendType": "wireguard",
                            "backend_config": {"publicKey": "A" * 43 + "=", "port": "5871"}}}
            client.create(TUNNEL_ENDPOINTS, tep, "liqo-tenant-b")
            client.patch(TUNNEL_ENDPOINTS, "b-tep", {"status": {"connection": {
                "status": "Connected", "latency": {"value": "2ms"}}}}, "liqo-tenant-b", subresource="status")
            ours = tunnel_endpoints_table(client)
        finally:
            client.close()
        if shutil.which("kubectl") is None:
            pytest.skip("no kubectl to compare with")
        argv = ["kubectl", "--kubeconfig", str(kc), "get", "tunnelendpoints", "-A", "-o", "wide"]
        theirs = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.rstrip()
    # Same columns and cells; AGE (the last one) may tick between the two reads.
    assert [line.split()[:-1] for line in ours.splitlines()] == \
        [line.split()[:-1] for line in theirs.splitlines()], (ours, theirs)
    assert "Connected" in ours and "172.31.0.12" in ours


# ---- the real demo -------------------------------------------------------------------------------------


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _pids() -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def tagged(tag: str) -> list[int]:
    needle = f"{TAG_VAR}={tag}".encode()
    return [p for p in _pids() if _environ_has(p, needle) and _alive(p)]


def in_namespaces(namespaces: set[tuple[str, int]]) -> list[int]:
    out = []
    for pid in _pids():
        for kind in ("net", "mnt"):
            try:
                if (kind, os.stat(f"/proc/{pid}/ns/{kind}").st_ino) in namespaces and _alive(pid):
                    out.append(pid)
                    break
            except OSError:
                continue
    return out


def root_state() -> dict[str, set[str]]:
    """What the demo must never add to the root namespaces."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {
        "netns": set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set(),
        "links": {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()},
        "wireguard": set(os.listdir("/run/wireguard")) if os.path.isdir("/run/wireguard") else set(),
    }


@dataclass
class Sampler:
    """Records, every `interval` seconds, the namespaces of the tagged processes (and the named netns inside
    their mount namespaces) while the demo runs."""

    tag: str
    interval: float = 1.0
    namespaces: set[tuple[str, int]] = field(default_factory=set)
    pids_seen: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in tagged(self.tag):
                self.pids_seen.add(pid)
                for kind in ("net", "mnt"):
                    with contextlib.suppress(OSError):
                        self.namespaces.add((kind, os.stat(f"/proc/{pid}/ns/{kind}").st_ino))
                with contextlib.suppress(OSError):
                    for entry in os.scandir(f"/proc/{pid}/root/run/netns"):
                        self.namespaces.add(("net", os.stat(entry.path).st_ino))

    def ours(self) -> set[tuple[str, int]]:
        """Only the namespaces the demo created (not the root ones the demo process itself is in)."""
        mine = {(k, os.stat(f"/proc/self/ns/{k}").st_ino) for k in ("net", "mnt")}
        return self.namespaces - mine


@dataclass
class DemoRun:
    tag: str
    tmpdir: Path
    before: dict[str, set[str]]
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    def start(self, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, TAG_VAR: self.tag, "TMPDIR": str(self.tmpdir), "PYTHONUNBUFFERED": "1",
               "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        self.proc = subprocess.Popen([sys.executable, "-m", "sandbox.demo", *args], cwd=ROOT, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        return self.proc

    def read_until(self, pattern: str, timeout: float) -> str:
        """Reads output lines until one matches (fails on EOF or timeout)."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if rx.search(line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in:\n{self.text()}")

    def finish(self, timeout: float) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            self.output.extend(self.proc.stdout)
            return self.proc.wait()
        finally:
            timer.cancel()

    def text(self) -> str:
        return "".join(self.output)

    def kill(self) -> None:
        """Last resort for a failed test: SIGINT the demo's process group (its own clean-up)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def assert_nothing_left(run: DemoRun, sampler: Sampler, min_namespaces: int = 20) -> None:
    assert sampler.pids_seen, "the sampler saw no tagged process: the check would be vacuous"
    ours = sampler.ours()
    # A full run: nodes (net+mnt), pods, each gateway node's liqo-netns, the WAN: far more than a handful.
    assert len(ours) >= min_namespaces, ours
    assert tagged(run.tag) == [], "processes of the demo survived it"
    assert in_namespaces(ours) == [], "processes live in the demo's namespaces"
    assert list(run.tmpdir.iterdir()) == [], "files left in the demo's TMPDIR"
    deadline = time.monotonic() + 15  # other engineers' tests may add and remove root links meanwhile
    while True:
        after = root_state()
        new = {k: after[k] - run.before[k] for k in after}
        if not any(new.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not any(new.values()), f"new in the root namespace: {new}"


@pytest.fixture
def demo_run() -> Iterator[DemoRun]:
    # Short: the netagent sockets live below it, and a Unix socket path has at most 107 bytes.
    tmpdir = Path(tempfile.mkdtemp(prefix="ldt-", dir="/tmp"))
    run = DemoRun(uuid.uuid4().hex, tmpdir, root_state())
    try:
        yield run
    finally:
        run.kill()
        # A demo killed before its clean-up (a failed test) leaves daemons such as wireguard-go,
        # reparented to init, holding its namespaces: they carry the tag. A passing test has
        # already asserted that none is left.
        for pid in tagged(run.tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmpdir, ignore_errors=True)


@needs_root
@pytest.mark.root
@pytest.mark.timeout(300)
def test_demo_proves_traffic_natmapping_status_failover_and_leaves_nothing(demo_run: DemoRun) -> None:
    t0 = time.monotonic()
    with Sampler(demo_run.tag) as sampler:
        demo_run.start()
        code = demo_run.finish(timeout=240)
    took = time.monotonic() - t0
    out = demo_run.text()
    print(out)
    print(f"demo exit {code} after {took:.1f}s")
    assert code == 0, out
    assert "FAIL" not in out
    for line in [
        "PASS  ping a-w1/web (10.0.1.5) -> 10.60.2.7 (b-w1/web): 3/3 replies",
        "PASS  ping b-w1/web (10.0.2.7) -> 10.80.1.5 (a-w1/web): 3/3 replies",
        "PASS  TCP a-w1/web -> 10.60.2.7:7000: b-w1/web saw the source as 10.80.1.5",
        "PASS  TCP b-w1/web -> 10.80.1.5:7000: a-w1/web saw the source as 10.60.2.7",
        "PASS  ping a-w1/web -> 10.70.0.7: 3/3 replies",
        "PASS  TCP a-w1/web -> 10.70.0.7:7000: reached b-w1/web, which saw it arrive at 10.0.2.7",
        "$ kubectl get tunnelendpoints -A -o wide",
        "PASS  cluster a: TunnelEndpoint Connected",
        "PASS  cluster b: TunnelEndpoint Connected",
        "WireGuard implementation WIREGUARD_IMPLEMENTATION_USERSPACE",
        "endpoint: 172.31.0.12:5871",
        "private key: (hidden)",
        "is STANDBY with no WireGuard peer (fenced)",
        "17 proofs passed, 0 failed",
        "left behind: nothing",
    ]:
        assert line in out, line
    # The real kubectl printed the CRD's printer columns, one Connected row per cluster.
    assert re.search(r"NAMESPACE\s+NAME\s+PEERING CLUSTER\s+ENDPOINT IP\s+BACKEND TYPE\s+LATENCY\s+"
                     r"CONNECTION STATUS\s+AGE", out)
    assert re.search(r"liqo-tenant-b\s+b-tep\s+b\s+172\.31\.0\.12\s+wireguard\s+\S+\s+Connected", out)
    assert re.search(r"liqo-tenant-a\s+a-tep\s+a\s+172\.31\.0\.11\s+wireguard\s+\S+\s+Connected", out)
    m = re.search(r"Failover: graceful stop of cluster a's active replica (gateway-\d)", out)
    assert m
    old = m.group(1)
    m = re.search(r"PASS  new leader (gateway-\d): ACTIVE ([\d.]+)s after the SIGTERM", out)
    assert m and m.group(1) != old and float(m.group(2)) < 10, out
    m = re.search(r"PASS  ping during the hand-over: (\d+) of (\d+) lost", out)
    assert m and int(m.group(2)) > 40, out  # at 20/s through at least two seconds
    assert_nothing_left(demo_run, sampler)


@needs_root
@pytest.mark.root
@pytest.mark.timeout(300)
def test_demo_keep_is_reachable_from_the_root_namespace_and_ctrl_c_cleans_up(demo_run: DemoRun) -> None:
    with Sampler(demo_run.tag) as sampler:
        demo_run.start("--keep", "--no-failover", "--quiet")
        demo_run.read_until(r"Press Ctrl-C", timeout=180)
        out = demo_run.text()
        assert "12 proofs passed, 0 failed" in out, out
        # Follow the printed instructions: kubectl through the demo's forwarder, grpcurl on a netagent.
        kubectl = re.search(r"cluster a:\s+(kubectl --kubeconfig \S+ get tunnelendpoints -A -o wide)", out)
        assert kubectl, out
        cp = subprocess.run(kubectl.group(1).split(), capture_output=True, text=True, timeout=30, check=False)
        assert cp.returncode == 0 and re.search(r"b-tep\s+b\s+172\.31\.0\.12.*Connected", cp.stdout), cp
        grpcurl = re.search(
            r"^\s+(\S*grpcurl -plaintext -unix \S+ liqo\.netagent\.v1\.NetAgentService/GetInfo)", out, re.M)
        assert grpcurl, out
        cp = subprocess.run(grpcurl.group(1).split(), capture_output=True, text=True, timeout=30, check=False)
        assert cp.returncode == 0 and re.search(r"wireguard_?[iI]mplementation", cp.stdout), cp
        wg = re.search(r"^\s+(nsenter -t \d+ -n -m ip netns exec liqo-netns wg show)$", out, re.M)
        assert wg, out
        cp = subprocess.run(wg.group(1).split(), capture_output=True, text=True, timeout=30, check=False)
        assert cp.returncode == 0 and "interface: liqo.tunnel" in cp.stdout, cp
        # Ctrl-C as a terminal sends it: to the whole foreground process group.
        assert demo_run.proc is not None
        os.killpg(demo_run.proc.pid, signal.SIGINT)
        code = demo_run.finish(timeout=90)
    out = demo_run.text()
    print(out)
    assert code == 0, out  # every proof had passed; Ctrl-C is how --keep ends
    assert "interrupted" in out and "left behind: nothing" in out, out
    assert_nothing_left(demo_run, sampler)


@needs_root
@pytest.mark.root
@pytest.mark.timeout(300)
def test_demo_failure_exits_non_zero_with_the_logs_and_leaves_nothing(demo_run: DemoRun) -> None:
    # A real failure: below this TMPDIR the Unix socket paths (the API server's control socket, the
    # netagents') exceed the 107 bytes a Unix socket allows, so the clusters never come up.
    deep = demo_run.tmpdir / ("d" * 80)
    deep.mkdir()
    with Sampler(demo_run.tag, interval=0.1) as sampler:  # the failure comes within a second or two
        demo_run.tmpdir, top = deep, demo_run.tmpdir
        demo_run.start("--no-failover")
        code = demo_run.finish(timeout=240)
    out = demo_run.text()
    print(out)
    assert code == 1, out
    assert "FAIL  bringing up the clusters and the tunnel" in out
    assert re.search(r"AF_UNIX path too long|should not have more than 107 characters", out)  # the cause
    assert "PASS" not in out and "left behind: nothing" in out
    assert_nothing_left(demo_run, sampler, min_namespaces=4)  # at least the WAN and a-lb were up
    deep.rmdir()
    assert list(top.iterdir()) == []
