"""Each gateway process imports only what it uses (issue 11: memory per process).

In a fresh interpreter per process, its entry module is imported and its start-up built as far as
it goes without a cluster or a netagent (flags parsed, the Kubernetes client opened on a kubeconfig,
the Manager and the netagent client made; for the netagent, the modules `serve` imports and its
config); then `sys.modules` must hold none of the heavy modules below. The official `kubernetes`
package costs ~20 MB of RSS on import (measured, idle: 66-75 MB per controller with it, 47-56
without), so no gateway process may import any of it; the netagent holds no Kubernetes
credentials and has no use for a Kubernetes client at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A module is heavy if it (or a submodule of it) appears here: the official client's package, whose
# `__init__` imports the client, config, dynamic, watch, stream and informer packages.
HEAVY = ("kubernetes",)
# HTTP servers no process needs: prometheus_client's package __init__ would load them all.
HTTP_LIBRARIES = ("http.server", "wsgiref", "urllib.request", "prometheus_client.exposition")


CONTROLLER = """
import sys
from services.{name} import main as entry
from services.common.kube import KubeClient, Manager
from services.common.netagent_client import NetAgentClient

entry.build_parser().parse_args([])
client = KubeClient.from_kubeconfig(sys.argv[1], timeout=1)
mgr = Manager("probe", client, watch_timeout=5)
NetAgentClient(sys.argv[2], timeout=1).close()
client.close()
"""

# The netagent's real start-up, up to binding its ports: the metrics port is busy, so `serve` has
# imported everything (agent, server, metrics) and returns 2 before it creates or touches anything.
NETAGENT = """
import socket, sys
from services.netagent import main as entry

busy = socket.socket()
busy.bind(("127.0.0.1", 0))
busy.listen()
host, port = busy.getsockname()
code = entry.main(["serve", "--metrics-address", f"{host}:{port}", "--health-address", "",
                   "--socket", sys.argv[2], "--labeler-socket", "", "--tunnel-socket", "",
                   "--natmap-socket", "", "--state-path", sys.argv[2] + ".state/state.json"])
assert code == 2, code
"""

REPORT = """
import json, sys
print(json.dumps(sorted(sys.modules)))
"""

KUBECONFIG = """
apiVersion: v1
kind: Config
current-context: c
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
users: [{name: c, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: c}}]
"""


def loaded_modules(code: str, tmp: Path) -> list[str]:
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cp = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + REPORT, str(kubeconfig),
                         str(tmp / "absent.sock")], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)
    assert cp.returncode == 0, cp.stderr
    modules: list[str] = json.loads(cp.stdout.splitlines()[-1])
    return modules


def heavy(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


@pytest.mark.parametrize("name", ["tunnel", "natmap", "labeler"])
def test_a_controller_loads_no_kubernetes_package(name: str, tmp_path: Path) -> None:
    modules = loaded_modules(CONTROLLER.format(name=name), tmp_path)
    assert f"services.{name}.main" in modules and "services.common.kube.transport" in modules
    assert heavy(modules, HEAVY) == []
    assert heavy(modules, HTTP_LIBRARIES) == []  # (urllib3, its API client, brings http.client)


def test_the_netagent_loads_no_kubernetes_module(tmp_path: Path) -> None:
    modules = loaded_modules(NETAGENT, tmp_path)
    assert "services.netagent.agent" in modules and "services.netagent.kernel.netlink.rtnl" in modules
    assert heavy(modules, HEAVY) == []
    assert [m for m in modules if "kube" in m] == []
    # Its own netlink, not a general library's: pyroute2 alone cost it 5 MB of modules.
    assert heavy(modules, ("pyroute2",)) == []
    # No HTTP library: its endpoints are services.common.httpendpoint, its exposition is ours.
    assert heavy(modules, (*HTTP_LIBRARIES, "http.client", "email")) == []


@pytest.mark.parametrize("name", ["tunnel", "netagent"])
def test_no_process_loads_cryptography(name: str, tmp_path: Path) -> None:
    """X25519 goes through the libcrypto `ssl` already mapped (services.common.x25519)."""
    code = NETAGENT if name == "netagent" else CONTROLLER.format(name=name)
    code += "from services.common import keys\nkeys.public_key_of(keys.generate().private_key)\n"
    assert heavy(loaded_modules(code, tmp_path), ("cryptography",)) == []


def test_the_check_sees_the_official_client(tmp_path: Path) -> None:
    """The detector itself: a process that does import the official client is caught."""
    modules = loaded_modules("from kubernetes import client\n", tmp_path)
    caught = heavy(modules, HEAVY)
    assert {"kubernetes", "kubernetes.client", "kubernetes.config"} <= set(caught), caught[:20]
