"""The gateway's Helm chart rendered by the real Helm engine (helm-python-sdk, the Helm v4 Go SDK
behind a C ABI): no `helm` binary and no cluster.

`render` returns the chart's objects as dicts, with `.Capabilities` set to the given Kubernetes
version and API versions (the SDK's `Chart.render` takes neither; its native render call does).
Values go through the chart's values.schema.json as `helm install` would: a refusal raises
`ChartValuesError` carrying Helm's message; a template `fail`/`required` raises `ChartRenderError`.
`lint` is `helm lint` (strict: warnings count as errors) and raises `ChartLintError` listing
what Helm found.

Used by tests/chart and by the sandbox when it plays the rendered pod with podman.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

__all__ = [
    "CHART",
    "PODMAN_VALUES",
    "REQUIRED_VALUES",
    "ChartError",
    "ChartLintError",
    "ChartRenderError",
    "ChartValuesError",
    "by_kind",
    "containers",
    "deployment",
    "lint",
    "merge",
    "notes",
    "render",
    "values",
]

CHART = Path(__file__).resolve().parents[2] / "charts" / "liqo-gateway"

# The values the chart cannot default (this cluster's CIDRs): the smallest set that renders.
REQUIRED_VALUES: dict[str, Any] = {
    "networking": {"podCIDR": "10.0.0.0/16", "externalCIDR": "10.201.0.0/16", "serviceCIDR": "10.96.0.0/12"},
}


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` deep-merged onto a copy of `base` (mappings merge, anything else replaces)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        nested = isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
        out[k] = merge(out[k], v) if nested else copy.deepcopy(v)
    return out


def values(**over: Any) -> dict[str, Any]:
    """REQUIRED_VALUES with `over` deep-merged onto them."""
    return merge(REQUIRED_VALUES, over)


# What podman 4.3's `kube play` needs (no containerPorts without a bridge network, no projected
# volume: a kubeconfig file instead) and what the sandbox wants to see (the wireguard-go socket
# directory on the emulated node; short election timings). The paths are examples.
PODMAN_VALUES: dict[str, Any] = values(
    ports={"declare": False},
    kubeconfig={"hostPath": "/var/lib/lgw/kubeconfig"},
    wireguard={"socketHostPath": "/var/lib/lgw/wireguard", "implementation": "userspace"},
    election={"leaseDuration": 3, "renewDeadline": 2, "retryPeriod": 0.5, "requestTimeout": 0.6},
    tunnel={"extraArgs": ["--status-min-interval=0.5"]},
    netagent={"extraArgs": ["--probe-interval=0.5"]},
)


class ChartError(Exception):
    """The chart could not be linted or rendered; the message is Helm's."""


class ChartValuesError(ChartError):
    """values.schema.json refused the values."""


class ChartRenderError(ChartError):
    """A template failed (a `fail` or `required`), or Helm could not render for another reason."""


class ChartLintError(ChartError):
    """`helm lint` found errors (or, strict, warnings)."""


def _version(v: str) -> str:
    return v if v.startswith("v") else f"v{v}"


def render(
    values: Mapping[str, Any] | None = None,
    *,
    kube_version: str = "1.30.0",
    api_versions: Iterable[str] = (),
    namespace: str = "liqo",
    release: str = "liqo-gateway",
    chart: Path = CHART,
) -> list[dict[str, Any]]:
    """The chart's objects (templates only, not crds/), in template order, empty documents dropped.
    `values` are the user's (the chart's defaults are merged by Helm); `api_versions` are added to
    the built-in ones for `.Capabilities.APIVersions.Has`."""
    opts = {
        "name": release,
        "namespace": namespace,
        "is_install": True,
        "kube_version": _version(kube_version),
        "api_versions": list(api_versions),
    }
    with helm.Chart.load(chart) as ch:
        try:
            out = _native.call_string("helm_render", ch._raw(), json.dumps(dict(values or {})),
                                      json.dumps(opts))
        except helm.HelmValuesError as e:
            raise ChartValuesError(str(e)) from None
        except helm.HelmError as e:
            raise ChartRenderError(str(e)) from None
    manifests: dict[str, str] = json.loads(out)
    objects: list[dict[str, Any]] = []
    for name in sorted(manifests):
        if not name.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(manifests[name]):
            if doc:
                objects.append(doc)
    return objects


def notes(values: Mapping[str, Any] | None = None, *, namespace: str = "liqo",
          release: str = "liqo-gateway") -> str:
    """The rendered NOTES.txt."""
    with helm.Chart.load(CHART) as ch:
        try:
            out = ch.render(dict(values or {}), name=release, namespace=namespace, is_install=True)
        except helm.HelmValuesError as e:
            raise ChartValuesError(str(e)) from None
        except helm.HelmError as e:
            raise ChartRenderError(str(e)) from None
    return next((text for name, text in out.items() if name.endswith("NOTES.txt")), "")


def lint(
    values: Mapping[str, Any] | None = None,
    *,
    strict: bool = True,
    kube_version: str | None = None,
    namespace: str = "liqo",
    chart: Path = CHART,
) -> list[dict[str, Any]]:
    """`helm lint` of the chart with `values` (default: REQUIRED_VALUES); returns Helm's messages
    (severity 1 info, 2 warning, 3 error) and raises ChartLintError when it reports an error, or,
    when strict, a warning."""
    report = helm.lint(
        chart,
        dict(REQUIRED_VALUES if values is None else values),
        strict=strict,
        namespace=namespace,
        kube_version=_version(kube_version) if kube_version else None,
    )
    messages: list[dict[str, Any]] = report.get("messages") or []
    worst = 2 if strict else 3
    bad = [m for m in messages if int(m.get("severity", 0)) >= worst]
    if bad or report.get("errors"):
        lines = [f"{m.get('path')}: {m.get('error')}".strip() for m in bad] or list(report["errors"])
        raise ChartLintError("helm lint: " + "; ".join(lines))
    return messages


def by_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def deployment(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The one Deployment (the gateway's)."""
    (dep,) = by_kind(objects, "Deployment")
    return dep


def containers(objects: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The gateway pod's containers by name."""
    spec = deployment(objects)["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}
