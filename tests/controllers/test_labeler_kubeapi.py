"""liqo-labeler end to end against the in-memory API server: two real labeler processes (the console
script's module, default 7 s / 5 s / 2 s timings unless a test says otherwise), each talking to its own
FAKE netagent (sandbox.testkit.election.RecordingNetAgent: the real fencing grant, recorded calls) hosted in
this process so that both agents' roles are read on one clock. Both roles are sampled every 50 ms.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandbox.kubeapi import KubeAPIServer
from sandbox.testkit import promql
from sandbox.testkit.chart import CHART
from sandbox.testkit.election import RecordingNetAgent, overlap, serve
from sandbox.testkit.wait import wait_for
from services.common.kube import EVENTS, LEASES, PODS, SERVICES, KubeClient, ResourceRef
from services.common.vocabulary import GATEWAY_LABEL, LEASE_NAME, NODE_IP_ANNOTATION

NS = "liqo"
SELECTOR = {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/component": "networking"}
NAMESPACES = ResourceRef("", "v1", "namespaces", "Namespace", namespaced=False)
REPO = Path(__file__).resolve().parents[2]
IPS = {"gw-a": "10.0.0.11", "gw-b": "10.0.0.12"}


@dataclass
class Labeler:
    name: str
    netagent: RecordingNetAgent
    socket: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def http_port(self, endpoint: str) -> int | None:
        """The port the "metrics" or "health" endpoint got (both are bound to port 0 here)."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"endpoint"' in line:
                rec = json.loads(line)
                if rec.get("msg") == "serving" and rec.get("endpoint") == endpoint:
                    return int(rec["port"])
        return None


class Env:
    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.api = KubeAPIServer().start()
        self.kubeconfig = str(self.api.write_kubeconfig(Path(tmp) / "kubeconfig"))
        self.client = KubeClient.from_kubeconfig(self.kubeconfig, timeout=5)
        self.labelers: dict[str, Labeler] = {}
        self.servers: list[object] = []
        self.samples = 0
        self.double_active = 0
        self._stop_sampling = threading.Event()
        self.client.create(NAMESPACES, {"metadata": {"name": NS}})
        for name in ("gw-a", "gw-b", "gw-c"):  # gw-c: a gateway pod without a labeler (still starting)
            self.client.create(PODS, pod(name), NS)
        self.client.create(SERVICES, service("liqo-gateway"), NS)
        self.client.create(SERVICES, {"metadata": {"name": "unrelated", "namespace": NS}, "spec": {"ports": [
            {"port": 80, "protocol": "TCP"}]}}, NS)

    def add(self, name: str, *extra: str) -> Labeler:
        netagent = RecordingNetAgent(name)
        sock = f"{self.tmp}/{name}.sock"
        self.servers.append(serve(netagent, sock))
        lb = Labeler(name, netagent, sock, Path(self.tmp) / f"{name}.log", extra=list(extra))
        self.labelers[name] = lb
        return lb

    def start(self, lb: Labeler) -> None:
        env = {
            **os.environ,
            "POD_NAME": lb.name,
            "POD_NAMESPACE": NS,
            "POD_IP": IPS[lb.name],
            "PYTHONPATH": str(REPO),
        }
        cmd = [
            sys.executable, "-m", "services.labeler.main",
            "--kubeconfig", self.kubeconfig,
            "--netagent-socket", lb.socket,
            "--metrics-bind-address", "127.0.0.1:0",
            "--health-bind-address", "127.0.0.1:0",
            "--workers", "1",
            *lb.extra,
        ]  # fmt: skip
        with open(lb.log_path, "ab") as logf:
            lb.proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=logf, cwd=REPO)

    def sample(self) -> None:
        while not self._stop_sampling.wait(0.05):
            self.samples += 1
            if sum(1 for lb in self.labelers.values() if lb.netagent.active()) > 1:
                self.double_active += 1

    def start_sampling(self) -> None:
        threading.Thread(target=self.sample, daemon=True).start()

    def active_overlap(self) -> float:
        a, b = (lb.netagent.active_intervals() for lb in self.labelers.values())
        return overlap(a, b)

    def labels(self) -> dict[str, str | None]:
        items = self.client.list(PODS, NS)["items"]
        return {p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get(GATEWAY_LABEL) for p in items}

    def annotation(self) -> str | None:
        svc = self.client.get(SERVICES, "liqo-gateway", NS)
        return (svc["metadata"].get("annotations") or {}).get(NODE_IP_ANNOTATION)

    def holder(self) -> str:
        return str(self.client.get(LEASES, LEASE_NAME, NS)["spec"].get("holderIdentity") or "")

    def close(self) -> None:
        self._stop_sampling.set()
        for lb in self.labelers.values():
            if lb.proc is not None and lb.proc.poll() is None:
                lb.proc.kill()
                lb.proc.wait(5)
        for s in self.servers:
            s.stop(0)  # type: ignore[attr-defined]
        self.client.close()
        self.api.stop()

    def dump_logs(self) -> str:
        return "\n".join(f"--- {lb.name}\n" + lb.log_path.read_text(errors="replace")[-3000:]
                         for lb in self.labelers.values() if lb.log_path.exists())


