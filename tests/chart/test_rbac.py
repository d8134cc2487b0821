"""The chart's RBAC is exactly what the controllers call.

The three controllers run for real (their console scripts' modules, as subprocesses, with the
flags the chart renders for them) against the in-memory API server, through a scenario that makes
each do everything it does: the labeler wins, renews and releases the Lease, labels the pods and
annotates the Service; the tunnel controller creates the key Secret (and reads it after a restart),
adds its finalizer, writes the status, emits Events in the tenant namespace, and removes the
finalizer on deletion; the NatMapping controller does the same for a NatMapping. Their netagents
are fakes (the testkit's `FakeNetAgent`, the election tests' `RecordingNetAgent`): the
netagent holds no Kubernetes credentials, so a fake changes nothing on the API side, and this
test needs no root.

Every API request the controllers made is taken from the server's request log (the test's own
client is told apart by its User-Agent) and reduced to what RBAC authorizes: verb, group,
resource[/subresource], where (the release namespace, or cluster-wide: a cluster-scoped resource,
all namespaces, or any other namespace) and the name (the URL's, or a list/watch's
`metadata.name` field selector, which the API server authorizes as that name). The rendered Role
and ClusterRole must cover every request, and grant nothing that no request used.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.kubeapi import KubeAPIServer
from sandbox.testkit import chart
from sandbox.testkit.election import RecordingNetAgent
from sandbox.testkit.election import serve as serve_election_agent
from sandbox.testkit.fakeagent import FakeNetAgent, serve
from sandbox.testkit.resources import namespace
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.kube import EVENTS, LEASES, PODS, SECRETS, SERVICES, KubeClient
from services.common.vocabulary import (
    FINALIZER,
    GATEWAY_LABEL,
    KEY_SECRET,
    LEASE_NAME,
    NAMESPACES,
    NAT_MAPPINGS,
    NODE_IP_ANNOTATION,
    TUNNEL_ENDPOINTS,
)
from services.labeler.main import build_parser as labeler_parser
from services.natmap.main import build_parser as natmap_parser
from services.tunnel.main import build_parser as tunnel_parser

REPO = Path(__file__).resolve().parents[2]
NS = "liqo"
RELEASE = "liqo-gateway"
TEST_AGENT = "liqo-rbac-test"
TEP = yaml.safe_load((REPO / "examples/tunnelendpoint.yaml").read_text())
NM = yaml.safe_load((REPO / "examples/natmapping.yaml").read_text())
TENANT = TEP["metadata"]["namespace"]
CID = TEP["spec"]["clusterIdentity"]["clusterID"]
MODULES = {"tunnel": "services.tunnel.main", "natmap": "services.natmap.main",
           "labeler": "services.labeler.main"}
PARSERS = {"tunnel": tunnel_parser, "natmap": natmap_parser, "labeler": labeler_parser}

# Scope of a request or a grant: the release namespace (a Role suffices) or cluster-wide.
NAMESPACED, CLUSTER = "namespace", "cluster"
ANY = "*"  # a grant without resourceNames


@dataclass(frozen=True, order=True)
class Access:
    verb: str
    resource: str  # "group/plural[/sub]", group "" for core
    scope: str
    name: str  # ANY for a grant without resourceNames; "" for a request without a name

    def __str__(self) -> str:
        name = "" if self.name in ("", ANY) else f" {self.name}"
        return f"{self.verb} {self.resource} ({self.scope}{name})"


def covers(grant: Access, req: Access) -> bool:
    return (grant.verb == req.verb and grant.resource == req.resource
            and (grant.scope == CLUSTER or req.scope == NAMESPACED)
            and (grant.name == ANY or grant.name == req.name))


def grants(objects: list[dict[str, Any]]) -> list[Access]:
    """Every (verb, resource, scope, name) the rendered Role and ClusterRole grant, after checking
    that each is bound to the chart's ServiceAccount."""
    out: list[Access] = []
    sa = chart.by_kind(objects, "ServiceAccount")[0]["metadata"]["name"]
    for kind, binding_kind, scope in (("Role", "RoleBinding", NAMESPACED),
                                      ("ClusterRole", "ClusterRoleBinding", CLUSTER)):
        (role,) = chart.by_kind(objects, kind)
        (binding,) = chart.by_kind(objects, binding_kind)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind,
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NS}]
        for rule in role["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [ANY]:
                            out.append(Access(verb, f"{group}/{res}", scope, name))
    return out


def requested(api: KubeAPIServer) -> set[Access]:
    """What the controllers asked the API server (every request but the test's own)."""
    out: set[Access] = set()
    for rec in api.request_log:
        if rec.user_agent.startswith(TEST_AGENT) or not rec.verb:
            continue  # the test's own requests; non-resource paths (discovery) every user may read
        resource = f"{rec.group}/{rec.resource}" + (f"/{rec.subresource}" if rec.subresource else "")
        scope = NAMESPACED if rec.namespace == NS else CLUSTER
        name = rec.name or ""
        if rec.verb in ("list", "watch"):
            for term in (rec.query.get("fieldSelector") or "").split(","):
                key, sep, value = term.partition("=")
                if sep and key == "metadata.name":
                    name = value.lstrip("=")
        out.add(Access(rec.verb, resource, scope, name))
    return out


def compare(needed: set[Access], granted: list[Access]) -> tuple[list[Access], list[Access], list[Access]]:
    """(requests no grant covers, grants no request uses, Role grants the ClusterRole repeats)."""
    cluster = [g for g in granted if g.scope == CLUSTER]
    missing = sorted(r for r in needed if not any(covers(g, r) for g in granted))
    unused = sorted(g for g in granted if not any(covers(g, r) for r in needed))
    redundant = sorted(g for g in granted if g.scope == NAMESPACED and any(covers(c, g) for c in cluster))
    return missing, unused, redundant


def test_the_comparison_fails_both_ways() -> None:
    """A call nobody granted, a grant nobody used, a name outside resourceNames, a namespaced grant
    for a call in another namespace, and a Role rule the ClusterRole repeats are all caught."""
    get_secret = Access("get", "/secrets", NAMESPACED, "wireguard-pubkey")
    grant = Access("get", "/secrets", NAMESPACED, "wireguard-pubkey")
    assert compare({get_secret}, [grant]) == ([], [], [])
    assert compare({get_secret}, []) == ([get_secret], [], [])
    extra = Access("list", "/secrets", NAMESPACED, ANY)
    assert compare({get_secret}, [grant, extra]) == ([], [extra], [])
    other = Access("get", "/secrets", NAMESPACED, "other")
    assert compare({other}, [grant])[0] == [other]
    tenant_event = Access("create", "/events", CLUSTER, "")
    assert compare({tenant_event}, [Access("create", "/events", NAMESPACED, ANY)])[0] == [tenant_event]
    both = [Access("create", "/events", CLUSTER, ANY), Access("create", "/events", NAMESPACED, ANY)]
    assert compare({tenant_event, Access("create", "/events", NAMESPACED, "")}, both)[2] == [both[1]]


# --- the controllers, for real ---------------------------------------------------------------------


def controller_argv(role: str, socket: str, kubeconfig: str) -> list[str]:
    """The flags the chart gives `role`, with the netagent socket and kubeconfig of this test and
    HTTP endpoints on free loopback ports."""
    objects = chart.render({**chart.REQUIRED_VALUES, "kubeconfig": {"hostPath": "/etc/kubeconfig"}},
                           namespace=NS, release=RELEASE)
    args = chart.containers(objects)[role]["args"]
    http = ["--metrics-bind-address", "--health-bind-address"]
    out = []
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in http:
            continue
        out.append({"--netagent-socket": f"--netagent-socket={socket}",
                    "--kubeconfig": f"--kubeconfig={kubeconfig}"}.get(flag, arg))
    return [*out, "--metrics-bind-address=127.0.0.1:0", "--health-bind-address=127.0.0.1:0"]


class Controllers:
    """Controller subprocesses with their logs; SIGTERM then wait on stop, kill at close."""

    def __init__(self, tmp: Path, kubeconfig: str) -> None:
        self.tmp, self.kubeconfig = tmp, kubeconfig
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, role: str, socket: str, *extra: str, pod: str = "gw-a",
              pod_ip: str = "10.0.0.11") -> None:
        env = {**os.environ, "POD_NAME": pod, "POD_NAMESPACE": NS, "POD_IP": pod_ip, "PYTHONPATH": str(REPO)}
        env.pop("KUBECONFIG", None)
        cmd = [sys.executable, "-m", MODULES[role], *controller_argv(role, socket, self.kubeconfig), *extra]
        with open(self.tmp / f"{role}.log", "ab") as log:
            self.procs[role] = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=REPO)

    def stop(self, role: str) -> None:
        proc = self.procs.pop(role)
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0, f"{role} exited {proc.returncode}\n{self.logs()}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.tmp.glob("*.log")))


