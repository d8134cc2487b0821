"""CustomResourceDefinition handling (pure): validation, the served ResourceType, the status."""

from __future__ import annotations

from typing import Any

from sandbox.kubeapi.resources import ResourceType
from sandbox.kubeapi.schema import Cause

JSON = Any


def validate_crd(crd: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        return [Cause("spec", "FieldValueRequired", "Required value")]
    group = spec.get("group")
    names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
    assert isinstance(names, dict)
    if not group or not isinstance(group, str) or "." not in group:
        causes.append(
            Cause(
                "spec.group",
                "FieldValueInvalid",
                f'Invalid value: "{group}": should be a domain with at least one dot',
            )
        )
    for key in ("plural", "kind"):
        if not names.get(key):
            causes.append(Cause(f"spec.names.{key}", "FieldValueRequired", "Required value"))
    plural = names.get("plural", "")
    if plural and plural != plural.lower():
        causes.append(
            Cause("spec.names.plural", "FieldValueInvalid", f'Invalid value: "{plural}": must be lowercase')
        )
    name = crd.get("metadata", {}).get("name", "")
    if plural and group and name != f"{plural}.{group}":
        causes.append(
            Cause(
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group',
            )
        )
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(
            Cause(
                "spec.scope",
                "FieldValueNotSupported",
                f'Unsupported value: "{spec.get("scope")}": supported values: "Cluster", "Namespaced"',
            )
        )
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        causes.append(
            Cause("spec.versions", "FieldValueInvalid", "must have exactly one version marked as storage")
        )
        return causes
    storage = [v for v in versions if isinstance(v, dict) and v.get("storage")]
    if len(storage) != 1:
        causes.append(
            Cause(
                "spec.versions",
                "FieldValueInvalid",
                "Invalid value: must have exactly one version marked as storage version",
            )
        )
    for i, v in enumerate(versions):
        if not isinstance(v, dict) or not v.get("name"):
            causes.append(Cause(f"spec.versions[{i}].name", "FieldValueRequired", "Required value"))
            continue
        schema = (v.get("schema") or {}).get("openAPIV3Schema")
        if schema is not None and not isinstance(schema, dict):
            causes.append(
                Cause(f"spec.versions[{i}].schema.openAPIV3Schema", "FieldValueInvalid", "must be an object")
            )
    return causes


def resource_type(crd: dict[str, Any]) -> ResourceType:
    """The served resource for a (valid) CRD; only versions marked ``served`` are exposed."""
    spec = crd["spec"]
    names = spec["names"]
    served = [v for v in spec["versions"] if v.get("served", True)]
    # Storage version first: it is the default apiVersion when none is given.
    served.sort(key=lambda v: not v.get("storage"))
    schemas: dict[str, dict[str, Any]] = {}
    columns: dict[str, tuple[dict[str, Any], ...]] = {}
    has_status = False
    selectable: list[str] = []
    for v in served:
        schema = (v.get("schema") or {}).get("openAPIV3Schema")
        if isinstance(schema, dict):
            schemas[v["name"]] = schema
        columns[v["name"]] = tuple(v.get("additionalPrinterColumns") or ())
        if "status" in (v.get("subresources") or {}):
            has_status = True
        selectable += [f["jsonPath"].lstrip(".") for f in v.get("selectableFields") or () if "jsonPath" in f]
    return ResourceType(
        group=spec["group"],
        versions=tuple(v["name"] for v in served),
        plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(),
        kind=names["kind"],
        namespaced=spec["scope"] == "Namespaced",
        has_status=has_status,
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        schemas=schemas,
        printer_columns=columns,
        selectable_fields=tuple(selectable),
        custom=True,
    )


def established_status(crd: dict[str, Any], now: str) -> dict[str, Any]:
    spec = crd["spec"]
    cond = [
        {
            "type": "NamesAccepted",
            "status": "True",
            "reason": "NoConflicts",
            "message": "no conflicts found",
            "lastTransitionTime": now,
        },
        {
            "type": "Established",
            "status": "True",
            "reason": "InitialNamesAccepted",
            "message": "the initial names have been accepted",
            "lastTransitionTime": now,
        },
    ]
    names = dict(spec["names"])
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", f"{names['kind']}List")
    stored = [v["name"] for v in spec["versions"] if v.get("storage")]
    previous = (crd.get("status") or {}).get("storedVersions") or []
    return {"conditions": cond, "acceptedNames": names, "storedVersions": sorted(set(previous) | set(stored))}
