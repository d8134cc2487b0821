"""The HA story (README.md, The sandbox) end to end, with real processes only: per gateway replica one
emulated node running liqo-netagent, liqo-tunnel-controller, liqo-natmap-controller and liqo-labeler against a
per-cluster API server on a control-plane node (sandbox.testkit.cluster). Cluster A has two replicas, B one;
both use 10.0.0.0/16 for pods (A sees B's pods as 10.60.0.0/16 and B's external CIDR as 10.70.0.0/16,
B sees A's as 10.80.0.0/16 and 10.90.0.0/16). Each TunnelEndpoint points at the other cluster's
Service VIP, which follows the pod labelled active; A's worker routes B's CIDRs to A's active replica.

Every test builds a fresh topology (they kill replicas) and prints what it measured.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandbox.testkit.cluster import (
    ClusterOptions,
    EmulatedCluster,
    Peering,
    PeerSampler,
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
from sandbox.testkit.traffic import Pinger, ping_ok
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.kube import KubeError
from services.common.leaderelection import PROFILES
from services.common.vocabulary import NAT_MAPPINGS

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not shutil.which("wireguard-go"):
    pytest.skip("needs root and wireguard-go", allow_module_level=True)

LEASE_DURATION = 7.0  # the labeler's default, used unchanged


@dataclass
class Env:
    a: EmulatedCluster
    b: EmulatedCluster
    pod_a: Pod
    pod_b: Pod
    peering: Peering
    tep_created: float = 0.0
    connected_after: dict[str, float] = field(default_factory=dict)

    def logs(self, tail: int = 2500) -> str:
        out = []
        for c in (self.a, self.b):
            for r in c.replicas:
                for n in r.processes():
                    out.append(f"--- {c.name}/{r.name}/{n}\n{r.log(n)[-tail:]}")
        return "\n".join(out)


@pytest.fixture
def env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Env]:
    """Both clusters with the labeler's election profile `request.param` (default: its defaults)."""
    profile = getattr(request, "param", None)
    opts = ClusterOptions(election=PROFILES[profile]) if profile else None
    with Wan() as wan, \
         EmulatedCluster("a", 1, wan, replicas=2, options=opts, workdir=tmp_path / "a") as a, \
         EmulatedCluster("b", 2, wan, replicas=1, options=opts, workdir=tmp_path / "b") as b:  # fmt: skip
        a.start()
        b.start()
        pod_a, pod_b = a.add_pod("web", POD_A), b.add_pod("web", POD_B)
        for c in (a, b):
            wait_for(f"{c.name}: a leader", lambda c=c: any(r.is_active() for r in c.replicas), 30, 0.1)
            wait_for(f"{c.name}: VIP follows the active pod", lambda c=c: c.vip and c.vip.backend, 15, 0.1)
        a.public_key()
        b.public_key()
        t0 = time.monotonic()
        peering = peer(a, b, a_sees_b=A_SEES_B, b_sees_a=B_SEES_A)
        e = Env(a, b, pod_a, pod_b, peering, tep_created=t0)
        try:
            for c, ref in ((a, peering.in_a), (b, peering.in_b)):
                c.wait_connected(ref, 60)
                e.connected_after[c.name] = time.monotonic() - t0
            wait_for("A pod -> B pod", lambda: ping_ok(pod_a, POD_B_FROM_A, count=2), 30, 0.1)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{e.logs()}") from None
        yield e


