"""The in-memory API server's own test kit: the Gadget test resource (its CRD and manifests live in
tests/kubeapi/fixtures) and the real kubectl run against a server."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["GADGET_FIXTURES", "Kubectl", "gadget", "kubectl_minor_version"]

GADGET_FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "kubeapi" / "fixtures"


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
