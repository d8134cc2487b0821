"""What the leader writes on pods and on the gateway Service, as pure functions over API objects.

As Liqo's gateway does it: our own pod `net.liqo.io/gateway=active`, every other gateway pod
`standby` (the Service selects `active`, so only the leader receives tunnel traffic); exactly one
gateway Service, annotated `net.liqo.io/gatewayNodeIP=<our POD_IP>`. Liqo finds its own pod by IP;
we match by name, because gateway pods may share a node IP (hostNetwork) while names are unique.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.common.vocabulary import ACTIVE, GATEWAY_LABEL, NODE_IP_ANNOTATION, STANDBY

JSON = dict[str, Any]


def desired_label(pod_name: str, own_name: str) -> str:
    return ACTIVE if pod_name == own_name else STANDBY


def pod_label_patch(pod: JSON, own_name: str) -> JSON | None:
    """The merge patch that sets the gateway label, or None when it is already right."""
    md = pod.get("metadata") or {}
    want = desired_label(str(md.get("name", "")), own_name)
    if (md.get("labels") or {}).get(GATEWAY_LABEL) == want:
        return None
    return {"metadata": {"labels": {GATEWAY_LABEL: want}}}


@dataclass(frozen=True)
class ServicePlan:
    """`name` None means no single Service to annotate; `problem` says why."""

    name: str | None
    patch: JSON | None = None
    problem: str = ""


def service_plan(services: list[JSON], pod_ip: str) -> ServicePlan:
    live = [s for s in services if not (s.get("metadata") or {}).get("deletionTimestamp")]
    if len(live) != 1:
        names = sorted(str((s.get("metadata") or {}).get("name", "")) for s in live)
        return ServicePlan(None, None, f"expected exactly one gateway Service, found {len(live)}: {names}")
    md = live[0].get("metadata") or {}
    name = str(md.get("name", ""))
    if (md.get("annotations") or {}).get(NODE_IP_ANNOTATION) == pod_ip:
        return ServicePlan(name)
    return ServicePlan(name, {"metadata": {"annotations": {NODE_IP_ANNOTATION: pod_ip}}})
