"""The NatMapping controller: the whole map of a cluster in one SetNatMappings call.

Runs while the netagent is ACTIVE (paused otherwise, full resync on resume). A NatMapping whose
cluster has no tunnel yet (the netagent answers FAILED_PRECONDITION, or no TunnelEndpoint names the
cluster), or that does not fit the netagent's bound (RESOURCE_EXHAUSTED), is retried with backoff and
reported in an Event; TunnelEndpoint changes re-enqueue the
NatMappings of their cluster, so it is applied as soon as the tunnel exists. Invalid entries are
reported and skipped, the valid ones applied. A finalizer makes sure a deletion is never missed:
DeleteNatMappings runs before the object goes.
"""

from __future__ import annotations

import logging
import threading

from services.common.kube import JSON, Backoff, Controller, KubeClient, Manager, RetryableError, object_key
from services.common.kube.finalizers import prologue
from services.common.netagent_client import NetAgentClient, NetAgentError
from services.common.rolegate import RoleGate
from services.common.tunnelspec import SpecError
from services.common.vocabulary import FINALIZER, NAT_MAPPINGS, TUNNEL_ENDPOINTS, cluster_id_of
from services.natmap.mapping import plan_from_natmapping

log = logging.getLogger(__name__)


class NatMappingController:
    def __init__(self, mgr: Manager, netagent: NetAgentClient, *, workers: int = 2,
                 resync_period: float = 300.0, backoff: Backoff | None = None) -> None:
        self.mgr = mgr
        self.kube: KubeClient = mgr.client
        self.netagent = netagent
        self.events = mgr.events
        self.informer = mgr.informer(NAT_MAPPINGS)
        self.teps = mgr.informer(TUNNEL_ENDPOINTS)
        self.controller = mgr.add_controller(
            Controller("natmapping", self.reconcile, metrics=mgr.metrics, workers=workers,
                       resync_period=resync_period, backoff=backoff)
        )
        self.controller.watch(self.informer)
        self.controller.watch(self.teps, self._natmappings_of_tep, primary=False)
        self._programmed: dict[str, str] = {}  # key -> clusterID applied for it
        self._lock = threading.Lock()
        self.role = RoleGate(mgr, self.controller, netagent)

    def _natmappings_of_tep(self, tep: JSON) -> list[str]:
        cid = cluster_id_of(tep)
        return [object_key(o) for o in self.informer.items() if cluster_id_of(o) == cid]

    def _tunnel_declared(self, cid: str) -> bool:
        return any(cluster_id_of(t) == cid and not t["metadata"].get("deletionTimestamp")
                   for t in self.teps.items())

    def reconcile(self, key: str) -> float | None:
        cached = self.informer.get(key)
        if cached is None:
            return None
        obj = prologue(self.kube, NAT_MAPPINGS, cached, FINALIZER, lambda o: self._finalize(key, o))
        if obj is None:
            return None
        try:
            plan = plan_from_natmapping(obj)
        except SpecError as e:
            self.events.warning(obj, "InvalidSpec", f"invalid NatMapping: {e}")
            return None
        if plan.invalid:
            shown = "; ".join(plan.invalid[:10]) + (f" (and {len(plan.invalid) - 10} more)"
                                                    if len(plan.invalid) > 10 else "")
            self.events.warning(obj, "InvalidMappings",
                                f"{len(plan.invalid)} entries skipped, {len(plan.mappings)} applied: {shown}")
        old = self._programmed.get(key)
        if old and old != plan.cluster_id:
            self._delete(obj, old)
        if not self._tunnel_declared(plan.cluster_id):
            self.events.warning(obj, "TunnelNotReady",
                                f"no TunnelEndpoint for cluster {plan.cluster_id} yet; retrying")
            raise RetryableError(f"tunnel for cluster {plan.cluster_id} is not ready")
        try:
            resp = self.netagent.set_nat_mappings(plan.cluster_id, plan.mappings)
        except NetAgentError as e:
            if e.invalid:
                self.events.warning(obj, "Refused", f"the netagent refused the mappings: {e.details}")
                return None
            if e.exhausted:
                # A global bound (--max-nat-entries): another map may shrink; retried with backoff.
                self.events.warning(obj, "ResourceExhausted",
                                    f"the netagent has no room for the mappings: {e.details}; retrying")
                raise RetryableError(str(e)) from None
            if e.precondition:
                # The controller runs only while the netagent is ACTIVE (a lost role pauses it at
                # once), so what the netagent is missing here is, in practice, the cluster's tunnel.
                self.events.warning(obj, "TunnelNotReady",
                                    f"tunnel for cluster {plan.cluster_id} is not ready: {e.details}")
            raise RetryableError(str(e)) from None
        with self._lock:
            self._programmed[key] = plan.cluster_id
        if resp.changed:
            self.events.normal(obj, "MappingsApplied",
                               f"{resp.count} NAT mappings applied for cluster {plan.cluster_id}")
        return None

    def _delete(self, obj: JSON, cid: str) -> None:
        try:
            self.netagent.delete_nat_mappings(cid)
        except NetAgentError as e:
            if not e.invalid:
                raise RetryableError(str(e)) from None

    def _finalize(self, key: str, obj: JSON) -> None:
        """Removes the NAT mappings of a NatMapping being deleted (before its finalizer goes)."""
        cids = {c for c in (cluster_id_of(obj), self._programmed.get(key)) if c}
        others = [o for o in self.informer.items()
                  if object_key(o) != key and not o["metadata"].get("deletionTimestamp")]
        for cid in cids:
            sharing = [object_key(o) for o in others if cluster_id_of(o) == cid]
            if sharing:
                # Another NatMapping describes this cluster: re-apply it instead of deleting.
                for k in sharing:
                    self.controller.enqueue(k)
                continue
            self._delete(obj, cid)
        with self._lock:
            self._programmed.pop(key, None)
        log.info("NAT mappings removed", extra={"key": key, "clusters": sorted(cids)})
