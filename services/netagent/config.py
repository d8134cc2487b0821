"""Netagent configuration: every name, port and number of the dataplane, with Liqo's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from services.common.vocabulary import NETAGENT_PRIVATE_DIR, netagent_socket

# Next hops; never assigned to an interface (static neighbours make them reachable).
GATEWAY_VETH_IP = IPv4Address("169.254.100.1")  # used from the host, points at liqo.gateway
HOST_VETH_IP = IPv4Address("169.254.100.2")  # used from liqo-netns, points at liqo.host
TUNNEL_IP = IPv4Address("169.254.0.1")  # on the WireGuard device; the probe's address


@dataclass(frozen=True)
class AgentConfig:
    # The operator's socket: every method, in the netagent's private directory (no controller mounts it).
    socket_path: str = f"{NETAGENT_PRIVATE_DIR}/netagent.sock"
    # One socket per controller role, each in a volume only that controller and the netagent mount;
    # "" = not served. See services/netagent/access.py for what each serves.
    labeler_socket: str = netagent_socket("labeler")
    tunnel_socket: str = netagent_socket("tunnel")
    natmap_socket: str = netagent_socket("natmap")
    # Group that may use the role sockets (the controllers' group); None keeps the process's group.
    socket_group: int | None = None
    netns_name: str = "liqo-netns"
    host_veth: str = "liqo.host"
    gateway_veth: str = "liqo.gateway"
    wg_device: str = "liqo.tunnel"
    listen_port: int = 5871
    mtu: int = 1340
    table_id: int = 18952
    # Priority of the host policy rules for table_id: after `local` (0), before `main` (32766).
    rule_priority: int = 18952
    gateway_veth_ip: IPv4Address = GATEWAY_VETH_IP
    host_veth_ip: IPv4Address = HOST_VETH_IP
    tunnel_ip: IPv4Address = TUNNEL_IP
    probe_port: int = 12345
    probe_interval: float = 2.0
    probe_loss_threshold: int = 5
    # "auto" (kernel module when present, else wireguard-go), "kernel" or "userspace".
    wireguard_implementation: str = "auto"
    # Who runs wireguard-go (userspace only): "spawn" (the agent starts it as a daemon) or "external"
    # (the gateway pod's wireguard container does; the agent waits for its socket and re-programs
    # a device that came back).
    wireguard_go_mode: str = "spawn"
    # Where the agent keeps what it was asked (desired tunnels, NAT maps, role) to adopt after restart:
    # in the netagent's private directory (0700, root's; refused otherwise), which no controller mounts.
    state_path: str = f"{NETAGENT_PRIVATE_DIR}/state.json"
    # How often the agent re-reads the kernel and repairs drift (a flushed chain, a deleted route,
    # a veth whose MAC changed); Liqo re-enforced its firewall every 5 s.
    resync_interval: float = 10.0
    metrics_address: str = ""  # "host:port"; empty disables the endpoint
    # On SIGTERM while ACTIVE, keep serving this long at most, until the role is withdrawn: a pod
    # deletion stops the labeler at the same moment, and it may only hand the Lease over (at once)
    # after setting this agent STANDBY; an agent gone first leaves it waiting for the Lease to expire.
    shutdown_grace: float = 3.0
    health_address: str = ""  # "host:port" of /healthz and /readyz; empty disables the endpoint

    # The protected address space (docs/security.md, services/netagent/plan/protect.py). This
    # cluster's CIDRs: when set, no remote CIDR may overlap them and a tunnel's local pod and external
    # CIDRs must equal them; None skips both.
    pod_cidr: IPv4Network | None = None
    external_cidr: IPv4Network | None = None
    service_cidr: IPv4Network | None = None
    min_remote_prefix: int = 8  # remote CIDRs wider than this are refused
    allow_privileged_ports: bool = False  # a WireGuard listen port below 1024
    # Bounds (RESOURCE_EXHAUSTED beyond them): tunnels, and NAT entries in total across clusters.
    max_tunnels: int = 256
    max_nat_entries: int = 65536
