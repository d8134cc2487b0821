"""liqo-tunnel-controller: reconciles TunnelEndpoints into netagent tunnels while this gateway is active."""

from __future__ import annotations

import argparse
import sys

from services.common.component import Component, Runtime, run_component
from services.common.kube import add_runtime_flags
from services.common.vocabulary import KEY_SECRET
from services.tunnel.controller import TunnelController, TunnelOptions

COMPONENT = "liqo-tunnel-controller"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=COMPONENT,
        description="Reconciles net.liqo.io/v1alpha1 TunnelEndpoints into WireGuard tunnels through the "
        "netagent, while the netagent's role is ACTIVE, and writes their status. Owns the shared "
        "WireGuard key Secret. Environment: POD_NAMESPACE (required: where the key Secret lives), "
        "POD_IP (required: written as status.gatewayIP), POD_NAME (Event source).",
    )
    add_runtime_flags(p, default_metrics=":5873", default_health="127.0.0.1:5877", netagent_role="tunnel")
    g = p.add_argument_group("tunnels")
    g.add_argument("--wireguard-secret-name", default=KEY_SECRET,
                   help="Secret in POD_NAMESPACE holding the WireGuard key pair shared by all replicas "
                   "(created if absent) (default: %(default)s)")
    g.add_argument("--listen-port", type=int, default=0,
                   help="WireGuard UDP port to configure on the netagent; 0 keeps the netagent's (5871)"
                   " (default: %(default)s)")
    g.add_argument("--mtu", type=int, default=0,
                   help="MTU of the WireGuard device; 0 keeps the netagent's (1340)"
                   " (default: %(default)s)")
    g.add_argument("--dns-refresh-interval", type=float, default=60.0, metavar="SECONDS",
                   help="how often tunnels whose endpointIP is a DNS name are re-ensured, which "
                   "re-resolves the name (the current address is kept while still in the answer)"
                   " (default: %(default)s)")
    g.add_argument("--latency-update-interval", type=float, default=30.0, metavar="SECONDS",
                   help="minimum time between two status writes that only refresh the latency "
                   "(a connection state change is written at once) (default: %(default)s)")
    g.add_argument("--status-min-interval", type=float, default=5.0, metavar="SECONDS",
                   help="minimum interval the netagent's status stream reports an unchanged tunnel"
                   " (default: %(default)s)")
    g.add_argument("--persistent-keepalive", type=int, default=0, metavar="SECONDS",
                   help="WireGuard persistent keepalive for every peer, 0 disables it (the 2 s "
                   "connectivity probe already keeps NAT mappings open)"
                   " (default: %(default)s)")
    return p


def build(rt: Runtime) -> None:
    args, cfg = rt.args, rt.cfg
    TunnelController(
        rt.mgr,
        rt.netagent,
        TunnelOptions(
            pod_namespace=cfg.pod_namespace,
            pod_ip=cfg.pod_ip,
            secret_name=args.wireguard_secret_name,
            listen_port=args.listen_port,
            mtu=args.mtu,
            dns_refresh=args.dns_refresh_interval,
            latency_interval=args.latency_update_interval,
            status_min_interval=args.status_min_interval,
            persistent_keepalive=args.persistent_keepalive,
        ),
        workers=cfg.workers,
        resync_period=cfg.resync_period,
        backoff=rt.backoff,
    )


def main(argv: list[str] | None = None) -> int:
    component = Component(COMPONENT, build_parser(), require_env=("POD_NAMESPACE", "POD_IP"))
    return run_component(component, build, argv)


if __name__ == "__main__":
    sys.exit(main())
