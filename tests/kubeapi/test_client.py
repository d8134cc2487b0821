"""Proofs through the official kubernetes client: CRUD semantics, status split, finalizers, schema."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from sandbox.kubeapi import KubeAPIServer
from sandbox.testkit.kubectl import gadget

G, V, P = "test.liqo.io", "v1alpha1", "gadgets"


def status_of(exc: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    body = json.loads(exc.value.body)
    assert body["kind"] == "Status"
    assert body["code"] == exc.value.status
    return body


def lease(name: str, holder: str) -> client.V1Lease:
    return client.V1Lease(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=7),
    )


def test_metadata_and_global_resource_version(
    custom: client.CustomObjectsApi, core: client.CoreV1Api
) -> None:
    a = custom.create_namespaced_custom_object(G, V, "default", P, gadget("a"))
    cm = core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"), data={"k": "v"})
    )
    b = custom.create_namespaced_custom_object(G, V, "default", P, gadget("b"))
    rvs = [
        int(a["metadata"]["resourceVersion"]),
        int(cm.metadata.resource_version),
        int(b["metadata"]["resourceVersion"]),
    ]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3
    assert a["metadata"]["uid"] != b["metadata"]["uid"]
    assert a["metadata"]["creationTimestamp"].endswith("Z")
    assert a["metadata"]["generation"] == 1
    # Defaults from the schema are applied.
    assert a["spec"] == {"cidr": "10.0.0.0/16", "port": 51820, "backend": "wireguard"}


def test_generation_bumps_only_on_spec_changes(custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(G, V, "default", P, gadget("a"))
    labelled = custom.patch_namespaced_custom_object(
        G, V, "default", P, "a", {"metadata": {"labels": {"x": "y"}}}
    )
    assert labelled["metadata"]["generation"] == 1
    status = custom.patch_namespaced_custom_object_status(
        G, V, "default", P, "a", {"status": {"phase": "Ready"}}
    )
    assert status["metadata"]["generation"] == 1
    spec = custom.patch_namespaced_custom_object(G, V, "default", P, "a", {"spec": {"port": 1000}})
    assert spec["metadata"]["generation"] == 2
    # A patch that changes nothing does not write: same resourceVersion.
    again = custom.patch_namespaced_custom_object(G, V, "default", P, "a", {"spec": {"port": 1000}})
    assert again["metadata"]["resourceVersion"] == spec["metadata"]["resourceVersion"]


def test_create_conflicts_and_not_found(custom: client.CustomObjectsApi, core: client.CoreV1Api) -> None:
    custom.create_namespaced_custom_object(G, V, "default", P, gadget("a"))
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(G, V, "default", P, gadget("a"))
    body = status_of(exc)
    assert (exc.value.status, body["reason"]) == (409, "AlreadyExists")
    assert body["message"] == 'gadgets.test.liqo.io "a" already exists'
    with pytest.raises(ApiException) as exc:
        custom.get_namespaced_custom_object(G, V, "default", P, "nope")
    assert (exc.value.status, status_of(exc)["reason"]) == (404, "NotFound")
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(
            "no-such-ns", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"))
        )
    assert exc.value.status == 404
    assert 'namespaces "no-such-ns" not found' in status_of(exc)["message"]


def test_lease_replace_with_stale_resource_version_conflicts(coordination: client.CoordinationV1Api) -> None:
    created = coordination.create_namespaced_lease("default", lease("gw", "pod-a"))
    stale_rv = created.metadata.resource_version
    created.spec.holder_identity = "pod-b"
    replaced = coordination.replace_namespaced_lease("gw", "default", created)
    assert replaced.spec.holder_identity == "pod-b"
    assert int(replaced.metadata.resource_version) > int(stale_rv)
    stale = lease("gw", "pod-c")
    stale.metadata.resource_version = stale_rv
    with pytest.raises(ApiException) as exc:
        coordination.replace_namespaced_lease("gw", "default", stale)
    body = status_of(exc)
    assert (exc.value.status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]
    assert coordination.read_namespaced_lease("gw", "default").spec.holder_identity == "pod-b"
    # A resourceVersion inside a patch is a precondition too.
    with pytest.raises(ApiException) as exc:
        coordination.patch_namespaced_lease(
            "gw", "default", {"metadata": {"resourceVersion": stale_rv}, "spec": {"holderIdentity": "pod-d"}}
        )
    assert exc.value.status == 409
    # Without a resourceVersion the update is unconditional, as upstream.
    fresh = lease("gw", "pod-e")
    assert coordination.replace_namespaced_lease("gw", "default", fresh).spec.holder_identity == "pod-e"


def test_status_subresource_split_for_custom_resources(custom: client.CustomObjectsApi) -> None:
    body = gadget("a")
    body["status"] = {"phase": "Ready"}
    created = custom.create_namespaced_custom_object(G, V, "default", P, body)
    assert "status" not in created  # create ignores status
    st = custom.patch_namespaced_custom_object_status(
        G,
        V,
        "default",
        P,
        "a",
        {"spec": {"port": 9}, "metadata": {"labels": {"x": "y"}}, "status": {"phase": "Ready"}},
    )
    assert st["status"] == {"phase": "Ready"}
    assert st["spec"]["port"] == 51820 and "labels" not in st["metadata"]  # status endpoint ignores the rest
    main = custom.patch_namespaced_custom_object(
        G, V, "default", P, "a", {"spec": {"port": 10}, "status": {"phase": "Failed"}}
    )
    assert main["spec"]["port"] == 10 and main["status"] == {"phase": "Ready"}  # main endpoint ignores status
    full = custom.get_namespaced_custom_object_status(G, V, "default", P, "a")
    full["status"]["phase"] = "Failed"
    replaced = custom.replace_namespaced_custom_object_status(G, V, "default", P, "a", full)
    assert replaced["status"]["phase"] == "Failed"


def test_status_subresource_split_for_pods(core: client.CoreV1Api) -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", labels={"app": "gw"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
    )
    created = core.create_namespaced_pod("default", pod)
    assert created.status.phase == "Pending"
    patched = core.patch_namespaced_pod_status(
        "p", "default", {"status": {"phase": "Running", "podIP": "10.0.0.5"}}
    )
    assert (patched.status.phase, patched.status.pod_ip) == ("Running", "10.0.0.5")
    ignored = core.patch_namespaced_pod("p", "default", {"status": {"phase": "Failed"}})
    assert ignored.status.phase == "Running"
    assert (
        core.list_namespaced_pod("default", field_selector="status.phase=Running").items[0].metadata.name
        == "p"
    )


def test_finalizers_defer_deletion_until_the_last_one_is_removed(custom: client.CustomObjectsApi) -> None:
    body = gadget("a")
    body["metadata"]["finalizers"] = ["test.liqo.io/one", "test.liqo.io/two"]
    custom.create_namespaced_custom_object(G, V, "default", P, body)
    deleting = custom.delete_namespaced_custom_object(G, V, "default", P, "a")
    assert deleting["metadata"]["deletionTimestamp"]
    still = custom.get_namespaced_custom_object(G, V, "default", P, "a")
    assert still["metadata"]["finalizers"] == ["test.liqo.io/one", "test.liqo.io/two"]
    with pytest.raises(ApiException) as exc:  # no new finalizers once deleting
        custom.patch_namespaced_custom_object(
            G,
            V,
            "default",
            P,
            "a",
            {"metadata": {"finalizers": ["test.liqo.io/one", "test.liqo.io/two", "test.liqo.io/three"]}},
        )
    assert exc.value.status == 422
    custom.patch_namespaced_custom_object(
        G, V, "default", P, "a", {"metadata": {"finalizers": ["test.liqo.io/two"]}}
    )
    assert custom.get_namespaced_custom_object(G, V, "default", P, "a")["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(G, V, "default", P, "a", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as exc:
        custom.get_namespaced_custom_object(G, V, "default", P, "a")
    assert exc.value.status == 404


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"cidr": "10.0.0.0/16", "port": 70000}, [("spec.port", "FieldValueInvalid")]),
        ({"cidr": "not-a-cidr"}, [("spec.cidr", "FieldValueInvalid")]),
        ({"port": 1}, [("spec.cidr", "FieldValueRequired")]),
        ({"cidr": "10.0.0.0/16", "backend": "ipsec"}, [("spec.backend", "FieldValueNotSupported")]),
        ({"cidr": "10.0.0.0/16", "port": "80"}, [("spec.port", "FieldValueTypeInvalid")]),
        ({"cidr": "10.0.0.0/16", "nickname": "x"}, [("spec.nickname", "FieldValueInvalid")]),
        ({"cidr": "10.0.0.0/16", "labels": {"a": 1}}, [("spec.labels.a", "FieldValueTypeInvalid")]),
    ],
)
def test_schema_rejection_is_422_with_field_paths(
    custom: client.CustomObjectsApi, spec: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    body = gadget("bad")
    body["spec"] = spec
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(G, V, "default", P, body)
    status = status_of(exc)
    assert (exc.value.status, status["reason"]) == (422, "Invalid")
    assert [(c["field"], c["reason"]) for c in status["details"]["causes"]] == expected
    assert status["details"]["kind"] == "Gadget" and status["details"]["group"] == G
    assert status["message"].startswith('Gadget.test.liqo.io "bad" is invalid: ')
    with pytest.raises(ApiException):
        custom.get_namespaced_custom_object(G, V, "default", P, "bad")  # nothing was stored


def test_schema_also_guards_updates_and_status(custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(G, V, "default", P, gadget("a"))
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object(G, V, "default", P, "a", {"spec": {"port": 0}})
    assert exc.value.status == 422
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object_status(G, V, "default", P, "a", {"status": {"phase": "Weird"}})
    assert [c["field"] for c in status_of(exc)["details"]["causes"]] == ["status.phase"]
    assert custom.get_namespaced_custom_object(G, V, "default", P, "a")["spec"]["port"] == 51820


def test_unknown_fields_are_pruned(custom: client.CustomObjectsApi) -> None:
    body = gadget("a", surprise=1, extra={"free": {"form": True}})
    created = custom.create_namespaced_custom_object(G, V, "default", P, body)
    assert "surprise" not in created["spec"]
    assert created["spec"]["extra"] == {"free": {"form": True}}  # x-kubernetes-preserve-unknown-fields


def test_dry_run_and_generate_name(custom: client.CustomObjectsApi, api: KubeAPIServer) -> None:
    rv = api.store.resource_version
    dry = custom.create_namespaced_custom_object(G, V, "default", P, gadget("a"), dry_run="All")
    assert dry["metadata"]["name"] == "a"
    assert api.store.resource_version == rv
    with pytest.raises(ApiException):
        custom.get_namespaced_custom_object(G, V, "default", P, "a")
    body = gadget("")
    body["metadata"] = {"generateName": "gad-"}
    made = custom.create_namespaced_custom_object(G, V, "default", P, body)
    assert made["metadata"]["name"].startswith("gad-") and len(made["metadata"]["name"]) == 9
    custom.patch_namespaced_custom_object(
        G, V, "default", P, made["metadata"]["name"], {"spec": {"port": 5}}, dry_run="All"
    )
    assert (
        custom.get_namespaced_custom_object(G, V, "default", P, made["metadata"]["name"])["spec"]["port"]
        == 51820
    )


def test_json_patch_and_strategic_merge(core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    core.create_namespaced_config_map(
        "default",
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c", labels={"a": "1"}), data={"k": "v"}),
    )
    out = core.patch_namespaced_config_map("c", "default", [{"op": "add", "path": "/data/k2", "value": "v2"}])
    assert out.data == {"k": "v", "k2": "v2"}
    out = core.patch_namespaced_config_map("c", "default", {"metadata": {"labels": {"b": "2"}}})  # strategic
    assert out.metadata.labels == {"a": "1", "b": "2"}
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_config_map(
            "c", "default", [{"op": "test", "path": "/data/k", "value": "other"}]
        )
    assert exc.value.status == 422
    custom.create_namespaced_custom_object(G, V, "default", P, gadget("a"))
    out2 = custom.patch_namespaced_custom_object(
        G,
        V,
        "default",
        P,
        "a",
        [{"op": "replace", "path": "/spec/port", "value": 7}],
        _content_type="application/json-patch+json",
    )
    assert out2["spec"]["port"] == 7


def test_selectors_and_pagination(core: client.CoreV1Api) -> None:
    for i in range(7):
        core.create_namespaced_config_map(
            "default",
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(
                    name=f"cm-{i}", labels={"i": str(i), "even": str(i % 2 == 0).lower()}
                )
            ),
        )
    names = lambda items: [o.metadata.name for o in items]  # noqa: E731
    assert names(core.list_namespaced_config_map("default", label_selector="even=true").items) == [
        "cm-0",
        "cm-2",
        "cm-4",
        "cm-6",
    ]
    assert names(
        core.list_namespaced_config_map("default", label_selector="i in (1,3),even!=true").items
    ) == ["cm-1", "cm-3"]
    assert names(core.list_namespaced_config_map("default", label_selector="!even").items) == []
    assert names(core.list_namespaced_config_map("default", field_selector="metadata.name=cm-5").items) == [
        "cm-5"
    ]
    assert names(core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=default").items)
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_config_map("default", field_selector="data.x=1")
    assert exc.value.status == 400
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = core.list_namespaced_config_map("default", limit=3, _continue=token)
        seen += names(page.items)
        pages += 1
        token = page.metadata._continue
        if not token:
            break
    assert seen == [f"cm-{i}" for i in range(7)] and pages == 3


def test_errors_for_bad_requests(api: KubeAPIServer, api_client: client.ApiClient) -> None:
    def call(method: str, path: str, body: Any = None, ctype: str = "application/json") -> tuple[int, Any]:
        try:
            resp = api_client.call_api(
                *api_client.param_serialize(
                    method,
                    path,
                    header_params={"Content-Type": ctype, "Accept": "application/json"},
                    body=body,
                )
            )
            resp.read()
            return resp.status, json.loads(resp.data)
        except ApiException as exc:
            return exc.status, json.loads(exc.body)

    code, body = call("PUT", "/api/v1/namespaces/default/configmaps")
    assert (code, body["reason"]) == (405, "MethodNotAllowed")
    code, body = call(
        "POST", "/api/v1/namespaces/default/configmaps", {"kind": "Secret", "metadata": {"name": "x"}}
    )
    assert (code, body["reason"]) == (400, "BadRequest")
    code, body = call("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "Bad_Name"}})
    assert (code, body["reason"]) == (422, "Invalid")
    code, body = call("GET", "/apis/test.liqo.io/v1alpha1/nothings")
    assert code == 404
    code, body = call("PATCH", "/apis/test.liqo.io/v1alpha1/namespaces/default/gadgets/x", {}, PATCH_SMP)
    assert code in (404, 415)


PATCH_SMP = "application/strategic-merge-patch+json"


def test_discovery_and_health(api: KubeAPIServer) -> None:
    import urllib.request

    def get(path: str) -> Any:
        with urllib.request.urlopen(api.url + path, timeout=5) as resp:
            data = resp.read()
            return json.loads(data) if data != b"ok" else "ok"

    assert get("/api")["versions"] == ["v1"]
    assert get("/api/")["versions"] == ["v1"]
    core = {r["name"]: r for r in get("/api/v1")["resources"]}
    assert {
        "pods",
        "pods/status",
        "services",
        "secrets",
        "configmaps",
        "events",
        "nodes",
        "namespaces",
        "serviceaccounts",
    } <= set(core)
    assert core["pods"]["namespaced"] and not core["nodes"]["namespaced"]
    groups = {g["name"] for g in get("/apis")["groups"]}
    assert {"coordination.k8s.io", "apiextensions.k8s.io", "events.k8s.io", "test.liqo.io"} <= groups
    assert get("/apis/test.liqo.io/")["preferredVersion"]["version"] == "v1alpha1"
    res = {r["name"]: r for r in get("/apis/test.liqo.io/v1alpha1/")["resources"]}
    assert res["gadgets"]["shortNames"] == ["gd"] and res["gadgets"]["categories"] == ["liqo"]
    assert "gadgets/status" in res
    assert get("/version")["major"] == "1"
    assert get("/healthz") == get("/readyz") == "ok"


def test_crd_registration_and_removal(api_client: client.ApiClient, custom: client.CustomObjectsApi) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.io"},
        "spec": {
            "group": "example.io",
            "scope": "Cluster",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }
    created = ext.create_custom_resource_definition(crd)
    assert any(c.type == "Established" and c.status == "True" for c in created.status.conditions)
    w = custom.create_cluster_custom_object(
        "example.io",
        "v1",
        "widgets",
        {
            "apiVersion": "example.io/v1",
            "kind": "Widget",
            "metadata": {"name": "w1"},
            "spec": {"any": "thing"},
        },
    )
    assert w["spec"] == {"any": "thing"} and "namespace" not in w["metadata"]
    ext.delete_custom_resource_definition("widgets.example.io")
    with pytest.raises(ApiException) as exc:
        custom.list_cluster_custom_object("example.io", "v1", "widgets")
    assert exc.value.status == 404
    with pytest.raises(ApiException) as exc:
        ext.create_custom_resource_definition({**crd, "metadata": {"name": "wrong.example.io"}})
    assert exc.value.status == 422


def test_namespace_deletion_removes_its_content(
    core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="tmp")))
    core.create_namespaced_secret(
        "tmp", client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"k": "v"})
    )
    assert core.read_namespaced_secret("s", "tmp").data == {"k": "dg=="}
    custom.create_namespaced_custom_object(G, V, "tmp", P, gadget("a"))
    core.delete_namespace("tmp")
    with pytest.raises(ApiException):
        core.read_namespace("tmp")
    assert core.list_secret_for_all_namespaces(field_selector="metadata.namespace=tmp").items == []


def test_owner_references_are_garbage_collected(core: client.CoreV1Api) -> None:
    owner = core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="o"))
    )
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="o", uid=owner.metadata.uid)
    core.create_namespaced_secret(
        "default", client.V1Secret(metadata=client.V1ObjectMeta(name="dep", owner_references=[ref]))
    )
    assert (
        core.read_namespaced_secret("dep", "default").metadata.owner_references[0].uid == owner.metadata.uid
    )
    core.delete_namespaced_config_map("o", "default")
    with pytest.raises(ApiException):
        core.read_namespaced_secret("dep", "default")


def test_optimistic_concurrency_under_parallel_writers(
    api: KubeAPIServer, coordination: client.CoordinationV1Api
) -> None:
    """Read-modify-write with resourceVersion preconditions from 8 threads loses no increment."""
    import threading

    coordination.create_namespaced_lease("default", lease("counter", "0"))
    conflicts = [0]
    errors: list[BaseException] = []

    def bump(n: int) -> None:
        c = api.api_client()
        api_ = client.CoordinationV1Api(c)
        try:
            for _ in range(n):
                while True:
                    cur = api_.read_namespaced_lease("counter", "default")
                    cur.spec.holder_identity = str(int(cur.spec.holder_identity) + 1)
                    try:
                        api_.replace_namespaced_lease("counter", "default", cur)
                        break
                    except ApiException as exc:
                        if exc.status != 409:
                            raise
                        conflicts[0] += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=bump, args=(15,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert coordination.read_namespaced_lease("counter", "default").spec.holder_identity == "120"
    assert conflicts[0] > 0  # the writers really raced


def test_the_projects_chart_crds_load_and_are_served() -> None:
    from pathlib import Path

    crds = Path(__file__).resolve().parents[2] / "charts" / "liqo-gateway" / "crds"
    if not crds.is_dir():
        pytest.skip("chart CRDs not present")
    with KubeAPIServer(crd_dirs=[crds]) as api:
        c = api.api_client()
        try:
            groups = {g.name for g in client.ApisApi(c).get_api_versions().groups}
            assert "net.liqo.io" in groups
            listed = client.CustomObjectsApi(c).list_cluster_custom_object(
                "net.liqo.io", "v1alpha1", "natmappings"
            )
            assert listed["items"] == []
            tep = client.CustomObjectsApi(c).list_namespaced_custom_object(
                "net.liqo.io", "v1alpha1", "default", "tunnelendpoints"
            )
            assert tep["kind"] == "TunnelEndpointList"
        finally:
            c.close()
