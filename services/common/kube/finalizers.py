"""Finalizers, and the start every reconcile of a finalized resource shares.

A finalizer keeps a deleted object in the API until its controller has undone what it did for it
(a tunnel, NAT rules), so a deletion is never missed, even one made while the controller was down.
Both patches carry the object's resourceVersion: a concurrent change answers 409, and the key is
retried (RetryableError) with the fresh object.
"""

from __future__ import annotations

from collections.abc import Callable

from services.common.kube.client import JSON, MERGE_PATCH, KubeClient, KubeError
from services.common.kube.controller import RetryableError
from services.common.vocabulary import ResourceRef

__all__ = ["add_finalizer", "has_finalizer", "prologue", "remove_finalizer"]


def has_finalizer(obj: JSON, finalizer: str) -> bool:
    return finalizer in ((obj.get("metadata") or {}).get("finalizers") or [])


def _patch_finalizers(client: KubeClient, ref: ResourceRef, obj: JSON, finalizers: list[str]) -> JSON:
    md = obj["metadata"]
    patch = {"metadata": {"finalizers": finalizers, "resourceVersion": md["resourceVersion"]}}
    try:
        return client.patch(ref, md["name"], patch, md.get("namespace") if ref.namespaced else None,
                            content_type=MERGE_PATCH)
    except KubeError as e:
        if e.not_found:
            return obj
        raise RetryableError(f"updating finalizers: {e}") from None


def add_finalizer(client: KubeClient, ref: ResourceRef, obj: JSON, finalizer: str) -> JSON:
    """The object with `finalizer` on it (patched only when missing); the object as it was when
    it is already gone."""
    if has_finalizer(obj, finalizer):
        return obj
    current = obj["metadata"].get("finalizers") or []
    return _patch_finalizers(client, ref, obj, [*current, finalizer])


def remove_finalizer(client: KubeClient, ref: ResourceRef, obj: JSON, finalizer: str) -> JSON:
    """The object without `finalizer` (patched only when present); other finalizers are kept."""
    if not has_finalizer(obj, finalizer):
        return obj
    current = obj["metadata"].get("finalizers") or []
    return _patch_finalizers(client, ref, obj, [f for f in current if f != finalizer])


def prologue(
    client: KubeClient,
    ref: ResourceRef,
    obj: JSON,
    finalizer: str,
    finalize: Callable[[JSON], None],
) -> JSON | None:
    """The start of a reconcile. For an object being deleted: `finalize(obj)` undoes its effects
    (only while our finalizer is still on it), then the finalizer is removed, and None says there is
    nothing more to do. For a live object: the object with our finalizer on it, to reconcile."""
    if obj["metadata"].get("deletionTimestamp"):
        if has_finalizer(obj, finalizer):
            finalize(obj)
            remove_finalizer(client, ref, obj, finalizer)
        return None
    return add_finalizer(client, ref, obj, finalizer)
