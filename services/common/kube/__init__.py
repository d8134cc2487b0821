"""The shared controller runtime: what the tunnel, natmap and labeler controllers are built on.

Layered like kopf, each module importing only the ones above it; nothing here knows about
TunnelEndpoints or the netagent:

- `client`     KubeClient: JSON verbs over our own urllib3 transport (`transport`, settings read by
               `kubeconfig`: a kubeconfig file or the service account), every request with a
               timeout, one error type (KubeError with .status, .reason, .not_found, .conflict,
               .gone, .unreachable). The kinds (ResourceRef, PODS, ...) are in services.common.vocabulary.
- `backoff`    Backoff: capped exponential delay with jitter.
- `workqueue`  WorkQueue: de-duplicating keys, one key at a time, per-key rate-limited retries.
- `informer`   Informer: list, then watch from the list's resourceVersion with bookmarks; re-list
               on 410 Gone; reconnect with capped backoff; an in-memory cache by key.
- `status`     patch_status: a merge patch on /status, sent only when the status differs.
- `events`     EventRecorder: core v1 Events (Normal/Warning), de-duplicated in a time window.
- `metrics`    ControllerMetrics (private registry) and the /metrics and /healthz, /readyz endpoints.
- `config`     add_runtime_flags / RuntimeConfig: the common flags and POD_NAME/NAMESPACE/IP.
- (services.common.logging) setup_logging: JSON lines with the `extra` fields.
- `controller` Controller (informers -> queue -> workers -> reconcile(key), resync, pause/resume)
               and Manager (owns the client, metrics, health endpoint, background loops, SIGTERM).
- `finalizers` add_finalizer / remove_finalizer and `prologue`, the start of every reconcile of a
               finalized resource (finalize a deleted object, else make sure the finalizer is on).

A controller process does not assemble these itself: `services.common.component.run_component`
parses the flags, sets up logging, opens the client, the Manager and the netagent client, lets the
component wire its controllers, runs until SIGTERM/SIGINT and closes everything.
`services.common.rolegate.RoleGate` runs a controller only while the netagent is ACTIVE. Typical
wiring (the resource kinds come from `services.common.vocabulary`)::

    def build(rt: Runtime) -> None:
        inf = rt.mgr.informer(NAT_MAPPINGS)
        ctl = rt.mgr.add_controller(Controller("natmap", reconcile, metrics=rt.mgr.metrics,
                                               workers=rt.cfg.workers, backoff=rt.backoff))
        ctl.watch(inf)
        RoleGate(rt.mgr, ctl, rt.netagent)          # paused unless the netagent is ACTIVE

    sys.exit(run_component(Component("liqo-natmap-controller", parser), build))

`reconcile(key)` reads the object with `inf.get(key)` (None = deleted), returns None when done or a
delay to be called again, and raises to be retried with backoff (RetryableError: no traceback).
"""

from services.common.kube.backoff import Backoff
from services.common.kube.client import (
    JSON,
    MERGE_PATCH,
    KubeClient,
    KubeError,
    load_transport,
    object_key,
    split_key,
)
from services.common.kube.config import RuntimeConfig, add_runtime_flags
from services.common.kube.controller import Controller, Manager, RetryableError
from services.common.kube.events import EventRecorder
from services.common.kube.informer import Informer
from services.common.kube.metrics import ControllerMetrics, health_endpoint, metrics_endpoint
from services.common.kube.status import merge_patch_diff, patch_status
from services.common.kube.workqueue import ShutDown, WorkQueue
from services.common.logging import setup_logging
from services.common.vocabulary import EVENTS, LEASES, PODS, SECRETS, SERVICES, ResourceRef

__all__ = [
    "EVENTS",
    "JSON",
    "LEASES",
    "MERGE_PATCH",
    "PODS",
    "SECRETS",
    "SERVICES",
    "Backoff",
    "Controller",
    "ControllerMetrics",
    "EventRecorder",
    "Informer",
    "KubeClient",
    "KubeError",
    "Manager",
    "ResourceRef",
    "RetryableError",
    "RuntimeConfig",
    "ShutDown",
    "WorkQueue",
    "add_runtime_flags",
    "health_endpoint",
    "load_transport",
    "merge_patch_diff",
    "metrics_endpoint",
    "object_key",
    "patch_status",
    "setup_logging",
    "split_key",
]
