"""Fixtures: an in-process KubeAPIServer on an ephemeral 127.0.0.1 port, clients for it, kubectl."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from sandbox.kubeapi import KubeAPIServer

FIXTURES = Path(__file__).parent / "fixtures"


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


def gadget(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "test.liqo.io/v1alpha1",
        "kind": "Gadget",
        "metadata": {"name": name},
        "spec": {"cidr": "10.0.0.0/16", **spec},
    }


@functools.cache
def kubectl_minor_version(binary: str = "kubectl") -> int:
    """The minor version of the kubectl on PATH (20 for Debian 12's v1.20.2, 32 for v1.32.4)."""
    out = subprocess.run(
        [binary, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return int("".join(c for c in json.loads(out)["clientVersion"]["minor"] if c.isdigit()))


class Kubectl:
    """Runs the real kubectl against the server with its own kubeconfig and discovery cache."""

    def __init__(self, kubeconfig: Path, cache: Path) -> None:
        self.kubeconfig = kubeconfig
        self.cache = cache

    @property
    def minor(self) -> int:
        return kubectl_minor_version()

    def argv(self, *args: str) -> list[str]:
        return ["kubectl", f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.cache}", *args]

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(*args), input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc


@pytest.fixture
def kubectl(api: KubeAPIServer, tmp_path: Path) -> Kubectl:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (make install provides it)")
    return Kubectl(api.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path / "kube-cache")
