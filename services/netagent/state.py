"""What the agent was asked, kept on disk so that a restarted agent adopts instead of rebuilding.

Kernel state survives the process; this file tells the new process which of it is claimed (tunnel
specs, NAT maps, device settings, the role grant). It never holds the private key: the device keeps
it, and the public key is read back from the device.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from services.common.tunnelspec import TunnelSpec
from services.netagent.plan.natrules import NatMap

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

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "listen_port": self.listen_port,
                "mtu": self.mtu,
                "epoch": self.epoch,
                "active_until_wall": self.active_until_wall,
                "tunnels": [spec_to_dict(s) for s in self.tunnels.values()],
                "endpoints": {k: str(v) for k, v in self.endpoints.items()},
                "nat_maps": {cid: _map_strings(m) for cid, m in self.nat_maps.items()},
            },
            sort_keys=True,
        )

    @staticmethod
    def from_json(text: str) -> AgentState:
        raw = json.loads(text)
        if raw.get("version") != VERSION:
            raise ValueError(f"unsupported state version {raw.get('version')!r}")
        tunnels = {t["cluster_id"]: TunnelSpec.parse(**t) for t in raw["tunnels"]}
        return AgentState(
            listen_port=raw["listen_port"],
            mtu=raw["mtu"],
            epoch=raw["epoch"],
            active_until_wall=raw["active_until_wall"],
            tunnels=tunnels,
            endpoints={k: IPv4Address(v) for k, v in raw["endpoints"].items() if k in tunnels},
            nat_maps={
                cid: {IPv4Address(o): IPv4Address(n) for o, n in m.items()}
                for cid, m in raw["nat_maps"].items()
                if cid in tunnels
            },
        )


def load(path: str) -> AgentState | None:
    """None when there is no state; raises ValueError on a corrupt file (the caller decides)."""
    try:
        with open(path, encoding="utf-8") as f:
            return AgentState.from_json(f.read())
    except FileNotFoundError:
        return None
    except (KeyError, TypeError, json.JSONDecodeError) as e:
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