def pod(name: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": NS, "labels": dict(SELECTOR)},
            "spec": {"containers": [{"name": "labeler", "image": "liqo-gateway"}]}}


def service(name: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": NS, "labels": dict(SELECTOR)},
            "spec": {"selector": {**SELECTOR, GATEWAY_LABEL: "active"},
                     "ports": [{"port": 5871, "protocol": "UDP"}]}}


def metric(text: str, name: str) -> float:
    m = re.search(rf"^liqo_labeler_{name} (\S+)$", text, re.M)
    assert m, f"{name} not exported"
    return float(m.group(1))


def labelled(text: str, name: str, labels: str) -> float:
    m = re.search(rf"^liqo_labeler_{name}\{{{labels}\}} (\S+)$", text, re.M)
    assert m, f"{name}{{{labels}}} not exported"
    return float(m.group(1))


def wait_or_dump(what: str, cond: Callable[[], object], timeout: float,
                 diagnose: Callable[[], object] | None = None) -> None:
    """wait_for, any exception counting as "not yet" (the API server may be paused on purpose);
    on timeout the AssertionError carries `diagnose()` (the labelers' logs) as a note."""
    try:
        wait_for(what, cond, timeout, retry_on=(Exception,))
    except AssertionError as e:
        if diagnose is not None:
            e.add_note(str(diagnose()))
        raise


@pytest.fixture
def env() -> Iterator[Env]:
    with tempfile.TemporaryDirectory(prefix="liqo-lbl-") as tmp:
        e = Env(tmp)
        try:
            yield e
        finally:
            e.close()
            assert all(not lb.alive() for lb in e.labelers.values())


def start_pair(env: Env, *extra: str) -> tuple[Labeler, Labeler]:
    a, b = env.add("gw-a", *extra), env.add("gw-b", *extra)
    env.start_sampling()
    env.start(a)
    env.start(b)
    wait_or_dump("a or b active", lambda: a.netagent.active() or b.netagent.active(), 15, env.dump_logs)
    leader, follower = (a, b) if a.netagent.active() else (b, a)
    # A pair is steady once the follower has read the leader's live Lease: before that, a release
    # would be a cold start to the follower (no failover to time), not a hand-over.
    held = re.compile(r'^liqo_labeler_lease_attempts_total\{result="held"\} [1-9]', re.M)
    wait_or_dump("the follower seeing the leader's Lease", lambda: held.search(scrape(follower)), 10,
                 env.dump_logs)
    return leader, follower


def scrape(lb: Labeler) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{lb.http_port('metrics')}/metrics", timeout=5) as r:
        return str(r.read().decode())


