"""liqo-natmap-controller: applies NatMappings through the netagent while this gateway is active."""

from __future__ import annotations

import argparse
import logging
import sys

from services.common.kube import Backoff, KubeClient, Manager, RuntimeConfig, add_runtime_flags, setup_logging
from services.common.netagent_client import NetAgentClient
from services.natmap.controller import NatMappingController

COMPONENT = "liqo-natmap-controller"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=COMPONENT,
        description="Reconciles net.liqo.io/v1alpha1 NatMappings (cluster-scoped) into DNAT rules through "
        "the netagent, while the netagent's role is ACTIVE: the whole map of a cluster in one call; "
        "invalid entries are reported in an Event and skipped. Environment: POD_NAME (Event source).",
    )
    add_runtime_flags(p, default_http=":8082")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = RuntimeConfig.from_args(args)
    except ValueError as e:
        print(f"{COMPONENT}: {e}", file=sys.stderr)
        return 2
    setup_logging(COMPONENT, cfg.log_level)
    client = KubeClient.from_kubeconfig(cfg.kubeconfig, timeout=cfg.request_timeout)
    mgr = Manager(COMPONENT, client, http_bind_address=cfg.http_bind_address,
                  pod_name=cfg.pod_name or cfg.pod_ip, watch_timeout=cfg.watch_timeout)
    agent = NetAgentClient(cfg.netagent_socket, timeout=cfg.request_timeout)
    NatMappingController(mgr, agent, workers=cfg.workers, resync_period=cfg.resync_period,
                         backoff=Backoff(base=cfg.retry_base_delay, cap=cfg.retry_max_delay))
    logging.getLogger(__name__).info("starting", extra={"netagent_socket": cfg.netagent_socket})
    try:
        return mgr.run()
    finally:
        agent.close()
        client.close()


if __name__ == "__main__":
    sys.exit(main())
