"""The agent's rules over fake kernel layers: rollback of a failed call, ownership, bounds, fencing that
never waits for the state lock or a resolver, and validated state loading.

The kernel appliers (netns, veth, routes, iptables, WireGuard, probe) are replaced by recording fakes,
so this runs anywhere, in milliseconds; the real layers are covered by tests/integration.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from sandbox.testkit.resources import SAMPLE_KEY, SAMPLE_OWNER, SAMPLE_TUNNEL
from sandbox.testkit.wait import wait_for
from services.common.keys import generate
from services.common.tunnelspec import SpecError, TunnelSpec
from services.netagent import agent as agent_mod
from services.netagent import state
from services.netagent.config import AgentConfig
from services.netagent.errors import NotActive, NotOwner, ResourceExhausted, Transient
from services.netagent.kernel.wireguard import PeerConfig, PeerState
from services.netagent.plan.iptables import IptablesError
from services.netagent.plan.role import MAX_TTL, Role

OTHER_OWNER = "tenant-b/tep-b"


@dataclass
class FakeDevice:
    implementation: str = "userspace"
    key: str | None = None
    port: int = 0
    mtu: int = 0
    peer_map: dict[str, PeerConfig] = field(default_factory=dict)
    fail_port: int | None = None
    handshakes: dict[str, float] = field(default_factory=dict)  # key -> last handshake (wall s)

    def ensure(self, private_key_b64: str | None, listen_port: int, mtu: int) -> bool:
        if listen_port == self.fail_port:
            raise OSError(98, "Address in use")
        if private_key_b64:
            self.key = generate().public_key
        self.port, self.mtu = listen_port, mtu
        return True

    resets: list[str] = field(default_factory=list)  # keys re-programmed by a nudge, in order

    def set_peer(self, peer: PeerConfig) -> None:
        self.peer_map[peer.public_key] = peer

    def reset_peer(self, peer: PeerConfig) -> None:
        self.resets.append(peer.public_key)
        self.set_peer(peer)

    def remove_peer(self, public_key: str) -> bool:
        return self.peer_map.pop(public_key, None) is not None

    def remove_all_peers(self) -> None:
        self.peer_map.clear()

    def peers(self) -> list[PeerState]:
        return [
            PeerState(p.public_key, p.endpoint_ip, p.endpoint_port, p.allowed_ips, p.persistent_keepalive,
                      last_handshake=self.handshakes.get(p.public_key))
            for p in self.peer_map.values()
        ]

    def public_key(self) -> str | None:
        return self.key


class FakeIptables:
    def __init__(self, netns: str) -> None:
        self.applied: Any = None
        self.fail_when: Any = None  # callable(desired) -> bool

    def apply(self, desired: Any) -> bool:
        if self.fail_when is not None and self.fail_when(desired):
            raise IptablesError("iptables-restore: line 3 failed")
        changed = desired != self.applied
        self.applied = desired
        return changed

    def invalidate(self) -> None:
        pass


class FakeProber:
    def __init__(self, **kw: Any) -> None:
        self.targets: dict[str, Any] = {}

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def set_targets(self, targets: dict[str, Any]) -> None:
        self.targets = dict(targets)

    def status(self, cid: str) -> None:
        return None

    probed_now: list[str]  # what probe_now was asked, in order
    connecting_now: set[str]  # what connecting() answers

    def probe_now(self, cids: Any) -> None:
        self.probed_now = [*getattr(self, "probed_now", []), *cids]

    def connecting(self) -> set[str]:
        return set(getattr(self, "connecting_now", set()))


@dataclass
class FakeRouting:
    tunnels: list[str] = field(default_factory=list)  # cluster ids the kernel routes
    fail_for: str | None = None  # a cluster id whose routes the kernel refuses (EINVAL)

    def _set(self, specs: list[TunnelSpec]) -> bool:
        ids = sorted(s.cluster_id for s in specs)
        if self.fail_for in ids:
            self.tunnels = ids  # half-written: what a failed netlink batch leaves behind
            raise OSError(22, "Invalid argument")
        changed = ids != self.tunnels
        self.tunnels = ids
        return changed


Kernel = tuple[FakeDevice, FakeRouting]


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeDevice, FakeRouting]]:
    dev, routing = FakeDevice(), FakeRouting()
    monkeypatch.setattr(agent_mod.netns, "ensure_netns", lambda name: False)

    class _Veth:
        created = False

    monkeypatch.setattr(agent_mod.veth, "ensure_veth", lambda cfg: _Veth())
    monkeypatch.setattr(agent_mod, "open_device", lambda cfg, create=True: dev)
    monkeypatch.setattr(agent_mod.iptables, "Iptables", FakeIptables)
    monkeypatch.setattr(agent_mod, "Prober", FakeProber)
    monkeypatch.setattr(agent_mod.routes, "update_routing", lambda cfg, before, specs: routing._set(specs))
    monkeypatch.setattr(agent_mod.routes, "sync_netns_routes", lambda cfg, specs: routing._set(specs))
    monkeypatch.setattr(agent_mod.routes, "sync_host_routing", lambda cfg, specs: False)
    yield dev, routing


def make_agent(tmp_path: Path, **cfg: Any) -> agent_mod.Agent:
    a = agent_mod.Agent(AgentConfig(state_path=str(tmp_path / "state.json"), resync_interval=3600, **cfg))
    a.start()
    return a


def active(a: agent_mod.Agent, epoch: int = 1, ttl: float = 600) -> None:
    a.configure_device(generate().private_key, 0, 0)
    a.set_role(Role.ACTIVE, epoch, ttl, "test")


def spec(n: int, **over: Any) -> TunnelSpec:
    fields = dict(SAMPLE_TUNNEL)
    fields.update(
        cluster_id=f"cluster-{n}",
        remote_nat_pod_cidr=f"10.{60 + n}.0.0/16",
        remote_nat_external_cidr=f"10.{80 + n}.0.0/16",
        endpoint=f"192.0.2.{10 + n}",
        public_key=generate().public_key,
    )
    fields.update(over)
    return TunnelSpec.parse(**fields)


def persisted(a: agent_mod.Agent) -> dict[str, Any]:
    a._persist()
    time.sleep(agent_mod.PERSIST_DELAY * 4)
    return dict(json.loads(Path(a.cfg.state_path).read_text()))


# ---- rollback and isolation ------------------------------------------------------------------------


def test_a_call_failing_half_way_leaves_kernel_list_and_state_as_before(
    tmp_path: Path, kernel: Kernel
) -> None:
    dev, routing = kernel
    a = make_agent(tmp_path)
    try:
        active(a)
        good = spec(1)
        a.ensure_tunnel(good, SAMPLE_OWNER)
        before_file = persisted(a)
        routing.fail_for = "cluster-2"
        bad = spec(2)
        with pytest.raises(Transient):
            a.ensure_tunnel(bad, OTHER_OWNER)
        assert [v.spec.cluster_id for v in a.list_tunnels()] == ["cluster-1"]
        assert set(dev.peer_map) == {good.public_key}
        routing.fail_for = None
        a.resync()  # a resync after the failure: nothing of the failed call comes back
        assert routing.tunnels == ["cluster-1"]
        assert persisted(a)["tunnels"] == before_file["tunnels"]
        # ...and another tenant's calls keep working.
        a.ensure_tunnel(spec(3), OTHER_OWNER)
        assert routing.tunnels == ["cluster-1", "cluster-3"]
    finally:
        a.stop()


def test_a_failed_nat_write_is_not_kept(tmp_path: Path, kernel: Kernel) -> None:
    a = make_agent(tmp_path)
    try:
        active(a)
        s = spec(1)
        a.ensure_tunnel(s, SAMPLE_OWNER)
        assert a.set_nat_mappings(s.cluster_id, {"10.0.0.5": "10.201.0.5"}) == (1, True)
        ipt = a._iptables
        assert isinstance(ipt, FakeIptables)
        ipt.fail_when = lambda desired: True
        with pytest.raises(Transient):
            a.set_nat_mappings(s.cluster_id, {"10.0.0.5": "10.201.0.6"})
        assert a.list_tunnels()[0].nat_mapping_count == 1
        assert persisted(a)["nat_maps"] == {s.cluster_id: {"10.0.0.5": "10.201.0.5"}}
    finally:
        a.stop()


def test_a_failed_port_change_is_not_persisted(tmp_path: Path, kernel: Kernel) -> None:
    dev, _ = kernel
    a = make_agent(tmp_path)
    try:
        a.configure_device(generate().private_key, 6000, 0)
        dev.fail_port = 6001
        with pytest.raises(Transient):
            a.configure_device(generate().private_key, 6001, 1400)
        assert a.listen_port == 6000 and a.mtu == 1340 and dev.port == 6000
        assert persisted(a)["listen_port"] == 6000
    finally:
        a.stop()


# ---- ownership -------------------------------------------------------------------------------------


def test_a_cluster_id_belongs_to_its_first_owner(tmp_path: Path, kernel: Kernel) -> None:
    dev, _ = kernel
    a = make_agent(tmp_path)
    try:
        active(a)
        mine = spec(1)
        a.ensure_tunnel(mine, SAMPLE_OWNER)
        takeover = spec(1, remote_nat_pod_cidr="10.99.0.0/16", endpoint="203.0.113.66")
        with pytest.raises(NotOwner, match=f"owned by TunnelEndpoint {SAMPLE_OWNER}"):
            a.ensure_tunnel(takeover, OTHER_OWNER)
        with pytest.raises(NotOwner, match=SAMPLE_OWNER):
            a.delete_tunnel(mine.cluster_id, OTHER_OWNER)
        # Another cluster id with the first tenant's key would take its peer: refused too.
        thief = spec(2, public_key=mine.public_key)
        with pytest.raises(NotOwner, match=f"cluster-1.*{SAMPLE_OWNER}"):
            a.ensure_tunnel(thief, OTHER_OWNER)
        view = a.list_tunnels()
        assert [(v.spec, v.owner) for v in view] == [(mine, SAMPLE_OWNER)]
        assert dev.peer_map[mine.public_key].endpoint_ip == IPv4Address("192.0.2.11")
        assert persisted(a)["owners"] == {mine.cluster_id: SAMPLE_OWNER}
        # The owner deletes it; then the cluster id is free for anyone.
        assert a.delete_tunnel(mine.cluster_id, SAMPLE_OWNER)
        a.ensure_tunnel(takeover, OTHER_OWNER)
        assert a.list_tunnels()[0].owner == OTHER_OWNER
    finally:
        a.stop()


@pytest.mark.parametrize("owner", ["", "ns", "ns/", "/name", "NS/name", "ns/name\n", "ns/na me", "a/b/c"])
def test_owner_must_be_namespace_slash_name(
    tmp_path: Path, kernel: Kernel, owner: str
) -> None:
    a = make_agent(tmp_path)
    try:
        active(a)
        with pytest.raises(SpecError, match="owner"):
            a.ensure_tunnel(spec(1), owner)
        with pytest.raises(SpecError, match="owner"):
            a.delete_tunnel("cluster-1", owner)
    finally:
        a.stop()


# ---- bounds ----------------------------------------------------------------------------------------


def test_max_tunnels(tmp_path: Path, kernel: Kernel) -> None:
    a = make_agent(tmp_path, max_tunnels=2)
    try:
        active(a)
        a.ensure_tunnel(spec(1), SAMPLE_OWNER)
        a.ensure_tunnel(spec(2), OTHER_OWNER)
        with pytest.raises(ResourceExhausted, match="--max-tunnels"):
            a.ensure_tunnel(spec(3), OTHER_OWNER)
        a.ensure_tunnel(spec(2, endpoint="192.0.2.99"), OTHER_OWNER)  # updating one still works
        assert a.tunnel_count() == 2
    finally:
        a.stop()


def test_max_nat_entries_in_total(tmp_path: Path, kernel: Kernel) -> None:
    a = make_agent(tmp_path, max_nat_entries=5)
    try:
        active(a)
        one, two = spec(1), spec(2)
        a.ensure_tunnel(one, SAMPLE_OWNER)
        a.ensure_tunnel(two, OTHER_OWNER)
        a.set_nat_mappings(one.cluster_id, {f"10.0.0.{i}": f"10.201.0.{i + 10}" for i in range(1, 4)})
        with pytest.raises(ResourceExhausted, match="--max-nat-entries"):
            a.set_nat_mappings(two.cluster_id, {f"10.0.1.{i}": f"10.201.1.{i}" for i in range(1, 4)})
        two_entries = {"10.0.1.1": "10.201.1.1", "10.0.1.2": "10.201.1.2"}
        assert a.set_nat_mappings(two.cluster_id, two_entries)[0] == 2
        # Replacing a cluster's map counts its new size only.
        a.set_nat_mappings(one.cluster_id, {f"10.0.0.{i}": f"10.201.0.{i + 20}" for i in range(1, 4)})
    finally:
        a.stop()


# ---- fencing ---------------------------------------------------------------------------------------


def test_demotion_never_waits_for_the_state_lock_nor_a_resolver(
    tmp_path: Path, kernel: Kernel
) -> None:
    dev, _ = kernel
    release = threading.Event()

    def resolver(endpoint: str, current: IPv4Address | None) -> IPv4Address:
        if endpoint.endswith(".hang"):
            release.wait(30)
        return IPv4Address("192.0.2.77") if not endpoint[0].isdigit() else IPv4Address(endpoint)

    a = agent_mod.Agent(
        AgentConfig(state_path=str(tmp_path / "state.json"), resync_interval=3600), resolver=resolver
    )
    a.start()
    try:
        active(a)
        a.ensure_tunnel(spec(1), SAMPLE_OWNER)
        outcome: list[Exception | None] = []

        def hang() -> None:
            try:
                a.ensure_tunnel(spec(2, endpoint="gw.hang"), OTHER_OWNER)
                outcome.append(None)
            except Exception as e:
                outcome.append(e)

        hung = threading.Thread(target=hang)
        hung.start()
        time.sleep(0.05)
        # Another tenant is not blocked by the hung resolution.
        t0 = time.perf_counter()
        a.ensure_tunnel(spec(3), "tenant-c/tep-c")
        assert time.perf_counter() - t0 < 1.0
        # A call holding the state lock (a long iptables write) does not delay a demotion.
        with a._lock:
            done = threading.Event()
            threading.Thread(target=lambda: (a.set_role(Role.STANDBY, 0, 0, "lost"), done.set())).start()
            assert done.wait(1.0), "SetRole(STANDBY) waited for the state lock"
            assert dev.peer_map == {}
        assert a.role().role is Role.STANDBY and a.role().epoch == 1  # a lower epoch, accepted, not lowered
        release.set()
        hung.join(5)
        assert len(outcome) == 1 and isinstance(outcome[0], NotActive), outcome
        assert dev.peer_map == {}, "nothing re-adds a peer after fencing"
        assert "cluster-2" not in {v.spec.cluster_id for v in a.list_tunnels()}
    finally:
        release.set()
        a.stop()


@pytest.mark.parametrize("epoch", [-1, 2**31, 2**64 - 1])
def test_epochs_are_int32(tmp_path: Path, kernel: Kernel, epoch: int) -> None:
    a = make_agent(tmp_path)
    try:
        a.configure_device(generate().private_key, 0, 0)
        with pytest.raises(SpecError, match="epoch"):
            a.set_role(Role.ACTIVE, epoch, 60, "x")
        assert a.role().epoch == 0
        a.set_role(Role.ACTIVE, 3, 60, "lease")
        # a demotion is always accepted (stopping traffic is never unsafe), its epoch not adopted
        g = a.set_role(Role.STANDBY, epoch, 0, "x")
        assert g.role is Role.STANDBY and a.role().role is Role.STANDBY and a.role().epoch == 3
    finally:
        a.stop()


def test_expiry_removes_peers_without_the_state_lock(
    tmp_path: Path, kernel: Kernel
) -> None:
    dev, _ = kernel
    a = make_agent(tmp_path)
    try:
        active(a, ttl=0.3)
        a.ensure_tunnel(spec(1), SAMPLE_OWNER)
        assert dev.peer_map
        with a._lock:  # a long call in flight
            deadline = time.monotonic() + 0.3 + 0.5
            while dev.peer_map and time.monotonic() < deadline:
                time.sleep(0.01)
            assert dev.peer_map == {}, "peers still programmed 0.5 s after the grant lapsed"
    finally:
        a.stop()


# ---- state loading ---------------------------------------------------------------------------------


def write_state(path: Path, **over: Any) -> dict[str, Any]:
    good = state.spec_to_dict(spec(1, public_key=SAMPLE_KEY))
    raw: dict[str, Any] = {
        "version": state.VERSION,
        "listen_port": 5871,
        "mtu": 1340,
        "epoch": 3,
        "active_until_wall": None,
        "written_wall": None,
        "tunnels": [good],
        "endpoints": {"cluster-1": "192.0.2.11"},
        "nat_maps": {},
        "owners": {"cluster-1": SAMPLE_OWNER},
    }
    raw.update(over)
    path.write_text(json.dumps(raw))
    return raw


def test_state_entries_that_do_not_validate_are_skipped_and_counted(
    tmp_path: Path, kernel: Kernel
) -> None:
    bad = state.spec_to_dict(spec(2))
    bad["remote_pod_cidr"] = "0.0.0.0/0"
    raw = write_state(tmp_path / "state.json")
    raw["tunnels"].append(bad)
    raw["endpoints"]["cluster-2"] = "192.0.2.12"
    raw["nat_maps"] = {"cluster-1": {"10.0.0.5": "not-an-address"}, "ghost": {}}
    raw["owners"]["cluster-2"] = OTHER_OWNER
    (tmp_path / "state.json").write_text(json.dumps(raw))
    skipped: list[int] = []
    a = agent_mod.Agent(
        AgentConfig(state_path=str(tmp_path / "state.json"), resync_interval=3600),
        on_state_skipped=skipped.append,
    )
    a.start()
    try:
        assert [v.spec.cluster_id for v in a.list_tunnels()] == ["cluster-1"]
        assert a.list_tunnels()[0].owner == SAMPLE_OWNER and a.list_tunnels()[0].nat_mapping_count == 0
        assert a.state_entries_skipped == 3 and sum(skipped) == 3
        assert a.role().epoch == 3
    finally:
        a.stop()


@pytest.mark.parametrize(
    "text", ["{not json", "[]", '{"version": 99}', "\xff\xfe", '{"version": 1, "tunnels": 5}']
)
def test_an_unusable_state_file_starts_empty(
    tmp_path: Path, kernel: Kernel, text: str
) -> None:
    (tmp_path / "state.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    a = make_agent(tmp_path)
    try:
        assert a.list_tunnels() == [] and a.role().role is Role.STANDBY
        assert a.state_entries_skipped >= 1 or text.startswith('{"version": 1')
    finally:
        a.stop()


@pytest.mark.parametrize("epoch", [2**64 - 1, 2**31, -5, "3"])
def test_a_persisted_epoch_out_of_range_is_not_restored(
    tmp_path: Path, kernel: Kernel, epoch: Any
) -> None:
    write_state(tmp_path / "state.json", epoch=epoch, active_until_wall=time.time() + 3000)
    a = make_agent(tmp_path)
    try:
        assert a.role().epoch == 0 and a.role().role is Role.STANDBY
        a.configure_device(generate().private_key, 0, 0)
        a.set_role(Role.ACTIVE, 1, 60, "legitimate")  # every legitimate caller still gets in
    finally:
        a.stop()


def test_a_restored_grant_is_capped_and_shortened(tmp_path: Path, kernel: Kernel) -> None:
    now = time.time()
    write_state(tmp_path / "state.json", active_until_wall=now + 1e9, written_wall=now - 100)
    a = make_agent(tmp_path)
    try:
        left = a.role_seconds_left()
        assert a.role().role is Role.ACTIVE and left is not None
        assert MAX_TTL - 100 - 5 < left <= MAX_TTL - 100
    finally:
        a.stop()


def test_resolution_is_bounded_in_time_and_in_threads(
    tmp_path: Path, kernel: Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that never answers costs its call RESOLVE_TIMEOUT and one resolver thread. Retries of
    that name join the lookup already running; one namespace has at most one lookup running; and
    when every resolver thread is stuck, the next name is refused at once (UNAVAILABLE), so hung
    lookups can never take all the gRPC workers. One tenant's hanging names never refuse another
    tenant's name."""
    monkeypatch.setattr(agent_mod, "RESOLVE_TIMEOUT", 0.2)
    never = threading.Event()
    lookups: list[str] = []

    def resolver(endpoint: str, current: IPv4Address | None) -> IPv4Address:
        lookups.append(endpoint)
        if endpoint.endswith(".hang"):
            never.wait(30)
        return IPv4Address(endpoint) if endpoint[0].isdigit() else IPv4Address("192.0.2.77")

    a = agent_mod.Agent(
        AgentConfig(state_path=str(tmp_path / "state.json"), resync_interval=3600), resolver=resolver
    )
    a.start()
    try:
        active(a)
        # One tenant's controller retries its hanging name: the retries share one lookup.
        for _ in range(agent_mod.RESOLVE_WORKERS + 1):
            t0 = time.perf_counter()
            with pytest.raises(Transient, match="no DNS answer"):
                a.ensure_tunnel(spec(0, endpoint="gw0.hang"), "tenant-0/tep")
            assert time.perf_counter() - t0 < 1.0
        assert lookups == ["gw0.hang"]
        # Another name of the same namespace (another of its TunnelEndpoints) waits for its turn.
        t0 = time.perf_counter()
        with pytest.raises(Transient, match="namespace 'tenant-0' has 1 name"):
            a.ensure_tunnel(spec(1, endpoint="gw1.hang"), "tenant-0/other-tep")
        assert time.perf_counter() - t0 < 0.1
        # Another tenant's name still resolves.
        a.ensure_tunnel(spec(2, endpoint="gw2.example"), "tenant-2/tep")
        assert "cluster-2" in {v.spec.cluster_id for v in a.list_tunnels()}
        # Every resolver thread stuck (one hanging name per namespace): the next name is refused at once.
        for n in range(3, 3 + agent_mod.RESOLVE_WORKERS - 1):
            with pytest.raises(Transient, match="no DNS answer"):
                a.ensure_tunnel(spec(n, endpoint=f"gw{n}.hang"), f"tenant-{n}/tep")
        t0 = time.perf_counter()
        with pytest.raises(Transient, match="being resolved already"):
            a.ensure_tunnel(spec(9, endpoint="gw9.hang"), "tenant-9/tep")
        assert time.perf_counter() - t0 < 0.1
        a.ensure_tunnel(spec(8), "tenant-8/tep")  # a literal endpoint needs no resolver thread
        never.set()
        wait = time.monotonic() + 5
        while time.monotonic() < wait:  # the stuck lookups end: names resolve again
            try:
                a.ensure_tunnel(spec(7, endpoint="gw7.example"), "tenant-0/tep")
                break
            except Transient:
                time.sleep(0.05)
        assert "cluster-7" in {v.spec.cluster_id for v in a.list_tunnels()}
    finally:
        never.set()
        a.stop()


