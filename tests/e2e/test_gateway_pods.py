"""The chart's gateway pods run by a real container engine: each replica is the Helm chart's rendered pod,
played by podman inside its emulated node (sandbox.testkit.cluster.PodRuntime), against the cluster's
in-memory API server. Cluster A has two replicas (privileged netagent), B one (the netagent with only
the capabilities the chart's `netagent.privileged: false` gives). Both use 10.0.0.0/16 for pods.

Proved here: traffic both ways through the remapped CIDRs and to a NatMapping address; every container
runs as the chart says (read from inside it); every probe of the chart answers (a standby is ready);
restarting each container of the active pod under traffic loses under a second; graceful failover
(the active pod stopped) and crash failover (its node killed) with the gap measured; nothing is left
behind. Needs the image (`make image`, which `make test` runs first).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandbox.testkit import chart
from sandbox.testkit.cluster import (
    ClusterOptions,
    EmulatedCluster,
    GatewayReplica,
    Peering,
    PeerSampler,
    PodRuntime,
    Wan,
    cluster_nat_mapping,
    peer,
)
from sandbox.testkit.cluster.standard import (
    A_SEES_B,
    B_SEES_A,
    EXPORTED_B,
    POD_A,
    POD_A_FROM_B,
    POD_B,
    POD_B_FROM_A,
)
from sandbox.testkit.hosts import Pod
from sandbox.testkit.podman import Podman, leaves_nothing
from sandbox.testkit.traffic import Pinger, ping_ok
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.vocabulary import NAT_MAPPINGS

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not shutil.which("podman"):
    pytest.skip("needs root and podman", allow_module_level=True)

LEASE = ["--lease-duration=3", "--renew-deadline=2", "--retry-period=0.5",
         "--election-request-timeout=0.6"]
# Restarting any one container of the active pod interrupts pod-to-pod traffic for less than this.
MAX_RESTART_GAP = 1.0

CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN = 12, 13, 21


def options(**over: Any) -> ClusterOptions:
    return ClusterOptions(pods=True, labeler_args=list(LEASE), **over)


CAPABILITIES = options(pod_values={"netagent": {"privileged": False}})  # B's netagent: no `privileged`


@dataclass
class Env:
    a: EmulatedCluster
    b: EmulatedCluster
    pod_a: Pod
    pod_b: Pod
    peering: Peering

    def logs(self, tail: int = 2500) -> str:
        return "\n".join(f"--- {c.name}/{r.name}/{n}\n{r.log(n)[-tail:]}"
                         for c in (self.a, self.b) for r in c.replicas for n in r.processes())


def pods_of(r: GatewayReplica) -> PodRuntime:
    assert isinstance(r.runtime, PodRuntime)
    return r.runtime


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if not Podman().image_exists():
        pytest.fail("the image is missing: run `make image` (make test does)")
    tmp = tmp_path_factory.mktemp("pods")
    with leaves_nothing(), Wan() as wan, \
         EmulatedCluster("a", 1, wan, replicas=2, workdir=tmp / "a", options=options()) as a, \
         EmulatedCluster("b", 2, wan, replicas=1, workdir=tmp / "b", options=CAPABILITIES) as b:  # fmt: skip
        a.start()
        b.start()
        pod_a, pod_b = a.add_pod("web", POD_A), b.add_pod("web", POD_B)
        for c in (a, b):
            wait_for(f"{c.name}: a leader", lambda c=c: any(r.is_active() for r in c.replicas), 60, 0.1)
            wait_for(f"{c.name}: VIP follows the active pod", lambda c=c: c.vip and c.vip.backend, 15, 0.1)
        a.public_key()
        b.public_key()
        peering = peer(a, b, a_sees_b=A_SEES_B, b_sees_a=B_SEES_A)
        e = Env(a, b, pod_a, pod_b, peering)
        try:
            for c, ref in ((a, peering.in_a), (b, peering.in_b)):
                c.wait_connected(ref, 60)
            wait_for("A pod -> B pod", lambda: ping_ok(pod_a, POD_B_FROM_A, count=2), 30, 0.1)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{dataplanes(e)}\n{e.logs()}") from None
        yield e


def dataplanes(env: Env) -> str:
    """What a failed peering looks like from the outside: each active replica's `wg show` and the
    load balancer's NAT and UDP flows."""
    out = []
    for c in (env.a, env.b):
        r = c.active_replica()
        if r is not None:
            pods = pods_of(r)
            out.append(f"--- {c.name}/{r.name} wg show\n"
                       + pods.podman.exec(pods.container("wireguard"), "wg", "show", "liqo.tunnel").stdout)
        out.append(f"--- {c.name}-lb nat\n" + c.lb.run("iptables-legacy-save", "-t", "nat").stdout)
        out.append(f"--- {c.name}-lb flows\n" + c.lb.run("conntrack", "-L", "-p", "udp", check=False).stdout)
        if c.vip is not None:
            out.append(f"--- {c.name} VIP backends {c.vip.history}, untranslated flows removed "
                       f"{c.vip.repaired}")
    return "\n".join(out)


