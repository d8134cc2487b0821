"""NatMapping -> SetNatMappings map: valid entries kept, invalid ones reported (pure table)."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.tunnelspec import SpecError
from services.natmap.mapping import plan_from_natmapping


def nm(mappings: Any, **spec: Any) -> dict[str, Any]:
    base = {"clusterID": "c1", "podCIDR": "10.201.0.0/16", "externalCIDR": "10.220.0.0/16",
            "clusterMappings": mappings}
    base.update(spec)
    return {"metadata": {"name": "natmapping-x"}, "spec": base}


def test_valid_map_passes_through() -> None:
    p = plan_from_natmapping(nm({"169.254.0.1": "10.220.0.1", "10.200.3.7": "10.220.0.2"}))
    assert p.cluster_id == "c1"
    assert p.mappings == {"169.254.0.1": "10.220.0.1", "10.200.3.7": "10.220.0.2"}
    assert p.invalid == []


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({"not-an-ip": "10.220.0.9"}, "key is not an IPv4 address"),
        ({"10.200.0.9": "10.220.0.999"}, "not an IPv4 address"),
        ({"10.200.0.9": "10.99.0.1"}, "outside externalCIDR"),
        ({"10.200.0.9": "10.220.0.0"}, "network or broadcast"),
        ({"10.200.9.9": "10.220.0.2"}, "already mapped to 10.200.3.7"),  # duplicate new address
    ],
)
def test_invalid_entries_are_reported_and_valid_ones_kept(entry: dict[str, str], why: str) -> None:
    p = plan_from_natmapping(nm({"10.200.3.7": "10.220.0.2", **entry}))
    assert p.mappings == {"10.200.3.7": "10.220.0.2"}
    assert len(p.invalid) == 1 and why in p.invalid[0]


def test_empty_map_is_valid_and_empty() -> None:
    assert plan_from_natmapping(nm({})).mappings == {}
    assert plan_from_natmapping(nm(None)).mappings == {}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"clusterID": "bad id"}, "spec.clusterID"),
        ({"clusterID": None}, "spec.clusterID"),
        ({"externalCIDR": "10.220.0.1/16"}, "spec.externalCIDR"),
        ({"clusterMappings": ["x"]}, "spec.clusterMappings"),
    ],
)
def test_unusable_natmapping_raises(spec: dict[str, Any], field: str) -> None:
    m = spec.pop("clusterMappings", {})
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        plan_from_natmapping(nm(m, **spec))
