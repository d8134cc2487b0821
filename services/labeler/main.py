"""liqo-labeler: Lease leader election among the gateway replicas, fencing of the netagent's role,
`net.liqo.io/gateway=active|standby` pod labels and the gateway Service's node-IP annotation."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from dataclasses import replace

from services.common.component import Component, Runtime, run_component
from services.common.kube import LEASES, PODS, SERVICES, Controller, RuntimeConfig, add_runtime_flags
from services.common.leaderelection import FENCING_MARGIN, Timings, record_from_lease
from services.common.vocabulary import ACTIVE, GATEWAY_LABEL, GATEWAY_SELECTOR_STRING, LEASE_NAME, STANDBY
from services.labeler.elector import Elector
from services.labeler.labeling import SERVICE_KEY, Labeling
from services.labeler.lease_lock import LeaseLock
from services.labeler.metrics import LabelerMetrics

log = logging.getLogger(__name__)

COMPONENT = "liqo-labeler"
DEFAULT_METRICS = ":5875"
DEFAULT_HEALTH = "127.0.0.1:5879"

OUTAGE_GRACE_HELP = """\
how long a leader that cannot reach the API server at all (connection errors, timeouts, 429, 5xx;
not conflicts or refusals) keeps its netagent ACTIVE after its last successful renewal. Nobody can
take the Lease during a real outage, so this keeps cross-cluster traffic up through control-plane
upgrades. It is also the split-brain bound: if only this node is cut off, another replica acquires
the Lease once it has not seen a renewal for --lease-duration, so both dataplanes can be live for up
to OUTAGE_GRACE - LEASE_DURATION seconds (53 s with the defaults); set it to --lease-duration or less
to never overlap, at the price of dropping traffic in any API outage longer than that (default: 60)"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=COMPONENT,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Environment: POD_NAME (identity), POD_NAMESPACE, POD_IP (Downward API).",
    )
    add_runtime_flags(p, default_metrics=DEFAULT_METRICS, default_health=DEFAULT_HEALTH,
                      netagent_role="labeler")
    g = p.add_argument_group("leader election")
    g.add_argument(
        "--lease-name",
        default=LEASE_NAME,
        help="coordination.k8s.io/v1 Lease used as the lock; Liqo's own name, so that Liqo's gateways and "
        f"ours never both lead one cluster (default: {LEASE_NAME})",
    )
    g.add_argument(
        "--namespace",
        default=None,
        help="namespace of the Lease, the gateway pods and the Service (default: env POD_NAMESPACE)",
    )
    g.add_argument(
        "--identity",
        default=None,
        help="holderIdentity written into the Lease; this pod is labelled active when it leads "
        "(default: env POD_NAME)",
    )
    g.add_argument(
        "--lease-duration",
        type=int,
        default=7,
        metavar="SECONDS",
        help="whole seconds a candidate waits, after it last saw the Lease change, before taking it "
        "over; also the netagent role's TTL after each renewal (default: 7)",
    )
    g.add_argument(
        "--renew-deadline",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a leader whose renewals fail because the API server answers but refuses or reports a "
        "conflict steps down (netagent STANDBY) this long after its last renewal (default: 5)",
    )
    g.add_argument(
        "--retry-period",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="interval between two attempts to acquire or renew the Lease (default: 2)",
    )
    g.add_argument("--outage-grace", type=float, default=60.0, metavar="SECONDS", help=OUTAGE_GRACE_HELP)
    g.add_argument(
        "--election-request-timeout",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="client-side timeout of each Lease read or write; a timeout counts as an unreachable API "
        "server. max(--retry-period, 2 x this) + this must be below --lease-duration - 0.5 s, so that "
        "slow but successful renewals still extend the netagent's role in time (default: 1)",
    )
    lg = p.add_argument_group("labels")
    lg.add_argument(
        "--gateway-selector",
        default=GATEWAY_SELECTOR_STRING,
        help=f"label selector of the gateway pods (labelled {GATEWAY_LABEL}={ACTIVE} or {STANDBY}) and, "
        f"unless --service-name is given, of the gateway Service (default: {GATEWAY_SELECTOR_STRING})",
    )
    lg.add_argument(
        "--service-name",
        default="",
        help="name of the gateway Service to annotate with net.liqo.io/gatewayNodeIP (default: the one "
        "Service matching --gateway-selector; none or several is reported as a Warning Event and retried)",
    )
    lg.add_argument(
        "--pod-ip",
        default=None,
        help="value of the net.liqo.io/gatewayNodeIP annotation (default: env POD_IP)",
    )
    return p


def _timings(args: argparse.Namespace) -> Timings:
    return Timings(
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        outage_grace=args.outage_grace,
    )