def healthy(env: Env) -> None:
    """Both clusters have one leader, the tunnels are Connected and traffic flows both ways."""
    try:
        for c, ref in ((env.a, env.peering.in_a), (env.b, env.peering.in_b)):
            wait_for(f"{c.name}: one leader",
                     lambda c=c: sum(r.is_active() for r in c.replicas) == 1, 30, 0.1)
            c.wait_connected(ref, 30)
        wait_for("A -> B", lambda: ping_ok(env.pod_a, POD_B_FROM_A, count=1), 30, 0.1)
        wait_for("B -> A", lambda: ping_ok(env.pod_b, POD_A_FROM_B, count=1), 30, 0.1)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{dataplanes(env)}\n{env.logs()}") from None


def ready_standby(r: GatewayReplica, since: float) -> None:
    """Waits until `r`, (re)started at `since` (POSIX time), could take over: its netagent STANDBY
    with a configured device, and its labeler, started since, campaigning. A pod's containers start
    one after another, the labeler seconds after the netagent; a labeler that is not running yet
    when the leader dies first watches the Lease for a whole lease duration."""
    def ready() -> bool:
        try:
            info = r.role()
        except grpc.RpcError:
            return False
        return info.role == pb.ROLE_STANDBY and info.device_configured
    wait_for(f"{r.name} a ready standby", ready, 60, 0.1)
    wait_for(f"{r.name}'s labeler campaigning",
             lambda: any(ev.get("t", 0) > since for ev in r.log_events("labeler", "netagent ready to lead")),
             60, 0.1)
    time.sleep(1)  # the labeler's next attempt (retry period 0.5 s) sees the Lease held


# ---- the tests --------------------------------------------------------------------------------------


def test_pods_peer_with_traffic_both_ways_and_a_natmapping(env: Env) -> None:
    assert ping_ok(env.pod_a, POD_B_FROM_A, count=3)
    assert ping_ok(env.pod_b, POD_A_FROM_B, count=3)
    env.b.client.create(NAT_MAPPINGS, cluster_nat_mapping(
        env.b, env.a, {POD_B: EXPORTED_B}, pod_cidr=B_SEES_A.pod, external_cidr=A_SEES_B.external))
    wait_for("A -> B's NatMapping address", lambda: ping_ok(env.pod_a, EXPORTED_B, count=1), 30, 0.1)
    # In a steady state nothing is ever repaired (drift would mean two writers, or a layer the agent
    # cannot read back as it wrote it).
    for c in (env.a, env.b):
        for r in c.replicas:
            repairs = r.log_events("netagent", "repaired drift in Liqo-owned kernel state")
            assert not repairs, r.log("netagent")
    # Every container of every pod is the chart's, and runs.
    for c in (env.a, env.b):
        for r in c.replicas:
            pods = pods_of(r)
            assert set(pods.names) == {"netagent", "wireguard", "tunnel", "natmap", "labeler"}
            assert all(r.alive(n) for n in pods.names), {n: r.exit_codes() for n in pods.names}