# ---- probing at once: a completed handshake, a nudged peer -----------------------------------------


def test_a_connecting_tunnel_is_probed_once_per_new_handshake_and_after_a_nudge(
    tmp_path: Path, kernel: Kernel
) -> None:
    dev, _ = kernel
    a = make_agent(tmp_path)
    try:
        active(a)
        shook, silent = spec(1), spec(2)
        prober: Any = a._prober
        prober.connecting_now = {"cluster-2"}  # cluster-1 handshakes and answers at once
        dev.handshakes[shook.public_key] = time.time()
        a.ensure_tunnel(shook, SAMPLE_OWNER)
        a.ensure_tunnel(silent, SAMPLE_OWNER)
        prober.probed_now = []
        # The silent peer is nudged at 0.5 s (reset: its queue is gone) and probed right after; the
        # answering one is settled by then, never nudged.
        wait_for("the nudged tunnel probed", lambda: "cluster-2" in prober.probed_now, 3.0, 0.01)
        assert silent.public_key in dev.resets and shook.public_key not in dev.resets
        assert "cluster-1" not in prober.probed_now  # Connected: its handshake asks for nothing
        prober.connecting_now = {"cluster-1", "cluster-2"}  # Connecting again (a moved probe target)
        wait_for("the handshaken tunnel probed", lambda: "cluster-1" in prober.probed_now, 2.0, 0.01)
        time.sleep(0.5)
        assert prober.probed_now.count("cluster-1") == 1  # the same handshake is probed once
        dev.handshakes[shook.public_key] += 10  # a newer one
        wait_for("probed again", lambda: prober.probed_now.count("cluster-1") == 2, 2.0, 0.01)
        # Once Connected (not Connecting), a new handshake asks for nothing.
        prober.connecting_now = {"cluster-2"}
        dev.handshakes[shook.public_key] += 10
        time.sleep(0.6)
        assert prober.probed_now.count("cluster-1") == 2
    finally:
        a.stop()


