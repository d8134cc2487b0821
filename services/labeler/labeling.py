"""The labels controller: pods `active`/`standby` and the Service annotation, written only by the
leader whose netagent accepted the ACTIVE role. It runs on the shared runtime (informers on gateway
pods and Services, a work queue, retries with backoff) and is paused while this replica is standby:
the new leader relabels, a demoted one writes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable

from services.common.kube import (
    JSON,
    PODS,
    SERVICES,
    EventRecorder,
    Informer,
    KubeClient,
    KubeError,
    RetryableError,
    split_key,
)
from services.labeler.labels import pod_label_patch, service_plan
from services.labeler.metrics import LabelerMetrics

log = logging.getLogger(__name__)

# Queue key for "the gateway Service" (pod keys are "namespace/name", so this cannot collide).
SERVICE_KEY = "gateway-service"


class Labeling:
    def __init__(
        self,
        client: KubeClient,
        pods: Informer,
        services: Informer,
        *,
        namespace: str,
        own_name: str,
        pod_ip: str,
        may_write: Callable[[], bool],
        events: EventRecorder,
        metrics: LabelerMetrics,
    ) -> None:
        self.client = client
        self.pods = pods
        self.services = services
        self.namespace = namespace
        self.own_name = own_name
        self.pod_ip = pod_ip
        self.may_write = may_write
        self.events = events
        self.metrics = metrics

    def reconcile(self, key: str) -> float | None:
        if not self.may_write():
            return None
        if key == SERVICE_KEY:
            self._annotate_service()
            return None
        pod = self.pods.get(key)
        if pod is None:
            return None
        patch = pod_label_patch(pod, self.own_name)
        if patch is None:
            return None
        ns, name = split_key(key)
        try:
            self.client.patch(PODS, name, patch, ns)
        except KubeError as e:
            if e.not_found:
                return None
            raise RetryableError(f"labelling pod {key}: {e}") from e
        self.metrics.label_patches.labels("pod").inc()
        log.info("pod labelled", extra={"pod": key, "labels": patch["metadata"]["labels"]})
        return None

    def _own_pod(self) -> JSON:
        return self.pods.get(f"{self.namespace}/{self.own_name}") or {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.own_name, "namespace": self.namespace},
        }

    def _annotate_service(self) -> None:
        if not self.pod_ip:
            self.events.warning(self._own_pod(), "NoPodIP", "POD_IP is empty: cannot annotate the Service")
            raise RetryableError("POD_IP is empty")
        plan = service_plan(self.services.items(), self.pod_ip)
        if plan.name is None:
            self.events.warning(self._own_pod(), "GatewayServiceNotUnique", plan.problem)
            raise RetryableError(plan.problem)
        if plan.patch is None:
            return
        try:
            self.client.patch(SERVICES, plan.name, plan.patch, self.namespace)
        except KubeError as e:
            raise RetryableError(f"annotating service {plan.name}: {e}") from e
        self.metrics.label_patches.labels("service").inc()
        log.info("service annotated", extra={"service": plan.name, "gatewayNodeIP": self.pod_ip})