@dataclass
class Env:
    api: KubeAPIServer
    kube: KubeClient
    ctl: Controllers
    fake: FakeNetAgent
    fake_socket: str
    election: RecordingNetAgent
    election_socket: str

    def wait(self, what: str, cond: Any, timeout: float = 20.0) -> Any:
        try:
            return wait_for(what, cond, timeout, 0.05)
        except AssertionError as e:
            e.add_note(self.ctl.logs())
            raise


@pytest.fixture
def env() -> Iterator[Env]:
    with tempfile.TemporaryDirectory(prefix="liqo-rbac-") as tmpdir:
        tmp = Path(tmpdir)
        fake = FakeNetAgent()
        fake_socket = str(tmp / "agent.sock")
        server = serve(fake, fake_socket)
        election = RecordingNetAgent("gw-a")
        election_socket = str(tmp / "labeler.sock")
        election_server = serve_election_agent(election, election_socket)
        api = KubeAPIServer(crd_dirs=[str(chart.CHART / "crds")], bookmark_interval=1.0).start()
        client = api.api_client()
        client.user_agent = TEST_AGENT
        kube = KubeClient(client, timeout=5)
        ctl = Controllers(tmp, str(api.write_kubeconfig(tmp / "kubeconfig")))
        try:
            yield Env(api, kube, ctl, fake, fake_socket, election, election_socket)
        finally:
            ctl.close()
            kube.close()
            api.stop()
            election_server.stop(0).wait()
            server.stop(0).wait()


