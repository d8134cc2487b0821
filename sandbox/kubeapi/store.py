"""The object store: one lock, a global resourceVersion, a bounded event log and watcher fan-out.

Stored objects are never mutated after they are committed: every write builds a new dict, so
readers may serialise what they got outside the lock, and events share objects with the store.
Watchers receive events through bounded per-watcher queues filled under the lock with
``put_nowait``: a slow watcher never blocks a writer, it is closed when its queue overflows.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.kubeapi import crd as crdlib
from sandbox.kubeapi import errors, strategy
from sandbox.kubeapi.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from sandbox.kubeapi.resources import Registry, ResourceType
from sandbox.kubeapi.schema import Cause
from sandbox.kubeapi.selectors import FieldSelector, LabelSelector, lookup

Obj = dict[str, Any]
CRD_KEY = "apiextensions.k8s.io/customresourcedefinitions"
NS_KEY = "/namespaces"
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

PATCH_MERGE = "application/merge-patch+json"
PATCH_JSON = "application/json-patch+json"
PATCH_STRATEGIC = "application/strategic-merge-patch+json"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Event:
    """One committed change. ``old`` is the previous state (for selector transitions)."""

    rv: int
    key: str
    namespace: str
    type: str
    obj: Obj
    old: Obj | None = None
    _raw: bytes | None = field(default=None, repr=False)

    def raw(self) -> bytes:
        """The object's JSON, encoded once and shared by every watcher."""
        if self._raw is None:
            self._raw = json.dumps(self.obj, separators=(",", ":")).encode()
        return self._raw


# A queued watch item: (event type, event); None tells the streaming side to stop.
WatchItem = tuple[str, Event] | None


class Watcher:
    """One watch request's subscription. Filled by the store, drained by the HTTP thread."""

    def __init__(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        queue_size: int,
    ) -> None:
        self.rt = rt
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.queue: queue.Queue[WatchItem] = queue.Queue(maxsize=queue_size)
        self.initial: list[tuple[str, Event]] = []
        self.closed = threading.Event()
        self.abort = False  # True: the connection is cut rather than the stream ended cleanly
        self.overflowed = False

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        return self.labels.matches(obj.get("metadata", {}).get("labels")) and self.fields.matches(
            lambda f: lookup(obj, f)
        )

    def translate(self, ev: Event) -> str | None:
        """The event type this watcher sees, if any: objects leaving the selector arrive as DELETED."""
        if self.namespace is not None and ev.namespace != self.namespace:
            return None
        if ev.type == "ADDED":
            return "ADDED" if self.matches(ev.obj) else None
        if ev.type == "DELETED":
            return "DELETED" if self.matches(ev.obj) else None
        now, before = self.matches(ev.obj), self.matches(ev.old)
        if now and before:
            return "MODIFIED"
        if now:
            return "ADDED"
        if before:
            return "DELETED"
        return None

    def offer(self, ev: Event) -> bool:
        """Queue ``ev`` if it concerns this watcher; False when the queue overflowed (watcher is closed)."""
        kind = self.translate(ev)
        if kind is None:
            return True
        try:
            self.queue.put_nowait((kind, ev))
            return True
        except queue.Full:
            self.overflowed = True
            self.close(abort=False)
            return False

    def close(self, *, abort: bool) -> None:
        self.abort = self.abort or abort
        self.closed.set()
        # If the queue is full the streaming side still sees `closed` after its next item.
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)


