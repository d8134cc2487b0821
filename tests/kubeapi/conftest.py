"""Fixtures: an in-process KubeAPIServer on an ephemeral 127.0.0.1 port, clients for it, kubectl."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from sandbox.kubeapi import KubeAPIServer
from sandbox.testkit.kubectl import GADGET_FIXTURES, Kubectl

FIXTURES = GADGET_FIXTURES


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(crd_dirs=[FIXTURES / "crd-gadgets.yaml"], bookmark_interval=0.3) as server:
        yield server


@pytest.fixture
def api_client(api: KubeAPIServer) -> Iterator[client.ApiClient]:
    c = api.api_client()
    yield c
    c.close()


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def coordination(api_client: client.ApiClient) -> client.CoordinationV1Api:
    return client.CoordinationV1Api(api_client)


@pytest.fixture
def kubectl(api: KubeAPIServer, tmp_path: Path) -> Kubectl:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (make install provides it)")
    return Kubectl(api.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path / "kube-cache")
