"""The API as a platform engineer sees it: grpcurl over the Unix socket, through reflection only.

Every RPC is called at least once, health reports SERVING, and each error code a proto comment
documents is produced by the input the comment names.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandbox.testkit.netagent import ROLES, NetAgent
from sandbox.testkit.nodes import NodeFactory
from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.common.keys import generate
from services.netagent.server import MAX_STREAMS

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

SVC = "liqo.netagent.v1.NetAgentService"
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
CLUSTER = "c0ffee00-0000-4000-8000-000000000001"
OWNER = "liqo-tenant-a/tep-a"  # the claiming TunnelEndpoint
METRICS = "127.0.0.1:9100"  # inside the agent's node


class Grpcurl:
    def __init__(self, socket: Path) -> None:
        if GRPCURL is None:
            pytest.fail("grpcurl is not installed: run make install")
        self.socket = str(socket)

    def raw(
        self, *args: str, data: dict[str, Any] | None = None, max_time: float = 10
    ) -> subprocess.CompletedProcess[str]:
        argv = [GRPCURL, "-plaintext", "-unix", "-max-time", str(max_time)]
        if data is not None:
            argv += ["-d", json.dumps(data)]
        return subprocess.run(
            [*argv, self.socket, *args], capture_output=True, text=True, timeout=max_time + 10
        )

    def call(self, method: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self.raw(f"{SVC}/{method}", data=data or {})
        assert r.returncode == 0, f"{method}: {r.stderr}"
        return json.loads(r.stdout) if r.stdout.strip() else {}

    def code(self, method: str, data: dict[str, Any]) -> tuple[str, str]:
        """(code, message) of a failing call, as grpcurl prints them."""
        r = self.raw(f"{SVC}/{method}", data=data)
        assert r.returncode != 0, f"{method} unexpectedly succeeded: {r.stdout}"
        fields = dict(
            line.strip().split(": ", 1)
            for line in r.stderr.splitlines()
            if line.strip().startswith(("Code:", "Message:"))
        )
        return fields.get("Code", ""), fields.get("Message", "")


def tunnel(peer_pub: str, **override: Any) -> dict[str, Any]:
    t = {
        "cluster_id": CLUSTER,
        "cluster_name": "peer",
        "local_pod_cidr": "10.0.0.0/16",
        "local_nat_pod_cidr": "10.80.0.0/16",
        "local_external_cidr": "10.201.0.0/16",
        "local_nat_external_cidr": "None",
        "remote_pod_cidr": "10.0.0.0/16",
        "remote_nat_pod_cidr": "10.60.0.0/16",
        "remote_external_cidr": "10.202.0.0/16",
        "endpoint": "192.0.2.99",
        "endpoint_port": 5871,
        "public_key": peer_pub,
        "persistent_keepalive": "25s",
    }
    t.update(override)
    return t


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetAgent]:
    with NodeFactory() as nodes:
        a = NetAgent(nodes.make("contract"), tmp_path_factory.mktemp("contract"),
                     args=("--metrics-address", METRICS))
        try:
            a.start()
            yield a
        finally:
            a.close()


@pytest.fixture(scope="module")
def g(agent: NetAgent) -> Grpcurl:
    return Grpcurl(agent.socket)


def test_socket_is_0660(agent: NetAgent) -> None:
    mode = stat.S_IMODE(os.stat(agent.socket).st_mode)
    assert mode == 0o660, oct(mode)
    for role in ROLES:
        mode = stat.S_IMODE(os.stat(agent.role_socket(role)).st_mode)
        assert mode == 0o660, (role, oct(mode))


def test_reflection_lists_and_describes_the_service(g: Grpcurl) -> None:
    listed = g.raw("list").stdout.split()
    assert SVC in listed and "grpc.health.v1.Health" in listed
    described = g.raw("describe", SVC).stdout
    for rpc in (
        "GetInfo",
        "ConfigureDevice",
        "SetRole",
        "WatchRole",
        "EnsureTunnel",
        "DeleteTunnel",
        "ListTunnels",
        "WatchTunnelStatus",
        "SetNatMappings",
        "DeleteNatMappings",
    ):
        assert f"rpc {rpc}" in described


def test_health_serving(g: Grpcurl) -> None:
    r = g.raw("grpc.health.v1.Health/Check")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "SERVING"


def test_every_rpc_and_its_documented_errors(g: Grpcurl) -> None:
    """One story, in the order a controller lives it; the order matters (standby first)."""
    priv = generate().private_key
    peer_pub = generate().public_key

    info = g.call("GetInfo")
    assert (
        info["role"] == "ROLE_STANDBY"
        and info["wireguard_implementation"] == "WIREGUARD_IMPLEMENTATION_USERSPACE"
    )
    assert info["listen_port"] == 5871 and info["mtu"] == 1340

    # SetRole: ACTIVE before the device has a key.
    assert g.code("SetRole", {"role": "ROLE_ACTIVE", "epoch": 1, "ttl": "60s"})[0] == "FailedPrecondition"

    # ConfigureDevice
    code, msg = g.code("ConfigureDevice", {"private_key": "not-a-key"})
    assert code == "InvalidArgument" and "private_key" in msg
    assert g.code("ConfigureDevice", {"private_key": priv, "mtu": 100})[0] == "InvalidArgument"
    assert g.code("ConfigureDevice", {"private_key": priv, "listen_port": 70000})[0] == "InvalidArgument"
    dev = g.call("ConfigureDevice", {"private_key": priv})
    assert dev["public_key"] and priv not in json.dumps(dev)
    assert g.call("ConfigureDevice", {"private_key": priv}) == dev  # idempotent

    # Mutations while standby.
    assert g.code("EnsureTunnel", {"tunnel": tunnel(peer_pub), "owner": OWNER})[0] == "FailedPrecondition"
    assert g.code("DeleteTunnel", {"cluster_id": CLUSTER, "owner": OWNER})[0] == "FailedPrecondition"
    assert g.code("SetNatMappings", {"cluster_id": CLUSTER, "mappings": {}})[0] == "FailedPrecondition"
    assert g.code("DeleteNatMappings", {"cluster_id": CLUSTER})[0] == "FailedPrecondition"

    # SetRole
    assert g.code("SetRole", {"epoch": 1})[0] == "InvalidArgument"  # role unspecified
    assert g.code("SetRole", {"role": "ROLE_ACTIVE", "epoch": 1})[0] == "InvalidArgument"  # no ttl
    assert g.code("SetRole", {"role": "ROLE_ACTIVE", "epoch": 1, "ttl": "7200s"})[0] == "InvalidArgument"
    # Epochs are the Lease's int32: an epoch out of reach of every later caller is refused.
    code, msg = g.code("SetRole", {"role": "ROLE_ACTIVE", "epoch": 2**31, "ttl": "60s"})
    assert code == "InvalidArgument" and "epoch" in msg
    # A demotion is always accepted; its out-of-range epoch is not adopted (epoch 0 kept, so 3 works).
    demoted = g.call("SetRole", {"role": "ROLE_STANDBY", "epoch": 2**64 - 1})
    assert demoted["role"] == "ROLE_STANDBY" and demoted.get("epoch", "0") == "0"
    role = g.call("SetRole", {"role": "ROLE_ACTIVE", "epoch": 3, "ttl": "600s", "reason": "contract"})
    assert role["role"] == "ROLE_ACTIVE" and role["epoch"] == "3" and role["expires_at"]
    assert g.code("SetRole", {"role": "ROLE_ACTIVE", "epoch": 2, "ttl": "600s"})[0] == "FailedPrecondition"

    # WatchRole: the current role at once.
    r = g.raw(f"{SVC}/WatchRole", data={}, max_time=2)
    assert '"ROLE_ACTIVE"' in r.stdout

    # EnsureTunnel
    code, msg = g.code(
        "EnsureTunnel", {"tunnel": tunnel(peer_pub, remote_nat_pod_cidr="10.60.0.1/16"), "owner": OWNER}
    )
    assert code == "InvalidArgument" and "remote_nat_pod_cidr" in msg
    assert g.code("EnsureTunnel", {})[0] == "InvalidArgument"
    assert (
        g.code("EnsureTunnel", {"tunnel": tunnel(peer_pub, public_key="AAAA"), "owner": OWNER})[0]
        == "InvalidArgument"
    )
    code, msg = g.code("EnsureTunnel", {"tunnel": tunnel(peer_pub)})  # no owner
    assert code == "InvalidArgument" and "owner" in msg
    code, msg = g.code("EnsureTunnel", {"tunnel": tunnel(peer_pub), "owner": "Bad/Owner\n"})
    assert code == "InvalidArgument" and "owner" in msg
    code, msg = g.code(
        "EnsureTunnel",
        {"tunnel": tunnel(peer_pub, endpoint="gw.does-not-resolve.invalid"), "owner": OWNER},
    )
    assert code == "Unavailable" and "resolve" in msg
    ok = g.call("EnsureTunnel", {"tunnel": tunnel(peer_pub), "owner": OWNER})
    assert ok["changed"] and ok["status"]["state"] == "TUNNEL_STATE_CONNECTING"
    assert ok["status"]["owner"] == OWNER
    assert not g.call("EnsureTunnel", {"tunnel": tunnel(peer_pub), "owner": OWNER}).get("changed", False)
    # Ownership: another TunnelEndpoint cannot take the cluster id, nor reuse the key elsewhere.
    code, msg = g.code("EnsureTunnel", {"tunnel": tunnel(generate().public_key), "owner": "tenant-b/tep"})
    assert code == "FailedPrecondition" and OWNER in msg
    reuse = tunnel(
        peer_pub,
        cluster_id="key-thief",
        remote_pod_cidr="10.70.0.0/16",
        remote_nat_pod_cidr="None",
        remote_external_cidr="10.71.0.0/16",
    )
    code, msg = g.code("EnsureTunnel", {"tunnel": reuse, "owner": "tenant-b/tep"})
    assert code == "FailedPrecondition" and OWNER in msg and "public_key" in msg
    other = tunnel(
        peer_pub,
        cluster_id="other-cluster",
        remote_nat_pod_cidr="10.60.128.0/17",
        remote_external_cidr="10.203.0.0/16",
    )
    code, msg = g.code("EnsureTunnel", {"tunnel": other, "owner": OWNER})
    assert code == "InvalidArgument" and "overlaps" in msg

    # ListTunnels / WatchTunnelStatus
    listed = g.call("ListTunnels")["tunnels"]
    assert [t["tunnel"]["cluster_id"] for t in listed] == [CLUSTER]
    assert listed[0]["tunnel"]["persistent_keepalive"] == "25s"
    assert listed[0]["owner"] == OWNER and listed[0]["status"]["owner"] == OWNER
    r = g.raw(f"{SVC}/WatchTunnelStatus", data={"cluster_id": CLUSTER}, max_time=2)
    # Nobody answers the probe: Connecting, or Disconnected once it gave up (a slow run gets there).
    assert CLUSTER in r.stdout
    assert "TUNNEL_STATE_CONNECTING" in r.stdout or "TUNNEL_STATE_DISCONNECTED" in r.stdout, r.stdout
    assert g.code("WatchTunnelStatus", {"cluster_id": "bad id"})[0] == "InvalidArgument"

    # SetNatMappings
    code, msg = g.code("SetNatMappings", {"cluster_id": "no-such-cluster", "mappings": {}})
    assert code == "FailedPrecondition" and "not ready" in msg
    assert (
        g.code("SetNatMappings", {"cluster_id": CLUSTER, "mappings": {"10.0.0.5": "nope"}})[0]
        == "InvalidArgument"
    )
    assert (
        g.code("SetNatMappings", {"cluster_id": CLUSTER, "mappings": {"10.0.0.5": "10.9.9.9"}})[0]
        == "InvalidArgument"
    )
    nat = g.call("SetNatMappings", {"cluster_id": CLUSTER, "mappings": {"10.0.0.5": "10.201.0.5"}})
    assert nat["count"] == 1 and nat["changed"]
    assert g.call("DeleteNatMappings", {"cluster_id": CLUSTER})["deleted"]
    assert not g.call("DeleteNatMappings", {"cluster_id": CLUSTER}).get("deleted", False)
    assert g.code("DeleteNatMappings", {"cluster_id": ""})[0] == "InvalidArgument"

    # DeleteTunnel
    assert g.code("DeleteTunnel", {"cluster_id": "bad id", "owner": OWNER})[0] == "InvalidArgument"
    assert g.code("DeleteTunnel", {"cluster_id": CLUSTER})[0] == "InvalidArgument"  # no owner
    code, msg = g.code("DeleteTunnel", {"cluster_id": CLUSTER, "owner": "tenant-b/tep"})
    assert code == "FailedPrecondition" and OWNER in msg
    assert g.call("DeleteTunnel", {"cluster_id": CLUSTER, "owner": OWNER})["deleted"]
    assert not g.call("DeleteTunnel", {"cluster_id": CLUSTER, "owner": OWNER}).get("deleted", False)

    # A demotion is always accepted, even with a lower epoch, and never lowers the epoch.
    demoted = g.call("SetRole", {"role": "ROLE_STANDBY", "epoch": 1, "reason": "contract"})
    assert demoted["role"] == "ROLE_STANDBY" and demoted["epoch"] == "3"
    assert g.code("SetRole", {"role": "ROLE_ACTIVE", "epoch": 2, "ttl": "600s"})[0] == "FailedPrecondition"
    assert g.call("SetRole", {"role": "ROLE_ACTIVE", "epoch": 3, "ttl": "600s"})["role"] == "ROLE_ACTIVE"

    final = g.call("GetInfo")
    assert final["role"] == "ROLE_ACTIVE" and final["device_configured"] and final.get("tunnel_count", 0) == 0
    assert priv not in agent_log_text(g)


def agent_log_text(g: Grpcurl) -> str:
    return (Path(g.socket).parent / "netagent.log").read_text()


def test_metrics_endpoint_after_the_story(agent: NetAgent) -> None:
    """Prometheus metrics served where --metrics-address says, with the RPCs just made counted."""
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://{METRICS}/metrics').read().decode())"
    text = agent.node.run(sys.executable, "-c", fetch).stdout
    assert 'liqo_wireguard_implementation{driver="wireguard",implementation="userspace"} 1.0' in text, text
    assert 'liqo_netagent_rpc_duration_seconds_count{code="INVALID_ARGUMENT",method="EnsureTunnel"}' in text
    assert 'liqo_netagent_rpc_duration_seconds_count{code="OK",method="SetNatMappings"}' in text
    assert 'liqo_netagent_apply_duration_seconds_count{what="iptables"}' in text
    assert 'liqo_netagent_role{role="active"} 1.0' in text


@pytest.mark.parametrize(
    ("role", "method", "data"),
    [
        ("natmap", "SetRole", {"role": "ROLE_STANDBY", "epoch": 1}),
        ("tunnel", "SetRole", {"role": "ROLE_STANDBY", "epoch": 1}),
        ("natmap", "ConfigureDevice", {"private_key": "not-a-key"}),
        ("labeler", "EnsureTunnel", {}),
        ("labeler", "SetNatMappings", {"cluster_id": CLUSTER}),
        ("tunnel", "DeleteNatMappings", {"cluster_id": CLUSTER}),
        ("natmap", "DeleteTunnel", {"cluster_id": CLUSTER}),
    ],
)
def test_role_socket_denies_another_roles_method(agent: NetAgent, role: str, method: str,
                                                 data: dict[str, Any]) -> None:
    """PERMISSION_DENIED naming the socket's role, before any validation (the arguments do not matter)."""
    code, msg = Grpcurl(agent.role_socket(role)).code(method, data)
    assert code == "PermissionDenied" and f"{role} socket" in msg and method in msg, (code, msg)