class Store:
    def __init__(
        self,
        *,
        event_log_size: int = 10_000,
        watch_queue_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = Registry()
        self.lock = threading.RLock()
        self.event_log_size = event_log_size
        self.watch_queue_size = watch_queue_size
        self._clock = clock
        self._rv = 0
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self._uids: dict[str, tuple[str, str, str]] = {}
        self._log: deque[Event] = deque()
        self._floor = 0  # every event with rv > floor is still in the log
        self._watchers: dict[str, set[Watcher]] = {}
        ns_rt = self.registry.by_key(NS_KEY)
        assert ns_rt is not None
        for ns in DEFAULT_NAMESPACES:
            self.create(ns_rt, "v1", None, {"metadata": {"name": ns}})

    # --- reads --------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        with self.lock:
            obj = self._bucket(rt).get((namespace or "", name))
        if obj is None:
            raise errors.not_found(rt.group, rt.plural, name)
        return obj

    def list_objects(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        limit: int = 0,
        token: str = "",
    ) -> tuple[list[Obj], int, str, int]:
        """Matching objects sorted by namespace/name: (items, resourceVersion, continue, remaining)."""
        start: tuple[str, str] | None = None
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                start, list_rv = (decoded["ns"], decoded["name"]), int(decoded["rv"])
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                raise errors.bad_request(f"continue key is not valid: {exc}") from None
        with self.lock:
            rv = self._rv
            items = sorted(self._bucket(rt).items())
        if token:
            rv = list_rv
        probe = Watcher(rt, namespace, labels, fields, 1)
        selected = [
            o
            for k, o in items
            if (namespace is None or k[0] == namespace) and (start is None or k > start) and probe.matches(o)
        ]
        if limit and len(selected) > limit:
            last = selected[limit - 1]["metadata"]
            nxt = base64.urlsafe_b64encode(
                json.dumps({"rv": rv, "ns": last.get("namespace", ""), "name": last["name"]}).encode()
            ).decode()
            return selected[:limit], rv, nxt, len(selected) - limit
        return selected, rv, "", 0

    def namespaces_of(self, key: str) -> set[str]:
        with self.lock:
            return {ns for ns, _ in self._objects.get(key, {})}

    # --- writes -------------------------------------------------------------------------------

    def create(
        self,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        body: Obj,
        *,
        dry_run: bool = False,
        strict: bool = False,
        warnings: list[str] | None = None,
    ) -> Obj:
        obj = self._check_body(rt, version, namespace, body)
        meta = obj.setdefault("metadata", {})
        with self.lock:
            if rt.namespaced:
                self._check_namespace_open(namespace or "")
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = self._generate_name(rt, namespace or "", str(meta["generateName"]))
            obj = strategy.prepare_create(rt, obj)
            obj = self._admit(rt, version, obj, strict, warnings)
            obj = strategy.finish_secret(rt, obj)
            name = obj["metadata"].get("name", "")
            if (namespace or "", name) in self._bucket(rt):
                raise errors.already_exists(rt.group, rt.plural, name)
            meta = obj["metadata"]
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = rfc3339(self._clock())
            meta["generation"] = 1
            if rt.key == CRD_KEY:
                obj["status"] = crdlib.established_status(obj, meta["creationTimestamp"])
            if dry_run:
                return obj
            return self._commit(rt, "ADDED", obj, None)

    def update(
        self,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        name: str,
        body: Obj,
        *,
        subresource: str = "",
        dry_run: bool = False,
        strict: bool = False,
        warnings: list[str] | None = None,
    ) -> Obj:
        new = self._check_body(rt, version, namespace, body)
        if new.get("metadata", {}).get("name") not in (None, name):
            raise errors.bad_request("the name of the object does not match the name on the URL")
        with self.lock:
            old = self.get(rt, namespace, name)
            return self._update(rt, version, old, new, subresource, dry_run, strict, warnings)

    def patch(
        self,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        name: str,
        content_type: str,
        body: Any,
        *,
        subresource: str = "",
        dry_run: bool = False,
        strict: bool = False,
        warnings: list[str] | None = None,
    ) -> Obj:
        with self.lock:
            old = self.get(rt, namespace, name)
            current = self._versioned(rt, version, old)
            try:
                if content_type == PATCH_MERGE:
                    if not isinstance(body, dict):
                        raise PatchError("a merge patch must be a JSON object")
                    new = merge_patch(current, body)
                elif content_type == PATCH_JSON:
                    new = json_patch(current, body)
                elif content_type == PATCH_STRATEGIC:
                    if rt.custom:
                        raise errors.unsupported_media_type(content_type)
                    new = strategic_merge_patch(current, body)
                else:
                    raise errors.unsupported_media_type(content_type)
            except PatchError as exc:
                if exc.invalid:
                    raise errors.APIError(422, "Invalid", str(exc)) from None
                raise errors.bad_request(str(exc)) from None
            if not isinstance(new, dict):
                raise errors.bad_request("the patch did not produce an object")
            meta = new.get("metadata") or {}
            if meta.get("name", name) != name or meta.get("namespace", namespace or "") != (namespace or ""):
                raise errors.bad_request("the patch changes metadata.name or metadata.namespace")
            return self._update(rt, version, old, new, subresource, dry_run, strict, warnings)

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        options: Obj | None = None,
        *,
        dry_run: bool = False,
    ) -> Obj:
        options = options or {}
        with self.lock:
            old = self.get(rt, namespace, name)
            pre = options.get("preconditions") or {}
            meta = old["metadata"]
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise errors.conflict(
                    rt.group,
                    rt.plural,
                    name,
                    f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                    f"meta: {meta['uid']}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise errors.conflict(
                    rt.group,
                    rt.plural,
                    name,
                    f"Precondition failed: ResourceVersion in precondition: "
                    f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                    f"{meta['resourceVersion']}",
                )
            if dry_run:
                return old
            orphan = options.get("propagationPolicy") == "Orphan" or options.get("orphanDependents") is True
            return self._delete(rt, old, orphan=orphan)

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        *,
        dry_run: bool = False,
    ) -> list[Obj]:
        with self.lock:
            items, _, _, _ = self.list_objects(rt, namespace, labels, fields)
            if dry_run:
                return items
            return [self._delete(rt, o, orphan=False) for o in items]

    # --- watch --------------------------------------------------------------------------------

    def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        resource_version: str | None,
        *,
        send_initial: bool = False,
    ) -> Watcher:
        """Subscribe; raises APIError 410 when ``resource_version`` is older than the event log."""
        w = Watcher(rt, namespace, labels, fields, self.watch_queue_size)
        with self.lock:
            if not resource_version or resource_version == "0" or send_initial:
                for key, obj in sorted(self._bucket(rt).items()):
                    if (namespace is None or key[0] == namespace) and w.matches(obj):
                        w.initial.append(("ADDED", Event(0, rt.key, key[0], "ADDED", obj)))
            else:
                try:
                    since = int(resource_version)
                except ValueError:
                    raise errors.bad_request(f"invalid resource version {resource_version!r}") from None
                if since < self._floor:
                    raise errors.gone(f"too old resource version: {since} ({self._floor + 1})")
                for ev in self._log:
                    if ev.rv > since and ev.key == rt.key:
                        kind = w.translate(ev)
                        if kind is not None:
                            w.initial.append((kind, ev))
            self._watchers.setdefault(rt.key, set()).add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        with self.lock:
            self._watchers.get(w.rt.key, set()).discard(w)

    def bookmark_rv(self, w: Watcher) -> int | None:
        """A resourceVersion up to which ``w`` has been sent everything, or None if events are pending."""
        with self.lock:
            return self._rv if w.queue.empty() and not w.closed.is_set() else None

    def close_watches(self, *, abort: bool = False, key: str | None = None) -> int:
        with self.lock:
            closed = 0
            for k, ws in list(self._watchers.items()):
                if key is not None and k != key:
                    continue
                for w in list(ws):
                    w.close(abort=abort)
                    closed += 1
                ws.clear()
            return closed

    def watcher_count(self) -> int:
        with self.lock:
            return sum(len(ws) for ws in self._watchers.values())

    def compact(self) -> int:
        """Forget the event log: any watch from an older resourceVersion now gets 410 Gone."""
        with self.lock:
            self._log.clear()
            self._floor = self._rv
            return self._rv

    # --- internals ----------------------------------------------------------------------------

    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], Obj]:
        return self._objects.setdefault(rt.key, {})

    def _versioned(self, rt: ResourceType, version: str, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"] = rt.api_version(version)
        return out

    def _check_body(self, rt: ResourceType, version: str, namespace: str | None, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        obj = copy.deepcopy(body)
        expected = rt.api_version(version)
        if obj.get("apiVersion", expected) != expected:
            raise errors.bad_request(
                f"the API version in the data ({obj['apiVersion']}) does not match the "
                f"expected API version ({expected})"
            )
        if obj.get("kind", rt.kind) != rt.kind:
            raise errors.bad_request(
                f"the kind in the data ({obj['kind']}) does not match the expected kind ({rt.kind})"
            )
        obj["apiVersion"] = rt.api_version()  # stored at the storage version
        obj["kind"] = rt.kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if rt.namespaced:
            if meta.get("namespace", namespace) != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return obj

    def _check_namespace_open(self, namespace: str) -> None:
        ns = self._objects.get(NS_KEY, {}).get(("", namespace))
        if ns is None:
            raise errors.not_found("", "namespaces", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(
                f"unable to create new content in namespace {namespace} because it is being terminated"
            )

    def _generate_name(self, rt: ResourceType, namespace: str, prefix: str) -> str:
        bucket = self._bucket(rt)
        for _ in range(100):
            name = prefix + "".join(random.choice(_GENERATE_ALPHABET) for _ in range(5))
            if (namespace, name) not in bucket:
                return name
        raise errors.APIError(500, "InternalError", "could not generate a unique name")

    def _admit(
        self, rt: ResourceType, version: str, obj: Obj, strict: bool, warnings: list[str] | None
    ) -> Obj:
        causes: list[Cause] = []
        if rt.custom:
            obj, schema_causes, dropped = strategy.admit_custom(rt, version, obj)
            if dropped and strict:
                raise errors.bad_request(
                    "strict decoding error: " + ", ".join(f'unknown field "{d}"' for d in dropped)
                )
            if warnings is not None:
                warnings.extend(f'unknown field "{d}"' for d in dropped)
            causes += schema_causes
        causes = strategy.validate_metadata(rt, obj) + strategy.validate_kind(rt, obj) + causes
        if causes:
            raise errors.invalid(rt.group, rt.kind, obj.get("metadata", {}).get("name", ""), causes)
        return obj

    def _update(
        self,
        rt: ResourceType,
        version: str,
        old: Obj,
        new: Obj,
        subresource: str,
        dry_run: bool,
        strict: bool,
        warnings: list[str] | None,
    ) -> Obj:
        name = old["metadata"]["name"]
        wanted = (new.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rt.group, rt.plural, name)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        candidate = strategy.prepare_update(rt, old, new, subresource)
        if rt.key == CRD_KEY and subresource != "status":
            self._check_crd_immutable(old, candidate)
        candidate = self._admit(rt, version, candidate, strict, warnings)
        candidate = strategy.finish_secret(rt, candidate)
        meta = candidate["metadata"]
        if old["metadata"].get("deletionTimestamp"):
            added = set(meta.get("finalizers") or ()) - set(old["metadata"].get("finalizers") or ())
            if added:
                raise errors.invalid(
                    rt.group,
                    rt.kind,
                    name,
                    [
                        Cause(
                            "metadata.finalizers",
                            "FieldValueForbidden",
                            "Forbidden: no new finalizers can be added if the object is being deleted, "
                            f"found new finalizers {sorted(added)}",
                        )
                    ],
                )
        if strategy.spec_changed(rt, old, candidate):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if rt.key == CRD_KEY and subresource != "status":
            candidate["status"] = crdlib.established_status(candidate, old["metadata"]["creationTimestamp"])
        if candidate == old:
            return old  # a no-op write changes nothing, not even the resourceVersion
        if dry_run:
            return candidate
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(rt, candidate, old, orphan=False)
        return self._commit(rt, "MODIFIED", candidate, old)

    def _check_crd_immutable(self, old: Obj, new: Obj) -> None:
        for path in ("spec.group", "spec.names.plural", "spec.scope"):
            if lookup(old, path) != lookup(new, path):
                raise errors.invalid(
                    "apiextensions.k8s.io",
                    "CustomResourceDefinition",
                    old["metadata"]["name"],
                    [Cause(path, "FieldValueInvalid", "Invalid value: field is immutable")],
                )

    def _delete(self, rt: ResourceType, old: Obj, *, orphan: bool) -> Obj:
        meta = old["metadata"]
        if rt.key == NS_KEY:
            return self._delete_namespace(rt, old)
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return old
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = rfc3339(self._clock())
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
            return self._commit(rt, "MODIFIED", new, old)
        if rt.key == CRD_KEY:
            self._drop_custom_resources(old)
        return self._remove(rt, old, old, orphan=orphan)

    def _delete_namespace(self, rt: ResourceType, old: Obj) -> Obj:
        name = old["metadata"]["name"]
        current = old
        if not old["metadata"].get("deletionTimestamp"):
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = rfc3339(self._clock())
            new["status"] = {"phase": "Terminating"}
            current = self._commit(rt, "MODIFIED", new, old)
        for key in list(self._objects):
            other = self.registry.by_key(key)
            if other is None or not other.namespaced:
                continue
            for (ns, _), obj in list(self._objects[key].items()):
                if ns == name:
                    self._delete(other, obj, orphan=False)
        return self._finalize_namespace(name) or current

    def _finalize_namespace(self, name: str) -> Obj | None:
        ns = self._objects.get(NS_KEY, {}).get(("", name))
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return None
        if any(nsn == name for bucket in self._objects.values() for (nsn, _) in bucket):
            return None
        rt = self.registry.by_key(NS_KEY)
        assert rt is not None
        return self._remove(rt, ns, ns, orphan=False)

    def _drop_custom_resources(self, crd: Obj) -> None:
        spec = crd["spec"]
        key = f"{spec['group']}/{spec['names']['plural']}"
        rt = self.registry.by_key(key)
        if rt is None:
            return
        for obj in list(self._objects.get(key, {}).values()):
            self._remove(rt, obj, obj, orphan=False)
        self.close_watches(key=key)
        self._objects.pop(key, None)
        self.registry.remove(key)

    def _remove(self, rt: ResourceType, final: Obj, old: Obj, *, orphan: bool) -> Obj:
        removed = self._commit(rt, "DELETED", final, old)
        if rt.namespaced and rt.key != NS_KEY:
            self._finalize_namespace(removed["metadata"].get("namespace", ""))
        if not orphan:
            self._collect_dependents(removed["metadata"]["uid"])
        return removed

    def _collect_dependents(self, uid: str) -> None:
        """Synchronous garbage collection: delete objects whose owners are all gone."""
        for key, bucket in list(self._objects.items()):
            rt = self.registry.by_key(key)
            if rt is None:
                continue
            for obj in list(bucket.values()):
                owners = [o.get("uid") for o in obj["metadata"].get("ownerReferences") or ()]
                if uid in owners and not any(o in self._uids for o in owners):
                    current = bucket.get((obj["metadata"].get("namespace", ""), obj["metadata"]["name"]))
                    if current is not None:
                        self._delete(rt, current, orphan=False)

    def _commit(self, rt: ResourceType, kind: str, obj: Obj, old: Obj | None) -> Obj:
        self._rv += 1
        obj = copy.copy(obj)
        obj["metadata"] = dict(obj["metadata"], resourceVersion=str(self._rv))
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        bucket = self._bucket(rt)
        if kind == "DELETED":
            bucket.pop(key, None)
            self._uids.pop(meta["uid"], None)
        else:
            bucket[key] = obj
            self._uids[meta["uid"]] = (rt.key, key[0], key[1])
        ev = Event(self._rv, rt.key, key[0], kind, obj, old)
        self._log.append(ev)
        while len(self._log) > self.event_log_size:
            self._floor = self._log.popleft().rv
        dead = [w for w in self._watchers.get(rt.key, ()) if not w.offer(ev)]
        for w in dead:
            self._watchers[rt.key].discard(w)
        if rt.key == CRD_KEY and kind != "DELETED":
            self.registry.add(crdlib.resource_type(obj))
        return obj

    def load(self, objs: Iterable[Obj]) -> None:
        """Create objects (e.g. CRDs read from files) as if POSTed."""
        for body in objs:
            group, _, version = str(body.get("apiVersion", "")).rpartition("/")
            kind = body.get("kind")
            rt = next(
                (
                    r
                    for r in self.registry.all()
                    if r.group == group and version in r.versions and r.kind == kind
                ),
                None,
            )
            if rt is None:
                raise errors.bad_request(f"no resource for {body.get('apiVersion')} {kind}")
            ns = ((body.get("metadata") or {}).get("namespace") or "default") if rt.namespaced else None
            self.create(rt, version, ns, body)
