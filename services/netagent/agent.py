"""The netagent's orchestrator: holds the desired state and drives the kernel layers towards it.

Every mutation follows the same path: validate (pure), resolve the endpoint (I/O, no lock held),
build the new desired state as a copy, converge the layers it touches, and only then commit it
(swap it in and persist). A call that fails part-way re-converges the previous state and leaves
ListTunnels and the state file as they were; if that fails too, a full resync is scheduled.

Group commit: converging costs O(tunnels) whatever changed (routes, one iptables restore, the peers,
the state file), so EnsureTunnel and DeleteTunnel calls are committed in batches. A call validates
and resolves on its own thread, then queues; the first call to find no commit running leads: under
`_lock` it takes the whole queue, re-checks every call in order against the state the calls before
it left (`plan.batch`, pure: a refused call gets its own error and changes nothing), converges the
kernel once for the batch and answers every call. If that apply fails (it was rolled back), the
batch's calls are committed one by one, so a failure is the failing call's alone. The leader then
passes the lead to the oldest call queued meanwhile (the next batch) and returns.

Locks, each taken only after those listed before it:
- `_lock` serializes state changes and the kernel writes behind them (routes, iptables, veth,
  device settings). It may be held for a while (a 65 536-entry iptables restore).
- `_peer_lock` guards the fence and the WireGuard peers: short. A demotion (SetRole STANDBY or an
  expired grant) is a fence update plus "remove every peer" under this lock only, so it never waits
  for a slow call; peers are (re)added only while the fence says ACTIVE, checked under this lock,
  so nothing re-adds a peer after fencing.
- `_queue_mu` guards the group commit's queue and leader flag: held only to append to, take (under
  `_lock`) or hand on the queue, never while taking another lock or waiting for anything.
The committed state is copy-on-write: readers (ListTunnels, the persister) take the reference
without a lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from ipaddress import IPv4Address

from services.common.tunnelspec import SpecError, TunnelSpec, check_cluster_id, check_owner, check_public_key
from services.netagent import state
from services.netagent.config import AgentConfig
from services.netagent.errors import (
    NotActive,
    NotConfigured,
    NotOwner,
    NotReady,
    ResourceExhausted,
    Transient,
)
from services.netagent.kernel import iptables, netns, nodeaddrs, routes, veth
from services.netagent.kernel.probe import Prober
from services.netagent.kernel.resolver import resolve_endpoint
from services.netagent.kernel.wireguard import PeerConfig, PeerState, WireGuardDevice, open_device
from services.netagent.kernel.wireguard.watch import LinkWatcher
from services.netagent.plan import batch, claims, natrules
from services.netagent.plan.handshake import (
    HANDSHAKE_NUDGES,
    clusters_of,
    new_handshakes,
    plan_nudges,
    poll_interval,
    settled_peers,
)
from services.netagent.plan.iptables import IptablesError
from services.netagent.plan.probe import ProbeState, ProbeStatus
from services.netagent.plan.protect import Protection, base_protection
from services.netagent.plan.resolver import endpoint_literal
from services.netagent.plan.role import Fence, Grant, Role, StaleEpoch

__all__ = ["Agent", "StaleEpoch", "TunnelView"]

log = logging.getLogger(__name__)
VERSION = "0.1.0"
MIN_MTU, MAX_MTU = state.MIN_MTU, state.MAX_MTU
PERSIST_DELAY = 0.05  # seconds
# DNS: a name that never answers costs one resolver thread until the C library gives up (which may
# be minutes); the call waits at most RESOLVE_TIMEOUT and at most RESOLVE_WORKERS lookups run at
# once, so hung lookups can never take every gRPC worker (SetRole must always find one). Calls for a
# name already being looked up wait for that lookup instead of starting another, and an owner's
# namespace has at most RESOLVE_PER_NAMESPACE lookups running, so one tenant's hanging names (retried
# by its controller) can never hold every resolver thread and refuse the other tenants' names.
RESOLVE_TIMEOUT = 5.0  # seconds
RESOLVE_WORKERS = 4
RESOLVE_PER_NAMESPACE = 1


class TunnelState:
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    FENCED = "fenced"


@dataclass(frozen=True)
class TunnelView:
    """A tunnel's spec and observed status, as the API reports it."""

    spec: TunnelSpec
    state: str
    state_since: float  # wall clock
    endpoint_ip: IPv4Address | None
    latency: float | None
    handshake_age: float | None
    rx_bytes: int
    tx_bytes: int
    nat_mapping_count: int
    owner: str = ""  # the claiming TunnelEndpoint, "namespace/name"


Resolver = Callable[[str, IPv4Address | None], IPv4Address]


