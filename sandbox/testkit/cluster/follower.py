"""Following the active gateway replica: what a Service's endpoints controller and liqo-route do."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from services.common.kube import KubeClient
from services.common.kube.backoff import Backoff
from services.common.kube.informer import Informer
from services.common.vocabulary import (
    ACTIVE,
    GATEWAY_LABEL,
    GATEWAY_SELECTOR_STRING,
    NODE_IP_ANNOTATION,
    PODS,
    SERVICES,
)

__all__ = ["SERVICE_NAME", "ActiveGatewayFollower", "active_pod_ip", "gateway_label"]

log = logging.getLogger(__name__)

# The gateway Service (the chart's name), selecting the gateway pod labelled active.
SERVICE_NAME = "liqo-gateway"


def gateway_label(pod: dict[str, Any]) -> str | None:
    return (pod["metadata"].get("labels") or {}).get(GATEWAY_LABEL)


def active_pod_ip(pods: Iterable[dict[str, Any]], service_hint: str | None) -> str | None:
    """The podIP of the pod labelled active; with several (a hand-over in progress) the one the
    Service annotation names, else the lowest IP (deterministic)."""
    ips = sorted(
        str(p.get("status", {}).get("podIP"))
        for p in pods
        if gateway_label(p) == ACTIVE and p.get("status", {}).get("podIP")
    )
    if not ips:
        return None
    if service_hint in ips:
        return service_hint
    return ips[0]


class ActiveGatewayFollower:
    """Watches the gateway pods of a cluster (and its gateway Service, whose node-IP annotation
    settles a hand-over that briefly shows two pods labelled active) and calls
    `on_change(active_ip)` whenever the pod labelled `net.liqo.io/gateway=active` changes (None when
    no pod is). Two informers keep the objects current (list, watch, re-list, reconnect); every
    change of either decides again. While the API server is unreachable nothing changes, so the last
    decision stays, as a real load balancer keeps its endpoints."""

    def __init__(self, client: KubeClient, on_change: Callable[[str | None], None],
                 namespace: str, service: str = SERVICE_NAME) -> None:
        self.client, self.on_change, self.namespace, self.service = client, on_change, namespace, service
        self.active: str | None = None
        self._lock = threading.Lock()
        backoff = Backoff(base=0.2, cap=1.0)  # retry soon after an outage: the VIP must follow
        self._pods = Informer(client, PODS, namespace=namespace, label_selector=GATEWAY_SELECTOR_STRING,
                              watch_timeout=60, backoff=backoff, name="gateway-pods")
        self._services = Informer(client, SERVICES, namespace=namespace,
                                  label_selector=GATEWAY_SELECTOR_STRING, watch_timeout=60,
                                  backoff=backoff, name="gateway-service")
        for informer in (self._pods, self._services):
            informer.add_handler(self._changed)

    def start(self) -> ActiveGatewayFollower:
        self._services.start()
        self._pods.start()
        return self

    def stop(self) -> None:
        self._pods.stop(timeout=10)
        self._services.stop(timeout=10)

    def _hint(self) -> str | None:
        svc = next((s for s in self._services.items() if s["metadata"]["name"] == self.service), None)
        if svc is None:
            return None
        return (svc["metadata"].get("annotations") or {}).get(NODE_IP_ANNOTATION)

    def _changed(self, event: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        with self._lock:
            ip = active_pod_ip(self._pods.items(), self._hint())
            if ip != self.active:
                log.debug("active gateway %s -> %s", self.active, ip)
                self.on_change(ip)
                self.active = ip
