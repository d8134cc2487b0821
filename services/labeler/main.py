"""liqo-labeler: Lease leader election among the gateway replicas, fencing of the netagent's role,
`net.liqo.io/gateway=active|standby` pod labels and the gateway Service's node-IP annotation."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

from services.common.kube import (
    LEASES,
    PODS,
    SERVICES,
    Backoff,
    Controller,
    KubeClient,
    Manager,
    RuntimeConfig,
    add_runtime_flags,
    setup_logging,
)
from services.common.leaderelection import FENCING_MARGIN, Timings, record_from_lease
from services.common.netagent_client import NetAgentClient
from services.labeler.elector import Elector
from services.labeler.labeling import SERVICE_KEY, Labeling
from services.labeler.labels import DEFAULT_SELECTOR
from services.labeler.lease_lock import LeaseLock
from services.labeler.metrics import LabelerMetrics

log = logging.getLogger(__name__)

COMPONENT = "liqo-labeler"
DEFAULT_LEASE = "1d5hml1.gateway.net.liqo.io"  # Liqo's lock name, so mixed fleets never both lead
DEFAULT_HTTP = "0.0.0.0:8083"

OUTAGE_GRACE_HELP = """\
how long a leader that cannot reach the API server at all (connection errors, timeouts, 429, 5xx;
not conflicts or refusals) keeps its netagent ACTIVE after its last successful renewal. Nobody can
take the Lease during a real outage, so this keeps cross-cluster traffic up through control-plane
upgrades. It is also the split-brain bound: if only this node is cut off, another replica acquires
the Lease once it has not seen a renewal for --lease-duration, so both dataplanes can be live for up
to OUTAGE_GRACE - LEASE_DURATION seconds (53 s with the defaults); set it to --lease-duration or less
to never overlap, at the price of dropping traffic in any API outage longer than that (default 60)"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=COMPONENT,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Environment: POD_NAME (identity), POD_NAMESPACE, POD_IP (Downward API).",
    )
    add_runtime_flags(p, default_http=DEFAULT_HTTP)
    g = p.add_argument_group("leader election")
    g.add_argument(
        "--lease-name",
        default=DEFAULT_LEASE,
        help=f"coordination.k8s.io/v1 Lease used as the lock (default {DEFAULT_LEASE})",
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
        "over; also the netagent role's TTL after each renewal (default 7)",
    )
    g.add_argument(
        "--renew-deadline",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a leader whose renewals fail because the API server answers but refuses or reports a "
        "conflict steps down (netagent STANDBY) this long after its last renewal (default 5)",
    )
    g.add_argument(
        "--retry-period",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="interval between two attempts to acquire or renew the Lease (default 2)",
    )
    g.add_argument("--outage-grace", type=float, default=60.0, metavar="SECONDS", help=OUTAGE_GRACE_HELP)
    g.add_argument(
        "--election-request-timeout",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="client-side timeout of each Lease read or write, so that one attempt fits in a retry "
        "period; a timeout counts as an unreachable API server (default 1)",
    )
    lg = p.add_argument_group("labels")
    lg.add_argument(
        "--gateway-selector",
        default=DEFAULT_SELECTOR,
        help=f"label selector of the gateway pods (labelled net.liqo.io/gateway=active or standby) and, "
        f"unless --service-name is given, of the gateway Service (default {DEFAULT_SELECTOR})",
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = RuntimeConfig.from_args(args)
        timings = Timings(
            lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline,
            retry_period=args.retry_period,
            outage_grace=args.outage_grace,
        )
        timings.check()
        if args.election_request_timeout <= 0:
            raise ValueError("--election-request-timeout must be positive")
    except ValueError as e:
        parser.error(str(e))
    identity = args.identity or cfg.pod_name
    namespace = args.namespace or cfg.pod_namespace
    pod_ip = args.pod_ip if args.pod_ip is not None else cfg.pod_ip
    if not identity or not namespace:
        parser.error("an identity and a namespace are needed: set POD_NAME and POD_NAMESPACE or the flags")
    setup_logging(COMPONENT, cfg.log_level)

    client = KubeClient.from_kubeconfig(cfg.kubeconfig, timeout=cfg.request_timeout)
    mgr = Manager(
        COMPONENT,
        client,
        http_bind_address=cfg.http_bind_address,
        pod_name=identity,
        watch_timeout=cfg.watch_timeout,
    )
    metrics = LabelerMetrics(mgr.metrics.registry)
    # One attempt per SetRole with a deadline of the fencing margin: a late ACTIVE grant must not land
    # after the TTL it was computed for has started to matter (see services/common/leaderelection.py).
    agent = NetAgentClient(cfg.netagent_socket, timeout=FENCING_MARGIN, retry_deadline=0.0)

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
        backoff=Backoff(base=cfg.retry_base_delay, cap=cfg.retry_max_delay),
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
        agent,
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
        "starting",
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
    try:
        return mgr.run()
    finally:
        agent.close()


if __name__ == "__main__":
    sys.exit(main())
