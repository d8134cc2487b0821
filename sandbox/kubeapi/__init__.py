"""liqo-kubeapi: an in-memory Kubernetes API server for tests and the sandbox (a test double).

Serves the official ``kubernetes`` client and ``kubectl`` unchanged over plain HTTP. See README.md.

Python API (stable; the controllers' tests and the sandbox use it)::

    from sandbox.kubeapi import KubeAPIServer

    with KubeAPIServer(crd_dirs=["charts/liqo-gateway/crds"]) as api:   # 127.0.0.1, ephemeral port
        api.url                                  # "http://127.0.0.1:PORT"
        api.write_kubeconfig(tmp_path / "kc")    # for kubectl / kubernetes.config.load_kube_config
        client = api.api_client()                # a configured kubernetes.client.ApiClient
        api.hooks.inject_error("patch", "leases", code=500, count=2)
        api.hooks.close_watches()                # or abort=True to cut the TCP connections
        api.hooks.set_latency(0.2)
        api.hooks.pause(3)                       # refuse connections for 3 s
        api.hooks.compact()                      # older resourceVersions now get 410 Gone
        api.request_log                          # [RequestRecord(method, path, verb, resource, code...)]

``KubeAPIServer(host="127.0.0.1", port=0, *, crd_dirs=(), manifests=(), event_log_size=10_000,
watch_queue_size=10_000, bookmark_interval=10.0)``.
"""

from sandbox.kubeapi.hooks import Hooks, RequestRecord
from sandbox.kubeapi.server import KubeAPIServer, read_manifests

__all__ = ["Hooks", "KubeAPIServer", "RequestRecord", "read_manifests"]
