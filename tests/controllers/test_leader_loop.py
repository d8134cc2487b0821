"""The election loop (services/labeler/elector.py) with two replicas in threads: real NetAgentClient over
gRPC to fake netagents that enforce the real fencing grant, and a fake Lease store with resourceVersion
semantics and injectable outages/partitions (sandbox/testkit/election.py). Short timings (lease 2 s,
renew deadline 1.5 s, retry 0.5 s) keep it quick; the subprocess tests against the in-memory API
server use the same code with real HTTP.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from sandbox.testkit.election import (
    MemoryLeaseStore,
    MemoryLock,
    RecordingNetAgent,
    overlap,
    serve,
)
from sandbox.testkit.wait import wait_for
from services.common.leaderelection import LeaseRecord, Timings, micro_time
from services.common.netagent_client import NetAgentClient
from services.labeler.elector import Elector
from services.labeler.metrics import LabelerMetrics

FAST = Timings(lease_duration=2, renew_deadline=1.5, retry_period=0.5, outage_grace=4.0)


@dataclass
class Replica:
    name: str
    netagent: RecordingNetAgent
    lock: MemoryLock
    elector: Elector
    metrics: LabelerMetrics
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.elector.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def halt(self, graceful: bool = True) -> None:
        if not graceful:  # as SIGKILL: no release, the netagent keeps whatever role it was granted
            self.elector.release = lambda: None  # type: ignore[method-assign]
        self.stop.set()
        if self.thread:
            self.thread.join(5)
            assert not self.thread.is_alive()


class Cluster:
    def __init__(self, timings: Timings, tmp: str) -> None:
        self.timings = timings
        self.tmp = tmp
        self.store = MemoryLeaseStore()
        self.replicas: list[Replica] = []
        self.servers: list[object] = []
        self.clients: list[NetAgentClient] = []
        self.double_active_samples = 0
        self.samples = 0
        self._sampling = threading.Event()

    def add(self, name: str) -> Replica:
        netagent = RecordingNetAgent(name)
        sock = f"{self.tmp}/{name}.sock"
        self.servers.append(serve(netagent, sock))
        client = NetAgentClient(sock, timeout=0.5, retry_deadline=0.0)
        self.clients.append(client)
        lock = self.store.lock_for(timeout=0.2)
        metrics = LabelerMetrics(CollectorRegistry())
        elector = Elector(lock, client, name, self.timings, metrics)  # type: ignore[arg-type]
        self.store.watchers.append(elector.lease_changed)
        r = Replica(name, netagent, lock, elector, metrics)
        self.replicas.append(r)
        return r

    def sample(self) -> None:
        """Every 50 ms: how many agents hold an unexpired ACTIVE role right now."""
        while not self._sampling.wait(0.05):
            n = sum(1 for r in self.replicas if r.netagent.active())
            self.samples += 1
            if n > 1:
                self.double_active_samples += 1

    def start_sampling(self) -> None:
        threading.Thread(target=self.sample, daemon=True).start()

    def close(self) -> None:
        self._sampling.set()
        for r in self.replicas:
            r.stop.set()
            if r.thread:
                r.thread.join(5)
        for c in self.clients:
            c.close()
        for s in self.servers:
            s.stop(0)  # type: ignore[attr-defined]

    def leaders(self) -> list[Replica]:
        return [r for r in self.replicas if r.elector.state.leading]

    def active_overlap(self) -> float:
        a, b = (r.netagent.active_intervals() for r in self.replicas[:2])
        return overlap(a, b)


@pytest.fixture
def cluster_factory() -> Iterator[Callable[[Timings], Cluster]]:
    made: list[Cluster] = []
    with tempfile.TemporaryDirectory(prefix="liqo-lbl-") as tmp:

        def make(timings: Timings) -> Cluster:
            c = Cluster(timings, tmp)
            made.append(c)
            return c

        yield make
        for c in made:
            c.close()


Make = Callable[[Timings], Cluster]


def sample(r: Replica, name: str, **labels: str) -> float | None:
    return r.metrics.registry.get_sample_value(name, labels)


def two_replicas(make: Make, timings: Timings = FAST) -> tuple[Cluster, Replica, Replica]:
    c = make(timings)
    a, b = c.add("gw-a"), c.add("gw-b")
    c.start_sampling()
    a.start()
    b.start()
    wait_for("nobody became active", lambda: any(r.netagent.active() for r in (a, b)), 5, 0.02)
    leader, follower = (a, b) if a.netagent.active() else (b, a)
    return c, leader, follower


def test_exactly_one_leader_and_crash_handover(cluster_factory: Callable[[Timings], Cluster]) -> None:
    c, leader, follower = two_replicas(cluster_factory)
    time.sleep(2.0)  # several renewals
    assert c.leaders() == [leader]
    assert leader.netagent.active() and not follower.netagent.active()
    assert [x.active for x in follower.netagent.calls] == [False]  # told STANDBY once, nothing else
    epoch = leader.elector.state.epoch

    killed_at = time.monotonic()
    leader.halt(graceful=False)
    wait_for("the follower active", follower.netagent.active, FAST.lease_duration + FAST.retry_period + 1.0,
             0.02)
    handover = follower.netagent.became_active_at(killed_at)
    assert handover is not None
    took = handover - killed_at
    print(f"crash handover: {took:.2f}s (lease {FAST.lease_duration}s)")
    assert took <= FAST.lease_duration + FAST.retry_period + 0.5
    # The old role ran out before the new one began: never two live dataplanes.
    assert c.active_overlap() == 0.0
    assert c.double_active_samples == 0 and c.samples > 50
    assert follower.elector.state.epoch == epoch + 1
    # The takeover's metrics are written once SetRole(ACTIVE) has returned to the elector, which is
    # just after the netagent shows ACTIVE: wait for the last of them.
    wait_for("the takeover's metrics", lambda: follower.metrics.leaderless._value.get() > 0, 2.0, 0.02)
    assert follower.metrics.failover._value.get() < 0.5
    # Timed from the leader's lease expiring by the follower's clock: the takeover itself.
    assert sample(follower, "liqo_labeler_failover_duration_seconds_count", cause="expired") == 1
    assert sample(follower, "liqo_labeler_failover_duration_seconds_count", cause="released") is None
    took_over = sample(follower, "liqo_labeler_failover_duration_seconds_sum", cause="expired")
    assert took_over is not None and 0 <= took_over < 0.5
    without = sample(follower, "liqo_labeler_no_active_replica_seconds_total")
    assert without is not None and took_over <= without < took_over + 1.0  # + the cold start, if seen
    assert sample(follower, "liqo_labeler_no_active_replica_stretch_seconds") == 0.0


def test_graceful_stop_hands_over_at_once(cluster_factory: Callable[[Timings], Cluster]) -> None:
    c, leader, follower = two_replicas(cluster_factory)
    time.sleep(1.0)
    stopped_at = time.monotonic()
    leader.halt(graceful=True)
    assert not leader.netagent.active()  # fenced before the Lease was released
    wait_for("the follower active", follower.netagent.active, 2.0, 0.02)
    became = follower.netagent.became_active_at(stopped_at)
    assert became is not None
    print(f"graceful handover: {became - stopped_at:.3f}s")
    assert became - stopped_at < 1.0
    assert c.store.record is not None and c.store.record.holder == follower.name
    assert c.active_overlap() == 0.0 and c.double_active_samples == 0
    wait_for("the takeover's metrics", lambda: sample(
        follower, "liqo_labeler_failover_duration_seconds_count", cause="released") == 1, 2.0, 0.02)
    assert sample(follower, "liqo_labeler_failover_duration_seconds_count", cause="expired") is None
    took_over = sample(follower, "liqo_labeler_failover_duration_seconds_sum", cause="released")
    assert took_over is not None and took_over < became - stopped_at


def test_api_outage_within_grace_keeps_the_leader_active(cluster_factory: Make) -> None:
    c, leader, follower = two_replicas(cluster_factory)
    time.sleep(1.0)
    epoch = leader.elector.state.epoch
    before = [sample(r, "liqo_labeler_no_active_replica_seconds_total") for r in (leader, follower)]
    c.store.down = True
    outage = 3.0  # longer than the lease (2 s), shorter than the grace (4 s)
    end = time.monotonic() + outage
    inactive = 0
    while time.monotonic() < end:
        inactive += 0 if leader.netagent.active() else 1
        assert not follower.netagent.active()
        time.sleep(0.05)
    assert leader.elector.state.outage
    c.store.down = False
    assert inactive == 0, "the leader's dataplane stopped during an outage shorter than the grace"
    wait_for("the outage to end", lambda: not leader.elector.state.outage, 2.0, 0.02)
    assert leader.elector.state.leading and leader.elector.state.epoch == epoch
    assert not follower.elector.state.leading
    assert c.store.record is not None and c.store.record.holder == leader.name
    assert c.double_active_samples == 0 and c.active_overlap() == 0.0
    # The follower could not read the Lease: it counts nothing, though the lease expired by its clock.
    after = [sample(r, "liqo_labeler_no_active_replica_seconds_total") for r in (leader, follower)]
    assert after == before


def test_api_outage_longer_than_grace_lets_the_role_expire(
    cluster_factory: Callable[[Timings], Cluster],
) -> None:
    t = Timings(lease_duration=2, renew_deadline=1.5, retry_period=0.5, outage_grace=2.5)
    c, leader, follower = two_replicas(cluster_factory, t)
    time.sleep(1.0)
    c.store.down = True
    down_at = time.monotonic()
    wait_for("the leader standby", lambda: not leader.netagent.active(), t.outage_grace + 1.0, 0.02)
    lapsed = time.monotonic() - down_at
    print(f"role lapsed {lapsed:.2f}s into the outage (grace {t.outage_grace}s)")
    assert lapsed <= t.outage_grace + 0.3  # measured from the outage start, so at most the grace
    # The role ends exactly at last write + grace; the loop notices at its next attempt.
    wait_for("the leader to step down", lambda: not leader.elector.state.leading, t.retry_period + 0.5, 0.02)
    assert not follower.netagent.active()
    time.sleep(1.0)
    c.store.down = False
    wait_for("one leader, active",
             lambda: len(c.leaders()) == 1 and any(r.netagent.active() for r in c.replicas), 5.0, 0.02)
    time.sleep(1.0)
    assert len(c.leaders()) == 1
    assert c.double_active_samples == 0 and c.active_overlap() == 0.0


@pytest.mark.parametrize(("grace", "may_overlap"), [(4.0, True), (1.0, False)])
def test_partitioned_leader_split_brain_bounded_by_grace(
    cluster_factory: Callable[[Timings], Cluster], grace: float, may_overlap: bool
) -> None:
    """Only the leader loses the API server: the other replica takes over after the lease duration,
    and the old role lives on at most until last renewal + grace. So the overlap is at most
    grace - lease_duration, and none when grace <= lease_duration - fencing margin."""
    t = Timings(lease_duration=2, renew_deadline=1.5, retry_period=0.5, outage_grace=grace)
    c, leader, follower = two_replicas(cluster_factory, t)
    time.sleep(1.0)
    leader.lock.cut = True
    wait_for("the follower active", follower.netagent.active, t.lease_duration + 2 * t.retry_period + 1.0,
             0.02)
    wait_for("the leader standby", lambda: not leader.netagent.active(), grace + 1.0, 0.02)
    both = c.active_overlap()
    print(f"partition, grace {grace}s: both active for {both:.2f}s")
    assert both <= max(0.0, grace - t.lease_duration) + 0.1
    if not may_overlap:
        assert both == 0.0 and c.double_active_samples == 0


def test_lease_taken_by_another_writer_demotes_at_once(cluster_factory: Callable[[Timings], Cluster]) -> None:
    c, leader, _follower = two_replicas(cluster_factory)
    time.sleep(1.0)
    assert c.store.record is not None
    epoch = c.store.record.transitions
    stamp = micro_time(time.time())
    c.store.force(LeaseRecord("intruder", 2, epoch + 1, stamp, stamp))
    forced_at = time.monotonic()
    wait_for("the leader standby", lambda: not leader.netagent.active(), FAST.retry_period + 1.0, 0.02)
    print(f"demoted {time.monotonic() - forced_at:.2f}s after another holder took the lease")
    assert leader.thread is not None and leader.thread.is_alive()  # no crash
    assert leader.netagent.calls[-1].active is False and leader.netagent.calls[-1].epoch == epoch + 1
    # Both keep campaigning: once the intruder's lease runs out, one of them leads again.
    wait_for("a replica active", lambda: any(r.netagent.active() for r in c.replicas),
             2 + 2 * FAST.retry_period + 1.0, 0.02)
    assert len(c.leaders()) == 1
    assert c.store.record is not None and c.store.record.transitions == epoch + 2
    assert c.double_active_samples == 0


def test_leader_whose_agent_refuses_active_steps_down(cluster_factory: Callable[[Timings], Cluster]) -> None:
    """A leader that cannot make its dataplane ACTIVE must not sit on the Lease: after a lease
    duration of refusals it steps down, stays out of the election, and the healthy replica leads."""
    cluster = cluster_factory(FAST)
    a = cluster.add("gw-a")
    a.netagent.refuse_active = True
    a.start()
    wait_for("gw-a holding the Lease",
             lambda: cluster.store.record is not None and cluster.store.record.holder == "gw-a", 3, 0.02)
    b = cluster.add("gw-b")
    b.start()
    t = FAST.lease_duration
    wait_for("gw-b leading and active", lambda: b.elector.state.leading and b.netagent.active(),
             t + 4 * FAST.retry_period + 2, 0.02)
    assert not a.elector.state.leading and not a.netagent.active()
    time.sleep(2 * t)  # within the hold-off: the refusing replica does not take the Lease back
    assert cluster.store.record is not None and cluster.store.record.holder == "gw-b"
    assert b.netagent.active()


def test_leader_keeps_the_lease_while_its_netagent_restarts_and_regrants_at_once(
    cluster_factory: Callable[[Timings], Cluster],
) -> None:
    """A netagent that does not answer (its container restarting) has not withdrawn the dataplane:
    wireguard-go, in a container of its own, still forwards with the last peers. The leader keeps the
    Lease (a successor would make two live dataplanes), grants ACTIVE again the moment the agent
    answers (not at its next renewal, 2 s away here), and gives up only after the outage grace."""
    timings = Timings(lease_duration=3, renew_deadline=2.5, retry_period=2.0, outage_grace=9.0)
    cluster = cluster_factory(timings)
    a, b = cluster.add("gw-a"), cluster.add("gw-b")
    a.start()
    wait_for("gw-a active", a.netagent.active, 5, 0.02)
    b.start()
    server = cluster.servers[0]
    sock = f"{cluster.tmp}/gw-a.sock"

    def agent_down() -> None:
        server.stop(0)  # type: ignore[attr-defined]

    agent_down()
    time.sleep(2 * timings.lease_duration)  # two lease durations without a netagent
    assert cluster.store.record is not None and cluster.store.record.holder == "gw-a"
    assert not b.elector.state.leading and not b.netagent.active()
    # The agent comes back as a restarted one does once the last grant lapsed: STANDBY.
    a.netagent.restarted()
    server = serve(a.netagent, sock)
    cluster.servers[0] = server
    t_back = time.monotonic()
    wait_for("gw-a ACTIVE again", a.netagent.active, 2, 0.01)
    regrant = time.monotonic() - t_back
    print(f"\nrestarted netagent granted ACTIVE again after {regrant:.3f}s (retry period 2 s)")
    assert regrant < 1.0
    # Down for longer than the outage grace: the leader gives up and the other replica leads.
    agent_down()
    t_down = time.monotonic()
    wait_for("gw-b leading", lambda: b.elector.state.leading and b.netagent.active(),
             timings.outage_grace + 3 * timings.retry_period + 2, 0.05)
    assert time.monotonic() - t_down >= timings.outage_grace - timings.retry_period


def test_a_replica_whose_device_is_not_configured_does_not_campaign(
    cluster_factory: Callable[[Timings], Cluster],
) -> None:
    """All containers of a pod start at once: a labeler whose netagent has no configured device yet
    must not take the Lease (it would be refused, step down and hold off while the healthy replica
    waits). It campaigns once the device is configured."""
    cluster = cluster_factory(FAST)
    a, b = cluster.add("gw-a"), cluster.add("gw-b")
    a.netagent.device_configured = False
    a.start()
    time.sleep(2 * FAST.retry_period)
    assert cluster.store.record is None or not cluster.store.record.holder  # a did not campaign
    b.start()
    wait_for("gw-b leading and active", lambda: b.elector.state.leading and b.netagent.active(), 5, 0.02)
    a.netagent.device_configured = True
    b.halt()  # graceful: releases, and now gw-a may lead
    wait_for("gw-a leading and active", lambda: a.elector.state.leading and a.netagent.active(), 5, 0.02)
