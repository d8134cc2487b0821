"""The TunnelEndpoint controller: CRs in, netagent calls out, status back.

- reconcile(key): finalizer, validation (invalid -> status Error + Warning Event, no netagent call),
  EnsureTunnel with the TunnelEndpoint's "namespace/name" as owner, DeleteTunnel on deletion; DNS
  endpoints are re-ensured every `dns_refresh` seconds (the netagent re-resolves on each
  EnsureTunnel, keeping the current address while still valid).
- Ownership: a cluster id (and its public key) belongs to the TunnelEndpoint that first claimed it.
  The controller first decides from the records the gateway keeps in the status subresource
  (services.tunnel.ownership), so that a netagent without the claims (failover, new pod, lost
  state) is never asked by a later claimant first; the netagent's own first-claim check stays the
  second line. Either refusal becomes status Error naming the owner and a Warning Event, and is not
  retried until that owner goes away (its finalizer re-enqueues the others naming the cluster or
  the owner) or the periodic resync. RESOURCE_EXHAUSTED (--max-tunnels) is retried with backoff
  and an Event.
- Runs only while the netagent's role is ACTIVE: the controller is paused at once when the role
  stream says otherwise (or is lost), and resumed with a full resync, which also deletes netagent
  tunnels whose owner TunnelEndpoint is gone.
- Status comes from the netagent's WatchTunnelStatus stream (the probe, with hysteresis there) and
  is merge-patched only when it changed; latency at most every `latency_interval` seconds. The
  stream and EnsureTunnel's reply both carry a tunnel's status: the newer (by `state_since`) wins
  and a cluster's writes are serialized, so a reconcile never overwrites a Connected the stream
  delivered during its EnsureTunnel with that call's older Connecting (it stayed until the next
  stream update, `status_min_interval` later).
- The device keeper makes sure the netagent's device holds the shared key pair (also after a
  netagent restart): every `device_check_interval`, and at once when the netagent's WatchRole
  stream says the device has no key (it re-created a device after wireguard-go restarted and has
  no key in memory, e.g. having restarted itself since).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import KeyPair, KeySecretError
from services.common.kube import (
    JSON,
    Backoff,
    Controller,
    KubeClient,
    KubeError,
    Manager,
    RetryableError,
    object_key,
    patch_status,
)
from services.common.kube.finalizers import prologue
from services.common.netagent_client import NetAgentClient, NetAgentError, follow_stream
from services.common.rolegate import RoleGate
from services.common.tunnelspec import SpecError
from services.common.vocabulary import FINALIZER, KEY_SECRET, TUNNEL_ENDPOINTS, cluster_id_of
from services.tunnel import status as st
from services.tunnel.connecttimer import ConnectTimer
from services.tunnel.keysecret import ensure_key_secret
from services.tunnel.mapping import is_dns_endpoint, tunnel_from_endpoint
from services.tunnel.metrics import TunnelMetrics
from services.tunnel.ownership import Verdict, claim_of, held_back, owned_message, owner_named, record_to_keep

log = logging.getLogger(__name__)
# The owner the orphan collector names when deleting a tunnel adopted without one (any owner may).
ORPHAN_OWNER = "liqo/orphan-collector"


@dataclass(frozen=True)
class TunnelOptions:
    pod_namespace: str
    pod_ip: str
    secret_name: str = KEY_SECRET
    listen_port: int = 0
    mtu: int = 0
    dns_refresh: float = 60.0
    latency_interval: float = 30.0
    status_min_interval: float = 5.0
    persistent_keepalive: int = 0
    device_check_interval: float = 10.0


class TunnelController:
    def __init__(self, mgr: Manager, netagent: NetAgentClient, opts: TunnelOptions, *, workers: int = 4,
                 resync_period: float = 300.0, backoff: Backoff | None = None) -> None:
        self.mgr = mgr
        self.kube: KubeClient = mgr.client
        self.netagent = netagent
        self.opts = opts
        self.events = mgr.events
        self.informer = mgr.informer(TUNNEL_ENDPOINTS)
        self.metrics = TunnelMetrics(mgr.metrics.registry)
        self.connect_timer = ConnectTimer()
        # Before the controller's own handler: a generation's start is known before it is reconciled.
        self.informer.add_handler(self._time_generation)
        self.controller = mgr.add_controller(
            Controller("tunnelendpoint", self.reconcile, metrics=mgr.metrics, workers=workers,
                       resync_period=resync_period, backoff=backoff)
        )
        self.controller.watch(self.informer)
        self.keys: KeyPair | None = None
        self.device_ready = threading.Event()
        self._programmed: dict[str, str] = {}  # key -> clusterID we ensured for it
        # Keys whose current spec was refused (status Error): the tunnel of their previous valid
        # spec may still run, and its status stream must not overwrite that Error (the two writers
        # would flip the status on every stream update).
        self._refused: set[str] = set()
        self._lock = threading.Lock()
        self._last_status: dict[str, pb.TunnelStatus] = {}  # clusterID -> newest (stream or reply)
        self._status_locks: dict[str, threading.Lock] = {}  # clusterID -> serializes its status writes
        self._gc_wanted = threading.Event()
        # Runs while ACTIVE and the device holds the shared key; a resume also collects orphans.
        # Set to run the device keeper now: the netagent reported a device without its key.
        self._device_wake = threading.Event()
        self.role = RoleGate(mgr, self.controller, netagent, ready=self.device_ready.is_set,
                             on_resume=self._on_resume, on_message=self.on_role_message)
        mgr.add_runnable("device-keeper", self._device_keeper)
        mgr.add_runnable("tunnel-status", self._status_stream)
        mgr.add_runnable("orphan-gc", self._orphan_gc_loop)

    def _on_resume(self) -> None:
        self.connect_timer.drop_pending()
        self._gc_wanted.set()

    def _time_generation(self, etype: str, obj: JSON, _old: JSON | None) -> None:
        key = object_key(obj)
        if etype == "DELETED":
            self.connect_timer.forget(key)
            return
        md = obj.get("metadata") or {}
        timing = self.informer.has_synced and self.role.active
        self.connect_timer.seen(key, str(md.get("uid") or ""), int(md.get("generation") or 0),
                                time.monotonic(), timing=timing)

    # --- device keys -----------------------------------------------------------------------------

    def on_role_message(self, m: pb.WatchRoleResponse) -> None:
        """From the WatchRole stream: a device without its key is configured at once."""
        if not m.device_configured:
            log.info("netagent device has no key: configuring it now",
                     extra={"device_generation": m.device_generation})
            self._device_wake.set()

    def _device_keeper(self, stop: threading.Event) -> None:
        """Loads (or creates) the key Secret, then keeps the netagent's device configured with it.
        The Secret is re-read every round, so a rotated key pair reaches the device without a restart
        (an unusable Secret keeps the last good key in place and is reported). A round runs every
        `device_check_interval`, after a failure's backoff, and at once when woken."""
        backoff = Backoff(base=0.5, cap=30.0)
        failures = 0
        def wake_on_stop() -> None:
            stop.wait()
            self._device_wake.set()

        threading.Thread(target=wake_on_stop, name="device-keeper-stop", daemon=True).start()

        def wait(seconds: float) -> None:
            self._device_wake.wait(seconds)
            self._device_wake.clear()

        while not stop.is_set():
            try:
                self.keys = ensure_key_secret(self.kube, self.opts.pod_namespace, self.opts.secret_name)
                info = self.netagent.get_info(retry_deadline=0)
                if not info.device_configured or info.public_key != self.keys.public_key:
                    resp = self.netagent.configure_device(
                        self.keys.private_key, listen_port=self.opts.listen_port, mtu=self.opts.mtu
                    )
                    log.info("netagent device configured", extra={"public_key": resp.public_key,
                                                                 "listen_port": resp.listen_port})
                if not self.device_ready.is_set():
                    self.device_ready.set()
                    self.role.refresh()
                failures = 0
                wait(self.opts.device_check_interval)
            except (KubeError, NetAgentError, KeySecretError) as e:
                delay = backoff.delay(failures)
                failures += 1
                log.warning("device setup failed, retrying",
                            extra={"error": str(e), "retry_in": round(delay, 2)})
                wait(delay)

    # --- reconcile -------------------------------------------------------------------------------

    def reconcile(self, key: str) -> float | None:
        cached = self.informer.get(key)
        if cached is None:
            # Deleted without our finalizer (e.g. forced): the orphan GC removes its tunnel.
            self._gc_wanted.set()
            return None
        obj = prologue(self.kube, TUNNEL_ENDPOINTS, cached, FINALIZER, lambda o: self._finalize(key, o))
        if obj is None:
            return None
        try:
            tunnel = tunnel_from_endpoint(obj, persistent_keepalive=self.opts.persistent_keepalive)
        except SpecError as e:
            self._fail(obj, "InvalidSpec", f"invalid TunnelEndpoint: {e}")
            return None
        old_cid = self._programmed.get(key)
        if old_cid and old_cid != tunnel.cluster_id:
            self._call(obj, lambda: self.netagent.delete_tunnel(old_cid, key))
        verdict = self._held_back(obj)
        if verdict is not None:
            self._fail(obj, "ClusterOwned", verdict.message(tunnel.cluster_id))
            return None
        try:
            resp = self.netagent.ensure_tunnel(tunnel, key)
        except NetAgentError as e:
            if e.invalid:
                self._fail(obj, "Refused", f"the netagent refused the tunnel: {e.details}")
                return None
            if e.not_owner:
                # Another TunnelEndpoint owns the cluster (or the key): never retried in a loop; the
                # owner's finalizer re-enqueues this one when it goes.
                self._fail(obj, "ClusterOwned", owned_message(tunnel.cluster_id, e.owner or "?", e.details))
                return None
            if e.exhausted:
                self.events.warning(obj, "ResourceExhausted", f"the netagent has no room: {e.details}")
            elif e.unavailable:
                self.events.warning(obj, "Processing", f"tunnel not configured yet: {e.details}")
            raise RetryableError(str(e)) from None
        with self._lock:
            self._programmed[key] = tunnel.cluster_id
            self._keep_newer(resp.status)
            self._refused.discard(key)
        md = obj["metadata"]
        self.connect_timer.ensured(key, str(md.get("uid") or ""), int(md.get("generation") or 0))
        # The status first: it is what a user waits for; the Event can follow.
        self._write_newest(tunnel.cluster_id, obj)
        if resp.changed:
            self.events.normal(
                obj, "TunnelConfigured",
                f"tunnel to {tunnel.cluster_name or tunnel.cluster_id} configured "
                f"(endpoint {tunnel.endpoint}:{tunnel.endpoint_port})",
            )
        return self.opts.dns_refresh if is_dns_endpoint(tunnel.endpoint) else None

    def _finalize(self, key: str, obj: JSON) -> None:
        """Deletes the tunnel(s) of a TunnelEndpoint being deleted (before its finalizer goes)."""
        cids = {c for c in (cluster_id_of(obj), self._programmed.get(key)) if c}
        for cid in cids:
            try:
                self.netagent.delete_tunnel(cid, key)
            except NetAgentError as e:
                if e.not_owner:
                    continue  # another TunnelEndpoint owns this cluster's tunnel: not ours to delete
                if not e.invalid:
                    raise RetryableError(str(e)) from None
                self.events.warning(obj, "Processing", str(e))
        with self._lock:
            self._programmed.pop(key, None)
            self._refused.discard(key)
            for cid in cids:
                self._last_status.pop(cid, None)
                self._status_locks.pop(cid, None)
        log.info("tunnel removed", extra={"key": key, "clusters": sorted(cids)})
        # A TunnelEndpoint refused as a duplicate of this one can now take the cluster (or key) over.
        for other in self.informer.items():
            if object_key(other) == key:
                continue
            if cluster_id_of(other) in cids or owner_named(other.get("status")) == key:
                omd = other["metadata"]
                self.controller.enqueue(f"{omd.get('namespace')}/{omd['name']}")

    def _call(self, obj: JSON, fn: Any) -> Any:
        try:
            return fn()
        except NetAgentError as e:
            if not e.invalid:
                raise RetryableError(str(e)) from None
            self.events.warning(obj, "Processing", str(e))
            return None

    def _held_back(self, obj: JSON) -> Verdict | None:
        """Whether another live TunnelEndpoint owns this one's cluster id or key by the gateway's
        records (informer cache; `obj` itself as the caller read it)."""
        me = claim_of(obj)
        if me is None:
            return None
        return held_back(me, (c for o in self.informer.items() if (c := claim_of(o)) is not None))

    def _fail(self, obj: JSON, reason: str, message: str) -> None:
        with self._lock:
            self._refused.add(object_key(obj))
        self.events.warning(obj, reason, message)
        # An owner's own failure keeps its holder record while the spec still names that cluster
        # (its last valid tunnel runs on); a refusal naming another owner never does.
        keep = None if reason == "ClusterOwned" else record_to_keep(obj.get("status"), cluster_id_of(obj))
        self._patch(obj, st.error_status(message, self.opts.pod_ip, keep))

    def _patch(self, obj: JSON, desired: JSON) -> None:
        if not self.role.active:
            return  # only the active gateway writes status
        try:
            patch_status(self.kube, TUNNEL_ENDPOINTS, obj, desired)
        except KubeError as e:
            if not e.not_found:
                raise RetryableError(f"writing status: {e}") from None

    # --- status from the netagent ----------------------------------------------------------------

    def _keep_newer(self, ts: pb.TunnelStatus) -> None:
        """Under _lock: keeps `ts` as its cluster's status unless the one kept is newer (a state
        entered later); an equal age is a fresher reading of the same state (counters)."""
        have = self._last_status.get(ts.cluster_id)
        if have is None or ts.state_since.ToNanoseconds() >= have.state_since.ToNanoseconds():
            self._last_status[ts.cluster_id] = ts

    def _write_newest(self, cid: str, obj: JSON) -> None:
        """Writes the newest status kept for `cid`; one writer per cluster at a time, so an older
        status is never written after a newer one."""
        with self._lock:
            lock = self._status_locks.setdefault(cid, threading.Lock())
        with lock:
            with self._lock:
                ts = self._last_status.get(cid)
            if ts is not None:
                self._write_status(obj, ts)

    def _write_status(self, obj: JSON, ts: pb.TunnelStatus) -> None:
        current = obj.get("status") or {}
        desired = st.desired_status(ts, current, gateway_ip=self.opts.pod_ip, now=datetime.now(UTC),
                                    latency_interval=self.opts.latency_interval)
        if desired is None:
            return
        before = (current.get("connection") or {}).get("status")
        self._patch(obj, desired)
        after = desired["connection"]["status"]
        if after == st.CONNECTED and self.role.active:
            timed = self.connect_timer.connected(object_key(obj), time.monotonic())
            if timed is not None:
                self.metrics.apply_to_connected.labels(timed[0]).observe(timed[1])
        if before and before != after:
            if after == st.ERROR:
                self.events.warning(obj, "Disconnected", desired["connection"]["statusMessage"])
            else:
                self.events.normal(obj, after, desired["connection"]["statusMessage"])

    def _key_for_cluster(self, cid: str, owner: str = "") -> str | None:
        if owner:  # the netagent says whose tunnel it is
            return owner
        with self._lock:
            for key, c in self._programmed.items():
                if c == cid:
                    return key
        for other in self.informer.items():
            if cluster_id_of(other) == cid and not other["metadata"].get("deletionTimestamp"):
                md = other["metadata"]
                return f"{md.get('namespace')}/{md['name']}"
        return None

    def on_tunnel_status(self, msg: pb.WatchTunnelStatusResponse) -> None:
        cid = msg.status.cluster_id
        if msg.deleted:
            with self._lock:
                self._last_status.pop(cid, None)
            return
        with self._lock:
            self._keep_newer(msg.status)
        if not self.role.active:
            return
        key = self._key_for_cluster(cid, msg.status.owner)
        with self._lock:
            if key in self._refused:
                return
        obj = self.informer.get(key) if key else None
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return
        try:
            self._write_newest(cid, obj)
        except RetryableError as e:
            # The next stream update or reconcile writes it again.
            log.warning("status write failed", extra={"key": key, "error": str(e)})

    def _status_stream(self, stop: threading.Event) -> None:
        follow_stream(
            "WatchTunnelStatus",
            lambda: self.netagent.watch_tunnel_status(min_interval=self.opts.status_min_interval),
            self.on_tunnel_status,
            stop,
        )

    # --- orphans ---------------------------------------------------------------------------------

    def _orphan_gc_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            deadline = time.monotonic() + self.controller.resync_period
            # In slices, so that a shutdown is seen at once (the request event never fires then).
            while not stop.is_set() and time.monotonic() < deadline and not self._gc_wanted.wait(0.5):
                pass
            if stop.is_set():
                return
            self._gc_wanted.clear()
            if not self.role.active or not self.informer.has_synced:
                continue
            try:
                removed = self.collect_orphans()
                if removed:
                    log.info("removed netagent tunnels no TunnelEndpoint claims", extra={"clusters": removed})
            except NetAgentError as e:
                log.warning("orphan collection failed", extra={"error": str(e)})
                self._gc_wanted.set()
                stop.wait(2.0)

    def collect_orphans(self) -> list[str]:
        """Deletes the netagent's tunnels whose owner TunnelEndpoint no longer exists (or no longer
        names the cluster). A tunnel without an owner (adopted from an old state) goes when no
        TunnelEndpoint names its cluster. Another tenant's TunnelEndpoint naming the cluster never
        keeps, nor removes, a tunnel it does not own."""
        removed = []
        for entry in self.netagent.list_tunnels():
            cid, owner = entry.tunnel.cluster_id, entry.owner
            with self._lock:
                programmed = dict(self._programmed)
            if owner:
                tep = self.informer.get(owner)  # fresh for each decision
                if tep is not None and (cluster_id_of(tep) == cid or programmed.get(owner) == cid):
                    continue
            else:
                claimed = {cluster_id_of(o) for o in self.informer.items()} | set(programmed.values())
                if cid in claimed:
                    continue
            try:
                self.netagent.delete_tunnel(cid, owner or ORPHAN_OWNER)
            except NetAgentError as e:
                if e.not_owner:  # claimed meanwhile by someone else
                    continue
                raise
            removed.append(cid)
        return removed
