"""services/common/vocabulary.py's functions as tables: the cluster id a resource names, and the API
path of a resource."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.vocabulary import (
    LEASES,
    NAMESPACES,
    NAT_MAPPINGS,
    PODS,
    TUNNEL_ENDPOINTS,
    ResourceRef,
    cluster_id_of,
)


@pytest.mark.parametrize(
    ("obj", "want"),
    [
        # A TunnelEndpoint, then a NatMapping.
        ({"spec": {"clusterIdentity": {"clusterID": "cid-a", "clusterName": "a"}}}, "cid-a"),
        ({"spec": {"clusterID": "cid-b", "mappings": {}}}, "cid-b"),
        ({"spec": {"clusterIdentity": {"clusterName": "a"}}}, ""),
        ({"spec": {"clusterIdentity": "cid-a"}}, ""),  # not a mapping: no fallback to spec.clusterID
        ({"spec": {"clusterID": 7}}, ""),  # not a string
        ({"spec": {"clusterIdentity": {"clusterID": None}}}, ""),
        ({"spec": ["clusterID"]}, ""),  # spec not a mapping
        ({"spec": None}, ""),
        ({}, ""),
    ],
)
def test_cluster_id_of(obj: dict[str, Any], want: str) -> None:
    assert cluster_id_of(obj) == want


@pytest.mark.parametrize(
    ("ref", "args", "want"),
    [
        (PODS, {}, "/api/v1/pods"),
        (PODS, {"namespace": "liqo"}, "/api/v1/namespaces/liqo/pods"),
        (PODS, {"namespace": "liqo", "name": "gw-0", "sub": "status"},
         "/api/v1/namespaces/liqo/pods/gw-0/status"),
        (LEASES, {"namespace": "liqo", "name": "l"}, "/apis/coordination.k8s.io/v1/namespaces/liqo/leases/l"),
        (TUNNEL_ENDPOINTS, {"namespace": "t"}, "/apis/net.liqo.io/v1alpha1/namespaces/t/tunnelendpoints"),
        # Cluster-scoped kinds ignore a namespace.
        (NAT_MAPPINGS, {"namespace": "t", "name": "m"}, "/apis/net.liqo.io/v1alpha1/natmappings/m"),
        (NAMESPACES, {"name": "liqo"}, "/api/v1/namespaces/liqo"),
        # Names and namespaces are quoted as one path segment.
        (PODS, {"namespace": "a/b", "name": "c d?"}, "/api/v1/namespaces/a%2Fb/pods/c%20d%3F"),
        (PODS, {"namespace": ""}, "/api/v1/pods"),  # an empty namespace is every namespace
    ],
)
def test_resource_path(ref: ResourceRef, args: dict[str, str], want: str) -> None:
    assert ref.path(**args) == want


def test_api_version() -> None:
    assert (PODS.api_version, TUNNEL_ENDPOINTS.api_version) == ("v1", "net.liqo.io/v1alpha1")