def check(args: argparse.Namespace, cfg: RuntimeConfig) -> RuntimeConfig:
    """Validates the election flags; --identity, --namespace and --pod-ip override the Downward API."""
    timings = _timings(args)
    timings.check()
    timings.check_request_timeout(args.election_request_timeout)
    cfg = replace(
        cfg,
        pod_name=args.identity or cfg.pod_name,
        pod_namespace=args.namespace or cfg.pod_namespace,
        pod_ip=args.pod_ip if args.pod_ip is not None else cfg.pod_ip,
    )
    if not cfg.pod_name or not cfg.pod_namespace:
        raise ValueError("an identity and a namespace are needed: set POD_NAME and POD_NAMESPACE "
                         "or the flags")
    return cfg


def build(rt: Runtime) -> None:
    args, cfg, mgr = rt.args, rt.cfg, rt.mgr
    identity, namespace, pod_ip = cfg.pod_name, cfg.pod_namespace, cfg.pod_ip
    timings = _timings(args)
    client = mgr.client
    metrics = LabelerMetrics(mgr.metrics.registry)

    pods = mgr.informer(PODS, namespace=namespace, label_selector=args.gateway_selector)
    if args.service_name:
        by_name = f"metadata.name={args.service_name}"
        services = mgr.informer(SERVICES, namespace=namespace, field_selector=by_name)
    else:
        services = mgr.informer(SERVICES, namespace=namespace, label_selector=args.gateway_selector)
    leases = mgr.informer(LEASES, namespace=namespace, field_selector=f"metadata.name={args.lease_name}")

    elector: Elector | None = None

    def may_write() -> bool:
        return elector is not None and elector.may_write()

    labeling = Labeling(
        client,
        pods,
        services,
        namespace=namespace,
        own_name=identity,
        pod_ip=pod_ip,
        may_write=may_write,
        events=mgr.events,
        metrics=metrics,
    )
    ctl = Controller(
        "labeler",
        labeling.reconcile,
        metrics=mgr.metrics,
        workers=cfg.workers,
        resync_period=cfg.resync_period,
        backoff=rt.backoff,
    )
    ctl.watch(pods)
    ctl.watch(services, lambda _obj: [SERVICE_KEY], primary=False)
    ctl.pause()  # standby until the netagent accepts ACTIVE
    own_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": identity, "namespace": namespace}}

    def emit(reason: str, message: str, warning: bool = False) -> None:
        # Off the election thread: an Event is a courtesy and must never delay a renewal.
        target = mgr.events.warning if warning else mgr.events.normal
        pod = pods.get(f"{namespace}/{identity}") or own_pod
        threading.Thread(target=target, args=(pod, reason, message), daemon=True).start()

    def on_active(epoch: int) -> None:
        ctl.resume()
        ctl.enqueue_all()
        ctl.enqueue(SERVICE_KEY)
        emit("GatewayActive", f"leader of lease {args.lease_name} (epoch {epoch}); netagent ACTIVE")

    def on_standby(reason: str) -> None:
        ctl.pause()
        emit("GatewayStandby", f"no longer the leader: {reason}", warning=reason != "released")

    elector = Elector(
        LeaseLock(client, args.lease_name, namespace, timeout=args.election_request_timeout),
        rt.netagent,
        identity,
        timings,
        metrics,
        on_active=on_active,
        on_standby=on_standby,
    )
    leases.add_handler(
        lambda etype, obj, _old: (
            elector.lease_changed(record_from_lease(obj), obj["metadata"].get("resourceVersion", ""))
            if etype != "DELETED"
            else None
        )
    )
    mgr.add_controller(ctl)
    mgr.add_runnable("elector", elector.run)
    mgr.add_health_check(elector.healthy)
    log.info(
        "leader election configured",
        extra={
            "identity": identity,
            "namespace": namespace,
            "lease": args.lease_name,
            "lease_duration": timings.lease_duration,
            "renew_deadline": timings.renew_deadline,
            "retry_period": timings.retry_period,
            "outage_grace": timings.outage_grace,
            "pid": os.getpid(),
        },
    )


def main(argv: list[str] | None = None) -> int:
    # The elector makes one attempt per SetRole, with a deadline of the fencing margin: a late ACTIVE
    # grant must not land after the TTL it was computed for has started to matter (see
    # services/common/leaderelection.py).
    component = Component(COMPONENT, build_parser(), check=check, netagent_timeout=FENCING_MARGIN,
                          netagent_retry_deadline=0.0)
    return run_component(component, build, argv)


if __name__ == "__main__":
    sys.exit(main())