def expect_labels(env: Env, leader: str, timeout: float = 5.0) -> None:
    want = {n: ("active" if n == leader else "standby") for n in ("gw-a", "gw-b", "gw-c")}
    wait_or_dump("the labels", lambda: env.labels() == want, timeout, lambda: (env.labels(), env.dump_logs()))
    wait_or_dump("the leader's node IP", lambda: env.annotation() == IPS[leader], timeout, env.dump_logs)


def test_one_leader_labels_metrics_and_crash_handover(env: Env) -> None:
    leader, follower = start_pair(env)
    assert env.holder() == leader.name
    expect_labels(env, leader.name)
    time.sleep(4.0)  # two renewals: nothing moves
    assert env.holder() == leader.name and not follower.netagent.active()
    assert [c.active for c in follower.netagent.calls] == [False]

    health = leader.http_port("health")
    assert health is not None
    assert urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5).status == 200
    assert urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=5).status == 200
    metrics = scrape(leader)
    assert re.search(r"^liqo_labeler_is_leader 1\.0$", metrics, re.M), metrics
    assert re.search(r"^liqo_labeler_netagent_role_active 1\.0$", metrics, re.M)
    assert re.search(r'^liqo_labeler_leadership_changes_total\{change="acquired"\} 1\.0$', metrics, re.M)

    assert leader.proc is not None
    killed = time.monotonic()
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(5)
    wait_or_dump("the follower active", follower.netagent.active, 7 + 2 + 3, env.dump_logs)
    became = follower.netagent.became_active_at(killed)
    assert became is not None
    print(f"\nSIGKILL handover: {became - killed:.2f}s (bound: lease 7 s + retry 2 s)")
    assert became - killed <= 7 + 2
    expect_labels(env, follower.name)
    assert env.active_overlap() == 0.0
    assert env.double_active == 0 and env.samples > 100
    fm = scrape(follower)
    failover, leaderless = (metric(fm, n) for n in ("last_failover_seconds", "last_leaderless_seconds"))
    print(f"acquire->ACTIVE {failover * 1000:.1f} ms, leaderless (since last renewal) {leaderless:.2f}s")
    assert 0 <= failover < 1.0
    assert 7 <= leaderless <= 7 + 2 + 2
    # The histogram times the takeover from the leader's lease expiring by the follower's clock.
    assert labelled(fm, "failover_duration_seconds_count", 'cause="expired"') == 1
    took_over = labelled(fm, "failover_duration_seconds_sum", 'cause="expired"')
    assert 0 <= took_over < 1.0
    assert took_over <= metric(fm, "no_active_replica_seconds_total")
    assert metric(fm, "no_active_replica_stretch_seconds") == 0.0
    # What the chart's dashboard asks of the labeler, this real labeler process exports.
    dashboard = json.loads((CHART / "dashboards" / "liqo-gateway.json").read_text())
    asked = {n for _, q in promql.dashboard_queries(dashboard) for n in promql.metric_names(q)
             if n.startswith("liqo_labeler_")}
    assert "liqo_labeler_failover_duration_seconds_bucket" in asked
    assert asked - promql.exported_names(fm) == set()


def test_graceful_stop_hands_over_within_two_seconds(env: Env) -> None:
    leader, follower = start_pair(env)
    expect_labels(env, leader.name)
    assert leader.proc is not None
    stopped = time.monotonic()
    leader.proc.send_signal(signal.SIGTERM)
    wait_or_dump("the follower active", follower.netagent.active, 5, env.dump_logs)
    became = follower.netagent.became_active_at(stopped)
    assert became is not None
    print(f"\nSIGTERM handover: {became - stopped:.3f}s")
    assert became - stopped < 2.0
    assert leader.proc.wait(10) == 0
    assert leader.netagent.calls[-1].active is False  # fenced on the way out
    expect_labels(env, follower.name)
    assert env.active_overlap() == 0.0 and env.double_active == 0

    # Observed once SetRole(ACTIVE) has returned, a little after the agent recorded ACTIVE.
    observed = 'failover_duration_seconds_count{cause="released"}'
    wait_or_dump("the failover observed", lambda: observed in scrape(follower), 5,
                 lambda: scrape(follower) + env.dump_logs())
    text = scrape(follower)
    assert labelled(text, "failover_duration_seconds_count", 'cause="released"') == 1
    assert labelled(text, "failover_duration_seconds_sum", 'cause="released"') < became - stopped