def test_containers_run_as_the_chart_says(env: Env) -> None:
    """User, groups, capabilities, privilege escalation, seccomp and read-only root, read from inside
    each running container of A's (privileged) and B's (capabilities) active pods."""
    for c, privileged in ((env.a, True), (env.b, False)):
        r = c.leader()
        pods = pods_of(r)
        spec = chart.containers(pods.objects)
        groups = chart.deployment(pods.objects)["spec"]["template"]["spec"]["securityContext"][
            "supplementalGroups"]
        assert groups
        for name in ("tunnel", "natmap", "labeler"):
            sec = pods.podman.security(pods.container(name))
            ctx = spec[name]["securityContext"]
            assert (sec.uid, sec.gid) == (ctx["runAsUser"], ctx["runAsGroup"]), (name, sec)
            assert set(groups) <= set(sec.groups), (name, sec.groups)  # the role sockets' group
            assert sec.cap_effective == 0, (name, hex(sec.cap_effective))
            assert sec.no_new_privs and sec.seccomp == 2 and sec.read_only_root, (name, sec)
            assert not sec.privileged
            # the root filesystem really refuses writes, and the container sees only its own socket
            assert pods.podman.exec(pods.container(name), "touch", "/x").returncode != 0
            own = f"/run/liqo/{name}/netagent.sock"
            listing = pods.podman.exec(pods.container(name), "ls", "/run/liqo", check=True).stdout.split()
            assert listing == [name], (name, listing)
            assert pods.podman.exec(pods.container(name), "test", "-S", own).returncode == 0
        agent = pods.podman.security(pods.container("netagent"))
        assert agent.uid == 0 and agent.privileged is privileged, agent
        if not privileged:
            caps = {n for n in range(64) if agent.has_cap(n)}
            assert caps == {CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN}, caps
        wg = pods.podman.security(pods.container("wireguard"))
        assert wg.uid == 0 and not wg.privileged, wg
        assert {n for n in range(64) if wg.has_cap(n)} == {CAP_NET_ADMIN}, hex(wg.cap_effective)
        # No controller can read the netagent's private directory or the wireguard-go socket.
        for name in ("tunnel", "natmap", "labeler"):
            for path in ("/run/liqo/netagent", "/var/run/wireguard/liqo.tunnel.sock"):
                seen = pods.podman.exec(pods.container(name), "test", "-e", path).returncode == 0
                assert not seen, (name, path)


def test_every_probe_answers_on_the_active_and_the_standby(env: Env) -> None:
    for r in env.a.replicas:
        pods = pods_of(r)
        for name, c in chart.containers(pods.objects).items():
            for kind in ("livenessProbe", "readinessProbe"):
                assert kind in c, (name, kind)
                ok = pods.podman.probe(pods.container(name), c[kind])
                assert ok, (r.name, name, kind, r.log(name)[-2000:])


@pytest.mark.timeout(420)
def test_restarting_each_container_of_the_active_pod_under_traffic_loses_under_a_second(env: Env) -> None:
    healthy(env)
    gaps: dict[str, float] = {}
    # The labeler last: its restart hands the lease over (graceful failover to the other pod).
    for name in ("wireguard", "netagent", "tunnel", "natmap", "labeler"):
        r = env.a.leader()
        with PeerSampler(env.a) as sampler, Pinger(env.pod_a, POD_B_FROM_A, interval=0.02) as pinger:
            time.sleep(1.5)
            t = time.time()
            r.restart(name)  # podman stop (SIGTERM) + start: what the kubelet does
            wait_for(f"{name} back", lambda r=r, name=name: r.alive(name), 60, 0.1)
            time.sleep(2)
        res = pinger.result
        assert res is not None
        start, end = res.longest_gap_after(t)
        gaps[name] = end - start
        print(f"\nrestart {name} of {r.name}: longest reply gap {end - start:.2f}s, "
              f"lost {res.missing()[0]}/{res.missing()[1]}")
        overlaps = sampler.overlaps()
        assert not overlaps, (f"{name}: two replicas with peers from {overlaps[0][0] - t:.2f}s to "
                              f"{overlaps[-1][0] - t:.2f}s after the restart\n{env.logs(6000)}")
        healthy(env)
    print("restart gaps:", {n: round(g, 2) for n, g in gaps.items()})
    assert all(g < MAX_RESTART_GAP for g in gaps.values()), f"{gaps}\n{env.logs()}"


