"""The tables of one cluster, computed from a `Snapshot` (pure: no I/O, `now` is in the snapshot)."""

from __future__ import annotations

from services.common.leaderelection import parse_time, record_from_lease
from services.common.vocabulary import GATEWAY_LABEL, LEASE_NAME, cluster_id_of
from services.status.model import (
    AGENT_ACTIVE,
    JSON,
    AgentRead,
    AgentTunnel,
    ClusterReport,
    LeaseRow,
    ReplicaRow,
    Snapshot,
    TunnelRow,
)

UNREACHABLE = "unreachable"


def _meta(obj: JSON) -> JSON:
    md = obj.get("metadata")
    return md if isinstance(md, dict) else {}


def name_of(obj: JSON) -> str:
    return str(_meta(obj).get("name") or "")


def key_of(obj: JSON) -> str:
    md = _meta(obj)
    ns = md.get("namespace")
    return f"{ns}/{md.get('name', '')}" if ns else str(md.get("name") or "")


def labels_of(obj: JSON) -> dict[str, str]:
    labels = _meta(obj).get("labels")
    return labels if isinstance(labels, dict) else {}


def gateway_label(pod: JSON) -> str:
    return str(labels_of(pod).get(GATEWAY_LABEL) or "")


def pod_ip(pod: JSON) -> str:
    status = pod.get("status") or {}
    return str(status.get("podIP") or "") if isinstance(status, dict) else ""


def live(objs: list[JSON]) -> list[JSON]:
    """Objects not being deleted: a terminating pod neither leads nor is selected for long."""
    return [o for o in objs if not _meta(o).get("deletionTimestamp")]


def agent_of(snap: Snapshot, pod: str) -> AgentRead | None:
    return next((a for a in snap.agents if a.pod and a.pod == pod), None)


def active_agent(snap: Snapshot) -> AgentRead | None:
    """The netagent whose tunnels describe the dataplane: the first reachable ACTIVE one."""
    return next((a for a in snap.agents if a.reachable and a.role == AGENT_ACTIVE), None)


def lease_holder(snap: Snapshot) -> str:
    return record_from_lease(snap.lease).holder if snap.lease else ""


def replica_rows(snap: Snapshot) -> list[ReplicaRow]:
    holder = lease_holder(snap)
    rows = []
    for pod in sorted(live(snap.pods), key=name_of):
        name = name_of(pod)
        agent = agent_of(snap, name)
        spec = pod.get("spec") or {}
        rows.append(ReplicaRow(
            pod=name,
            node=str(spec.get("nodeName") or "") if isinstance(spec, dict) else "",
            ip=pod_ip(pod),
            label=gateway_label(pod),
            agent_role=("" if agent is None else agent.role if agent.reachable else UNREACHABLE),
            epoch=agent.epoch if agent and agent.reachable else None,
            mtu=agent.mtu if agent and agent.reachable else None,
            lease_holder=bool(holder) and holder == name,
        ))
    # A socket given without its pod (the local netagent) still says something: one row of its own.
    for agent in snap.agents:
        if not agent.pod:
            rows.append(ReplicaRow(
                pod="(local netagent)", node="", ip="", label="",
                agent_role=agent.role if agent.reachable else UNREACHABLE,
                epoch=agent.epoch if agent.reachable else None,
                mtu=agent.mtu if agent.reachable else None, lease_holder=False))
    return rows


def lease_row(snap: Snapshot) -> LeaseRow | None:
    if snap.lease is None:
        return None
    rec = record_from_lease(snap.lease)
    acquired, renewed = parse_time(rec.acquire_time), parse_time(rec.renew_time)
    return LeaseRow(
        name=name_of(snap.lease) or LEASE_NAME,
        holder=rec.holder,
        held_for_s=None if acquired is None else max(0.0, snap.now - acquired),
        renewed_ago_s=None if renewed is None else max(0.0, snap.now - renewed),
        duration_s=rec.duration or None,
        transitions=rec.transitions,
    )


def nat_entries(snap: Snapshot, cluster_id: str) -> int:
    """Entries of every NatMapping naming `cluster_id` (the natmap controller applies their union)."""
    total = 0
    for nm in live(snap.nat_mappings):
        if cluster_id_of(nm) != cluster_id:
            continue
        mappings = (nm.get("spec") or {}).get("clusterMappings")
        total += len(mappings) if isinstance(mappings, dict) else 0
    return total


def _agent_tunnel(agent: AgentRead | None, key: str, cluster_id: str) -> AgentTunnel | None:
    if agent is None:
        return None
    for t in agent.tunnels:
        if t.owner == key or (not t.owner and t.cluster_id == cluster_id):
            return t
    return None


def tunnel_rows(snap: Snapshot) -> list[TunnelRow]:
    agent = active_agent(snap)
    rows = []
    for tep in sorted(snap.tunnel_endpoints, key=key_of):
        spec = tep.get("spec") or {}
        spec = spec if isinstance(spec, dict) else {}
        conn = (tep.get("status") or {}).get("connection") or {}
        ident = spec.get("clusterIdentity") or {}
        cid = cluster_id_of(tep)
        backend = spec.get("backend_config") or {}
        backend = backend if isinstance(backend, dict) else {}
        key = key_of(tep)
        at = _agent_tunnel(agent, key, cid)
        latency = str((conn.get("latency") or {}).get("value") or "")
        if at is not None and at.latency_s:
            latency = format_duration(at.latency_s)
        rows.append(TunnelRow(
            name=key,
            cluster=str(ident.get("clusterName") or cid) if isinstance(ident, dict) else cid,
            cluster_id=cid,
            endpoint=f"{spec.get('endpointIP', '')}:{backend.get('port', '')}",
            status=str(conn.get("status") or ""),
            message=str(conn.get("statusMessage") or ""),
            latency=latency,
            handshake_age_s=at.handshake_age_s if at else None,
            rx_bytes=at.rx_bytes if at else None,
            tx_bytes=at.tx_bytes if at else None,
            nat_entries=nat_entries(snap, cid),
            agent_nat_entries=at.nat_entries if at else None,
            public_key=str(backend.get("publicKey") or ""),
        ))
    return rows


def build_report(snap: Snapshot) -> ClusterReport:
    return ClusterReport(
        name=snap.name,
        namespace=snap.namespace,
        replicas=replica_rows(snap),
        lease=lease_row(snap),
        tunnels=tunnel_rows(snap),
        read_errors=list(snap.read_errors),
    )


def format_duration(seconds: float) -> str:
    """A short human duration: 850µs, 12ms, 4.2s, 3m10s, 2h05m."""
    if seconds < 0.001:
        return f"{round(seconds * 1e6)}µs"
    if seconds < 1:
        return f"{round(seconds * 1e3)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # unreachable: the loop returns at GiB