# ---- the tests --------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_one_leader_labels_annotation_connected_traffic_and_natmapping(env: Env) -> None:
    a, b = env.a, env.b
    lead = a.leader()
    other = next(r for r in a.replicas if r is not lead)
    lease = a.lease()
    assert lease["spec"]["holderIdentity"] == lead.name
    assert a.labels() == {lead.name: "active", other.name: "standby"}
    assert a.service_annotation() == lead.ip
    assert a.vip is not None and a.vip.backend == lead.ip
    # The sampler's source agrees with the real tool: the leader holds B's peer, the standby none.
    assert lead.wg_peers() and sorted(lead.wg_peers()) == sorted(lead.uapi_peers() or [])
    assert other.wg_peers() == [] and other.uapi_peers() == []
    for c, ref in ((a, env.peering.in_a), (b, env.peering.in_b)):
        status = c.tunnel_status(*ref)
        conn = status["connection"]
        assert conn["status"] == "Connected" and conn["latency"]["value"] not in ("", "N/A"), conn
        assert status["gatewayIP"] == c.leader().ip
        assert conn["peerConfiguration"]["endpointIP"] == (b.vip_ip if c is a else a.vip_ip)
    assert ping_ok(env.pod_a, POD_B_FROM_A, count=2) and ping_ok(env.pod_b, POD_A_FROM_B, count=2)
    # B's NatMapping exports its pod in the external CIDR A uses for B.
    assert not ping_ok(env.pod_a, EXPORTED_B, count=1)
    t0 = time.monotonic()
    b.client.create(NAT_MAPPINGS, cluster_nat_mapping(b, a, {POD_B: EXPORTED_B}, pod_cidr=B_SEES_A.pod,
                                                      external_cidr=A_SEES_B.external))
    wait_for("A pod -> B's exported address", lambda: ping_ok(env.pod_a, EXPORTED_B, count=1), 20, 0.1)
    natmap_s = time.monotonic() - t0
    print(f"\nTEP created -> Connected: A {env.connected_after['a']:.2f}s, B {env.connected_after['b']:.2f}s;"
          f" latency A {a.tunnel_status(*env.peering.in_a)['connection']['latency']['value']};"
          f" NatMapping created -> reachable {natmap_s:.2f}s")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("env", [None, "fast"], indirect=True, ids=["default", "fast-election"])
def test_node_crash_of_the_active_replica_hands_over(env: Env, tmp_path: Path) -> None:
    """With the labeler's defaults and with the fast election profile (its crash bound is the
    profile's lease duration: the successor acts a lease after the last renewal it saw, a retry
    period or less before the crash; the 2 s margin absorbs this machine's scheduling noise)."""
    a = env.a
    lease = float(a.options.election.timings.lease_duration) if a.options.election else LEASE_DURATION
    old = a.leader()
    new = next(r for r in a.replicas if r is not old)
    epoch = int(a.lease()["spec"].get("leaseTransitions", 0))
    with PeerSampler(a) as sampler, Pinger(env.pod_a, POD_B_FROM_A) as pinger:
        time.sleep(2)
        t_kill = time.time()
        old.crash()  # every process SIGKILLed at once, then the node's namespaces vanish
        t_active = wait_for("standby turns active", lambda: new.turned_active_after(t_kill), 30, 0.1)
        wait_for("traffic again", lambda: ping_ok(env.pod_a, POD_B_FROM_A, count=1), 30, 0.1)
        time.sleep(2)
        # A fast failover is over in a few seconds: sample on until the count checked below.
        wait_for("101 peer samples", lambda: len(sampler.samples) > 100, 30, 0.1)
    res = pinger.result
    assert res is not None
    gap = res.longest_gap_after(t_kill)
    takeover = t_active - t_kill
    print(f"\ncrash (lease {lease:g}s): new leader ACTIVE after {takeover:.2f}s, traffic back after "
          f"{gap[1] - t_kill:.2f}s (gap {gap[1] - gap[0]:.2f}s), ping lost {res.lost}/{res.sent}; "
          f"{len(sampler.samples)} peer samples, overlaps {len(sampler.overlaps())}")
    assert takeover <= lease + 2, f"takeover {takeover:.2f}s\n{env.logs()}"
    assert not sampler.overlaps(), sampler.overlaps()[:5]
    assert len(sampler.samples) > 100
    assert a.labels()[new.name] == "active" and a.service_annotation() == new.ip
    assert int(a.lease()["spec"]["leaseTransitions"]) == epoch + 1
    assert a.vip is not None and a.vip.backend == new.ip
    # The VIP's stale flows were flushed: no conntrack entry still leads to the dead node.
    flows = a.lb.run("conntrack", "-L", "-p", "udp").stdout
    assert new.ip in flows and old.ip not in flows, flows
    assert gap[1] - t_kill < 20
    env.b.wait_connected(env.peering.in_b, 30)  # B's TEP Connected again
    # The crashed node reboots (fresh kernel state): it rejoins as a standby with no peer.
    with PeerSampler(a) as after:
        old.boot()
        old.start()
        time.sleep(lease)  # the rebooted labeler campaigns for a while
    assert old.role().role == pb.ROLE_STANDBY and new.is_active() and old.wg_peers() == []
    assert all(old.alive(n) for n in old.processes()) and a.labels()[old.name] == "standby"
    assert not after.overlaps() and ping_ok(env.pod_a, POD_B_FROM_A, count=2)