def test_a_handshaken_peer_whose_tunnel_does_not_answer_is_reset(tmp_path: Path, kernel: Kernel) -> None:
    """Both ends initiating at once can each keep a session the other no longer decrypts: a handshake
    is not enough, a new peer is reset on the nudge schedule until its tunnel answers the probe."""
    dev, _ = kernel
    a = make_agent(tmp_path)
    try:
        active(a)
        mute, answering = spec(1), spec(2)
        prober: Any = a._prober
        prober.connecting_now = {"cluster-1"}  # cluster-2's probe is answered, cluster-1's never
        dev.handshakes[mute.public_key] = dev.handshakes[answering.public_key] = time.time()
        a.ensure_tunnel(mute, SAMPLE_OWNER)
        a.ensure_tunnel(answering, SAMPLE_OWNER)
        wait_for("the mute peer reset twice (0.5 s and 1 s)",
                 lambda: dev.resets.count(mute.public_key) >= 2, 4.0, 0.01)
        assert answering.public_key not in dev.resets
        assert set(dev.peer_map) == {mute.public_key, answering.public_key}  # reset, never removed
    finally:
        a.stop()


def test_a_promotion_probes_every_tunnel_at_once(tmp_path: Path, kernel: Kernel) -> None:
    a = make_agent(tmp_path)
    try:
        active(a)
        a.ensure_tunnel(spec(1), SAMPLE_OWNER)
        a.set_role(Role.STANDBY, 1, 0, "test")
        prober: Any = a._prober
        prober.probed_now = []
        a.set_role(Role.ACTIVE, 2, 600, "test")  # the peers are programmed again
        assert prober.probed_now == ["cluster-1"]
        a.set_role(Role.ACTIVE, 2, 600, "renewal")  # a renewal programs nothing: no probe
        assert prober.probed_now == ["cluster-1"]
    finally:
        a.stop()



