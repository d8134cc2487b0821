"""The image as built by `make image`: every console script runs, it runs as 65532 by default, it carries
the tools the gateway needs and no compiler, no pip, no sandbox. Checked from inside a running container
(a hostNetwork pod in an emulated node, as the gateway pod runs)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from sandbox.testkit.nodes import NodeFactory
from sandbox.testkit.podman import IMAGE, NodePodman, Podman, leaves_nothing

pytestmark = pytest.mark.root

SCRIPTS = ("liqo-netagent", "liqo-tunnel-controller", "liqo-natmap-controller", "liqo-labeler")
TOOLS = ("wireguard-go", "wg", "iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore",
         "ip", "nsenter", "ps", "python3")
ABSENT = ("pip", "pip3", "pip3.11", "gcc", "cc", "c++", "g++", "make", "apt-ftparchive")
PATH = "/opt/liqo/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CTR = "img-app"

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "img"},
    "spec": {
        "hostNetwork": True,
        "containers": [{
            "name": "app",
            "image": IMAGE,
            # PID 1 has no default signal handlers: trap TERM so that stopping is immediate.
            "command": ["sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"],
        }],
    },
}


@pytest.fixture(scope="module")
def app(podman: Podman) -> Iterator[NodePodman]:
    with leaves_nothing(), NodeFactory() as nodes:
        node = nodes.make("img")
        with podman.in_node(node) as engine:
            engine.play(POD)
            yield engine


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_script_help(app: NodePodman, script: str) -> None:
    cp = app.exec(CTR, script, "--help")
    assert cp.returncode == 0, cp.stderr
    assert "usage:" in cp.stdout


def test_default_user_is_65532(app: NodePodman, podman: Podman) -> None:
    sec = app.security(CTR)
    assert (sec.uid, sec.gid) == (65532, 65532)
    assert sec.cap_effective == 0  # a non-root user without ambient capabilities
    config = json.loads(podman.run("image", "inspect", IMAGE).stdout)[0]["Config"]
    assert config["User"] == "65532:65532"
    assert f"PATH={PATH}" in config["Env"]


def test_tools_present(app: NodePodman) -> None:
    missing = [t for t in TOOLS if app.exec(CTR, "sh", "-c", f"command -v {t}").returncode != 0]
    assert not missing
    assert app.exec(CTR, "sh", "-c", "echo $PATH").stdout.strip() == PATH
    # The tools really run (shared libraries present), not just exist.
    for argv in (["wg", "--version"], ["ip", "-V"], ["iptables-legacy", "--version"], ["nsenter", "-V"],
                 ["ps", "-p", "1"], ["wireguard-go", "--version"]):
        cp = app.exec(CTR, *argv)
        assert cp.returncode == 0, (argv, cp.stderr)


def test_no_compilers_no_pip_no_sandbox(app: NodePodman) -> None:
    present = [t for t in ABSENT if app.exec(CTR, "sh", "-c", f"command -v {t}").returncode == 0]
    assert not present
    for module in ("pip", "setuptools", "wheel", "sandbox", "tests", "grpc_tools", "pyroute2"):
        cp = app.exec(CTR, "python", "-c", f"import {module}")
        assert cp.returncode != 0 and "ModuleNotFoundError" in cp.stderr, module
    # The product and its native dependencies import (grpcio needs libstdc++6).
    cp = app.exec(CTR, "python", "-c",
                  "import grpc, cryptography.hazmat.bindings._rust, yaml, kubernetes, services")
    assert cp.returncode == 0, cp.stderr


def test_labels(podman: Podman) -> None:
    labels = json.loads(podman.run("image", "inspect", IMAGE).stdout)[0]["Labels"]
    for key in ("title", "description", "version", "revision", "created", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
