"""What the agent was asked, kept on disk so that a restarted agent adopts instead of rebuilding.

Kernel state survives the process; this file tells the new process which of it is claimed (tunnel
specs, NAT maps, device settings, the role grant). It never holds the private key: the device keeps
it, and the public key is read back from the device.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import Any, TypeGuard

from services.common.tunnelspec import TunnelSpec, check_owner
from services.netagent.plan.natrules import NatMap, parse_nat_map
from services.netagent.plan.role import check_epoch

MIN_MTU, MAX_MTU = 1280, 9000
JSON_SLICE = 2048  # NAT entries per json.dumps call

VERSION = 1


def spec_to_dict(spec: TunnelSpec) -> dict[str, Any]:
    def c(v: object) -> str:
        return "" if v is None else str(v)

    return {
        "cluster_id": spec.cluster_id,
        "cluster_name": spec.cluster_name,
        "local_pod_cidr": c(spec.local_pod_cidr),
        "local_nat_pod_cidr": c(spec.local_nat_pod_cidr),
        "local_external_cidr": c(spec.local_external_cidr),
        "local_nat_external_cidr": c(spec.local_nat_external_cidr),
        "remote_pod_cidr": c(spec.remote_pod_cidr),
        "remote_nat_pod_cidr": c(spec.remote_nat_pod_cidr),
        "remote_external_cidr": c(spec.remote_external_cidr),
        "remote_nat_external_cidr": c(spec.remote_nat_external_cidr),
        "endpoint": spec.endpoint,
        "endpoint_port": spec.endpoint_port,
        "public_key": spec.public_key,
        "persistent_keepalive": spec.persistent_keepalive,
    }


def _map_strings(m: Mapping[IPv4Address, IPv4Address]) -> dict[str, str]:
    # A 10 000-entry map is persisted on every change: NatMap keeps its dotted quads ready.
    if isinstance(m, NatMap):
        return m.as_strings()
    return {str(old): str(new) for old, new in m.items()}


def _map_json(m: Mapping[IPv4Address, IPv4Address]) -> str:
    """A NAT map as a JSON object, encoded in slices: one json.dumps of a 65 536-entry map holds the
    GIL for ~15 ms in one C call, which a SetRole waiting to be served would feel (fencing latency)."""
    items = list(_map_strings(m).items())
    chunks = (json.dumps(dict(items[i : i + JSON_SLICE]))[1:-1] for i in range(0, len(items), JSON_SLICE))
    return "{" + ", ".join(c for c in chunks if c) + "}"


@dataclass
class AgentState:
    listen_port: int | None = None
    mtu: int | None = None
    epoch: int = 0
    active_until_wall: float | None = None
    tunnels: dict[str, TunnelSpec] = field(default_factory=dict)
    # Resolved endpoint address per cluster, so a restart keeps using it.
    endpoints: dict[str, IPv4Address] = field(default_factory=dict)
    nat_maps: dict[str, Mapping[IPv4Address, IPv4Address]] = field(default_factory=dict)
    # The TunnelEndpoint ("namespace/name") that claimed each cluster id; "" for a tunnel adopted from
    # a file written before owners were kept (the next EnsureTunnel claims it).
    owners: dict[str, str] = field(default_factory=dict)
    # Wall clock of the write, so a restored grant is shortened by the time the agent was down.
    written_wall: float | None = None
    # What loading skipped (one line per entry, for the log and the metric); never persisted.
    skipped: list[str] = field(default_factory=list, compare=False)

    def editable(self) -> AgentState:
        """A new desired state to edit: the dicts are copied, their values (specs, maps) are immutable."""
        return replace(
            self,
            tunnels=dict(self.tunnels),
            endpoints=dict(self.endpoints),
            nat_maps=dict(self.nat_maps),
            owners=dict(self.owners),
            skipped=[],
        )

    def to_json(self) -> str:
        rest = json.dumps(
            {
                "version": VERSION,
                "listen_port": self.listen_port,
                "mtu": self.mtu,
                "epoch": self.epoch,
                "active_until_wall": self.active_until_wall,
                "tunnels": [spec_to_dict(s) for s in self.tunnels.values()],
                "endpoints": {k: str(v) for k, v in self.endpoints.items()},
                "owners": dict(self.owners),
                "written_wall": self.written_wall,
            },
            sort_keys=True,
        )
        maps = ", ".join(f"{json.dumps(cid)}: {_map_json(m)}" for cid, m in sorted(self.nat_maps.items()))
        return '{"nat_maps": {' + maps + "}, " + rest[1:]

    @staticmethod
    def from_json(text: str) -> AgentState:
        """Parses and validates a state file with the API's own rules. A file that is not a state
        file raises ValueError; an entry that no longer validates is skipped and named in `skipped`
        (a state file must never put the agent in a crash loop)."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("state file is not a JSON object")
        if raw.get("version") != VERSION:
            raise ValueError(f"unsupported state version {raw.get('version')!r}")
        st = AgentState()
        skipped = st.skipped

        def skip(what: str, error: object) -> None:
            skipped.append(f"{what}: {error}")

        port, mtu = raw.get("listen_port"), raw.get("mtu")
        if port is not None:
            if _is_int(port) and 1 <= port <= 65535:
                st.listen_port = port
            else:
                skip("listen_port", f"{port!r} not in 1..65535")
        if mtu is not None:
            if _is_int(mtu) and MIN_MTU <= mtu <= MAX_MTU:
                st.mtu = mtu
            else:
                skip("mtu", f"{mtu!r} not in {MIN_MTU}..{MAX_MTU}")
        epoch, until, written = raw.get("epoch", 0), raw.get("active_until_wall"), raw.get("written_wall")
        try:
            st.epoch = check_epoch(epoch)
            if until is not None and not _is_number(until):
                raise ValueError(f"active_until_wall: {until!r} is not a time")
            st.active_until_wall = None if until is None else float(until)
            st.written_wall = float(written) if _is_number(written) else None
        except ValueError as e:
            skip("role grant", e)
            st.epoch, st.active_until_wall = 0, None
        endpoints = _dict(raw.get("endpoints"))
        owners = _dict(raw.get("owners"))
        keys: dict[str, str] = {}
        tunnels = raw.get("tunnels")
        for t in tunnels if isinstance(tunnels, list) else []:
            cid = str(t.get("cluster_id"))[:80] if isinstance(t, dict) else "?"
            try:
                if not isinstance(t, dict):
                    raise ValueError("not an object")
                spec = TunnelSpec.parse(**t)
                if spec.cluster_id in st.tunnels:
                    raise ValueError("cluster id repeated")
                if spec.public_key in keys:
                    raise ValueError(f"public key already used by cluster {keys[spec.public_key]!r}")
                for other in st.tunnels.values():
                    for mine in spec.allowed_ips:
                        for theirs in other.allowed_ips:
                            if mine.overlaps(theirs):
                                raise ValueError(f"remote CIDR {mine} overlaps tunnel {other.cluster_id!r}")
                owner = owners.get(spec.cluster_id, "")
                if owner:
                    check_owner(str(owner))
                ep = endpoints.get(spec.cluster_id)
                endpoint = IPv4Address(ep) if isinstance(ep, str) else None
                if endpoint is None:
                    raise ValueError("no resolved endpoint")
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                skip(f"tunnel {cid!r}", e)
                continue
            st.tunnels[spec.cluster_id] = spec
            st.endpoints[spec.cluster_id] = endpoint
            if owner:
                st.owners[spec.cluster_id] = str(owner)
            keys[spec.public_key] = spec.cluster_id
        for cid, m in _dict(raw.get("nat_maps")).items():
            tunnel = st.tunnels.get(cid)
            if tunnel is None:
                skip(f"NAT map of {str(cid)[:80]!r}", "no such tunnel")
                continue
            try:
                if not isinstance(m, dict):
                    raise ValueError("not an object")
                st.nat_maps[cid] = parse_nat_map(tunnel, m)
            except (ValueError, TypeError) as e:
                skip(f"NAT map of {cid!r}", e)
        return st


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _dict(v: object) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def load(path: str) -> AgentState | None:
    """None when there is no state; raises ValueError on a corrupt file (the caller decides)."""
    try:
        with open(path, encoding="utf-8") as f:
            return AgentState.from_json(f.read())
    except FileNotFoundError:
        return None
    except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"corrupt state file {path}: {e}") from e


def save(path: str, state: AgentState) -> None:
    write_atomic(path, state.to_json())


def write_atomic(path: str, text: str) -> None:
    """Atomic replace, so a crash mid-write leaves the previous state."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".netagent-state-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
