"""The gateway pod's security posture and wiring, asserted from the objects the chart renders: who
runs as whom with which capabilities, which container mounts which volume (the mount is the
capability: a controller reaches only its own netagent socket), credentials only where they are
used, probes, resources, ports, scheduling, and the Services."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.testkit import chart
from services.common.vocabulary import ACTIVE, GATEWAY_LABEL, GATEWAY_SELECTOR, netagent_socket

CONTROLLERS = {"tunnel": 10001, "natmap": 10002, "labeler": 10003}
ALL = ["netagent", "wireguard", "tunnel", "natmap", "labeler"]
SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
HEALTH = {"netagent": 5876, "tunnel": 5877, "natmap": 5878, "labeler": 5879}
METRICS = {"netagent": 5872, "tunnel": 5873, "natmap": 5874, "labeler": 5875}


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = chart.deployment(objects)["spec"]["template"]["spec"]
    return spec


def flag(container: dict[str, Any], name: str) -> str | None:
    for arg in container["args"]:
        key, _, value = arg.partition("=")
        if key == name:
            return value
    return None


def mounts_of(spec: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """volume name -> container name -> its volumeMount."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for c in spec["containers"]:
        for m in c.get("volumeMounts") or []:
            out.setdefault(m["name"], {})[c["name"]] = m
    return out


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (vol,) = [v for v in spec["volumes"] if v["name"] == name]
    return vol


@pytest.fixture(params=["defaults", "capabilities", "sandbox", "replicas-3"])
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    v = {"defaults": chart.values(), "capabilities": chart.values(netagent={"privileged": False}),
         "sandbox": chart.PODMAN_VALUES, "replicas-3": chart.values(replicas=3)}[request.param]
    return chart.render(v)


def test_five_containers_from_one_image(objects: list[dict[str, Any]]) -> None:
    spec = pod_spec(objects)
    assert [c["name"] for c in spec["containers"]] == ALL
    assert len({c["image"] for c in spec["containers"]}) == 1
    assert not spec.get("initContainers")


