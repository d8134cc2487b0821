"""The persisted desired state round-trips and never carries a private key."""

from __future__ import annotations

import json
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


# ---- loading validates as the API does ---------------------------------------------------------------


def _file(**over: object) -> str:
    spec = TunnelSpec.parse(**SAMPLE_TUNNEL)
    raw: dict[str, object] = {
        "version": state.VERSION,
        "listen_port": 5871,
        "mtu": 1340,
        "epoch": 2,
        "active_until_wall": 1000.0,
        "written_wall": 990.0,
        "tunnels": [state.spec_to_dict(spec)],
        "endpoints": {spec.cluster_id: "192.0.2.10"},
        "nat_maps": {spec.cluster_id: {"10.0.0.5": "10.201.0.9"}},
        "owners": {spec.cluster_id: "liqo-tenant-rome/tep-rome"},
    }
    raw.update(over)
    return json.dumps(raw)


def test_owners_and_write_time_round_trip() -> None:
    st = state.AgentState.from_json(_file())
    assert st.skipped == []
    assert st.owners == {SAMPLE_TUNNEL["cluster_id"]: "liqo-tenant-rome/tep-rome"}
    assert st.written_wall == 990.0
    assert state.AgentState.from_json(st.to_json()) == st


CID = SAMPLE_TUNNEL["cluster_id"]


@pytest.mark.parametrize(
    ("over", "kept_tunnels", "skipped"),
    [
        ({"listen_port": 0}, 1, 1),
        ({"listen_port": "5871"}, 1, 1),
        ({"mtu": 100}, 1, 1),
        ({"epoch": 2**64 - 1}, 1, 1),
        ({"epoch": True}, 1, 1),
        ({"active_until_wall": "soon"}, 1, 1),
        ({"tunnels": [{"cluster_id": "x"}]}, 0, 2),  # the tunnel, then the NAT map of CID
        ({"tunnels": ["not a dict"]}, 0, 2),
        ({"owners": {CID: "Not An Owner"}}, 0, 2),  # the tunnel, then its orphaned NAT map
        ({"endpoints": {}}, 0, 2),
        ({"endpoints": {CID: "999.1.1.1"}}, 0, 2),
        ({"nat_maps": {CID: {"10.0.0.5": "8.8.8.8"}}}, 1, 1),
        ({"nat_maps": {"ghost": {}}}, 1, 1),
        ({"tunnels": "nope", "nat_maps": {}}, 0, 0),
    ],
)
def test_entries_that_do_not_validate_are_skipped(
    over: dict[str, object], kept_tunnels: int, skipped: int
) -> None:
    st = state.AgentState.from_json(_file(**over))
    assert len(st.tunnels) == kept_tunnels
    assert len(st.skipped) == skipped, st.skipped


def test_a_repeated_key_or_overlap_keeps_the_first() -> None:
    spec = TunnelSpec.parse(**SAMPLE_TUNNEL)
    twin = state.spec_to_dict(spec) | {"cluster_id": "twin"}
    st = state.AgentState.from_json(
        _file(tunnels=[state.spec_to_dict(spec), twin], endpoints={CID: "192.0.2.10", "twin": "192.0.2.11"})
    )
    assert list(st.tunnels) == [CID] and len(st.skipped) == 1
