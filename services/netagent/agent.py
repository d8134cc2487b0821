"""The netagent's orchestrator: holds the desired state and drives the kernel layers towards it.

Every mutation follows the same path: validate (pure), update the desired state in memory, converge
the layers it touches, persist. Kernel writes are serialized by one lock. The layers compute their
own diffs, so converging an unchanged state writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from services.common.tunnelspec import SpecError, TunnelSpec, check_cluster_id, check_public_key
from services.netagent import state
from services.netagent.config import AgentConfig
from services.netagent.errors import NotActive, NotConfigured, NotReady, Transient
from services.netagent.kernel import iptables, netns, nodeaddrs, routes, veth
from services.netagent.kernel.probe import Prober
from services.netagent.kernel.resolver import resolve_endpoint
from services.netagent.kernel.wireguard import PeerConfig, PeerState, WireGuardDevice, open_device
from services.netagent.plan import natrules
from services.netagent.plan.handshake import HANDSHAKE_NUDGES, plan_nudges
from services.netagent.plan.iptables import IptablesError
from services.netagent.plan.probe import ProbeState, ProbeStatus
from services.netagent.plan.protect import Protection, base_protection
from services.netagent.plan.role import Fence, Grant, Role, StaleEpoch

__all__ = ["Agent", "StaleEpoch", "TunnelView"]

log = logging.getLogger(__name__)
VERSION = "0.1.0"
MIN_MTU, MAX_MTU = 1280, 9000
PERSIST_DELAY = 0.05  # seconds


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


class Agent:
    def __init__(self, cfg: AgentConfig, on_apply: Callable[[str, float], None] | None = None) -> None:
        self.cfg = cfg
        self._on_apply = on_apply or (lambda what, seconds: None)
        self._lock = threading.RLock()
        self._changed = threading.Condition()
        self._version = 0  # bumped on every role or status change; watchers wait on it
        self._fence = Fence()
        self._state = state.AgentState()
        self._state_since: dict[str, float] = {}
        self._private_key_set = False
        self._routing_known = False  # the kernel's routing matched the desired state at the last write
        self._stopping = threading.Event()
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
        self._nudge_thread = threading.Thread(target=self._nudge_loop, name="handshake-nudge", daemon=True)
        self._persist_thread = threading.Thread(target=self._persist_loop, name="persist", daemon=True)
        # The protected address space (docs/security.md): kept current from the kernel once started.
        self._node_addrs = nodeaddrs.NodeAddrs(
            base_protection(cfg), excluded_links=(cfg.host_veth, cfg.gateway_veth, cfg.wg_device)
        )

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Creates or adopts the netns, veth and device, then converges to the persisted state."""
        cfg = self.cfg
        self._node_addrs.start()  # protection first: the node's addresses before any request
        persisted = state.load(cfg.state_path)
        with self._lock:
            if persisted is not None:
                self._state = persisted
                if persisted.active_until_wall is not None:
                    self._fence.restore(persisted.epoch, persisted.active_until_wall)
                else:
                    self._fence.set(Role.STANDBY, persisted.epoch, 0, "restored")
            self._timed("netns", lambda: netns.ensure_netns(cfg.netns_name))
            self._timed("veth", lambda: veth.ensure_veth(self.effective_config))
            self._device = open_device(cfg)
            self._timed("wireguard", lambda: self.device.ensure(None, self.listen_port, self.mtu))
            self._private_key_set = self.device.public_key() is not None
            self._converge_all()
            now = time.time()
            self._state_since = {cid: now for cid in self._state.tunnels}
        self._prober.start()
        self._update_probe_targets()
        self._expiry_thread.start()
        self._resync_thread.start()
        self._persist_thread.start()
        self._nudge_thread.start()
        log.info(
            "netagent started",
            extra={
                "tunnels": len(self._state.tunnels),
                "role": self._fence.current().role.value,
                "implementation": self.device.implementation,
            },
        )

    def stop(self) -> None:
        """Stops serving and leaves kernel state alone, so traffic keeps flowing across a restart."""
        self._stopping.set()
        self._notify()
        self._prober.stop()
        self._node_addrs.stop()
        self._dirty.set()
        self._persist_thread.join(timeout=10)

    @property
    def device(self) -> WireGuardDevice:
        if self._device is None:
            raise Transient("agent is starting")
        return self._device

    @property
    def effective_config(self) -> AgentConfig:
        """The configuration with what ConfigureDevice changed since start."""
        return dataclasses.replace(self.cfg, mtu=self.mtu, listen_port=self.listen_port)

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
            mtu_changed = bool(mtu) and mtu != self.mtu
            self._state.listen_port = listen_port or self.listen_port
            self._state.mtu = mtu or self.mtu
            self._timed("wireguard", lambda: self.device.ensure(private_key, self.listen_port, self.mtu))
            self._private_key_set = True
            if mtu_changed:  # the veth MTU and MSS clamping follow the device MTU
                self._timed("veth", lambda: veth.ensure_veth(self.effective_config))
                self._converge_iptables()
            self._persist()
            key = self.device.public_key()
        assert key is not None
        return key

    def set_role(self, role: Role, epoch: int, ttl: float, reason: str) -> Grant:
        with self._lock:
            if role is Role.ACTIVE and not self._private_key_set:
                raise NotConfigured("ACTIVE needs a configured device: call ConfigureDevice first")
            try:
                before = self._fence.current()
                grant = self._fence.set(role, epoch, ttl, reason)
            except ValueError as e:
                raise SpecError(str(e)) from None
            self._state.epoch = grant.epoch
            self._state.active_until_wall = grant.expires_wall
            if before.role is not grant.role:
                log.info("role changed", extra={"role": grant.role.value, "epoch": epoch, "reason": reason})
                self._sync_peers()
                self._mark_all_changed()
            self._persist()
        self._notify()
        return grant

    def role(self) -> Grant:
        return self._fence.current()

    def role_seconds_left(self) -> float | None:
        return self._fence.seconds_left()

    def protection(self) -> Protection:
        """The protected address space now (docs/security.md): its checks raise SpecError."""
        return self._node_addrs.protection()

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
            with self._lock:
                grant = self._fence.current()
                if grant.role is Role.STANDBY and self._state.active_until_wall is not None:
                    log.warning("role expired: removing WireGuard peers", extra={"epoch": grant.epoch})
                    self._state.active_until_wall = None
                    self._sync_peers()
                    self._mark_all_changed()
                    self._persist()
                    self._notify()

    def _resync_loop(self) -> None:
        """Repairs what others changed behind our back: the kernel is re-read, not trusted from cache."""
        while not self._stopping.wait(self.cfg.resync_interval):
            try:
                self.resync()
            except Exception as e:  # the next round retries; a resync must never kill the agent
                log.warning("resync failed", extra={"error": str(e)})

    def resync(self) -> bool:
        """Re-reads the kernel and converges it to the desired state; True when drift was repaired."""
        with self._lock:
            self._iptables.invalidate()
            repaired = self._timed("veth", lambda: veth.ensure_veth(self.effective_config).created)
            repaired = self._converge_all() or repaired
        if repaired:
            log.warning("repaired drift in Liqo-owned kernel state")
        return repaired

    # ---- tunnels ---------------------------------------------------------------------------------

    def ensure_tunnel(self, spec: TunnelSpec) -> tuple[TunnelView, bool]:
        with self._lock:
            self._require_active()
            protection = self.protection()
            protection.check_tunnel(spec)
            self._check_no_overlap(spec)
            old = self._state.tunnels.get(spec.cluster_id)
            before = list(self._state.tunnels.values())
            if old is not None and spec.local_remapped_external_cidr != old.local_remapped_external_cidr:
                # Mappings are addresses of the old external CIDR: re-check them against the new one.
                kept = self._state.nat_maps.get(spec.cluster_id, {})
                natrules.parse_nat_map(spec, {str(o): str(n) for o, n in kept.items()})
            endpoint_ip = resolve_endpoint(spec.endpoint, self._state.endpoints.get(spec.cluster_id))
            protection.check_endpoint(endpoint_ip)
            changed = old != spec or self._state.endpoints.get(spec.cluster_id) != endpoint_ip
            self._state.tunnels[spec.cluster_id] = spec
            self._state.endpoints[spec.cluster_id] = endpoint_ip
            if changed:
                self._state_since[spec.cluster_id] = time.time()
            try:
                kernel_changed = self._converge_all(before)
            finally:
                self._persist()
            view = self._view(spec.cluster_id, self._peer_states())
        self._update_probe_targets()
        self._notify()
        return view, changed or kernel_changed

    def _check_no_overlap(self, spec: TunnelSpec) -> None:
        """Two tunnels routing the same addresses would steal each other's traffic."""
        for other in self._state.tunnels.values():
            if other.cluster_id == spec.cluster_id:
                continue
            for mine in spec.allowed_ips:
                for theirs in other.allowed_ips:
                    if mine.overlaps(theirs):
                        raise SpecError(
                            f"remote CIDR {mine} overlaps {theirs} of tunnel {other.cluster_id!r}"
                        )

    def delete_tunnel(self, cluster_id: str) -> bool:
        check_cluster_id(cluster_id)
        with self._lock:
            self._require_active()
            if cluster_id not in self._state.tunnels:
                return False
            before = list(self._state.tunnels.values())
            del self._state.tunnels[cluster_id]
            self._state.endpoints.pop(cluster_id, None)
            self._state.nat_maps.pop(cluster_id, None)
            self._state_since.pop(cluster_id, None)
            try:
                self._converge_all(before)
            finally:
                self._persist()
        self._update_probe_targets()
        self._notify()
        return True

    def set_nat_mappings(self, cluster_id: str, mappings: Mapping[str, str]) -> tuple[int, bool]:
        check_cluster_id(cluster_id)
        with self._lock:
            spec = self._state.tunnels.get(cluster_id)
            if spec is None:
                self._require_active()
                raise NotReady(f"tunnel for cluster {cluster_id!r} is not ready")
            parsed = natrules.parse_nat_map(spec, mappings)
            self.protection().check_nat_targets(
                parsed.targets(), self._state.tunnels.values(), cluster_id=cluster_id
            )
            self._require_active()
            if self._state.nat_maps.get(cluster_id, {}) == parsed:
                return len(parsed), False
            self._state.nat_maps[cluster_id] = parsed
            try:
                changed = self._converge_iptables()
            finally:
                self._persist()
        self._notify()
        return len(parsed), changed

    def delete_nat_mappings(self, cluster_id: str) -> bool:
        check_cluster_id(cluster_id)
        with self._lock:
            self._require_active()
            if not self._state.nat_maps.get(cluster_id):
                self._state.nat_maps.pop(cluster_id, None)
                return False
            del self._state.nat_maps[cluster_id]
            try:
                self._converge_iptables()
            finally:
                self._persist()
        self._notify()
        return True

    def list_tunnels(self) -> list[TunnelView]:
        with self._lock:
            peers = self._peer_states()
            return [self._view(cid, peers) for cid in sorted(self._state.tunnels)]

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
        for cid in self._state.tunnels:
            self._state_since[cid] = now

    # ---- convergence -----------------------------------------------------------------------------

    def _converge_all(self, before: list[TunnelSpec] | None = None) -> bool:
        """Converges every layer. With `before` (the tunnels the kernel matched until this call),
        routing is updated by difference instead of re-read and re-synced whole."""
        specs = list(self._state.tunnels.values())
        changed = self._timed("routes", lambda: self._converge_routing(before, specs))
        changed = self._converge_iptables() or changed
        return self._sync_peers() or changed

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

    def _converge_iptables(self) -> bool:
        desired = natrules.desired_state(
            self._state.tunnels.values(), self._state.nat_maps, self.effective_config
        )
        return self._timed("iptables", lambda: self._iptables.apply(desired))

    def _sync_peers(self) -> bool:
        """Programs exactly the peers of the desired tunnels when ACTIVE, none otherwise; removes
        stale peers by the key actually programmed. Liqo removed a peer by the key of the new spec, so
        after a remote key rotation the old peer was never removed."""
        desired = self._desired_peers()

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

        return self._timed("wireguard", apply)

    def _desired_peers(self) -> dict[str, PeerConfig]:
        """The peers to program: every tunnel's when ACTIVE, none otherwise."""
        if self._fence.current().role is not Role.ACTIVE:
            return {}
        return {
            spec.public_key: PeerConfig(
                public_key=spec.public_key,
                endpoint_ip=self._state.endpoints[cid],
                endpoint_port=spec.endpoint_port,
                allowed_ips=spec.allowed_ips,
                persistent_keepalive=spec.persistent_keepalive,
            )
            for cid, spec in self._state.tunnels.items()
        }

    def _nudge_loop(self) -> None:
        while not self._stopping.wait(0.25):
            try:
                with self._lock:
                    self._nudge_fresh_peers()
            except Exception as e:  # the next round retries
                log.warning("handshake nudge failed", extra={"error": str(e)})

    def _nudge_fresh_peers(self) -> None:
        """Re-programs new peers that have not handshaken in time: removing and re-adding a peer
        resets WireGuard's handshake state, so the next packet starts a new handshake."""
        now = time.monotonic()
        if not any(now - t0 >= HANDSHAKE_NUDGES[n] for t0, n in self._fresh_peers.values()):
            return
        peers = {p.public_key: p for p in self.device.peers()}
        handshaken = {k for k, p in peers.items() if p.last_handshake}
        desired = self._desired_peers()
        nudge, self._fresh_peers = plan_nudges(
            self._fresh_peers, now, handshaken | (peers.keys() ^ desired.keys())
        )
        for key in nudge:
            self.device.remove_peer(key)
            self.device.set_peer(desired[key])
            log.info("no handshake yet: peer re-programmed", extra={"public_key": key})

    def _timed(self, what: str, fn: Callable[[], bool | object]) -> bool:
        start = time.perf_counter()
        try:
            result = fn()
        except (SpecError, NotActive, NotConfigured, NotReady, Transient):
            raise
        except (OSError, IptablesError, RuntimeError) as e:
            raise Transient(f"{what}: {e}") from e
        finally:
            self._on_apply(what, time.perf_counter() - start)
        return bool(result)

    def _persist(self) -> None:
        """Schedules a write of the desired state.

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
            with self._lock:  # a shallow copy: the values (specs, NAT maps, addresses) are immutable
                st = self._state
                snapshot = dataclasses.replace(
                    st, tunnels=dict(st.tunnels), endpoints=dict(st.endpoints), nat_maps=dict(st.nat_maps)
                )
            text = snapshot.to_json()  # outside the lock: a 10 000-entry map takes ~10 ms
            try:
                state.write_atomic(self.cfg.state_path, text)
            except OSError as e:  # losing the file only costs adoption after a restart
                log.error("cannot persist state", extra={"path": self.cfg.state_path, "error": str(e)})
            if self._stopping.is_set() and not self._dirty.is_set():
                return

    def _update_probe_targets(self) -> None:
        with self._lock:
            targets = {cid: spec.probe_target for cid, spec in self._state.tunnels.items()}
        self._prober.set_targets(targets)

    # ---- views -----------------------------------------------------------------------------------

    def _peer_states(self) -> dict[str, PeerState]:
        try:
            return {p.public_key: p for p in self.device.peers()}
        except (OSError, RuntimeError) as e:
            log.warning("cannot read WireGuard peers", extra={"error": str(e)})
            return {}

    def _view(self, cluster_id: str, peers: Mapping[str, PeerState]) -> TunnelView:
        spec = self._state.tunnels[cluster_id]
        peer = peers.get(spec.public_key)
        probe = self._prober.status(cluster_id)
        if self._fence.current().role is not Role.ACTIVE:
            st = TunnelState.FENCED
        elif probe is None or probe.state is ProbeState.CONNECTING:
            st = TunnelState.CONNECTING
        elif probe.state is ProbeState.CONNECTED:
            st = TunnelState.CONNECTED
        else:
            st = TunnelState.DISCONNECTED
        handshake_age = None
        if peer is not None and peer.last_handshake:
            handshake_age = max(0.0, time.time() - peer.last_handshake)
        return TunnelView(
            spec=spec,
            state=st,
            state_since=self._state_since.get(cluster_id, time.time()),
            endpoint_ip=self._state.endpoints.get(cluster_id),
            latency=probe.latency if probe is not None and st == TunnelState.CONNECTED else None,
            handshake_age=handshake_age,
            rx_bytes=peer.rx_bytes if peer else 0,
            tx_bytes=peer.tx_bytes if peer else 0,
            nat_mapping_count=len(self._state.nat_maps.get(cluster_id, {})),
        )


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
