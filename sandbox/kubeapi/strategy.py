"""Per-kind write rules (pure): what create/update keep, reset, default and validate.

The store calls these under its lock; they take and return plain dicts and never mutate inputs.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from sandbox.kubeapi import schema
from sandbox.kubeapi.crd import validate_crd
from sandbox.kubeapi.resources import ResourceType
from sandbox.kubeapi.schema import Cause

JSON = Any

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
# Kinds whose names must be DNS labels rather than subdomains.
_LABEL_NAMED = {"/namespaces", "/services"}
# Metadata fields a client cannot set or change.
_SYSTEM_META = (
    "uid",
    "creationTimestamp",
    "resourceVersion",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
)


def _qualified_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and _QUALIFIED_NAME.match(name) is not None


def validate_metadata(rt: ResourceType, obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    pattern = _DNS_LABEL if rt.key in _LABEL_NAMED else _DNS_SUBDOMAIN
    limit = 63 if rt.key in _LABEL_NAMED else 253
    if not name:
        causes.append(
            Cause("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")
        )
    elif len(name) > limit or not pattern.match(name):
        causes.append(
            Cause(
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": a lowercase RFC 1123 '
                f"{'label' if limit == 63 else 'subdomain'} must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        )
    for key, value in (meta.get("labels") or {}).items():
        if not _qualified_key_ok(key):
            causes.append(
                Cause(
                    "metadata.labels",
                    "FieldValueInvalid",
                    f'Invalid value: "{key}": name part '
                    "must consist of alphanumeric characters, '-', '_' or '.'",
                )
            )
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(
                Cause(
                    "metadata.labels",
                    "FieldValueInvalid",
                    f"Invalid value: {value!r}: a valid label must be an empty string or consist "
                    "of alphanumeric characters, '-', '_' or '.'",
                )
            )
    for key, value in (meta.get("annotations") or {}).items():
        if not _qualified_key_ok(key.lower()):
            causes.append(Cause("metadata.annotations", "FieldValueInvalid", f'Invalid value: "{key}"'))
        if not isinstance(value, str):
            causes.append(
                Cause(
                    f"metadata.annotations.{key}",
                    "FieldValueTypeInvalid",
                    "Invalid value: annotation values must be strings",
                )
            )
    for i, f in enumerate(meta.get("finalizers") or ()):
        if not isinstance(f, str) or not _qualified_key_ok(f):
            causes.append(Cause(f"metadata.finalizers[{i}]", "FieldValueInvalid", f"Invalid value: {f!r}"))
    return causes


def admit_custom(
    rt: ResourceType, version: str, obj: dict[str, Any]
) -> tuple[dict[str, Any], list[Cause], list[str]]:
    """Default, prune and validate a custom resource against its version's schema."""
    sch = rt.schemas.get(version)
    if sch is None:
        return obj, [], []
    admitted, causes, dropped = schema.admit(obj, sch)
    assert isinstance(admitted, dict)
    return admitted, causes, dropped


def prepare_create(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """Reset what a create cannot set and apply built-in defaults."""
    out = copy.deepcopy(obj)
    meta = out.setdefault("metadata", {})
    for key in _SYSTEM_META:
        meta.pop(key, None)
    if rt.custom and rt.has_status:
        out.pop("status", None)
    if rt.key == "/namespaces":
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
        out["spec"] = {"finalizers": ["kubernetes"]}
        out["status"] = {"phase": "Active"}
    elif rt.key == "/pods":
        status = out.get("status") or {}
        status.setdefault("phase", "Pending")
        out["status"] = status
        spec = out.setdefault("spec", {})
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
    elif rt.key == "/services":
        spec = out.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or ():
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
        out.setdefault("status", {"loadBalancer": {}})
    elif rt.key == "/secrets":
        out.setdefault("type", "Opaque")
    return out


def validate_kind(rt: ResourceType, obj: dict[str, Any]) -> list[Cause]:
    """Kind-specific checks beyond metadata (only the ones the project's code can trip over)."""
    if rt.key == "apiextensions.k8s.io/customresourcedefinitions":
        return validate_crd(obj)
    if rt.key == "/pods":
        containers = (obj.get("spec") or {}).get("containers")
        if not containers:
            return [Cause("spec.containers", "FieldValueRequired", "Required value")]
    if rt.key == "coordination.k8s.io/leases":
        spec = obj.get("spec") or {}
        causes = []
        for key in ("leaseDurationSeconds", "leaseTransitions"):
            if key in spec and (not isinstance(spec[key], int) or spec[key] < 0):
                causes.append(
                    Cause(
                        f"spec.{key}",
                        "FieldValueInvalid",
                        f"Invalid value: {spec[key]!r}: must be a non-negative integer",
                    )
                )
        return causes
    if rt.key in ("/secrets", "/configmaps"):
        causes = []
        for section in ("data", "stringData", "binaryData"):
            for k, v in (obj.get(section) or {}).items():
                if not isinstance(v, str):
                    causes.append(
                        Cause(f"{section}[{k}]", "FieldValueTypeInvalid", "Invalid value: must be a string")
                    )
        return causes
    return []


def finish_secret(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """``stringData`` is write-only: merged into ``data`` (base64) and dropped, as upstream."""
    if rt.key != "/secrets" or "stringData" not in obj:
        return obj
    import base64

    out = copy.deepcopy(obj)
    data = out.setdefault("data", {}) or {}
    for k, v in (out.pop("stringData") or {}).items():
        data[k] = base64.b64encode(str(v).encode()).decode()
    out["data"] = data
    return out


def prepare_update(
    rt: ResourceType, old: dict[str, Any], new: dict[str, Any], subresource: str
) -> dict[str, Any]:
    """The object an update stores: system metadata from ``old``; the status split applied."""
    if subresource == "status":
        # The status endpoint changes only .status (metadata is kept from the stored object).
        out = copy.deepcopy(old)
        if "status" in new:
            out["status"] = copy.deepcopy(new["status"])
        else:
            out.pop("status", None)
        return out
    out = copy.deepcopy(new)
    meta = out.setdefault("metadata", {})
    old_meta = old.get("metadata", {})
    for key in _SYSTEM_META:
        if key in old_meta:
            meta[key] = copy.deepcopy(old_meta[key])
        else:
            meta.pop(key, None)
    meta["name"] = old_meta.get("name")
    if "namespace" in old_meta:
        meta["namespace"] = old_meta["namespace"]
    if rt.has_status:
        if "status" in old:
            out["status"] = copy.deepcopy(old["status"])
        else:
            out.pop("status", None)
    if rt.key == "/namespaces":
        out["spec"] = copy.deepcopy(old.get("spec", {}))
    return out


def spec_changed(rt: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether an update bumps ``metadata.generation``: anything but metadata (and status, when split)."""
    ignored = {"metadata", "status"} if rt.has_status else {"metadata"}
    strip = {"apiVersion", "kind"} | ignored
    return {k: v for k, v in old.items() if k not in strip} != {
        k: v for k, v in new.items() if k not in strip
    }
