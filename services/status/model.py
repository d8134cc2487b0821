"""What `liqo-gateway status` knows about one cluster: the raw reads (a `Snapshot`, gathered by
`gather.py`) and what the pure part computes from them (`ClusterReport`, `Finding`).

Plain data only: no Kubernetes client, no gRPC, no protobuf, so the report and the diagnoses are
pure functions over these and can be tested as tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

JSON = dict[str, Any]

ERROR = "error"
WARNING = "warning"

# The netagent's roles as the status command prints them (GetInfo's enum without its prefix).
AGENT_ACTIVE = "ACTIVE"
AGENT_STANDBY = "STANDBY"


class SecretState(StrEnum):
    PRESENT = "present"
    MISSING = "missing"  # 404
    UNUSABLE = "unusable"  # there, but not a key pair the tunnel controller accepts
    UNKNOWN = "unknown"  # could not be read (forbidden, API error)


@dataclass(frozen=True)
class AgentTunnel:
    """One entry of a netagent's ListTunnels (state: CONNECTING, CONNECTED, DISCONNECTED, FENCED)."""

    cluster_id: str
    owner: str  # the claiming TunnelEndpoint, "namespace/name"
    state: str
    latency_s: float | None
    handshake_age_s: float | None  # None: no handshake yet
    rx_bytes: int
    tx_bytes: int
    nat_entries: int
    state_since: float | None  # POSIX seconds


@dataclass(frozen=True)
class AgentRead:
    """One netagent socket's answers (GetInfo, ListTunnels), or why it could not be read. `pod` is
    the gateway pod the socket belongs to ("" when the operator did not say)."""

    pod: str
    socket: str
    role: str = ""  # ACTIVE, STANDBY, UNSPECIFIED; "" when unreachable
    epoch: int = 0
    mtu: int = 0
    public_key: str = ""
    device_configured: bool = False
    implementation: str = ""
    tunnels: tuple[AgentTunnel, ...] = ()
    error: str = ""

    @property
    def reachable(self) -> bool:
        return not self.error


@dataclass
class Snapshot:
    """Everything read from one cluster at `now` (POSIX seconds). Lists hold the objects as the API
    server sent them; `key_public` is the key Secret's public key (the private key is never kept)."""

    name: str
    namespace: str
    now: float
    pods: list[JSON] = field(default_factory=list)
    services: list[JSON] = field(default_factory=list)
    # Service name -> its EndpointSlices; None when the API serves none (no endpoints controller).
    endpoint_slices: dict[str, list[JSON]] | None = None
    lease: JSON | None = None
    tunnel_endpoints: list[JSON] = field(default_factory=list)
    nat_mappings: list[JSON] = field(default_factory=list)
    events: list[JSON] = field(default_factory=list)  # in the TunnelEndpoints' namespaces
    namespace_obj: JSON | None = None
    namespace_error: str = ""
    key_secret: SecretState = SecretState.UNKNOWN
    key_secret_name: str = ""
    key_secret_detail: str = ""
    key_public: str = ""
    agents: list[AgentRead] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)  # what could not be read, and why


@dataclass(frozen=True)
class ReplicaRow:
    pod: str
    node: str
    ip: str
    label: str  # the pod's net.liqo.io/gateway label ("" when absent)
    agent_role: str  # from GetInfo; "" unknown (no socket), "unreachable"
    epoch: int | None
    mtu: int | None
    lease_holder: bool


@dataclass(frozen=True)
class LeaseRow:
    name: str
    holder: str
    held_for_s: float | None  # since acquireTime
    renewed_ago_s: float | None  # since renewTime
    duration_s: int | None
    transitions: int | None  # the fencing epoch


@dataclass(frozen=True)
class TunnelRow:
    name: str  # namespace/name
    cluster: str  # clusterName, else clusterID
    cluster_id: str
    endpoint: str
    status: str  # the CR's status.connection.status ("" when none yet)
    message: str
    latency: str
    handshake_age_s: float | None
    rx_bytes: int | None
    tx_bytes: int | None
    nat_entries: int  # entries of the cluster's NatMappings
    agent_nat_entries: int | None  # what the active netagent applied, when reachable
    public_key: str  # the remote's, from the spec


@dataclass(frozen=True)
class Finding:
    cluster: str
    severity: str  # ERROR or WARNING
    code: str
    message: str
    fix: str


@dataclass
class ClusterReport:
    name: str
    namespace: str
    replicas: list[ReplicaRow]
    lease: LeaseRow | None
    tunnels: list[TunnelRow]
    read_errors: list[str]