def test_controllers_are_distinct_unprivileged_users(objects: list[dict[str, Any]]) -> None:
    spec = pod_spec(objects)
    cs = chart.containers(objects)
    for name, uid in CONTROLLERS.items():
        sc = cs[name]["securityContext"]
        assert sc == {
            "runAsUser": uid, "runAsGroup": uid, "runAsNonRoot": True, "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }, name
    assert spec["securityContext"]["supplementalGroups"] == [10000]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "fsGroup" not in spec["securityContext"]
    assert flag(cs["netagent"], "--socket-group") == "10000"


def test_netagent_privileged_or_only_its_capabilities() -> None:
    priv = chart.containers(chart.render(chart.values()))["netagent"]["securityContext"]
    assert priv["privileged"] is True and priv["runAsUser"] == 0
    capsmode = chart.render(chart.values(netagent={"privileged": False}))
    caps = chart.containers(capsmode)["netagent"]["securityContext"]
    assert caps["privileged"] is False and caps["allowPrivilegeEscalation"] is False
    assert caps["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]}
    assert caps["seccompProfile"] == {"type": "RuntimeDefault"} and caps["readOnlyRootFilesystem"] is True
    # The API server refuses Bidirectional propagation in a container that is not privileged, and a
    # default AppArmor profile would refuse the agent's mounts.
    annotations = chart.deployment(capsmode)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["container.apparmor.security.beta.kubernetes.io/netagent"] == "unconfined"
    assert "annotations" not in chart.deployment(chart.render(chart.values()))["spec"]["template"]["metadata"]


@pytest.mark.parametrize("privileged", [True, False])
def test_bidirectional_propagation_only_in_privileged_containers(privileged: bool) -> None:
    """The API server's rule (`Bidirectional mount propagation is available only to privileged
    containers`), which schema validation does not check."""
    spec = pod_spec(chart.render(chart.values(netagent={"privileged": privileged})))
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            if m.get("mountPropagation") == "Bidirectional":
                assert c["securityContext"].get("privileged") is True, (c["name"], m)
    (netns,) = [m for c in spec["containers"] for m in c.get("volumeMounts", []) if m["name"] == "host-netns"]
    assert netns["mountPropagation"] == ("Bidirectional" if privileged else "HostToContainer")


def test_wireguard_container_is_root_with_net_admin_and_tun_only(objects: list[dict[str, Any]]) -> None:
    spec = pod_spec(objects)
    wg = chart.containers(objects)["wireguard"]
    assert wg["securityContext"] == {
        "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False, "readOnlyRootFilesystem": True,
        "privileged": False, "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert volume(spec, "dev-tun")["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    assert set(mounts_of(spec)["dev-tun"]) == {"wireguard"}
    assert mounts_of(spec)["dev-tun"]["wireguard"]["mountPath"] == "/dev/net/tun"
    assert not wg.get("env"), "the wireguard container needs no Downward API"


def test_only_the_controllers_hold_credentials(objects: list[dict[str, Any]]) -> None:
    spec = pod_spec(objects)
    (sa,) = chart.by_kind(objects, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    mounts = mounts_of(spec)
    kubeconfig = flag(chart.containers(objects)["tunnel"], "--kubeconfig")
    if kubeconfig is None:
        vol = volume(spec, "kube-api-access")["projected"]
        sources = vol["sources"]
        assert sources[0]["serviceAccountToken"]["path"] == "token"
        assert sources[1]["configMap"] == {"name": "kube-root-ca.crt",
                                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}
        assert sources[2]["downwardAPI"]["items"] == [{"path": "namespace",
                                                       "fieldRef": {"fieldPath": "metadata.namespace"}}]
        assert set(mounts["kube-api-access"]) == set(CONTROLLERS)
        for m in mounts["kube-api-access"].values():
            assert m == {"name": "kube-api-access", "mountPath": SA_PATH, "readOnly": True}
        assert "kubeconfig" not in mounts
    else:
        assert not [v for v in spec["volumes"] if "projected" in v], "podman cannot play projected volumes"
        assert volume(spec, "kubeconfig")["hostPath"]["type"] == "File"
        assert set(mounts["kubeconfig"]) == set(CONTROLLERS)
        for name, m in mounts["kubeconfig"].items():
            assert m["readOnly"] is True
            assert flag(chart.containers(objects)[name], "--kubeconfig") == m["mountPath"]
    for c in spec["containers"]:
        if c["name"] not in CONTROLLERS:
            assert not any(m["mountPath"].startswith("/var/run/secrets") for m in c.get("volumeMounts") or [])
            assert flag(c, "--kubeconfig") is None


def test_each_controller_mounts_only_its_own_socket(objects: list[dict[str, Any]]) -> None:
    spec = pod_spec(objects)
    cs = chart.containers(objects)
    mounts = mounts_of(spec)
    socket_volumes = {n for n in mounts if n.startswith("socket-")}
    assert socket_volumes == {f"socket-{r}" for r in CONTROLLERS}
    for role in CONTROLLERS:
        vol = f"socket-{role}"
        assert set(mounts[vol]) == {"netagent", role}, f"{vol} mounted by {set(mounts[vol])}"
        assert "emptyDir" in volume(spec, vol)
        path = f"/run/liqo/{role}/netagent.sock"
        assert path == netagent_socket(role)
        assert flag(cs[role], "--netagent-socket") == path
        assert flag(cs["netagent"], f"--{role}-socket") == path
        assert mounts[vol][role]["mountPath"] == mounts[vol]["netagent"]["mountPath"] == f"/run/liqo/{role}"
        own = [m["name"] for m in cs[role]["volumeMounts"] if m["name"].startswith(("socket-", "netagent-"))]
        assert own == [vol]


def test_the_netagent_private_directory(objects: list[dict[str, Any]]) -> None:
    spec = pod_spec(objects)
    mounts = mounts_of(spec)
    netagent = chart.containers(objects)["netagent"]
    assert set(mounts["netagent-private"]) == {"netagent"}
    assert volume(spec, "netagent-private") == {"name": "netagent-private", "emptyDir": {}}
    root = mounts["netagent-private"]["netagent"]["mountPath"]
    state, socket = flag(netagent, "--state-path"), flag(netagent, "--socket")
    assert state and socket
    # A subdirectory the agent creates 0700: the emptyDir itself is 0777, which the agent refuses.
    private = state.rsplit("/", 1)[0]
    assert private.startswith(root + "/") and socket.rsplit("/", 1)[0] == private
    for name in ("netagent-xtables", "netagent-tmp"):
        assert set(mounts[name]) == {"netagent"}


def test_the_wireguard_socket_directory() -> None:
    for v, host in ((chart.values(), None), (chart.PODMAN_VALUES, "/var/lib/lgw/wireguard")):
        spec = pod_spec(chart.render(v))
        mounts = mounts_of(spec)["wireguard-sockets"]
        assert set(mounts) == {"netagent", "wireguard"}
        assert {m["mountPath"] for m in mounts.values()} == {"/var/run/wireguard"}
        vol = volume(spec, "wireguard-sockets")
        if host is None:
            assert "emptyDir" in vol and "hostPath" not in vol
        else:
            assert vol["hostPath"] == {"path": host, "type": "DirectoryOrCreate"}


def test_host_network_and_host_paths() -> None:
    spec = pod_spec(chart.render(chart.values(netagent={"netnsHostPath": "/var/run/netns",
                                                  "modulesHostPath": "/usr/lib/modules"})))
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    mounts = mounts_of(spec)
    assert volume(spec, "host-netns")["hostPath"] == {"path": "/var/run/netns", "type": "DirectoryOrCreate"}
    assert mounts["host-netns"] == {"netagent": {"name": "host-netns", "mountPath": "/run/netns",
                                                 "mountPropagation": "Bidirectional"}}
    assert volume(spec, "host-modules")["hostPath"] == {"path": "/usr/lib/modules",
                                                        "type": "DirectoryOrCreate"}
    # Both resolve `--wireguard-implementation auto` the same way (the module on disk counts).
    for name in ("netagent", "wireguard"):
        assert mounts["host-modules"][name] == {"name": "host-modules", "mountPath": "/lib/modules",
                                                "readOnly": True}
    assert set(mounts["host-modules"]) == {"netagent", "wireguard"}
    defaults = pod_spec(chart.render(chart.values()))
    assert volume(defaults, "host-netns")["hostPath"]["path"] == "/run/netns"
    assert volume(defaults, "host-modules")["hostPath"]["path"] == "/lib/modules"


def test_controllers_get_the_downward_api_and_a_tmp_of_their_own(objects: list[dict[str, Any]]) -> None:
    mounts = mounts_of(pod_spec(objects))
    for name in CONTROLLERS:
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
               for e in chart.containers(objects)[name]["env"]}
        assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
                       "POD_IP": "status.podIP"}
        assert set(mounts[f"tmp-{name}"]) == {name}
        assert mounts[f"tmp-{name}"][name]["mountPath"] == "/tmp"


def test_probes_and_resources_on_every_container(objects: list[dict[str, Any]]) -> None:
    cs = chart.containers(objects)
    for name, c in cs.items():
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], name
        assert c["resources"]["limits"]["memory"], name
        assert c["livenessProbe"] and c["readinessProbe"], name
    for name, port in HEALTH.items():
        c = cs[name]
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert c[probe]["httpGet"] == {"host": "127.0.0.1", "port": port, "path": path}, (name, probe)
        bind = flag(c, "--health-address" if name == "netagent" else "--health-bind-address")
        assert bind == f"127.0.0.1:{port}"
        metrics = flag(c, "--metrics-address" if name == "netagent" else "--metrics-bind-address")
        assert metrics == f":{METRICS[name]}"
    wg = cs["wireguard"]
    for probe in ("livenessProbe", "readinessProbe"):
        command = wg[probe]["exec"]["command"]
        # Kernel mode has no wireguard-go socket: the probe must pass on the idle container.
        assert command[:2] == ["/bin/sh", "-c"]
        assert "if [ -S /var/run/wireguard/liqo.tunnel.sock ]" in command[2]


def test_scheduling(objects: list[dict[str, Any]]) -> None:
    dep = chart.deployment(objects)
    spec = dep["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert GATEWAY_SELECTOR.items() <= labels.items(), "the labeler selects the pods by these"
    pdbs = chart.by_kind(objects, "PodDisruptionBudget")
    if spec["replicas"] > 1:
        (pdb,) = pdbs
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    else:
        assert not pdbs


def test_scheduling_values_reach_the_pod() -> None:
    tol = [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]
    spec = pod_spec(chart.render(chart.values(priorityClassName="system-node-critical",
                                              nodeSelector={"a": "b"}, tolerations=tol)))
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["nodeSelector"] == {"a": "b"} and spec["tolerations"] == tol
    assert "priorityClassName" not in pod_spec(chart.render(chart.values()))


def test_ports_declared_and_distinct() -> None:
    cs = chart.containers(chart.render(chart.values()))
    declared = [(p["containerPort"], p["protocol"]) for c in cs.values() for p in c.get("ports") or []]
    assert len(declared) == len(set(declared)) == 9
    names = [p["name"] for c in cs.values() for p in c.get("ports") or []]
    assert len(names) == len(set(names)) and all(len(n) <= 15 for n in names)
    assert set(declared) == {(5871, "UDP"), *((p, "TCP") for p in (*HEALTH.values(), *METRICS.values()))}
    off = chart.containers(chart.render(chart.values(ports={"declare": False})))
    assert not any(c.get("ports") for c in off.values())
    moved = chart.containers(chart.render(chart.values(ports={"metrics": {"tunnel": 15873}})))["tunnel"]
    assert flag(moved, "--metrics-bind-address") == ":15873"
    assert {"name": "m-tunnel", "containerPort": 15873, "protocol": "TCP"} in moved["ports"]


@pytest.mark.parametrize("kind", ["LoadBalancer", "NodePort"])
def test_the_gateway_service(kind: str) -> None:
    v = chart.values(service={"type": kind, **({"nodePort": 31871} if kind == "NodePort" else {})},
               wireguard={"listenPort": 51820})
    objects = chart.render(v)
    (svc,) = [s for s in chart.by_kind(objects, "Service") if not s["metadata"]["name"].endswith("-metrics")]
    spec = svc["spec"]
    assert spec["type"] == kind and spec["externalTrafficPolicy"] == "Local"
    port = {"name": "wireguard", "protocol": "UDP", "port": 5871, "targetPort": 51820}
    assert spec["ports"] == [{**port, "nodePort": 31871} if kind == "NodePort" else port]
    assert spec["selector"][GATEWAY_LABEL] == ACTIVE
    labels = chart.deployment(objects)["spec"]["template"]["metadata"]["labels"]
    assert {k: v for k, v in spec["selector"].items() if k != GATEWAY_LABEL}.items() <= labels.items()
    labeler = chart.containers(objects)["labeler"]
    assert flag(labeler, "--service-name") == svc["metadata"]["name"]
    selector = dict(term.split("=", 1) for term in (flag(labeler, "--gateway-selector") or "").split(","))
    assert GATEWAY_SELECTOR.items() <= selector.items() and selector.items() <= labels.items()


def test_the_metrics_service_selects_every_replica() -> None:
    objects = chart.render(chart.values())
    (svc,) = [s for s in chart.by_kind(objects, "Service") if s["metadata"]["name"].endswith("-metrics")]
    assert GATEWAY_LABEL not in svc["spec"]["selector"], "standbys are scraped too"
    assert [p["port"] for p in svc["spec"]["ports"]] == list(METRICS.values())
    assert not (GATEWAY_SELECTOR.items() <= svc["metadata"]["labels"].items()), \
        "the labeler must not mistake it for the gateway Service"
    off = chart.render(chart.values(metrics={"service": {"enabled": False}}))
    assert not [s for s in chart.by_kind(off, "Service") if s["metadata"]["name"].endswith("-metrics")]


def test_notes_name_the_pod_security_label() -> None:
    text = chart.notes(chart.values())
    assert "pod-security.kubernetes.io/enforce=privileged" in text
    assert "-L net.liqo.io/gateway" in text and "grpcurl" in text and "get tunnelendpoints -A -o wide" in text


def test_the_podman_values_play_in_podman_4_3() -> None:
    """What podman 4.3's `kube play` refuses is absent with the sandbox's values: containerPorts
    (without a bridge network), projected volumes, hostPaths of type Directory (a missing one
    fails)."""
    spec = pod_spec(chart.render(chart.PODMAN_VALUES))
    assert not any(c.get("ports") for c in spec["containers"])
    kinds = {k for v in spec["volumes"] for k in v if k != "name"}
    assert kinds <= {"emptyDir", "hostPath"}, kinds
    assert all(v["hostPath"]["type"] != "Directory" for v in spec["volumes"] if "hostPath" in v)


def test_shared_volumes_are_not_memory_backed(objects: list[dict[str, Any]]) -> None:
    """Some podman versions turn a `medium: Memory` emptyDir into one tmpfs per container: a
    socket volume would then not be shared."""
    spec = pod_spec(objects)
    for name, users in mounts_of(spec).items():
        if len(users) > 1:
            assert (volume(spec, name).get("emptyDir") or {}).get("medium") is None, name
