"""Watch semantics through the official client: list-then-watch, 410, bookmarks, selectors, cuts."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from sandbox.kubeapi import KubeAPIServer
from sandbox.kubeapi.resources import BUILTINS
from sandbox.kubeapi.selectors import FieldSelector, LabelSelector
from sandbox.kubeapi.store import Store
from sandbox.testkit.kubectl import gadget
from sandbox.testkit.wait import wait_for

G, V, P = "test.liqo.io", "v1alpha1", "gadgets"


def raw_watch(api_client: client.ApiClient, path: str, timeout: float = 10) -> list[dict[str, Any]]:
    """Every event line of one watch request, until the server ends it."""
    pool = urllib3.PoolManager()
    resp = pool.request(
        "GET",
        f"{api_client.configuration.host}{path}",
        preload_content=False,
        timeout=urllib3.Timeout(connect=5, read=timeout),
    )
    try:
        assert resp.status == 200
        return [json.loads(line) for line in b"".join(resp.stream()).splitlines() if line]
    finally:
        resp.release_conn()


def test_list_then_watch(custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(G, V, "default", P, gadget("a"))
    listed = custom.list_namespaced_custom_object(G, V, "default", P)
    assert [o["metadata"]["name"] for o in listed["items"]] == ["a"]
    rv = listed["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(G, V, "default", P, gadget("b"))
    custom.patch_namespaced_custom_object(G, V, "default", P, "a", {"spec": {"port": 2}})
    custom.delete_namespaced_custom_object(G, V, "default", P, "b")
    w = watch.Watch()
    events = [
        (e["type"], e["object"]["metadata"]["name"])
        for e in w.stream(
            custom.list_namespaced_custom_object, G, V, "default", P, resource_version=rv, timeout_seconds=1
        )
    ]
    # Only what happened after the list, in order; nothing from before it.
    assert events == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]


def test_watch_without_resource_version_starts_with_current_objects(core: client.CoreV1Api) -> None:
    for name in ("x", "y"):
        core.create_namespaced_config_map(
            "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name))
        )
    for rv in (None, "0"):
        kwargs: dict[str, Any] = {"timeout_seconds": 1}
        if rv is not None:
            kwargs["resource_version"] = rv
        events = [
            (e["type"], e["object"].metadata.name)
            for e in watch.Watch().stream(core.list_namespaced_config_map, "default", **kwargs)
        ]
        assert events == [("ADDED", "x"), ("ADDED", "y")]


def test_expired_resource_version_is_410_gone(
    api: KubeAPIServer, custom: client.CustomObjectsApi, api_client: client.ApiClient
) -> None:
    old = custom.create_namespaced_custom_object(G, V, "default", P, gadget("a"))["metadata"][
        "resourceVersion"
    ]
    custom.patch_namespaced_custom_object(G, V, "default", P, "a", {"spec": {"port": 3}})
    api.hooks.compact()
    events = raw_watch(api_client, f"/apis/{G}/{V}/namespaces/default/{P}?watch=true&resourceVersion={old}")
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")
    with pytest.raises(ApiException) as exc:
        list(
            watch.Watch().stream(
                custom.list_namespaced_custom_object,
                G,
                V,
                "default",
                P,
                resource_version=old,
                timeout_seconds=2,
            )
        )
    assert exc.value.status == 410
    # The client's documented recovery: re-list, then watch from the list's resourceVersion.
    rv = custom.list_namespaced_custom_object(G, V, "default", P)["metadata"]["resourceVersion"]
    assert (
        list(
            watch.Watch().stream(
                custom.list_namespaced_custom_object,
                G,
                V,
                "default",
                P,
                resource_version=rv,
                timeout_seconds=1,
            )
        )
        == []
    )


def test_event_log_is_bounded() -> None:
    with KubeAPIServer(event_log_size=5) as small:
        c = small.api_client()
        core = client.CoreV1Api(c)
        first = core.create_namespaced_config_map(
            "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"), data={"n": "0"})
        ).metadata.resource_version
        for i in range(1, 10):
            core.patch_namespaced_config_map("c", "default", {"data": {"n": str(i)}})
        events = raw_watch(c, f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={first}")
        assert events[0]["object"]["code"] == 410
        recent = str(small.store.resource_version - 3)
        events = raw_watch(
            c, f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={recent}&timeoutSeconds=1"
        )
        assert [e["object"]["data"]["n"] for e in events] == ["7", "8", "9"]
        c.close()


def test_timeout_seconds_ends_the_stream(api_client: client.ApiClient) -> None:
    start = time.monotonic()
    events = raw_watch(
        api_client, "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1"
    )
    elapsed = time.monotonic() - start
    assert events == [] and 0.9 <= elapsed < 3


def test_bookmarks_carry_a_resumable_resource_version(
    api: KubeAPIServer, core: client.CoreV1Api, api_client: client.ApiClient
) -> None:
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c")))
    rv = api.store.resource_version
    # Writes to another resource advance the global resourceVersion; the bookmark reflects them.
    core.create_namespaced_secret("default", client.V1Secret(metadata=client.V1ObjectMeta(name="s")))
    events = raw_watch(
        api_client,
        f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}"
        "&allowWatchBookmarks=true&timeoutSeconds=1",
    )
    marks = [e for e in events if e["type"] == "BOOKMARK"]
    assert marks and all(e["object"]["kind"] == "ConfigMap" for e in marks)
    assert int(marks[-1]["object"]["metadata"]["resourceVersion"]) == api.store.resource_version
    # Without allowWatchBookmarks: none.
    events = raw_watch(
        api_client, f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=1"
    )
    assert events == []


def test_selector_transitions_arrive_as_added_and_deleted(custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(
        G, V, "default", P, {**gadget("a"), "metadata": {"name": "a", "labels": {"role": "active"}}}
    )
    rv = custom.list_namespaced_custom_object(G, V, "default", P)["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object(G, V, "default", P, "a", {"spec": {"port": 2}})
    custom.patch_namespaced_custom_object(
        G, V, "default", P, "a", {"metadata": {"labels": {"role": "standby"}}}
    )
    custom.patch_namespaced_custom_object(G, V, "default", P, "a", {"spec": {"port": 3}})  # invisible
    custom.patch_namespaced_custom_object(
        G, V, "default", P, "a", {"metadata": {"labels": {"role": "active"}}}
    )
    events = [
        (e["type"], e["object"]["metadata"]["labels"]["role"], e["object"]["spec"]["port"])
        for e in watch.Watch().stream(
            custom.list_namespaced_custom_object,
            G,
            V,
            "default",
            P,
            label_selector="role=active",
            resource_version=rv,
            timeout_seconds=1,
        )
    ]
    assert events == [("MODIFIED", "active", 2), ("DELETED", "standby", 2), ("ADDED", "active", 3)]


def test_field_selector_watch_and_namespaces(core: client.CoreV1Api) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="other")))
    rv = core.list_config_map_for_all_namespaces().metadata.resource_version
    for ns in ("default", "other"):
        for name in ("a", "b"):
            core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name)))
    all_ns = [
        (e["object"].metadata.namespace, e["object"].metadata.name)
        for e in watch.Watch().stream(
            core.list_config_map_for_all_namespaces,
            field_selector="metadata.name=b",
            resource_version=rv,
            timeout_seconds=1,
        )
    ]
    assert all_ns == [("default", "b"), ("other", "b")]
    one_ns = [
        e["object"].metadata.name
        for e in watch.Watch().stream(
            core.list_namespaced_config_map, "other", resource_version=rv, timeout_seconds=1
        )
    ]
    assert one_ns == ["a", "b"]


def _writer(custom: client.CustomObjectsApi, n: int, done: threading.Event) -> threading.Thread:
    def run() -> None:
        for i in range(1, n + 1):
            custom.patch_namespaced_custom_object(G, V, "default", P, "a", {"spec": {"port": i}})
            time.sleep(0.005)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _cutter(api: KubeAPIServer, done: threading.Event, abort: bool) -> tuple[threading.Thread, list[int]]:
    cuts: list[int] = []

    def run() -> None:
        while not done.is_set():
            time.sleep(0.05)
            cuts.append(api.hooks.close_watches(abort=abort))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, cuts


@pytest.mark.parametrize("abort", [False, True], ids=["stream-ended", "connection-cut"])
def test_cut_watch_resumes_without_loss_or_repetition(
    api: KubeAPIServer, custom: client.CustomObjectsApi, abort: bool
) -> None:
    n = 80
    custom.create_namespaced_custom_object(G, V, "default", P, gadget("a", port=1000))
    rv = custom.list_namespaced_custom_object(G, V, "default", P)["metadata"]["resourceVersion"]
    api.hooks.clear_request_log()
    done = threading.Event()
    writer = _writer(custom, n, done)
    cutter, cuts = _cutter(api, done, abort)
    seen: list[tuple[str, int, int]] = []
    w = watch.Watch()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not seen or seen[-1][1] != n):
        # A controller's loop: the client resumes clean ends itself; after a cut connection we
        # resume from the last resourceVersion we saw.
        try:
            for e in w.stream(
                custom.list_namespaced_custom_object,
                G,
                V,
                "default",
                P,
                resource_version=rv,
                _request_timeout=10,
            ):
                obj = e["object"]
                seen.append((e["type"], obj["spec"]["port"], int(obj["metadata"]["resourceVersion"])))
                rv = obj["metadata"]["resourceVersion"]
                if obj["spec"]["port"] == n:
                    w.stop()
                    break
        except (urllib3.exceptions.HTTPError, OSError):
            continue
    writer.join(10)
    cutter.join(10)
    assert [p for _, p, _ in seen] == list(range(1, n + 1))
    assert {t for t, _, _ in seen} == {"MODIFIED"}
    rvs = [r for _, _, r in seen]
    assert rvs == sorted(set(rvs))
    watches = [r for r in api.request_log if r.verb == "watch"]
    assert sum(cuts) >= 2 and len(watches) >= 3, (cuts, len(watches))


def test_many_watchers_all_receive_every_event(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    results: dict[int, list[str]] = {}

    def consume(i: int) -> None:
        c = api.api_client()
        try:
            results[i] = [
                e["object"].metadata.name
                for e in watch.Watch().stream(
                    client.CoreV1Api(c).list_namespaced_config_map,
                    "default",
                    resource_version=rv,
                    timeout_seconds=3,
                )
            ]
        finally:
            c.close()

    threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(50)]
    for t in threads:
        t.start()
    wait_for("50 watchers", lambda: api.hooks.watcher_count() >= 50, 5)
    assert api.hooks.watcher_count() == 50
    for i in range(20):
        core.create_namespaced_config_map(
            "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"c{i}"))
        )
    for t in threads:
        t.join(10)
    assert len(results) == 50
    assert all(names == [f"c{i}" for i in range(20)] for names in results.values())


def test_slow_watcher_is_dropped_without_blocking_writers() -> None:
    store = Store(watch_queue_size=3)
    cm = next(r for r in BUILTINS if r.plural == "configmaps")
    slow = store.watch(cm, "default", LabelSelector(), FieldSelector(), str(store.resource_version))
    start = time.monotonic()
    for i in range(10):
        store.create(cm, "v1", "default", {"metadata": {"name": f"c{i}"}})
    assert time.monotonic() - start < 1
    assert slow.overflowed and slow.closed.is_set()
    assert store.watcher_count() == 0
    assert [slow.queue.get_nowait()[1].obj["metadata"]["name"] for _ in range(3)] == ["c0", "c1", "c2"]
