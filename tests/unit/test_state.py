"""The persisted desired state round-trips and never carries a private key."""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from sandbox.testkit.resources import SAMPLE_TUNNEL
from services.common.tunnelspec import TunnelSpec
from services.netagent import state


def test_round_trip(tmp_path: Path) -> None:
    spec = TunnelSpec.parse(**SAMPLE_TUNNEL, persistent_keepalive=25)
    st = state.AgentState(
        listen_port=5871,
        mtu=1340,
        epoch=4,
        active_until_wall=123.5,
        tunnels={spec.cluster_id: spec},
        endpoints={spec.cluster_id: IPv4Address("192.0.2.10")},
        nat_maps={spec.cluster_id: {IPv4Address("10.0.0.5"): IPv4Address("10.201.0.9")}},
    )
    path = str(tmp_path / "s.json")
    state.save(path, st)
    assert os.stat(path).st_mode & 0o077 == 0  # mkstemp: owner-only
    back = state.load(path)
    assert back == st
    assert "private" not in Path(path).read_text()


def test_missing_is_none_and_corrupt_is_an_error(tmp_path: Path) -> None:
    assert state.load(str(tmp_path / "absent.json")) is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        state.load(str(bad))