@dataclass(eq=False)
class _Call:
    """An EnsureTunnel or DeleteTunnel waiting in the group commit's queue."""

    op: batch.Op
    wake: threading.Event = dataclasses.field(default_factory=threading.Event)
    lead: bool = False  # set (then woken) when this call's thread is to commit the queue
    finished: bool = False  # set (then woken) when `outcome` or `error` is its answer
    outcome: bool = False  # True: the call changed the desired state (a no-op: False)
    error: BaseException | None = None
    view: TunnelView | None = None  # EnsureTunnel's answer


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        on_apply: Callable[[str, float], None] | None = None,
        *,
        on_state_skipped: Callable[[int], None] | None = None,
        resolver: Resolver = resolve_endpoint,
    ) -> None:
        self.cfg = cfg
        self._on_apply = on_apply or (lambda what, seconds: None)
        self._on_state_skipped = on_state_skipped or (lambda n: None)
        self._resolve = resolver
        self._resolver_pool = ThreadPoolExecutor(max_workers=RESOLVE_WORKERS, thread_name_prefix="resolve")
        # Lookups running, by (name, current address) and by owner namespace; RLock: a done callback
        # runs in the submitting thread when the lookup has already finished.
        self._resolving_mu = threading.RLock()
        self._resolving: dict[tuple[str, IPv4Address | None], Future[IPv4Address]] = {}
        self._resolving_ns: dict[str, int] = {}
        self._lock = threading.RLock()  # state changes and their kernel writes
        self._peer_lock = threading.Lock()  # the fence and the WireGuard peers; short, never waits on _lock
        # The group commit's queue of tunnel calls, and whether a leader is committing it.
        self._queue_mu = threading.Lock()  # held only to append to or take the queue
        self._queue: list[_Call] = []
        self._leading = False
        self._changed = threading.Condition()
        self._version = 0  # bumped on every role or status change; watchers wait on it
        self._fence = Fence()
        self._state = state.AgentState()  # committed desired state; replaced whole, never edited
        # Under _peer_lock: the committed state's peers, and the role the peers were last made for.
        self._peers_wanted: dict[str, PeerConfig] = {}
        self._peers_role = Role.STANDBY
        self._state_since: dict[str, float] = {}
        self._private_key_set = False
        # The device was not there at start (the wireguard container starts after us): programming
        # it when it appears completes the start-up, it repairs no drift.
        self._device_pending = False
        # The private key ConfigureDevice last gave, in memory only (never logged, persisted nor
        # returned): with it a device that came back empty (wireguard-go restarted) is re-keyed at
        # once; without it (the agent restarted since) the tunnel controller is told over WatchRole.
        self._private_key: str | None = None
        # Bumped whenever the device had to be re-programmed (it came back, or drifted).
        self._device_generation = 0
        self._started = threading.Event()
        self._link_watcher = LinkWatcher(cfg.wg_device, cfg.netns_name, self._on_device_event)
        self._routing_known = False  # the kernel's routing matched the desired state at the last write
        self._stopping = threading.Event()
        self._resync_now = threading.Event()
        self.state_entries_skipped = 0
        self.started_at = time.monotonic()
        self._device: WireGuardDevice | None = None
        self._iptables = iptables.Iptables(cfg.netns_name)
        self._prober = Prober(
            netns=cfg.netns_name,
            port=cfg.probe_port,
            interval=cfg.probe_interval,
            loss_threshold=cfg.probe_loss_threshold,
            on_change=self._on_probe_change,
        )
        self._expiry_thread = threading.Thread(target=self._watch_expiry, name="role-expiry", daemon=True)
        self._resync_thread = threading.Thread(target=self._resync_loop, name="resync", daemon=True)
        self._dirty = threading.Event()
        # Peers programmed recently and not yet handshaken: key -> (programmed at, nudges done).
        self._fresh_peers: dict[str, tuple[float, int]] = {}
        # Last handshakes (key -> wall s) of the peers of Connecting tunnels, as last read: a newer
        # one is probed at once. Only the handshake thread touches it.
        self._handshakes_seen: dict[str, float] = {}
        self._nudge_thread = threading.Thread(target=self._nudge_loop, name="handshake-nudge", daemon=True)
        self._persist_thread = threading.Thread(target=self._persist_loop, name="persist", daemon=True)
        # The protected address space (docs/security.md): kept current from the kernel once started.
        self._node_addrs = nodeaddrs.NodeAddrs(
            base_protection(cfg), excluded_links=(cfg.host_veth, cfg.gateway_veth, cfg.wg_device)
        )

    # ---- lifecycle -------------------------------------------------------------------------------

    def _load_state(self) -> state.AgentState:
        """The persisted state, validated as the API validates; what fails is skipped and counted."""
        path = self.cfg.state_path
        try:
            persisted = state.load(path)
        except (ValueError, OSError) as e:
            log.error("state file unusable: starting empty", extra={"path": path, "error": str(e)})
            self._count_skipped(1)
            return state.AgentState()
        if persisted is None:
            return state.AgentState()
        for what in persisted.skipped:
            log.error("state entry skipped: it does not validate", extra={"path": path, "entry": what})
        # The protected address space too: the node may have changed since the file was written.
        protection = self.protection()
        for cid, spec in sorted(persisted.tunnels.items()):
            try:
                protection.check_tunnel(spec)
                if (ip := persisted.endpoints.get(cid)) is not None:
                    protection.check_endpoint(ip)
                if (nat := persisted.nat_maps.get(cid)) is not None:
                    protection.check_nat_targets([int(old) for old in nat], persisted.tunnels.values(),
                                                 cluster_id=cid)
            except SpecError as e:
                log.error("state entry skipped: it reaches protected addresses",
                          extra={"cluster_id": cid, "error": str(e)})
                for d in (persisted.tunnels, persisted.endpoints, persisted.nat_maps, persisted.owners):
                    d.pop(cid, None)
                persisted.skipped.append(f"tunnel {cid!r}")
        if len(persisted.tunnels) > self.cfg.max_tunnels:
            extra = sorted(persisted.tunnels)[self.cfg.max_tunnels :]
            for cid in extra:
                log.error("state entry skipped: over --max-tunnels", extra={"cluster_id": cid})
                for d in (persisted.tunnels, persisted.endpoints, persisted.nat_maps, persisted.owners):
                    d.pop(cid, None)
            persisted.skipped.extend(f"tunnel {cid!r}" for cid in extra)
        total = 0
        for cid in sorted(persisted.nat_maps):
            n = len(persisted.nat_maps[cid])
            if total + n > self.cfg.max_nat_entries:
                log.error("state entry skipped: over --max-nat-entries", extra={"cluster_id": cid})
                del persisted.nat_maps[cid]
                persisted.skipped.append(f"NAT map of {cid!r}")
            else:
                total += n
        self._count_skipped(len(persisted.skipped))
        return persisted

    def _count_skipped(self, n: int) -> None:
        if n:
            self.state_entries_skipped += n
            self._on_state_skipped(n)

    def start(self) -> None:
        """Creates or adopts the netns, veth and device, then converges to the persisted state."""
        cfg = self.cfg
        self._node_addrs.start()  # protection first: the node's addresses before any state or request
        persisted = self._load_state()
        with self._lock:
            self._state = persisted
            with self._peer_lock:
                self._fence.restore(persisted.epoch, persisted.active_until_wall, persisted.written_wall)
            self._timed("netns", lambda: netns.ensure_netns(cfg.netns_name))
            # Before the device: an event between the device's check and the watch is not lost.
            try:
                self._link_watcher.start()
            except OSError as e:  # a speed-up only: the periodic resync repairs the device too
                log.error("device link events not watched: a restarted wireguard-go is repaired at "
                          "the next resync only", extra={"error": str(e)})
            self._timed("veth", lambda: veth.ensure_veth(self._effective(persisted)))
            self._device = open_device(cfg)
            try:
                self._timed("wireguard", lambda: self.device.ensure(None, self.listen_port, self.mtu))
            except Transient as e:
                if cfg.wireguard_go_mode != "external":
                    raise
                # The wireguard container may start after us: serve, and program the device when
                # its TUN appears (the link watcher), or at the next resync.
                log.error("WireGuard device not ready: serving without it", extra={"error": str(e)})
                self._device_pending = True
            self._private_key_set = self.device.public_key() is not None
            try:
                self._converge_all(persisted)
            except Transient as e:  # serve anyway: the resync retries, the API stays reachable
                log.error("initial convergence failed: resync scheduled", extra={"error": str(e)})
                self._resync_now.set()
            now = time.time()
            self._state_since = {cid: now for cid in persisted.tunnels}
        self._prober.start()
        self._update_probe_targets()
        self._expiry_thread.start()
        self._resync_thread.start()
        self._persist_thread.start()
        self._nudge_thread.start()
        self._started.set()
        log.info(
            "netagent started",
            extra={
                "tunnels": len(persisted.tunnels),
                "role": self._fence.current().role.value,
                "implementation": self.device.implementation,
                "wireguard_go_mode": cfg.wireguard_go_mode,
            },
        )

    @property
    def started(self) -> bool:
        """start() has finished (whatever the role: a standby agent is ready too)."""
        return self._started.is_set() and not self._stopping.is_set()

    @property
    def device_configured(self) -> bool:
        """The device holds a private key, as the agent last saw it (cheap: no device read)."""
        return self._private_key_set

    @property
    def device_generation(self) -> int:
        return self._device_generation

    def _on_device_event(self, reason: str) -> None:
        """From the link watcher: the device vanished or a new one appeared; resync at once."""
        log.info("WireGuard device event: resyncing", extra={"reason": reason})
        self._resync_now.set()

    def stop(self) -> None:
        """Stops serving and leaves kernel state alone, so traffic keeps flowing across a restart."""
        self._stopping.set()
        self._resync_now.set()
        self._notify()
        self._prober.stop()
        self._node_addrs.stop()
        self._link_watcher.stop()
        self._dirty.set()
        self._resolver_pool.shutdown(wait=False, cancel_futures=True)
        self._persist_thread.join(timeout=10)

    @property
    def device(self) -> WireGuardDevice:
        if self._device is None:
            raise Transient("agent is starting")
        return self._device

    def _effective(self, st: state.AgentState) -> AgentConfig:
        return dataclasses.replace(
            self.cfg, mtu=st.mtu or self.cfg.mtu, listen_port=st.listen_port or self.cfg.listen_port
        )

    @property
    def effective_config(self) -> AgentConfig:
        """The configuration with what ConfigureDevice changed since start."""
        return self._effective(self._state)

    @property
    def listen_port(self) -> int:
        return self._state.listen_port or self.cfg.listen_port

    @property
    def mtu(self) -> int:
        return self._state.mtu or self.cfg.mtu

    # ---- device and role -------------------------------------------------------------------------

    def configure_device(self, private_key: str, listen_port: int, mtu: int) -> str:
        check_public_key("private_key", private_key)  # same encoding as a public key
        if listen_port and not 1 <= listen_port <= 65535:
            raise SpecError(f"listen_port: {listen_port} not in 1..65535")
        self.protection().check_listen_port(listen_port)
        if mtu and not MIN_MTU <= mtu <= MAX_MTU:
            raise SpecError(f"mtu: {mtu} not in {MIN_MTU}..{MAX_MTU}")
        with self._lock:
            old = self._state
            new = old.editable()
            new.listen_port = listen_port or self.listen_port
            new.mtu = mtu or self.mtu
            mtu_changed = new.mtu != self.mtu
            cfg = self._effective(new)
            try:
                self._timed("wireguard", lambda: self.device.ensure(private_key, cfg.listen_port, cfg.mtu))
                if mtu_changed:  # the veth MTU and MSS clamping follow the device MTU
                    self._timed("veth", lambda: veth.ensure_veth(cfg))
                    self._converge_iptables(new)
            except Exception:
                self._restore_device(old, mtu_changed)
                raise
            self._private_key_set = True
            self._private_key = private_key
            self._state = new
            self._persist()
            key = self.device.public_key()
        assert key is not None
        self._notify()  # WatchRole's device_configured
        return key

    def _restore_device(self, old: state.AgentState, mtu_changed: bool) -> None:
        """Puts the device (and the veth and clamping) back to `old`'s port and MTU after a failed
        change; the key the call set stays (it is never persisted)."""
        cfg = self._effective(old)
        try:
            self._timed("wireguard", lambda: self.device.ensure(None, cfg.listen_port, cfg.mtu))
            if mtu_changed:
                self._timed("veth", lambda: veth.ensure_veth(cfg))
                self._iptables.invalidate()
                self._converge_iptables(old)
        except Exception as e:
            log.error("restoring the device settings failed: resync scheduled", extra={"error": str(e)})
            self._resync_now.set()

    def set_role(self, role: Role, epoch: int, ttl: float, reason: str) -> Grant:
        """Never waits for `_lock`: a demotion is a fence update and a peer removal, nothing else."""
        if role is Role.ACTIVE and not self._private_key_set:
            raise NotConfigured("ACTIVE needs a configured device: call ConfigureDevice first")
        with self._peer_lock:
            before = self._fence.current()
            try:
                grant = self._fence.set(role, epoch, ttl, reason)
            except ValueError as e:
                raise SpecError(str(e)) from None
            try:
                self._apply_peers_locked()
            except Transient as e:  # the fence stands; the resync retries the peers
                log.error("peers not updated after a role change", extra={"error": str(e)})
                self._resync_now.set()
        if before.role is not grant.role:
            log.info("role changed", extra={"role": grant.role.value, "epoch": grant.epoch, "reason": reason})
            self._mark_all_changed()
            if grant.role is Role.ACTIVE:  # every peer was just programmed: probe now, not at the tick
                self._prober.probe_now(list(self._state.tunnels))
        self._persist()
        self._notify()
        return grant

    def role(self) -> Grant:
        return self._fence.current()

    def protection(self) -> Protection:
        """The protected address space now (docs/security.md): its checks raise SpecError."""
        return self._node_addrs.protection()

    def role_seconds_left(self) -> float | None:
        return self._fence.seconds_left()

    def _require_active(self) -> None:
        if self._fence.current().role is not Role.ACTIVE:
            raise NotActive("agent is standby: mutations need the ACTIVE role")
        if not self._private_key_set:
            raise NotConfigured("device not configured: call ConfigureDevice first")

    def _watch_expiry(self) -> None:
        """Demotes on expiry: a lapsed grant must stop authenticated traffic at once."""
        while not self._stopping.is_set():
            left = self._fence.seconds_left()
            self._stopping.wait(0.5 if left is None else min(0.5, left + 0.001))
            expired = False
            with self._peer_lock:
                grant = self._fence.current()
                if grant.role is Role.STANDBY and self._peers_role is Role.ACTIVE:
                    log.warning("role expired: removing WireGuard peers", extra={"epoch": grant.epoch})
                    expired = True
                    try:
                        self._apply_peers_locked()
                    except Transient as e:
                        log.error("removing peers after expiry failed", extra={"error": str(e)})
                        self._resync_now.set()
            if expired:
                self._mark_all_changed()
                self._persist()
                self._notify()

    def _resync_loop(self) -> None:
        """Repairs what others changed behind our back: the kernel is re-read, not trusted from cache."""
        while not self._stopping.is_set():
            self._resync_now.wait(self.cfg.resync_interval)
            if self._stopping.is_set():
                return
            self._resync_now.clear()
            try:
                self.resync()
            except Exception as e:  # the next round retries; a resync must never kill the agent
                log.warning("resync failed", extra={"error": str(e)})

    def resync(self) -> bool:
        """Re-reads the kernel and converges it to the desired state; True when drift was repaired."""
        with self._lock:
            st = self._state
            self._iptables.invalidate()
            specs = list(st.tunnels.values())
            first_device = self._device_pending
            layers = {
                "veth": self._timed("veth", lambda: veth.ensure_veth(self._effective(st)).created),
                "device": self._ensure_device(st),
                "routes": self._timed("routes", lambda: self._converge_routing(None, specs)),
                "iptables": self._converge_iptables(st),
                "peers": self._sync_peers(st),
            }
            self._device_pending = False  # _ensure_device raises while the device is still missing
        repaired = [name for name, changed in layers.items() if changed]
        if first_device and repaired:
            log.info("WireGuard device ready: start-up completed on it", extra={"layers": repaired})
        elif repaired:
            log.warning("repaired drift in Liqo-owned kernel state", extra={"layers": repaired})
        return bool(repaired)

    def _ensure_device(self, st: state.AgentState) -> bool:
        """Under _lock: the device as `st` wants it (placed in the netns, up, MTU, address, listen port,
        and the in-memory private key when the agent has one). A device that came back empty (its
        wireguard-go restarted) is re-programmed here; the caller then converges routes, NAT and
        peers onto it (peers only while ACTIVE: `_apply_peers_locked` checks the fence). True when
        something was written."""
        cfg = self._effective(st)
        key = self._private_key
        changed = self._timed("wireguard", lambda: self.device.ensure(key, cfg.listen_port, cfg.mtu))
        if not changed:
            return False
        configured = self.device.public_key() is not None
        self._device_generation += 1
        self._private_key_set = configured
        self._routing_known = False  # routes on a re-created device are gone
        if self._device_pending:
            log.info("WireGuard device appeared: programmed", extra={"generation": self._device_generation,
                                                                      "configured": configured})
        elif configured:
            log.warning("WireGuard device re-programmed", extra={"generation": self._device_generation})
        else:
            log.error("WireGuard device re-created without a private key (the agent restarted since "
                      "ConfigureDevice): waiting for the tunnel controller's ConfigureDevice",
                      extra={"generation": self._device_generation})
        self._notify()  # WatchRole carries device_configured: the tunnel controller reacts at once
        return True

    # ---- tunnels ---------------------------------------------------------------------------------

    def ensure_tunnel(self, spec: TunnelSpec, owner: str) -> tuple[TunnelView, bool]:
        check_owner(owner)
        self._require_active()
        cid = spec.cluster_id
        protection = self.protection()
        protection.check_tunnel(spec)
        # Claims are checked before the (possibly slow) resolution too, so a refused call is cheap;
        # and again under the lock, since another call may have claimed meanwhile.
        st = self._state
        claims.check_no_overlap(st.tunnels, spec)  # arguments first (INVALID_ARGUMENT), then claims
        claims.check_claim(st.tunnels, st.owners, spec, owner)
        # DNS is I/O that may never answer: resolved with no lock held, so it blocks only this call.
        endpoint_ip = self._resolve_bounded(spec.endpoint, self._state.endpoints.get(cid), owner)
        protection.check_endpoint(endpoint_ip)
        call = self._group_commit(batch.Ensure(spec, owner, endpoint_ip))
        assert call.view is not None
        return call.view, call.outcome

    def _resolve_bounded(self, endpoint: str, current: IPv4Address | None, owner: str) -> IPv4Address:
        """Resolves with no lock held, in a bounded pool, waiting at most RESOLVE_TIMEOUT; joins a
        lookup of the same name already running; at most RESOLVE_PER_NAMESPACE lookups per namespace
        of `owner` ("namespace/name")."""
        if endpoint_literal(endpoint) is not None:
            return self._resolve(endpoint, current)  # no I/O
        key, ns = (endpoint, current), owner.partition("/")[0]
        with self._resolving_mu:
            future = self._resolving.get(key)
            if future is None:
                if self._resolving_ns.get(ns, 0) >= RESOLVE_PER_NAMESPACE:
                    raise Transient(f"endpoint {endpoint!r}: namespace {ns!r} has {RESOLVE_PER_NAMESPACE} "
                                    f"name(s) being resolved already")
                if len(self._resolving) >= RESOLVE_WORKERS:
                    raise Transient(
                        f"endpoint {endpoint!r}: {RESOLVE_WORKERS} names are being resolved already")
                future = self._resolver_pool.submit(self._resolve, endpoint, current)
                self._resolving[key] = future
                self._resolving_ns[ns] = self._resolving_ns.get(ns, 0) + 1
                future.add_done_callback(functools.partial(self._resolved, key, ns))
        try:
            return future.result(timeout=RESOLVE_TIMEOUT)
        except FutureTimeout:
            raise Transient(
                f"endpoint {endpoint!r} does not resolve: no DNS answer within {RESOLVE_TIMEOUT:.0f} s"
            ) from None

    def _resolved(self, key: tuple[str, IPv4Address | None], ns: str, future: Future[IPv4Address]) -> None:
        """A lookup ended (answered, failed or cancelled): its thread and its namespace's slot are free."""
        with self._resolving_mu:
            if self._resolving.get(key) is future:
                del self._resolving[key]
            left = self._resolving_ns.get(ns, 0) - 1
            if left > 0:
                self._resolving_ns[ns] = left
            else:
                self._resolving_ns.pop(ns, None)

    def delete_tunnel(self, cluster_id: str, owner: str) -> bool:
        check_cluster_id(cluster_id)
        check_owner(owner)
        return self._group_commit(batch.Delete(cluster_id, owner)).outcome

    # ---- group commit ----------------------------------------------------------------------------

    def _group_commit(self, op: batch.Op) -> _Call:
        """Queues `op` and returns once it is committed (or raises its error). The first caller to
        find no commit running leads: it commits the whole queue, its own call included, then hands
        the lead to the oldest call queued meanwhile (whose thread is waiting) and returns; the calls
        that queue while a commit runs are the next batch."""
        call = _Call(op)
        with self._queue_mu:
            self._queue.append(call)
            call.lead = not self._leading
            self._leading = True
        while not call.lead and not call.finished:
            call.wake.wait()
            call.wake.clear()
        if not call.finished:
            self._lead()
        if call.error is not None:
            raise call.error
        return call

    def _lead(self) -> None:
        """Commits every queued call as one batch, answers them all, and passes the lead on. The
        queue is taken once `_lock` is held: calls queued while a resync or a NAT write held it join."""
        calls: list[_Call] = []
        try:
            with self._lock:
                with self._queue_mu:
                    calls, self._queue = self._queue, []
                done = self._commit_calls(calls)
            if done:
                self._after_commit(done)
        except BaseException as e:  # a bug, not a refusal: every call of the batch not refused hears of it
            for call in calls:
                if call.error is None:
                    call.error = e
            raise
        finally:
            with self._queue_mu:
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].wake.set()
                else:
                    self._leading = False
            for call in calls:
                call.finished = True
                call.wake.set()

    def _commit_calls(self, calls: list[_Call]) -> list[_Call]:
        """Under _lock: applies the calls' ops onto the committed state (pure: `plan.batch`) and
        converges the kernel once for all of them. When that apply fails (it was rolled back), the
        calls are committed one by one, so each failure is its own call's and no tenant can fail
        another's calls. Returns the calls committed."""
        try:
            self._require_active()
        except (NotActive, NotConfigured) as e:
            for call in calls:
                call.error = e
            return []
        old = self._state
        new, outcomes = batch.plan(old, [c.op for c in calls], self.cfg.max_tunnels)
        admitted: list[_Call] = []
        for call, outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, bool):
                call.outcome = outcome
                admitted.append(call)
            else:
                call.error = outcome
        if not any(isinstance(c.op, batch.Ensure) or c.outcome for c in admitted):
            return admitted  # deletes of tunnels that are not there: nothing to write
        try:
            kernel_changed = self._commit(old, new)
        except Exception as e:
            if len(admitted) == 1:
                admitted[0].error = e
                return []
            log.warning("a batch of tunnel calls failed: committing them one by one",
                        extra={"calls": len(admitted), "error": str(e)})
            return [done for call in admitted for done in self._commit_calls([call])]
        # The kernel's change is a call's when it changed the desired state; a repaired drift is
        # reported by the calls of a batch that changed nothing.
        drift = kernel_changed and not any(c.outcome for c in admitted)
        now = time.time()
        peers = self._peer_states()
        for call in admitted:
            if isinstance(call.op, batch.Ensure):
                cid = call.op.spec.cluster_id
                if call.outcome:
                    self._state_since[cid] = now
                call.view = self._view(self._state, cid, peers)
                call.outcome = call.outcome or drift
            elif call.outcome:
                self._state_since.pop(call.op.cluster_id, None)
        return admitted

    def _after_commit(self, done: list[_Call]) -> None:
        """With no lock held: the probe follows the committed tunnels and watchers are told."""
        self._update_probe_targets()  # a new target pings at once
        # A changed peer (key, endpoint) whose probe is not Connected: ping it now too.
        changed = [c.op.spec.cluster_id for c in done if isinstance(c.op, batch.Ensure) and c.outcome]
        if changed:
            self._prober.probe_now(changed)
        self._notify()

    def set_nat_mappings(self, cluster_id: str, mappings: Mapping[str, str]) -> tuple[int, bool]:
        check_cluster_id(cluster_id)
        spec = self._state.tunnels.get(cluster_id)
        if spec is None:
            self._require_active()
            raise NotReady(f"tunnel for cluster {cluster_id!r} is not ready")
        parsed = natrules.parse_nat_map(spec, mappings)  # CPU only: no lock held
        with self._lock:
            self._require_active()
            old_st = self._state
            now_spec = old_st.tunnels.get(cluster_id)
            if now_spec is None:
                raise NotReady(f"tunnel for cluster {cluster_id!r} is not ready")
            if now_spec != spec:  # the tunnel changed meanwhile: validate against the new spec
                parsed = natrules.parse_nat_map(now_spec, mappings)
            self.protection().check_nat_targets(
                parsed.targets(), old_st.tunnels.values(), cluster_id=cluster_id
            )
            if old_st.nat_maps.get(cluster_id, {}) == parsed:
                return len(parsed), False
            claims.check_nat_room(old_st.nat_maps, cluster_id, len(parsed), self.cfg.max_nat_entries)
            new = old_st.editable()
            new.nat_maps[cluster_id] = parsed
            changed = self._commit(old_st, new, iptables_only=True)
        self._notify()
        return len(parsed), changed

    def delete_nat_mappings(self, cluster_id: str) -> bool:
        check_cluster_id(cluster_id)
        with self._lock:
            self._require_active()
            old_st = self._state
            if cluster_id not in old_st.nat_maps:
                return False
            new = old_st.editable()
            had = bool(new.nat_maps.pop(cluster_id))
            self._commit(old_st, new, iptables_only=True)
        self._notify()
        return had

    def list_tunnels(self) -> list[TunnelView]:
        st = self._state  # committed, never edited: no lock needed
        peers = self._peer_states()
        return [self._view(st, cid, peers) for cid in sorted(st.tunnels)]

    def tunnel_count(self) -> int:
        return len(self._state.tunnels)

    # ---- watching --------------------------------------------------------------------------------

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Blocks until the change counter moves past `seen` (or timeout); returns the counter."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen or self._stopping.is_set(), timeout)
            return self._version

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _notify(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def _on_probe_change(self, cluster_id: str, status: ProbeStatus) -> None:
        self._state_since[cluster_id] = time.time()
        self._notify()

    def _mark_all_changed(self) -> None:
        now = time.time()
        for cid in list(self._state.tunnels):
            self._state_since[cid] = now

    # ---- convergence -----------------------------------------------------------------------------

    def _commit(self, old: state.AgentState, new: state.AgentState, *, iptables_only: bool = False) -> bool:
        """Converges the kernel to `new` and makes it the committed state; on failure the kernel is
        brought back to `old`, which stays committed, and the error is raised."""
        try:
            if iptables_only:
                changed = self._converge_iptables(new)
            else:
                changed = self._converge_all(new, list(old.tunnels.values()))
        except BaseException:
            self._rollback(old)
            raise
        self._state = new
        if new != old:  # an unchanged state (a repeated call) writes no file
            self._persist()
        return changed

    def _rollback(self, old: state.AgentState) -> None:
        """Re-converges `old` in full (the kernel may match neither state now)."""
        try:
            self._routing_known = False
            self._iptables.invalidate()
            self._converge_all(old)
        except Exception as e:
            log.error("rolling back a failed call failed: full resync scheduled", extra={"error": str(e)})
            self._resync_now.set()

    def _converge_all(self, st: state.AgentState, before: list[TunnelSpec] | None = None) -> bool:
        """Converges every layer to `st`. With `before` (the tunnels the kernel matched until this
        call), routing is updated by difference instead of re-read and re-synced whole."""
        specs = list(st.tunnels.values())
        changed = self._timed("routes", lambda: self._converge_routing(before, specs))
        changed = self._converge_iptables(st) or changed
        return self._sync_peers(st) or changed

    def _converge_routing(self, before: list[TunnelSpec] | None, specs: list[TunnelSpec]) -> bool:
        if before is not None and self._routing_known:
            try:
                return routes.update_routing(self.cfg, before, specs)
            except OSError as e:
                log.warning("incremental routing update failed, syncing in full", extra={"error": str(e)})
        # Until a full sync succeeds, the kernel may match neither `before` nor `specs`.
        self._routing_known = False
        changed = routes.sync_netns_routes(self.cfg, specs)
        changed = routes.sync_host_routing(self.cfg, specs) or changed
        self._routing_known = True
        return changed

    def _converge_iptables(self, st: state.AgentState) -> bool:
        desired = natrules.desired_state(st.tunnels.values(), st.nat_maps, self._effective(st))
        return self._timed("iptables", lambda: self._iptables.apply(desired))

    @staticmethod
    def _peer_configs(st: state.AgentState) -> dict[str, PeerConfig]:
        return {
            spec.public_key: PeerConfig(
                public_key=spec.public_key,
                endpoint_ip=st.endpoints[cid],
                endpoint_port=spec.endpoint_port,
                allowed_ips=spec.allowed_ips,
                persistent_keepalive=spec.persistent_keepalive,
            )
            for cid, spec in st.tunnels.items()
        }

    def _sync_peers(self, st: state.AgentState) -> bool:
        """Makes `st`'s peers the wanted ones and programs them if (and only if) ACTIVE."""
        wanted = self._peer_configs(st)
        with self._peer_lock:
            self._peers_wanted = wanted
            return self._apply_peers_locked()

    def _apply_peers_locked(self) -> bool:
        """Under _peer_lock: programs exactly the wanted peers when the fence says ACTIVE, none
        otherwise; removes stale peers by the key actually programmed (Liqo removed a peer by the key
        of the new spec, so after a remote key rotation the old peer was never removed)."""
        role = self._fence.current().role
        if role is not Role.ACTIVE:
            was_active = self._peers_role is Role.ACTIVE
            self._peers_role = Role.STANDBY  # set first: even a failed removal is retried as a demotion
            self._fresh_peers.clear()
            self._timed("wireguard", self.device.remove_all_peers)  # one write, no read first
            return was_active
        desired = self._peers_wanted

        def apply() -> bool:
            current = {p.public_key: p for p in self.device.peers()}
            changed = False
            for key in current.keys() - desired.keys():
                self.device.remove_peer(key)
                changed = True
            for key, peer in desired.items():
                have = current.get(key)
                if have is None or not peer.matches(have):
                    self.device.set_peer(peer)
                    changed = True
                    if have is None or have.endpoint_ip != peer.endpoint_ip:
                        self._fresh_peers[key] = (time.monotonic(), 0)
            for key in self._fresh_peers.keys() - desired.keys():
                del self._fresh_peers[key]
            return changed

        changed = self._timed("wireguard", apply)
        self._peers_role = Role.ACTIVE
        return changed

    def _nudge_loop(self) -> None:
        """Nudges fresh peers on their schedule and, while a tunnel is Connecting, probes a peer as
        soon as its handshake completes. Idle (nothing Connecting) it wakes every IDLE_POLL and
        reads nothing; while Connecting it reads the device every HANDSHAKE_POLL, for at most the
        probe's loss window per tunnel (Connecting then turns Disconnected)."""
        connecting: set[str] = set()
        while not self._stopping.wait(poll_interval(bool(connecting))):
            nudged: list[str] = []
            try:
                connecting = self._prober.connecting()
                with self._peer_lock:
                    if self._fence.current().role is Role.ACTIVE:
                        nudged = self._nudge_fresh_peers(connecting)
                self._probe_new_handshakes(connecting, nudged)
            except Exception as e:  # the next round retries
                log.warning("handshake nudge failed", extra={"error": str(e)})

    def _probe_new_handshakes(self, connecting: set[str], nudged: list[str]) -> None:
        """Probes at once the Connecting tunnels whose peer just handshook, and the nudged ones (a
        reset peer dropped its queued packets: the PING starts its new handshake now instead of at
        the next tick)."""
        if not connecting:
            self._handshakes_seen = {}
            return
        by_key = {spec.public_key: cid for cid, spec in self._state.tunnels.items() if cid in connecting}
        current = {p.public_key: p.last_handshake or 0.0 for p in self.device.peers()
                   if p.public_key in by_key}
        due = clusters_of([*new_handshakes(self._handshakes_seen, current), *nudged], by_key)
        self._handshakes_seen = current
        if due:
            self._prober.probe_now(due)

    def _nudge_fresh_peers(self, connecting: set[str]) -> list[str]:
        """Under _peer_lock, while ACTIVE: re-programs new peers whose tunnel is still Connecting
        (`connecting`: cluster ids) when their nudge is due, handshaken or not: removing and
        re-adding a peer (one request: it never looks missing) resets WireGuard's sessions, so the
        next packet starts a new handshake. Returns the nudged keys."""
        now = time.monotonic()
        if not any(now - t0 >= HANDSHAKE_NUDGES[n] for t0, n in self._fresh_peers.values()):
            return []
        programmed = {p.public_key: p.last_handshake for p in self.device.peers()}
        unanswered = {spec.public_key for cid, spec in self._state.tunnels.items() if cid in connecting}
        desired = self._peers_wanted
        nudge, self._fresh_peers = plan_nudges(
            self._fresh_peers, now, settled_peers(programmed, desired.keys(), unanswered)
        )
        for key in nudge:
            self.device.reset_peer(desired[key])
            log.info("tunnel not answering yet: peer re-programmed",
                     extra={"public_key": key, "handshaken": bool(programmed.get(key))})
        return nudge

    def _timed(self, what: str, fn: Callable[[], bool | object]) -> bool:
        start = time.perf_counter()
        try:
            result = fn()
        except (SpecError, NotActive, NotConfigured, NotReady, NotOwner, ResourceExhausted, Transient):
            raise
        except (OSError, IptablesError, RuntimeError) as e:
            raise Transient(f"{what}: {e}") from e
        finally:
            self._on_apply(what, time.perf_counter() - start)
        return bool(result)

    def _persist(self) -> None:
        """Schedules a write of the committed state and the current grant.

        Written behind the reply, coalesced: rewriting a 10 000-entry NAT map on every call would
        double its latency. A crash in the few milliseconds before the write loses nothing that
        matters: the controllers re-send their whole desired state whenever the agent comes back."""
        self._dirty.set()

    def _persist_loop(self) -> None:
        while True:
            self._dirty.wait()
            # Let the call that asked for the write answer first, and coalesce a burst of calls.
            self._stopping.wait(PERSIST_DELAY)
            self._dirty.clear()
            grant = self._fence.current()
            snapshot = dataclasses.replace(
                self._state,  # committed and never edited: no lock needed
                epoch=grant.epoch,
                active_until_wall=grant.expires_wall,
                written_wall=time.time(),
            )
            text = snapshot.to_json()  # a 10 000-entry map takes ~10 ms
            try:
                state.write_atomic(self.cfg.state_path, text)
            except OSError as e:  # losing the file only costs adoption after a restart
                log.error("cannot persist state", extra={"path": self.cfg.state_path, "error": str(e)})
            if self._stopping.is_set() and not self._dirty.is_set():
                return

    def _update_probe_targets(self) -> None:
        st = self._state
        self._prober.set_targets({cid: spec.probe_target for cid, spec in st.tunnels.items()})

    # ---- views -----------------------------------------------------------------------------------

    def _peer_states(self) -> dict[str, PeerState]:
        try:
            return {p.public_key: p for p in self.device.peers()}
        except (OSError, RuntimeError) as e:
            log.warning("cannot read WireGuard peers", extra={"error": str(e)})
            return {}

    def _view(self, st: state.AgentState, cluster_id: str, peers: Mapping[str, PeerState]) -> TunnelView:
        spec = st.tunnels[cluster_id]
        peer = peers.get(spec.public_key)
        probe = self._prober.status(cluster_id)
        if self._fence.current().role is not Role.ACTIVE:
            tstate = TunnelState.FENCED
        elif probe is None or probe.state is ProbeState.CONNECTING:
            tstate = TunnelState.CONNECTING
        elif probe.state is ProbeState.CONNECTED:
            tstate = TunnelState.CONNECTED
        else:
            tstate = TunnelState.DISCONNECTED
        handshake_age = None
        if peer is not None and peer.last_handshake:
            handshake_age = max(0.0, time.time() - peer.last_handshake)
        return TunnelView(
            spec=spec,
            state=tstate,
            state_since=self._state_since.get(cluster_id, time.time()),
            endpoint_ip=st.endpoints.get(cluster_id),
            latency=probe.latency if probe is not None and tstate == TunnelState.CONNECTED else None,
            handshake_age=handshake_age,
            rx_bytes=peer.rx_bytes if peer else 0,
            tx_bytes=peer.tx_bytes if peer else 0,
            nat_mapping_count=len(st.nat_maps.get(cluster_id, {})),
            owner=st.owners.get(cluster_id, ""),
        )


def withdraw_peers(cfg: AgentConfig) -> bool:
    """Fail closed when the netagent cannot serve: removes every peer of an existing device (creating
    nothing), so that peers left by an earlier agent or by a restored grant are not kept with no agent
    to fence them. Best effort; True if a device was found and emptied."""
    try:
        device = open_device(cfg, create=False)
        if not device.exists():
            return False
        device.remove_all_peers()
    except FileNotFoundError:
        return False
    except Exception as e:  # on the way out: report, never mask the start-up error
        log.error("could not withdraw the WireGuard peers", extra={"error": str(e)})
        return False
    log.warning("withdrew every WireGuard peer: the netagent is not serving")
    return True


def cleanup(cfg: AgentConfig) -> None:
    """Removes everything Liqo created on this node (uninstall) and nothing else."""
    routes.remove_host_routing(cfg)
    if netns.netns_exists(cfg.netns_name):
        iptables.Iptables(cfg.netns_name).remove_all()
    with contextlib.suppress(FileNotFoundError):
        open_device(cfg, create=False).delete()
    veth.delete_veth(cfg)
    netns.delete_netns(cfg.netns_name)
    for path in (cfg.state_path, cfg.socket_path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