@pytest.mark.timeout(240)
def test_sigkilled_labeler_fences_its_agent_before_the_standby_activates(env: Env, tmp_path: Path) -> None:
    a = env.a
    old = a.leader()
    new = next(r for r in a.replicas if r is not old)
    i_old, i_new = a.replicas.index(old), a.replicas.index(new)
    with PeerSampler(a) as sampler, Pinger(env.pod_a, POD_B_FROM_A) as pinger:
        time.sleep(2)
        assert sampler.samples[-1][1][i_old] > 0
        t_kill = time.time()
        old.kill("labeler")  # the agent, tunnel and natmap controllers of that replica live on
        t_active = wait_for("standby turns active", lambda: new.turned_active_after(t_kill), 30, 0.1)
        wait_for("traffic again", lambda: ping_ok(env.pod_a, POD_B_FROM_A, count=1), 30, 0.1)
        # The killed labeler comes back, campaigns, and stays standby behind the new holder.
        old.start_process("labeler")
        time.sleep(6)
    res = pinger.result
    assert res is not None
    dropped = sampler.last_with_peers(i_old)
    new_peers = sampler.first_with_peers(i_new, t_kill)
    gap = res.longest_gap_after(t_kill)
    nan = float("nan")
    print(f"\nlabeler SIGKILL: old agent dropped its peers {dropped - t_kill if dropped else nan:.2f}s "
          f"after the kill, new leader ACTIVE after {t_active - t_kill:.2f}s, peers at "
          f"{new_peers - t_kill if new_peers else nan:.2f}s, traffic back after "
          f"{gap[1] - t_kill:.2f}s, ping lost {res.lost}/{res.sent}")
    assert old.alive("netagent") and old.alive("tunnel") and old.alive("natmap")
    assert dropped is not None and new_peers is not None and dropped < new_peers, (dropped, new_peers)
    assert not sampler.overlaps(), sampler.overlaps()[:5]
    assert t_active - t_kill <= LEASE_DURATION + 2
    assert not old.is_active() and new.is_active()
    assert a.lease()["spec"]["holderIdentity"] == new.name
    assert a.labels() == {new.name: "active", old.name: "standby"}


