"""Emulated Liqo clusters with real gateway replicas: the reusable end-to-end harness.

Everything runs as real processes in emulated hosts (`sandbox.testkit.hosts.Node`); nothing is created in the
root network namespace. Topology (cluster index `i`, 1-based)::

    wan node: bridge, 172.31.0.0/24 ("the internet")
      |
    <c>-lb node  172.31.0.(10+i) on the WAN = the gateway Service's VIP; bridge for the cluster LAN
      |          172.31.i.254 = the LAN's default gateway.  ServiceVIP: DNAT VIP:5871/udp -> active
      |          replica, SNAT active:5871 -> VIP:5871, conntrack flushed when the active one changes
    LAN 172.31.i.0/24
      |-- <c>-cp   172.31.i.253  the API server (`liqo-kubeapi` with a control socket, so that an
      |                          outage can be staged on the node's own address)
      |-- <c>-gwK  172.31.i.K    gateway replica K: liqo-netagent, liqo-tunnel-controller,
      |                          liqo-natmap-controller, liqo-labeler (pod gateway-K in namespace liqo)
      '-- <c>-wK   172.31.i.100+K  worker node K with pods (`EmulatedCluster.add_pod`)

What stands in for Kubernetes pieces that do not exist here (kept deliberately small):
- the Service/LoadBalancer: `ServiceVIP` on the lb node, driven by `ActiveGatewayFollower`, which
  watches the gateway pods' `net.liqo.io/gateway` label through the API server: the VIP forwards
  to the pod labelled active, as the gateway Service selects it;
- liqo-route: the same follower sets `ip route replace <remote CIDR> via <active replica>` on every
  worker node (`EmulatedCluster.route_remote`), and every replica node gets a /32 route to each local
  pod via its worker (the "symmetric routing" /32s, kept in the main table, which the netagent's
  table-18952 rules fall through to);
- the kubelet: gateway Pods are created with `spec.nodeName` and `status.podIP` = the node's LAN IP.

The test process reaches each API server through a local TCP forwarder (`EmulatedCluster.client`,
`EmulatedCluster.kubeconfig_path`) whose upstream sockets are born in the control-plane node's
network namespace; the replicas use `<workdir>/kubeconfig` pointing at `http://172.31.i.253:6443`.

Modules: `wan` (Wan, bridges, plugging), `service_vip` (ServiceVIP), `follower`
(ActiveGatewayFollower), `forwarder` (the API forwarder), `runtime` (ReplicaRuntime, ProcessRuntime),
`podruntime` (PodRuntime: a replica as the Helm chart's pod, played by podman in its node),
`sampler` (PeerSampler: every replica's WireGuard peers every 50 ms), `replica` (GatewayReplica),
`cluster` (EmulatedCluster, ClusterOptions), `peering` (Remap, Peering,
peer and the TunnelEndpoint/NatMapping of a cluster pair).

Public API (stable; other tests build on it)::

    with Wan() as wan, EmulatedCluster("a", 1, wan, replicas=2) as a, EmulatedCluster("b", 2, wan) as b:
        a.start(); b.start()                       # nodes, API server, CRDs, namespace, pods, Service
        pod_a = a.add_pod("web", "10.0.1.5")       # on worker node 1 (created on demand)
        teps = peer(a, b, a_sees_b=Remap("10.60.0.0/16", "10.70.0.0/16"),
                    b_sees_a=Remap("10.80.0.0/16", "10.90.0.0/16"))   # TunnelEndpoints on both sides
        a.wait_connected(teps.in_a)                # -> the TEP's status.connection
        b.client.create(NAT_MAPPINGS, cluster_nat_mapping(b, a, {"10.0.2.7": "10.70.0.7"},
                        pod_cidr="10.80.0.0/16", external_cidr="10.70.0.0/16"))
        r = a.active_replica()                     # by the pod label; a.replicas[k]: GatewayReplica
        r.kill("labeler"); r.stop("netagent"); r.start_process("labeler"); r.restart("tunnel")
        r.crash(); r.boot(); r.start()             # node crash, then a rebooted node
        r.wg_peers(); r.uapi_peers(); r.role(); r.log("labeler"); r.log_events("netagent", "role changed")
        r.turned_active_after(t)                   # when its netagent turned ACTIVE after POSIX time t
        r.processes(); r.exit_codes(); r.runtime   # what was started; the ReplicaRuntime behind them
        a.pause_api(30)                             # API outage, state kept, same port
        a.api_requests(since=t)                     # the API server's request log (ApiRequest)
        a.client                                    # services.common.kube.KubeClient (test side)

`GatewayReplica` process names are `PROCESSES` ("netagent", "tunnel", "natmap", "labeler"); logs,
the netagent socket and its state file live in `<cluster workdir>/<replica>/`. `ClusterOptions` holds
extra flags per process (for instance faster probes), and the labeler's election timings
(`election`: a profile of services/common/leaderelection.py).
"""

from sandbox.testkit.cluster.cluster import ApiRequest, ClusterOptions, EmulatedCluster
from sandbox.testkit.cluster.follower import ActiveGatewayFollower, active_pod_ip
from sandbox.testkit.cluster.peering import (
    Peering,
    Remap,
    cluster_nat_mapping,
    cluster_tunnel_endpoint,
    peer,
)
from sandbox.testkit.cluster.podruntime import PodRuntime
from sandbox.testkit.cluster.replica import GATEWAY_NETNS, PROCESSES, WG_DEVICE, GatewayReplica
from sandbox.testkit.cluster.runtime import ProcessRuntime, ReplicaRuntime
from sandbox.testkit.cluster.sampler import PeerSampler
from sandbox.testkit.cluster.service_vip import ServiceVIP
from sandbox.testkit.cluster.wan import Wan

__all__ = [
    "GATEWAY_NETNS",
    "PROCESSES",
    "WG_DEVICE",
    "ActiveGatewayFollower",
    "ApiRequest",
    "ClusterOptions",
    "EmulatedCluster",
    "GatewayReplica",
    "PeerSampler",
    "Peering",
    "PodRuntime",
    "ProcessRuntime",
    "Remap",
    "ReplicaRuntime",
    "ServiceVIP",
    "Wan",
    "active_pod_ip",
    "cluster_nat_mapping",
    "cluster_tunnel_endpoint",
    "peer",
]
