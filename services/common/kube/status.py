"""Status writes: a merge patch on the /status subresource, sent only when something changed."""

from __future__ import annotations

from typing import Any

from services.common.kube.client import JSON, MERGE_PATCH, KubeClient
from services.common.vocabulary import ResourceRef


def merge_patch_diff(current: Any, desired: Any) -> Any:
    """The RFC 7386 merge patch that makes `current` agree with `desired` on the keys `desired`
    names (other keys are left alone; a None value deletes). None when nothing would change."""
    if not (isinstance(desired, dict) and isinstance(current, dict)):
        return None if desired == current else desired
    patch: dict[str, Any] = {}
    for k, v in desired.items():
        if v is None:
            if k in current:
                patch[k] = None
        elif k not in current:
            patch[k] = v
        elif isinstance(v, dict) and isinstance(current[k], dict):
            sub = merge_patch_diff(current[k], v)
            if sub is not None:
                patch[k] = sub
        elif current[k] != v:
            patch[k] = v
    return patch or None


def patch_status(
    client: KubeClient,
    ref: ResourceRef,
    obj: JSON,
    desired_status: JSON,
) -> JSON | None:
    """Merge-patches `status` of `obj` toward `desired_status` if it differs from `obj`'s current
    status. Returns the updated object, or None when nothing was sent."""
    patch = merge_patch_diff(obj.get("status") or {}, desired_status)
    if patch is None:
        return None
    md = obj["metadata"]
    return client.patch(
        ref,
        md["name"],
        {"status": patch},
        md.get("namespace"),
        subresource="status",
        content_type=MERGE_PATCH,
    )
