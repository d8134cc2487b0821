"""liqo-natmap-controller: applies NatMappings through the netagent while this gateway is active."""

from __future__ import annotations

import argparse
import sys

from services.common.component import Component, Runtime, run_component
from services.common.kube import add_runtime_flags
from services.natmap.controller import NatMappingController

COMPONENT = "liqo-natmap-controller"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=COMPONENT,
        description="Reconciles net.liqo.io/v1alpha1 NatMappings (cluster-scoped) into DNAT rules through "
        "the netagent, while the netagent's role is ACTIVE: the whole map of a cluster in one call; "
        "invalid entries are reported in an Event and skipped. Environment: POD_NAME (Event source).",
    )
    add_runtime_flags(p, default_metrics=":5874", default_health="127.0.0.1:5878", netagent_role="natmap")
    return p


def build(rt: Runtime) -> None:
    NatMappingController(rt.mgr, netagent=rt.netagent, workers=rt.cfg.workers,
                         resync_period=rt.cfg.resync_period, backoff=rt.backoff)


def main(argv: list[str] | None = None) -> int:
    return run_component(Component(COMPONENT, build_parser()), build, argv)


if __name__ == "__main__":
    sys.exit(main())
