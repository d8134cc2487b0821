"""liqo-netagent: the privileged dataplane daemon (serve), the node uninstaller (cleanup) and the
gateway pod's wireguard container (wireguard: execs wireguard-go in the foreground).

The heavy modules (the agent, gRPC) are imported by the commands that need them: the
wireguard container's start is on the traffic's path when it restarts."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from services.common.httpendpoint import BindError, bind_endpoints, check_address, health_routes
from services.common.logging import setup_logging
from services.netagent.config import AgentConfig

if TYPE_CHECKING:
    from services.netagent.agent import Agent
    from services.netagent.server import SocketSpec

log = logging.getLogger("liqo-netagent")
D = AgentConfig()
SWITCH_INTERVAL = 0.0005  # seconds (CPython's default is 0.005)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to each flag's help unless the help states its default in words: an
    empty, None or False default would print as "(default: )", "(default: None)", "(default: False)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        return text if "(default:" in text else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="liqo-netagent",
        description="Privileged Liqo gateway dataplane agent: serves liqo.netagent.v1 on Unix sockets, one "
        "per controller role plus the operator's. Each role socket serves its role's methods and the "
        "reads (GetInfo, WatchRole, ListTunnels, WatchTunnelStatus, health, reflection); any other "
        "method answers PERMISSION_DENIED. Each socket has its own threads and a bound on concurrent "
        "streams (RESOURCE_EXHAUSTED over it), so no caller can starve another.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "command",
        nargs="?",
        choices=["serve", "cleanup", "wireguard"],
        default="serve",
        help="serve the API; or remove every Liqo object on this node (uninstall) and exit; or be the "
        "gateway pod's wireguard container: exec `wireguard-go -f DEVICE` when the implementation "
        "resolves to userspace (as serve resolves it), else idle until SIGTERM",
    )
    p.add_argument(
        "--socket",
        default=D.socket_path,
        help="the operator's socket: every method (grpcurl from inside the netagent container); keep it "
        "in the netagent's private directory, which no controller mounts (mode 0660, the agent's group)",
    )
    p.add_argument(
        "--labeler-socket",
        default=D.labeler_socket,
        help="the labeler's socket: SetRole plus reads; in a volume only the labeler and the netagent "
        "mount; empty = not served",
    )
    p.add_argument(
        "--tunnel-socket",
        default=D.tunnel_socket,
        help="the tunnel controller's socket: ConfigureDevice, EnsureTunnel, DeleteTunnel plus reads; in a "
        "volume only that controller and the netagent mount; empty = not served",
    )
    p.add_argument(
        "--natmap-socket",
        default=D.natmap_socket,
        help="the NAT controller's socket: SetNatMappings, DeleteNatMappings plus reads; in a volume only "
        "that controller and the netagent mount; empty = not served",
    )
    p.add_argument(
        "--socket-group",
        default="",
        help="group (name or gid) given to the role sockets (mode 0660): the controllers' group; empty "
        "keeps the agent's group (default: empty, the agent's group)",
    )
    p.add_argument("--netns", default=D.netns_name, help="name of the gateway network namespace")
    p.add_argument("--host-veth", default=D.host_veth, help="veth end in the host namespace")
    p.add_argument("--gateway-veth", default=D.gateway_veth, help="veth end in the gateway namespace")
    p.add_argument("--wg-device", default=D.wg_device, help="WireGuard device name")
    p.add_argument("--listen-port", type=int, default=D.listen_port, help="WireGuard UDP port")
    p.add_argument("--mtu", type=int, default=D.mtu, help="MTU of the tunnel and veth (underlay MTU - 60)")
    p.add_argument("--table-id", type=int, default=D.table_id, help="host routing table for remote CIDRs")
    p.add_argument(
        "--rule-priority", type=int, default=D.rule_priority, help="priority of the host policy rules"
    )
    p.add_argument(
        "--tunnel-ip", default=str(D.tunnel_ip), help="address of the WireGuard device (probe target)"
    )
    p.add_argument("--probe-port", type=int, default=D.probe_port, help="UDP port of the connectivity probe")
    p.add_argument(
        "--probe-interval", type=float, default=D.probe_interval, help="seconds between probe pings"
    )
    p.add_argument(
        "--probe-loss-threshold",
        type=int,
        default=D.probe_loss_threshold,
        help="lost pings before a tunnel is disconnected",
    )
    p.add_argument(
        "--wireguard-implementation",
        choices=["auto", "kernel", "userspace"],
        default=D.wireguard_implementation,
        help="auto: kernel module when present, else wireguard-go",
    )
    p.add_argument(
        "--wireguard-go-mode",
        choices=["spawn", "external"],
        default=D.wireguard_go_mode,
        help="who runs wireguard-go (userspace only): spawn = this agent starts it as a daemon; "
        "external = the pod's wireguard container (`liqo-netagent wireguard`) does, sharing "
        "/var/run/wireguard: the agent waits for its socket and re-programs a device that came back",
    )
    p.add_argument(
        "--state-path",
        default=D.state_path,
        help="where desired state is kept for restart adoption; its directory must be private (created "
        "0700 when absent; the agent refuses to start if it is not root's or is group- or world-writable) "
        "and mounted by no controller",
    )
    p.add_argument(
        "--resync-interval",
        type=float,
        default=D.resync_interval,
        help="seconds between re-reads of the kernel that repair drift in Liqo-owned state",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=D.shutdown_grace,
        help="on SIGTERM while ACTIVE, keep serving at most this many seconds, until the labeler (stopped "
        "by the same pod deletion) has withdrawn the role and can hand the Lease over at once; the "
        "dataplane runs on meanwhile; 0 = stop at once",
    )
    p.add_argument(
        "--metrics-address", default=D.metrics_address,
        help="host:port of Prometheus /metrics (\":PORT\" = every address); empty = off; a port in use "
        "is an error at start (default: empty, off)",
    )
    p.add_argument(
        "--health-address", default=D.health_address,
        help="host:port of /healthz (200 while the process serves) and /readyz (200 once started, "
        "a standby agent included); empty = off; a port in use is an error at start (default: empty, off)",
    )
    # The protected address space (docs/security.md): what no tunnel or NAT mapping may reach.
    p.add_argument(
        "--pod-cidr",
        type=_cidr,
        default=None,
        help="this cluster's pod CIDR: no remote CIDR may overlap it and every tunnel's local pod CIDR"
        " must equal it; unset = neither check (default: unset)",
    )
    p.add_argument(
        "--external-cidr",
        type=_cidr,
        default=None,
        help="this cluster's external CIDR: no remote CIDR may overlap it and every tunnel's local"
        " external CIDR must equal it; unset = neither check (default: unset)",
    )
    p.add_argument(
        "--service-cidr",
        type=_cidr,
        default=None,
        help="this cluster's service CIDR: no remote CIDR may overlap it; unset = no check (default: unset)",
    )
    p.add_argument(
        "--min-remote-prefix",
        type=_prefix,
        default=D.min_remote_prefix,
        help="remote CIDRs shorter than this prefix length are refused",
    )
    p.add_argument(
        "--allow-privileged-ports",
        action="store_true",
        help="let ConfigureDevice set a WireGuard listen port below 1024 (default: off, refused)",
    )
    p.add_argument(
        "--max-tunnels", type=int, default=D.max_tunnels, help="tunnels at most (RESOURCE_EXHAUSTED beyond)"
    )
    p.add_argument(
        "--max-nat-entries",
        type=int,
        default=D.max_nat_entries,
        help="NAT entries at most, in total across clusters (RESOURCE_EXHAUSTED beyond)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log verbosity")
    return p


def _cidr(value: str) -> IPv4Network:
    try:
        return IPv4Network(value, strict=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not a canonical IPv4 CIDR ({e})") from None


def _prefix(value: str) -> int:
    n = int(value)
    if not 1 <= n <= 32:
        raise argparse.ArgumentTypeError(f"{value} not in 1..32")
    return n


def config_from_args(a: argparse.Namespace) -> AgentConfig:
    from services.netagent.server import group_id

    return AgentConfig(
        socket_path=a.socket,
        labeler_socket=a.labeler_socket,
        tunnel_socket=a.tunnel_socket,
        natmap_socket=a.natmap_socket,
        socket_group=group_id(a.socket_group) if a.socket_group else None,
        netns_name=a.netns,
        host_veth=a.host_veth,
        gateway_veth=a.gateway_veth,
        wg_device=a.wg_device,
        listen_port=a.listen_port,
        mtu=a.mtu,
        table_id=a.table_id,
        rule_priority=a.rule_priority,
        tunnel_ip=IPv4Address(a.tunnel_ip),
        probe_port=a.probe_port,
        probe_interval=a.probe_interval,
        probe_loss_threshold=a.probe_loss_threshold,
        wireguard_implementation=a.wireguard_implementation,
        state_path=a.state_path,
        resync_interval=a.resync_interval,
        shutdown_grace=a.shutdown_grace,
        metrics_address=a.metrics_address,
        health_address=a.health_address,
        wireguard_go_mode=a.wireguard_go_mode,
        pod_cidr=a.pod_cidr,
        external_cidr=a.external_cidr,
        service_cidr=a.service_cidr,
        min_remote_prefix=a.min_remote_prefix,
        allow_privileged_ports=a.allow_privileged_ports,
        max_tunnels=a.max_tunnels,
        max_nat_entries=a.max_nat_entries,
    )


def socket_specs(cfg: AgentConfig) -> list[SocketSpec]:
    """The sockets to serve: the operator's (private, every method) and each configured role socket."""
    from services.netagent.access import SocketRole
    from services.netagent.server import SocketPathError, SocketSpec

    roles = [
        (SocketRole.LABELER, cfg.labeler_socket),
        (SocketRole.TUNNEL, cfg.tunnel_socket),
        (SocketRole.NATMAP, cfg.natmap_socket),
    ]
    specs = [SocketSpec(SocketRole.OPERATOR, cfg.socket_path, None, private=True)]
    specs += [SocketSpec(role, path, cfg.socket_group) for role, path in roles if path]
    paths = [os.path.abspath(s.path) for s in specs]
    if len(set(paths)) != len(paths):
        raise SocketPathError("--socket, --labeler-socket, --tunnel-socket and --natmap-socket must differ")
    return specs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "wireguard":
        from services.netagent import wgcontainer

        return wgcontainer.run(AgentConfig(wg_device=args.wg_device, netns_name=args.netns,
                                           wireguard_implementation=args.wireguard_implementation))
    try:
        check_address(args.metrics_address, "--metrics-address")
        check_address(args.health_address, "--health-address")
    except ValueError as e:
        print(f"liqo-netagent: {e}", file=sys.stderr)
        return 2
    setup_logging("netagent", args.log_level)
    cfg = config_from_args(args)
    if args.command == "cleanup":
        return cleanup(cfg)
    return serve(cfg)