def objects_of_the_release(env: Env, objects: list[dict[str, Any]]) -> None:
    """The namespace, the gateway Service as rendered, and two gateway pods with the Deployment's
    pod labels (the API server runs no Deployment controller)."""
    kube = env.kube
    for ns in (NS, TENANT):
        kube.create(NAMESPACES, namespace(ns))
    (svc,) = [o for o in chart.by_kind(objects, "Service") if o["metadata"]["name"] == RELEASE]
    kube.create(SERVICES, copy.deepcopy(svc), NS)
    labels = chart.deployment(objects)["spec"]["template"]["metadata"]["labels"]
    for name in ("gw-a", "gw-b"):
        kube.create(PODS, {"metadata": {"name": name, "namespace": NS, "labels": dict(labels)},
                           "spec": {"containers": [{"name": "labeler", "image": "liqo-gateway"}]}}, NS)


def run_labeler(env: Env) -> None:
    kube = env.kube
    # Short timings, so that the test sees renewals (lease 3 s, renew deadline 2 s, retry 0.5 s).
    env.ctl.start("labeler", env.election_socket, "--lease-duration=3", "--renew-deadline=2",
                  "--retry-period=0.5", "--election-request-timeout=0.6")
    env.wait("gw-a leads", lambda: env.election.active())

    def labelled() -> bool:
        pods = {p["metadata"]["name"]: p["metadata"].get("labels", {}).get(GATEWAY_LABEL)
                for p in kube.list(PODS, NS)["items"]}
        svc = kube.get(SERVICES, RELEASE, NS)
        return (pods == {"gw-a": "active", "gw-b": "standby"}
                and (svc["metadata"].get("annotations") or {}).get(NODE_IP_ANNOTATION) == "10.0.0.11")

    env.wait("pods labelled and the Service annotated", labelled)
    first = kube.get(LEASES, LEASE_NAME, NS)["metadata"]["resourceVersion"]
    env.wait("a renewal", lambda: kube.get(LEASES, LEASE_NAME, NS)["metadata"]["resourceVersion"] != first)
    env.wait("the labeler's Event", lambda: [e for e in kube.list(EVENTS, NS)["items"]
                                             if e["reason"] == "GatewayActive"])
    env.ctl.stop("labeler")  # releases the Lease
    assert not kube.get(LEASES, LEASE_NAME, NS)["spec"].get("holderIdentity")


