"""The one way a controller process starts and stops.

`run_component` parses the flags (the common ones from `add_runtime_flags` plus the component's),
checks them (a bad value or a missing Downward-API variable: one line on stderr, exit status 2),
binds the /metrics and /healthz, /readyz ports (a busy one: one line naming the flag, exit status 2,
before anything else happened), sets up JSON logging, opens the API client, the Manager (SIGTERM and
SIGINT) and the netagent's gRPC client, lets `build` wire the component onto them, runs until a
signal, and closes both clients whatever happens.

The netagent itself never imports this module (it opens a NetAgentClient and the Kubernetes client).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from services.common.httpendpoint import BindError, bind_endpoints
from services.common.kube import Backoff, KubeClient, Manager, RuntimeConfig, setup_logging
from services.common.netagent_client import NetAgentClient

__all__ = ["Component", "Runtime", "parse_config", "run_component"]

log = logging.getLogger(__name__)

Check = Callable[[argparse.Namespace, RuntimeConfig], RuntimeConfig]


@dataclass(frozen=True)
class Component:
    """What differs between the controllers' start-up.

    `check(args, cfg)` validates the component's own flags (ValueError with the message to print) and
    may return the config with POD_NAME/POD_NAMESPACE/POD_IP overridden by flags. `require_env` names
    the Downward-API variables that must be set once `check` has run. The netagent client's
    per-call timeout and retry deadline default to --request-timeout and the client's own default."""

    name: str
    parser: argparse.ArgumentParser
    require_env: tuple[str, ...] = ()
    check: Check = field(default=lambda _args, cfg: cfg)
    netagent_timeout: float | None = None
    netagent_retry_deadline: float | None = None


@dataclass(frozen=True)
class Runtime:
    """What `build` wires the component onto."""

    args: argparse.Namespace
    cfg: RuntimeConfig
    mgr: Manager
    netagent: NetAgentClient

    @property
    def backoff(self) -> Backoff:
        """The per-object retry backoff of --retry-base-delay / --retry-max-delay."""
        return Backoff(base=self.cfg.retry_base_delay, cap=self.cfg.retry_max_delay)


def parse_config(
    component: Component, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, RuntimeConfig]:
    """The parsed flags and the checked config; ValueError says what is wrong (--help and argparse's
    own usage errors exit as argparse does)."""
    args = component.parser.parse_args(argv)
    cfg = component.check(args, RuntimeConfig.from_args(args))
    cfg.require_env(*component.require_env)
    return args, cfg


def run_component(
    component: Component, build: Callable[[Runtime], None], argv: Sequence[str] | None = None
) -> int:
    """Starts the component, blocks until SIGTERM/SIGINT, and returns the exit status."""
    try:
        args, cfg = parse_config(component, argv)
    except ValueError as e:
        print(f"{component.name}: {e}", file=sys.stderr)
        return 2
    # The ports first, before any client, Secret or netagent call: a busy port (on a hostNetwork pod,
    # any other node agent's) is one line naming the flag, and nothing has been half started.
    try:
        endpoints = bind_endpoints((cfg.metrics_bind_address, "--metrics-bind-address"),
                                   (cfg.health_bind_address, "--health-bind-address"))
    except BindError as e:
        print(f"{component.name}: {e}", file=sys.stderr)
        return 2
    setup_logging(component.name, cfg.log_level)
    metrics_server, health_server = endpoints
    try:
        client = KubeClient.from_kubeconfig(cfg.kubeconfig, timeout=cfg.request_timeout)
    except BaseException:
        for endpoint in endpoints:
            if endpoint is not None:
                endpoint.stop()
        raise
    try:
        mgr = Manager(component.name, client, metrics_server=metrics_server, health_server=health_server,
                      pod_name=cfg.pod_name or cfg.pod_ip, watch_timeout=cfg.watch_timeout)
        timeout = cfg.request_timeout if component.netagent_timeout is None else component.netagent_timeout
        if component.netagent_retry_deadline is None:
            netagent = NetAgentClient(cfg.netagent_socket, timeout=timeout)
        else:
            netagent = NetAgentClient(cfg.netagent_socket, timeout=timeout,
                                      retry_deadline=component.netagent_retry_deadline)
        try:
            build(Runtime(args, cfg, mgr, netagent))
            log.info("starting", extra={"netagent_socket": cfg.netagent_socket,
                                        "metrics_bind_address": cfg.metrics_bind_address,
                                        "health_bind_address": cfg.health_bind_address})
            return mgr.run()
        finally:
            netagent.close()
    finally:
        for endpoint in endpoints:
            if endpoint is not None:
                endpoint.stop()
        client.close()