@pytest.mark.parametrize("role", ROLES)
def test_role_socket_serves_reads_health_and_reflection(agent: NetAgent, role: str) -> None:
    g = Grpcurl(agent.role_socket(role))
    assert SVC in g.raw("list").stdout.split()
    assert "rpc SetRole" in g.raw("describe", SVC).stdout  # the whole service is described
    assert json.loads(g.raw("grpc.health.v1.Health/Check").stdout)["status"] == "SERVING"
    assert g.call("GetInfo")["listen_port"] == 5871
    g.call("ListTunnels")
    assert "role" in g.raw(f"{SVC}/WatchRole", data={}, max_time=1).stdout


def test_one_stream_over_the_bound_is_resource_exhausted(agent: NetAgent) -> None:
    bound = MAX_STREAMS
    calls: list[Any] = []
    with grpc.insecure_channel(f"unix:{agent.role_socket('labeler')}") as ch:
        stub = pb_grpc.NetAgentServiceStub(ch)
        try:
            for _ in range(bound):
                call = stub.WatchRole(pb.WatchRoleRequest())
                next(call)  # admitted: its first message arrived
                calls.append(call)
            g = Grpcurl(agent.role_socket("labeler"))
            code, msg = g.code("WatchRole", {})
            assert code == "ResourceExhausted" and f"at most {bound}" in msg, (code, msg)
            code, _ = g.code("WatchTunnelStatus", {"min_interval": "0.000000001s"})
            assert code == "ResourceExhausted"
            assert g.call("GetInfo")["listen_port"] == 5871  # unary calls still answer
            # Another socket is not affected.
            assert "ROLE_" in Grpcurl(agent.role_socket("natmap")).raw(f"{SVC}/WatchRole", data={},
                                                                         max_time=1).stdout
        finally:
            for c in calls:
                c.cancel()
