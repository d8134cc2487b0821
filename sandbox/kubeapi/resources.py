"""Resource types the server serves (built-in kinds and registered CRDs) and discovery documents."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-liqo-kubeapi",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class ResourceType:
    """One resource (``group``/``plural``) served at one or more versions; objects are stored once."""

    group: str
    versions: tuple[str, ...]
    plural: str
    singular: str
    kind: str
    namespaced: bool
    has_status: bool = False
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # version -> openAPIV3Schema (custom resources only)
    schemas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # version -> additionalPrinterColumns
    printer_columns: Mapping[str, tuple[Mapping[str, Any], ...]] = field(default_factory=dict)
    # Field selectors beyond metadata.name/metadata.namespace.
    selectable_fields: tuple[str, ...] = ()
    custom: bool = False

    @property
    def key(self) -> str:
        return f"{self.group}/{self.plural}"

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_version(self, version: str | None = None) -> str:
        v = version or self.versions[0]
        return f"{self.group}/{v}" if self.group else v

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def supports_field(self, name: str) -> bool:
        return name in ("metadata.name", "metadata.namespace") or name in self.selectable_fields


def _builtin(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool,
    *,
    status: bool = False,
    short: tuple[str, ...] = (),
    categories: tuple[str, ...] = (),
    fields: tuple[str, ...] = (),
) -> ResourceType:
    return ResourceType(
        group=group,
        versions=(version,),
        plural=plural,
        singular=kind.lower(),
        kind=kind,
        namespaced=namespaced,
        has_status=status,
        short_names=short,
        categories=categories,
        selectable_fields=fields,
    )


_EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)

BUILTINS: tuple[ResourceType, ...] = (
    _builtin(
        "", "v1", "namespaces", "Namespace", False, status=True, short=("ns",), fields=("status.phase",)
    ),
    _builtin(
        "",
        "v1",
        "pods",
        "Pod",
        True,
        status=True,
        short=("po",),
        categories=("all",),
        fields=(
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ),
    ),
    _builtin("", "v1", "services", "Service", True, status=True, short=("svc",), categories=("all",)),
    _builtin("", "v1", "secrets", "Secret", True, fields=("type",)),
    _builtin("", "v1", "configmaps", "ConfigMap", True, short=("cm",)),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", True, short=("sa",)),
    _builtin("", "v1", "events", "Event", True, short=("ev",), fields=_EVENT_FIELDS),
    _builtin("", "v1", "nodes", "Node", False, status=True, short=("no",), fields=("spec.unschedulable",)),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease", True),
    _builtin("events.k8s.io", "v1", "events", "Event", True, short=("ev",)),
    _builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        status=True,
        short=("crd", "crds"),
        categories=("api-extensions",),
    ),
)


class Registry:
    """Which resource types are served. Not locked itself: the store mutates it under its lock."""

    def __init__(self) -> None:
        self._types: dict[str, ResourceType] = {rt.key: rt for rt in BUILTINS}

    def add(self, rt: ResourceType) -> None:
        self._types[rt.key] = rt

    def remove(self, key: str) -> None:
        self._types.pop(key, None)

    def by_key(self, key: str) -> ResourceType | None:
        return self._types.get(key)

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        rt = self._types.get(f"{group}/{plural}")
        if rt is None or version not in rt.versions:
            return None
        return rt

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    # --- discovery --------------------------------------------------------------------------

    def groups(self) -> dict[str, list[str]]:
        """group -> served versions (preferred first), core group excluded."""
        out: dict[str, list[str]] = {}
        for rt in self._types.values():
            if not rt.group:
                continue
            versions = out.setdefault(rt.group, [])
            for v in rt.versions:
                if v not in versions:
                    versions.append(v)
        for group, versions in out.items():
            out[group] = sorted(versions, key=_version_priority)
        return out

    def group_doc(self, group: str) -> dict[str, Any] | None:
        versions = self.groups().get(group)
        if not versions:
            return None
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": gvs,
            "preferredVersion": gvs[0],
        }

    def group_list_doc(self) -> dict[str, Any]:
        groups = []
        for group in sorted(self.groups()):
            doc = self.group_doc(group)
            if doc is not None:
                doc.pop("kind")
                doc.pop("apiVersion")
                groups.append(doc)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def resource_list_doc(self, group: str, version: str) -> dict[str, Any] | None:
        resources: list[dict[str, Any]] = []
        for rt in sorted(self._types.values(), key=lambda r: r.plural):
            if rt.group != group or version not in rt.versions:
                continue
            entry: dict[str, Any] = {
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": list(VERBS),
            }
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            if rt.categories:
                entry["categories"] = list(rt.categories)
            resources.append(entry)
            if rt.has_status:
                resources.append(
                    {
                        "name": f"{rt.plural}/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        if not resources:
            return None
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }


def _version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes version ordering: GA > beta > alpha, higher numbers first."""
    import re

    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if m is None:
        return (3, 0, 0, version)
    major, stage, minor = int(m.group(1)), m.group(2), int(m.group(3) or 0)
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -major, -minor, version)
