"""Proofs through the real kubectl (a subprocess with a kubeconfig written by the server)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.kubeapi import KubeAPIServer
from sandbox.testkit.kubectl import GADGET_FIXTURES as FIXTURES
from sandbox.testkit.kubectl import Kubectl

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")

GADGET_B = """
apiVersion: test.liqo.io/v1alpha1
kind: Gadget
metadata:
  name: gadget-b
  namespace: team
spec:
  cidr: 10.1.0.0/16
  backend: none
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: team
data:
  mode: fast
"""


@pytest.fixture
def bare() -> Iterator[KubeAPIServer]:
    with KubeAPIServer() as server:  # no CRDs: kubectl installs them
        yield server


@pytest.fixture
def k(bare: KubeAPIServer, tmp_path: Path) -> Kubectl:
    return Kubectl(bare.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path / "cache")


def get_json(k: Kubectl, *args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(k("get", *args, "-o", "json").stdout)


def test_apply_crd_and_custom_resources(k: Kubectl) -> None:
    out = k("apply", "-f", str(FIXTURES / "crd-gadgets.yaml")).stdout
    assert "customresourcedefinition.apiextensions.k8s.io/gadgets.test.liqo.io created" in out
    assert (
        k("apply", "-f", str(FIXTURES / "gadget-a.yaml")).stdout.strip()
        == "gadget.test.liqo.io/gadget-a created"
    )
    k("apply", "-f", "-", input="apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n")
    out = k("apply", "-f", "-", input=GADGET_B).stdout
    assert "gadget.test.liqo.io/gadget-b created" in out and "configmap/settings created" in out
    # Re-applying unchanged objects is a no-op; a changed one goes through client-side apply's patch.
    assert "unchanged" in k("apply", "-f", str(FIXTURES / "gadget-a.yaml")).stdout
    changed = (FIXTURES / "gadget-a.yaml").read_text().replace("port: 4000", "port: 4100")
    assert "configured" in k("apply", "-f", "-", input=changed).stdout
    # A server-side dry run stores nothing (kubectl < 1.27 learns from /openapi/v2 that PATCH takes dryRun).
    dry = changed.replace("port: 4100", "port: 4200")
    assert "(server dry run)" in k("apply", "--dry-run=server", "-f", "-", input=dry).stdout
    assert (
        "configured"
        in k("apply", "--validate=false", "-f", "-", input=GADGET_B.replace("fast", "slow")).stdout
    )
    a = get_json(k, "gadget", "gadget-a")
    assert a["spec"] == {"cidr": "10.0.0.0/16", "port": 4100, "backend": "wireguard"}
    assert a["metadata"]["generation"] == 2
    assert "kubectl.kubernetes.io/last-applied-configuration" in a["metadata"]["annotations"]
    assert get_json(k, "configmap", "settings", "-n", "team")["data"] == {"mode": "slow"}
    # Plain (validating) re-apply of a built-in kind: kubectl computes a strategic merge patch.
    assert "configured" in k("apply", "-f", "-", input=GADGET_B.replace("fast", "medium")).stdout
    assert get_json(k, "configmap", "settings", "-n", "team")["data"] == {"mode": "medium"}
    # Short names, categories, tables with printer columns, all namespaces.
    table = k("get", "gd", "-A").stdout.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "BACKEND", "PORT", "PHASE", "AGE"]
    assert table[1].split()[:4] == ["default", "gadget-a", "wireguard", "4100"]
    assert table[2].split()[:4] == ["team", "gadget-b", "none", "51820"]
    assert len(k("get", "liqo", "-A", "-o", "name").stdout.split()) == 2
    names = [i["metadata"]["name"] for i in get_json(k, "gadgets", "-A")["items"]]
    assert names == ["gadget-a", "gadget-b"]


def test_schema_rejection_through_kubectl(k: Kubectl) -> None:
    k("apply", "-f", str(FIXTURES / "crd-gadgets.yaml"))
    bad = (FIXTURES / "gadget-a.yaml").read_text().replace("port: 4000", "port: 99999")
    proc = k("apply", "-f", "-", input=bad, check=False)
    assert proc.returncode != 0
    assert "spec.port" in proc.stderr and "less than or equal to 65535" in proc.stderr
    unknown = (FIXTURES / "gadget-a.yaml").read_text().replace("port: 4000", "port: 4000\n  colour: red")
    proc = k("apply", "-f", "-", input=unknown, check=False)
    assert proc.returncode != 0
    if (
        k.minor >= 25
    ):  # kubectl asks the server for strict field validation (it reads the support from openapi)
        assert 'unknown field "spec.colour"' in proc.stderr
    else:
        # Older kubectl has no fieldValidation: it validates client-side against the CRD's schema as
        # published in /openapi/v2, and never sends the object.
        assert 'unknown field "colour" in io.liqo.test.v1alpha1.Gadget.spec' in proc.stderr
    proc = k("get", "gadget", "gadget-a", check=False)
    assert proc.returncode != 0 and "NotFound" in proc.stderr


def test_label_annotate_patch_delete(k: Kubectl) -> None:
    k("apply", "-f", str(FIXTURES / "crd-gadgets.yaml"))
    k("apply", "-f", str(FIXTURES / "gadget-a.yaml"))
    k("label", "gadget", "gadget-a", "role=active")
    k("annotate", "gadget", "gadget-a", "liqo.io/note=hello")
    k("label", "gadget", "gadget-a", "tier-")
    assert k("get", "gd", "-l", "role=active", "-o", "name").stdout.strip() == "gadget.test.liqo.io/gadget-a"
    assert k("get", "gd", "-l", "role!=active", "-o", "name").stdout.strip() == ""
    k("patch", "gadget", "gadget-a", "--type=merge", "-p", '{"spec":{"port":5000}}')
    k(
        "patch",
        "gadget",
        "gadget-a",
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/backend","value":"none"}]',
    )
    if k.minor >= 24:
        k(
            "patch",
            "gadget",
            "gadget-a",
            "--subresource=status",
            "--type=merge",
            "-p",
            '{"status":{"phase":"Ready"}}',
        )
    else:
        # `patch --subresource` came with kubectl 1.24: PUT the object to /status instead. The status
        # endpoint must take the status and ignore the spec change sent along with it.
        obj = get_json(k, "gadget", "gadget-a")
        obj["status"] = {"phase": "Ready"}
        obj["spec"]["port"] = 1
        k(
            "replace",
            "--raw",
            "/apis/test.liqo.io/v1alpha1/namespaces/default/gadgets/gadget-a/status",
            "-f",
            "-",
            input=json.dumps(obj),
        )
    a = get_json(k, "gadget", "gadget-a")
    assert a["metadata"]["labels"] == {"role": "active"}
    assert a["metadata"]["annotations"]["liqo.io/note"] == "hello"
    assert (a["spec"]["port"], a["spec"]["backend"], a["status"]["phase"]) == (5000, "none", "Ready")
    proc = k("patch", "gadget", "gadget-a", "--type=merge", "-p", '{"spec":{"backend":"ipsec"}}', check=False)
    assert proc.returncode != 0 and "Unsupported value" in proc.stderr
    # Strategic merge patch on a built-in kind.
    k("apply", "-f", "-", input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '1'}\n")
    k("patch", "configmap", "c", "-p", '{"data":{"b":"2"}}')
    assert get_json(k, "configmap", "c")["data"] == {"a": "1", "b": "2"}
    assert 'gadget.test.liqo.io "gadget-a" deleted' in k("delete", "gadget", "gadget-a").stdout
    proc = k("get", "gadget", "gadget-a", check=False)
    assert proc.returncode != 0 and "NotFound" in proc.stderr


def test_get_watch_and_wait_for_delete(k: Kubectl) -> None:
    k("apply", "-f", str(FIXTURES / "crd-gadgets.yaml"))
    k("apply", "-f", str(FIXTURES / "gadget-a.yaml"))
    watcher = subprocess.Popen(
        k.argv("get", "gadgets", "--watch", "-o", "json", "--output-watch-events"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        k(
            "patch",
            "gadget",
            "gadget-a",
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":["test.liqo.io/hold"]}}',
        )
        k("delete", "gadget", "gadget-a", "--wait=false")
        waiter = subprocess.Popen(
            k.argv("wait", "--for=delete", "gadget/gadget-a", "--timeout=20s"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        assert waiter.poll() is None  # the finalizer holds the object
        assert get_json(k, "gadget", "gadget-a")["metadata"]["deletionTimestamp"]
        k(
            "patch",
            "gadget",
            "gadget-a",
            "--type=json",
            "-p",
            '[{"op":"remove","path":"/metadata/finalizers"}]',
        )
        out, err = waiter.communicate(timeout=20)
        assert waiter.returncode == 0, err
        assert "condition met" in out
        time.sleep(0.5)
    finally:
        watcher.terminate()
        out, _ = watcher.communicate(timeout=10)
    decoder = json.JSONDecoder()
    events, pos, text = [], 0, out.strip()
    while pos < len(text):
        ev, end = decoder.raw_decode(text, pos)
        events.append(ev)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    kinds = [e["type"] for e in events]
    assert kinds == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"], kinds
    assert events[2]["object"]["metadata"]["deletionTimestamp"]