def cleanup(cfg: AgentConfig) -> int:
    from services.netagent import agent as agent_mod
    from services.netagent.server import SocketPathError, remove_stale_socket

    agent_mod.cleanup(cfg)
    for path in (cfg.labeler_socket, cfg.tunnel_socket, cfg.natmap_socket):
        if path:
            with contextlib.suppress(SocketPathError):
                remove_stale_socket(path)
    log.info("removed every Liqo object on this node")
    return 0


def drain(agent: Agent, grace: float) -> None:
    """After SIGTERM: while the role is ACTIVE, keep serving up to `grace` seconds so the labeler can
    withdraw it (and then release the Lease at once) before this agent goes away."""
    from services.netagent.plan.role import Role

    deadline = time.monotonic() + grace
    if agent.role().role is Role.ACTIVE and grace > 0:
        log.info("draining: serving until the ACTIVE role is withdrawn", extra={"grace_s": grace})
    while agent.role().role is Role.ACTIVE and time.monotonic() < deadline:
        time.sleep(0.02)


def fail_closed(agent: Agent, cfg: AgentConfig) -> None:
    """A start-up that failed after the kernel was touched: a restored grant may have programmed
    peers that no agent would fence. Demote first (the fence then keeps any thread still running
    from re-adding them), stop, and empty the device whatever state the agent reached."""
    from services.netagent import agent as agent_mod
    from services.netagent.plan.role import Role

    for step, fn in (("demote", lambda: agent.set_role(Role.STANDBY, 0, 0.0, "start-up failed")),
                     ("stop", agent.stop)):
        try:
            fn()
        except Exception as e:  # the next step still runs: the peers must go
            log.error("start-up failed: could not %s the agent", step, extra={"error": str(e)})
    agent_mod.withdraw_peers(cfg)