def test_api_outage_shorter_than_grace_keeps_the_dataplane(env: Env) -> None:
    leader, follower = start_pair(env, "--outage-grace", "20")
    expect_labels(env, leader.name)
    epoch = leader.netagent.calls[-1].epoch
    env.api.hooks.pause(10)
    end = time.monotonic() + 10
    dropped = 0
    while time.monotonic() < end:
        dropped += 0 if leader.netagent.active() else 1
        assert not follower.netagent.active()
        time.sleep(0.05)
    assert dropped == 0, "the leader's role lapsed during a 10 s outage with a 20 s grace"
    assert env.api.wait_listening(5)
    # Catches up: renews the same tenure, no new epoch, both processes alive, labels intact.
    wait_or_dump("the leader holding the Lease", lambda: env.holder() == leader.name, 5)
    time.sleep(3)
    assert env.holder() == leader.name and leader.netagent.calls[-1].epoch == epoch
    assert leader.alive() and follower.alive()
    expect_labels(env, leader.name)
    assert env.double_active == 0 and env.active_overlap() == 0.0


def test_api_outage_longer_than_grace_lets_the_role_expire(env: Env) -> None:
    leader, follower = start_pair(env, "--outage-grace", "8")
    expect_labels(env, leader.name)
    paused = time.monotonic()
    env.api.hooks.pause(14)
    wait_or_dump("the leader standby", lambda: not leader.netagent.active(), 8 + 1, env.dump_logs)
    lapsed = time.monotonic() - paused
    print(f"\nrole lapsed {lapsed:.2f}s into the outage (grace 8 s)")
    assert 8 - 2 - 0.5 <= lapsed <= 8 + 0.5  # last renewal was at most one retry period before the pause
    assert not follower.netagent.active()
    assert env.api.wait_listening(10)
    wait_or_dump("one active again", lambda: leader.netagent.active() or follower.netagent.active(),
                 7 + 2 + 3, env.dump_logs)
    new_leader = leader if leader.netagent.active() else follower
    expect_labels(env, new_leader.name)
    time.sleep(2)
    assert sum(1 for lb in (leader, follower) if lb.netagent.active()) == 1
    assert leader.alive() and follower.alive()
    assert env.double_active == 0 and env.active_overlap() == 0.0


def test_ambiguous_service_is_reported_and_retried(env: Env) -> None:
    env.client.create(SERVICES, service("liqo-gateway-old"), NS)
    a = env.add("gw-a")
    env.start(a)
    wait_or_dump("gw-a active", a.netagent.active, 15, env.dump_logs)
    wait_or_dump("gw-a labelled active", lambda: env.labels()["gw-a"] == "active", 5)

    def warned() -> bool:
        events = env.client.list(EVENTS, NS)["items"]
        return any(e.get("reason") == "GatewayServiceNotUnique" and e.get("type") == "Warning"
                   and e["involvedObject"]["name"] == "gw-a" for e in events)

    wait_or_dump("a Warning Event", warned, 10, lambda: env.client.list(EVENTS, NS)["items"])
    assert env.annotation() is None
    env.client.delete(SERVICES, "liqo-gateway-old", NS)
    wait_or_dump("gw-a's node IP", lambda: env.annotation() == IPS["gw-a"], 15, env.dump_logs)