@pytest.mark.timeout(420)
def test_graceful_then_crash_failover_of_the_active_pod(env: Env) -> None:
    healthy(env)
    a = env.a
    # Graceful: the active pod is stopped (every container SIGTERMed at once, as a pod deletion does).
    old = a.leader()
    new = next(r for r in a.replicas if r is not old)
    with PeerSampler(a) as sampler, Pinger(env.pod_a, POD_B_FROM_A, interval=0.02) as pinger:
        time.sleep(1.5)
        t_stop = time.time()
        pods_of(old).podman.stop_pod(old.name)
        t_active = wait_for("standby turns active", lambda: new.turned_active_after(t_stop), 20, 0.1)
        wait_for("traffic again", lambda: ping_ok(env.pod_a, POD_B_FROM_A, count=1), 20, 0.1)
        time.sleep(1)
    res = pinger.result
    assert res is not None
    start, end = res.longest_gap_after(t_stop)
    print(f"\ngraceful pod stop: standby ACTIVE after {t_active - t_stop:.2f}s, longest reply gap "
          f"{end - start:.2f}s, lost {res.missing()[0]}/{res.missing()[1]}")
    assert not sampler.overlaps(), sampler.overlaps()[:5]
    assert t_active - t_stop < 3, env.logs()
    assert end - start < 2, env.logs()
    restarted = time.time()
    pods_of(old).podman.start_pod(old.name)  # the pod comes back as the standby
    ready_standby(old, restarted)
    healthy(env)

    # Crash: the active replica's node dies with everything in it.
    old = a.leader()
    new = next(r for r in a.replicas if r is not old)
    with PeerSampler(a) as sampler, Pinger(env.pod_a, POD_B_FROM_A, interval=0.02) as pinger:
        time.sleep(1.5)
        t_kill = time.time()
        old.crash()
        t_active = wait_for("standby turns active", lambda: new.turned_active_after(t_kill), 30, 0.1)
        wait_for("traffic again", lambda: ping_ok(env.pod_a, POD_B_FROM_A, count=1), 30, 0.1)
        time.sleep(1)
    res = pinger.result
    assert res is not None
    start, end = res.longest_gap_after(t_kill)
    print(f"crash: standby ACTIVE after {t_active - t_kill:.2f}s (lease 3 s), longest reply gap "
          f"{end - start:.2f}s, lost {res.missing()[0]}/{res.missing()[1]}")
    assert not sampler.overlaps(), sampler.overlaps()[:5]
    assert t_active - t_kill < 3 + 2, env.logs()
    # The crashed node reboots: a fresh pod (fresh emptyDirs), standby.
    rebooted = time.time()
    old.boot()
    old.start()
    ready_standby(old, rebooted)
    healthy(env)
    assert old.wg_peers() == []


def test_the_gateway_pods_leave_nothing_behind(tmp_path: Path) -> None:
    """A pod cluster started and closed leaves no container, pod, volume, mount, cgroup or process
    (leaves_nothing), and no namespace (the session guard)."""
    with leaves_nothing(), Wan() as wan, \
         EmulatedCluster("c", 3, wan, workdir=tmp_path / "c", options=options()) as c:  # fmt: skip
        c.start()
        wait_for("a leader", lambda: any(r.is_active() for r in c.replicas), 60, 0.1)
        r = c.replicas[0]
        assert pods_of(r).podman.containers(), "no containers were played"