def serve(cfg: AgentConfig) -> int:
    from services.netagent import agent as agent_mod
    from services.netagent.metrics import NetagentMetrics, metrics_route
    from services.netagent.privdir import UnsafeDirectory, ensure_private_dir
    from services.netagent.server import SocketPathError, serve_sockets

    try:
        specs = socket_specs(cfg)
    except SocketPathError as e:
        print(f"liqo-netagent: refusing to start: {e}", file=sys.stderr)
        return 1
    # The ports first: a busy one (the pod is hostNetwork: the node's ports) is one line naming the
    # flag, exit status 2, and nothing was created or adopted (no directory, socket or kernel object).
    try:
        metrics_ep, health_ep = bind_endpoints((cfg.metrics_address, "--metrics-address"),
                                               (cfg.health_address, "--health-address"))
    except BindError as e:
        print(f"liqo-netagent: {e}", file=sys.stderr)
        return 2
    endpoints = [e for e in (metrics_ep, health_ep) if e is not None]
    try:
        ensure_private_dir(os.path.dirname(os.path.abspath(cfg.state_path)))
    except UnsafeDirectory as e:
        print(f"liqo-netagent: refusing to start: {e}", file=sys.stderr)
        for endpoint in endpoints:
            endpoint.stop()
        return 1
    # Fencing latency: a thread that waits for the GIL (SetRole, the expiry watcher, each socket
    # read of a wireguard-go exchange) waits up to the switch interval behind a CPU-bound one (a
    # 65 536-entry NAT map being parsed); 5 ms per hand-off added up to ~200 ms under load.
    sys.setswitchinterval(SWITCH_INTERVAL)
    metrics = NetagentMetrics(device=cfg.wg_device)
    agent = agent_mod.Agent(
        cfg, on_apply=metrics.observe_apply, on_state_skipped=metrics.observe_state_skipped
    )
    serving = threading.Event()
    done = threading.Event()
    if metrics_ep is not None:
        metrics_ep.route("/metrics", metrics_route(metrics.registry))
    if health_ep is not None:
        # Live while the process serves; ready once started (whatever the role) and serving.
        for path, fn in health_routes(lambda: not done.is_set(),
                                      lambda: serving.is_set() and agent.started).items():
            health_ep.route(path, fn)
        health_ep.start()
    try:
        # Every socket bound before the kernel is touched: one that cannot be bound stops the start
        # here, before a restored grant programs any peer.
        try:
            server = serve_sockets(agent, specs, metrics.observe_rpc, start=False)
        except (SocketPathError, OSError) as e:
            print(f"liqo-netagent: refusing to start: {e}", file=sys.stderr)
            agent_mod.withdraw_peers(cfg)  # an earlier agent's peers: nobody would fence them
            return 1
        try:
            agent.start()
            metrics.bind(agent)
            if metrics_ep is not None:
                metrics_ep.start()
            server.start()
        except BaseException:
            log.exception("start-up failed: withdrawing the WireGuard peers")
            server.stop(None)
            fail_closed(agent, cfg)
            raise
        serving.set()

        def on_signal(signum: int, _frame: object) -> None:
            log.info("stopping: kernel state is left in place", extra={"signal": signum})
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # Not a bare wait(): the kernel may deliver the signal to any thread (gRPC's, the probe's);
        # Python then runs the handler only when the main thread next wakes, which a lock wait
        # without a timeout never does (seen: SIGTERM ignored for 15 s in CI).
        while not done.wait(1.0):
            pass
        drain(agent, cfg.shutdown_grace)
        server.stop(grace=0.5).wait()
        agent.stop()
        return 0
    finally:
        done.set()
        for endpoint in endpoints:
            endpoint.stop()


if __name__ == "__main__":
    sys.exit(main())