# ---- group commit: concurrent tunnel calls are committed together ---------------------------------


def in_one_batch(a: agent_mod.Agent, calls: list[Callable[[], object]]) -> list[object]:
    """Runs each call in its own thread, queued in this order while the test holds the agent's state
    lock (as a running commit would), then lets them commit; each call's result or exception."""
    results: list[object] = [None] * len(calls)

    def run(i: int, fn: Callable[[], object]) -> None:
        try:
            results[i] = fn()
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    with a._lock:
        for i, t in enumerate(threads):
            t.start()
            wait_for(f"call {i} queued", lambda i=i: len(a._queue) == i + 1, 5.0, 0.002)
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    return results


def count_writes(a: agent_mod.Agent, routing: FakeRouting) -> Counter[str]:
    """Counts the agent's iptables applies, routing updates, peer syncs and state writes ("what"), and
    those that changed something ("what+")."""
    counts: Counter[str] = Counter()

    def counted(what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            counts[what] += 1
            result = fn(*args)
            counts[what + "+"] += result is not False
            return result
        return call

    a._iptables.apply = counted("iptables", a._iptables.apply)  # type: ignore[method-assign]
    routing._set = counted("routes", routing._set)  # type: ignore[method-assign]
    a._sync_peers = counted("peers", a._sync_peers)  # type: ignore[method-assign]
    a._persist = counted("state", a._persist)  # type: ignore[method-assign]
    return counts


def cids(*ns: int) -> list[str]:
    return sorted(f"cluster-{n}" for n in ns)


def test_concurrent_ensures_are_applied_once(tmp_path: Path, kernel: Kernel) -> None:
    dev, routing = kernel
    a = make_agent(tmp_path)
    try:
        active(a)
        first = spec(1)
        a.ensure_tunnel(first, SAMPLE_OWNER)
        counts = count_writes(a, routing)
        specs = [spec(n) for n in range(2, 10)]
        results = in_one_batch(a, [functools.partial(a.ensure_tunnel, s, OTHER_OWNER) for s in specs])
        # One apply of each layer and one state write for the 8 calls.
        assert counts == {"iptables": 1, "iptables+": 1, "routes": 1, "routes+": 1, "peers": 1, "peers+": 1,
                          "state": 1, "state+": 1}
        for s, result in zip(specs, results, strict=True):
            assert isinstance(result, tuple), result
            view, changed = result
            assert (view.spec, view.owner, changed) == (s, OTHER_OWNER, True)
        assert routing.tunnels == cids(*range(1, 10))
        assert set(dev.peer_map) == {s.public_key for s in [first, *specs]}
        assert [v.spec for v in a.list_tunnels()] == sorted([first, *specs], key=lambda s: s.cluster_id)
        assert len(persisted(a)["tunnels"]) == 9
        # The same calls again, concurrently: each answers "unchanged" and nothing is written.
        counts.clear()
        again = in_one_batch(a, [functools.partial(a.ensure_tunnel, s, OTHER_OWNER) for s in specs])
        assert [r[1] for r in again if isinstance(r, tuple)] == [False] * len(specs)
        assert counts["iptables+"] == counts["routes+"] == counts["peers+"] == counts["state"] == 0
    finally:
        a.stop()


def test_a_refused_call_in_a_batch_fails_alone(tmp_path: Path, kernel: Kernel) -> None:
    _, routing = kernel
    a = make_agent(tmp_path, max_tunnels=4)
    try:
        active(a)
        a.ensure_tunnel(spec(1), SAMPLE_OWNER)
        counts = count_writes(a, routing)
        new = spec(2)
        overlapping = spec(3, remote_nat_pod_cidr=str(new.remote_nat_pod_cidr))  # passes the pre-check
        results = in_one_batch(a, [
            functools.partial(a.ensure_tunnel, new, OTHER_OWNER),
            functools.partial(a.ensure_tunnel, overlapping, SAMPLE_OWNER),  # INVALID_ARGUMENT
            functools.partial(a.ensure_tunnel, spec(2), SAMPLE_OWNER),  # cluster-2 was claimed first
            functools.partial(a.delete_tunnel, "cluster-1", OTHER_OWNER),  # not its owner
            functools.partial(a.delete_tunnel, "cluster-9", OTHER_OWNER),  # nothing to delete
            functools.partial(a.ensure_tunnel, spec(4), SAMPLE_OWNER),
            functools.partial(a.ensure_tunnel, spec(5), SAMPLE_OWNER),
            functools.partial(a.ensure_tunnel, spec(6), SAMPLE_OWNER),  # a 5th tunnel: no room
        ])
        assert isinstance(results[1], SpecError) and "remote_nat_pod_cidr" in str(results[1])
        assert isinstance(results[2], NotOwner) and OTHER_OWNER in str(results[2])
        assert isinstance(results[3], NotOwner) and SAMPLE_OWNER in str(results[3])
        assert results[4] is False
        assert isinstance(results[7], ResourceExhausted)
        for ok in (results[0], results[5], results[6]):
            assert isinstance(ok, tuple) and ok[1] is True, ok
        assert counts["iptables"] == counts["routes"] == counts["peers"] == counts["state"] == 1
        assert routing.tunnels == cids(1, 2, 4, 5)
        assert {v.spec.cluster_id: v.owner for v in a.list_tunnels()} == {
            "cluster-1": SAMPLE_OWNER, "cluster-2": OTHER_OWNER,
            "cluster-4": SAMPLE_OWNER, "cluster-5": SAMPLE_OWNER}
        assert persisted(a)["owners"]["cluster-2"] == OTHER_OWNER
    finally:
        a.stop()


def test_a_batch_whose_apply_fails_is_committed_one_by_one(tmp_path: Path, kernel: Kernel) -> None:
    """One call the kernel refuses fails alone: the others of its batch are committed."""
    dev, routing = kernel
    a = make_agent(tmp_path)
    try:
        active(a)
        a.ensure_tunnel(spec(1), SAMPLE_OWNER)
        routing.fail_for = "cluster-3"  # the kernel refuses cluster-3's routes
        good, bad, other = spec(2), spec(3), spec(4)
        results = in_one_batch(a, [
            functools.partial(a.ensure_tunnel, good, OTHER_OWNER),
            functools.partial(a.ensure_tunnel, bad, SAMPLE_OWNER),
            functools.partial(a.delete_tunnel, "cluster-1", SAMPLE_OWNER),
            functools.partial(a.ensure_tunnel, other, OTHER_OWNER),
        ])
        assert isinstance(results[1], Transient) and "routes" in str(results[1])
        assert isinstance(results[0], tuple) and isinstance(results[3], tuple)
        assert results[2] is True
        assert [v.spec for v in a.list_tunnels()] == [good, other]
        assert routing.tunnels == cids(2, 4)
        assert set(dev.peer_map) == {good.public_key, other.public_key}
        routing.fail_for = None
        a.resync()  # nothing of the failed call comes back
        assert routing.tunnels == cids(2, 4)
        assert {t["cluster_id"] for t in persisted(a)["tunnels"]} == {"cluster-2", "cluster-4"}
    finally:
        a.stop()


def test_a_batch_waiting_for_the_lock_is_fenced_by_a_demotion(tmp_path: Path, kernel: Kernel) -> None:
    """A demotion never waits for a batch (it takes no state lock), and the batch then commits nothing."""
    dev, routing = kernel
    a = make_agent(tmp_path)
    try:
        active(a)
        results: list[object] = []
        with a._lock:  # a commit is running
            threads = [threading.Thread(target=lambda n=n: results.append(
                _result(lambda: a.ensure_tunnel(spec(n), SAMPLE_OWNER)))) for n in (1, 2)]
            for t in threads:
                t.start()
            wait_for("both calls queued", lambda: len(a._queue) == 2, 5.0, 0.002)
            a.set_role(Role.STANDBY, 1, 0, "test")  # returns while the lock is held
        for t in threads:
            t.join(10)
        assert [type(r) for r in results] == [NotActive, NotActive]
        assert not dev.peer_map and not routing.tunnels and a.list_tunnels() == []
    finally:
        a.stop()


def _result(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception as e:
        return e