def run_tunnel_and_natmap(env: Env) -> None:
    kube, fake = env.kube, env.fake
    env.ctl.start("tunnel", env.fake_socket)
    env.wait("the key Secret", lambda: fake.public_key and kube.get(SECRETS, KEY_SECRET, NS))
    fake.set_role(pb.ROLE_ACTIVE)
    kube.create(TUNNEL_ENDPOINTS, copy.deepcopy(TEP), TENANT)
    name = TEP["metadata"]["name"]

    def connection() -> dict[str, Any]:
        return dict((kube.get(TUNNEL_ENDPOINTS, name, TENANT).get("status") or {}).get("connection") or {})

    env.wait("the finalizer and the status", lambda: connection().get("status") == "Connecting"
             and FINALIZER in kube.get(TUNNEL_ENDPOINTS, name, TENANT)["metadata"]["finalizers"])
    fake.set_state(CID, pb.TUNNEL_STATE_CONNECTED)
    env.wait("Connected", lambda: connection().get("status") == "Connected")
    env.wait("an Event in the tenant namespace", lambda: kube.list(EVENTS, TENANT)["items"])

    env.ctl.start("natmap", env.fake_socket)
    nm = copy.deepcopy(NM)
    nm["spec"]["clusterMappings"]["10.200.3.9"] = "10.99.0.1"  # outside externalCIDR: a Warning
    kube.create(NAT_MAPPINGS, nm)
    env.wait("mappings applied", lambda: CID in fake.nat)
    env.wait("the NatMapping's Events", lambda: {"InvalidMappings", "MappingsApplied"}
             <= {e["reason"] for e in kube.list(EVENTS, "default")["items"]})
    kube.delete(NAT_MAPPINGS, nm["metadata"]["name"])
    env.wait("the NatMapping gone (finalizer removed)",
             lambda: not kube.list(NAT_MAPPINGS)["items"])
    env.ctl.stop("natmap")

    kube.delete(TUNNEL_ENDPOINTS, name, TENANT)
    env.wait("the TunnelEndpoint gone (finalizer removed)",
             lambda: not kube.list(TUNNEL_ENDPOINTS, TENANT)["items"])
    env.ctl.stop("tunnel")
    # Restarted, it reads the existing Secret instead of creating one.
    fake.private_key = ""
    env.ctl.start("tunnel", env.fake_socket)
    env.wait("device configured from the existing Secret", lambda: fake.private_key)
    env.ctl.stop("tunnel")


def test_rendered_rbac_grants_exactly_what_the_controllers_call(env: Env) -> None:
    objects = chart.render(chart.REQUIRED_VALUES, namespace=NS, release=RELEASE)
    objects_of_the_release(env, objects)
    run_labeler(env)
    run_tunnel_and_natmap(env)

    needed = requested(env.api)
    granted = grants(objects)
    report = ("\nrequests:\n  " + "\n  ".join(map(str, sorted(needed)))
              + "\ngrants:\n  " + "\n  ".join(map(str, sorted(granted))))

    missing, unused, redundant = compare(needed, granted)
    assert not missing, "the controllers call what the chart does not grant: " + \
        ", ".join(map(str, missing)) + report
    assert not unused, "the chart grants what no controller calls: " + ", ".join(map(str, unused)) + report
    assert not redundant, "Role rules the ClusterRole already grants: " + ", ".join(map(str, redundant))

    # A name-limited grant where the code uses one fixed name (the Lease, the gateway Service, the
    # key Secret): the chart must keep naming them.
    for resource, name in (("coordination.k8s.io/leases", LEASE_NAME), ("/services", RELEASE),
                           ("/secrets", KEY_SECRET)):
        for g in granted:
            if g.resource == resource and g.verb != "create":
                assert g.name == name, f"{g} is not limited to {name}"
    for g in granted:
        assert not (g.resource == "/secrets" and g.verb in ("list", "watch")), \
            f"{g}: never list/watch Secrets"


def test_no_rule_grants_list_or_watch_on_secrets() -> None:
    for values in (chart.REQUIRED_VALUES, {**chart.REQUIRED_VALUES, "replicas": 3}):
        for obj in chart.render(values):
            if obj["kind"] in ("Role", "ClusterRole"):
                for rule in obj["rules"]:
                    if {"secrets", "*"} & set(rule["resources"]) and {"", "*"} & set(rule["apiGroups"]):
                        assert not {"list", "watch", "*"} & set(rule["verbs"]), rule
                        assert rule.get("resourceNames") or rule["verbs"] == ["create"], rule