@pytest.mark.timeout(240)
def test_graceful_stop_hands_over_within_two_seconds(env: Env, tmp_path: Path) -> None:
    a = env.a
    old = a.leader()
    new = next(r for r in a.replicas if r is not old)
    with PeerSampler(a) as sampler, Pinger(env.pod_a, POD_B_FROM_A) as pinger:
        time.sleep(2)
        t_term = time.time()
        old.stop("labeler")  # SIGTERM: releases the Lease after setting its agent STANDBY
        t_labeler_gone = time.time()
        old.stop()  # then the rest
        t_active = wait_for("standby turns active", lambda: new.turned_active_after(t_term), 10, 0.1)
        wait_for("traffic again", lambda: ping_ok(env.pod_a, POD_B_FROM_A, count=1), 20, 0.1)
        time.sleep(1)
    res = pinger.result
    assert res is not None
    gap = res.longest_gap_after(t_term)
    i_old, i_new = a.replicas.index(old), a.replicas.index(new)
    dropped = sampler.last_with_peers(i_old)
    new_peers = sampler.first_with_peers(i_new, t_term)
    assert dropped is not None and new_peers is not None
    vip_moved = next(t for t, ip in a.vip.history if ip == new.ip) if a.vip else float("nan")
    print(f"\ngraceful: labeler exited after {t_labeler_gone - t_term:.2f}s, old peers last seen at "
          f"{dropped - t_term:.2f}s, new leader ACTIVE after {t_active - t_term:.2f}s, its peers at "
          f"{new_peers - t_term:.2f}s, VIP moved at {vip_moved - t_term:.2f}s; longest reply gap "
          f"{gap[1] - gap[0]:.2f}s, ping lost {res.lost}/{res.sent}")
    print("replies around the hand-over:", [round(r - t_term, 2) for r, _, _ in res.replies
                                             if -0.3 < r - t_term < 2])
    assert t_active - t_term <= 2.0, f"{t_active - t_term:.2f}s\n{env.logs()}"
    assert not sampler.overlaps(), sampler.overlaps()[:5]
    assert all(code == 0 for code in old.exit_codes().values()), old.exit_codes()
    assert a.labels()[new.name] == "active" and a.service_annotation() == new.ip


@pytest.mark.timeout(300)
def test_api_server_outage_keeps_traffic_and_controllers_catch_up(env: Env, tmp_path: Path) -> None:
    a, b = env.a, env.b
    lead = a.leader()
    lease_before = a.lease()["spec"]
    outage = 30.0
    with PeerSampler(a) as sampler, Pinger(env.pod_a, POD_B_FROM_A) as pinger:
        time.sleep(1)
        t0 = time.time()
        a.pause_api(outage)
        b.pause_api(outage)
        time.sleep(1)
        with pytest.raises(Exception):  # noqa: B017 - any client error proves the outage is real
            a.client.get(NAT_MAPPINGS, "none")
        time.sleep(outage - 1)
        wait_for("A's API back", a.lease, 15, 0.1, retry_on=(KubeError,))
        wait_for("B's API back", b.lease, 15, 0.1, retry_on=(KubeError,))
        t_back = time.time()
        t_nm = time.monotonic()
        b.client.create(NAT_MAPPINGS, cluster_nat_mapping(b, a, {POD_B: EXPORTED_B}, pod_cidr=B_SEES_A.pod,
                                                          external_cidr=A_SEES_B.external))
        wait_for("NatMapping applied after the outage",
                 lambda: ping_ok(env.pod_a, EXPORTED_B, count=1), 20, 0.1)
        caught_up = time.monotonic() - t_nm
        time.sleep(1)
    res = pinger.result
    assert res is not None
    missing, expected = res.lost_between(t0, t_back)
    print(f"\nAPI outage {t_back - t0:.1f}s: ping lost {res.lost}/{res.sent} overall, {missing}/{expected} "
          f"during the outage; NatMapping created after it applied in {caught_up:.2f}s")
    assert all(all(c.processes_alive().values()) for c in (a, b)), [c.processes_alive() for c in (a, b)]
    assert res.lost <= res.sent * 0.01, f"lost {res.lost}/{res.sent}"
    assert expected > (t_back - t0) * 10 and missing <= expected * 0.01, (missing, expected)
    assert a.leader() is lead and a.lease()["spec"]["holderIdentity"] == lead.name
    assert a.lease()["spec"].get("leaseTransitions") == lease_before.get("leaseTransitions")
    assert not sampler.overlaps()
    assert caught_up < 10
