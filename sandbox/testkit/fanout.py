"""Fan-out: one hub cluster, many TunnelEndpoints, a few live remote clusters; and the statistics
the scale test and the reconcile-latency benchmark report."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sandbox.testkit.hosts import link_nodes
from sandbox.testkit.lab import POLL, Cluster, Lab
from sandbox.testkit.netagent import LIQO_NETNS
from sandbox.testkit.resources import tunnel_endpoint
from sandbox.testkit.wait import wait_for
from services.common.keys import generate
from services.common.vocabulary import TUNNEL_ENDPOINTS

__all__ = ["HUB_ID", "HUB_TENANT_NS", "SPOKE_TENANT_NS", "Fanout", "FanoutRun", "hub_tep", "percentile",
           "spoke_tep"]

HUB_ID = "hub"
HUB_TENANT_NS = "liqo-tenant-fanout"
SPOKE_TENANT_NS = "liqo-tenant-hub"


def hub_tep(i: int, endpoint: str, key: str) -> dict[str, Any]:
    """The hub's TunnelEndpoint for remote cluster `i`: pods 10.64.i.0/24, external 10.65.i.0/24."""
    name = f"remote-{i:03d}"
    return tunnel_endpoint(name=name, namespace=HUB_TENANT_NS, cluster_id=name, local_pod="10.0.0.0/16",
                           local_ext="10.201.0.0/16", remote_pod=f"10.64.{i}.0/24",
                           remote_ext=f"10.65.{i}.0/24", endpoint=endpoint, public_key=key)


def spoke_tep(i: int, hub_endpoint: str, hub_key: str) -> dict[str, Any]:
    """Remote cluster `i`'s TunnelEndpoint for the hub (the mirror image of hub_tep(i))."""
    return tunnel_endpoint(name="hub", namespace=SPOKE_TENANT_NS, cluster_id=HUB_ID,
                           local_pod=f"10.64.{i}.0/24", local_ext=f"10.65.{i}.0/24",
                           remote_pod="10.0.0.0/16", remote_ext="10.201.0.0/16",
                           endpoint=hub_endpoint, public_key=hub_key)


@dataclass
class FanoutRun:
    """Monotonic timestamps of one burst, per hub TunnelEndpoint name."""

    created: dict[str, float]
    programmed: dict[str, float]  # its peer and both routes first seen in the hub's kernel
    connected: dict[str, float]  # status Connected first seen (live remotes only)
    live: list[str]
    # When the remote's side was created, if later than the hub's (remote_delay): Connected counts
    # from there, since it cannot happen before.
    remote_created: dict[str, float] = field(default_factory=dict)

    def latencies(self, which: str) -> list[float]:
        if which == "programmed":
            return sorted(t - self.created[k] for k, t in self.programmed.items())
        return sorted(t - self.remote_created.get(k, self.created[k]) for k, t in self.connected.items())

    @property
    def start(self) -> float:
        return min(self.created.values())

    def all_programmed_after(self) -> float:
        return max(self.programmed.values()) - self.start

    def live_connected_after(self) -> float:
        return max(self.connected[k] for k in self.live) - self.start


class Fanout:
    """A hub cluster and `live` remote clusters (each with agent, tunnel controller and a
    TunnelEndpoint for the hub) on their own underlay links; `burst(n)` creates n hub
    TunnelEndpoints at once, the first `live` of which point at the live remotes, the others at
    addresses nobody answers, and times them into the kernel and to Connected.

    `mutual`: the remotes' TunnelEndpoints for the hub are created in each burst, at the same
    moment as the hub's (as a peering creates both sides), instead of once at set-up; then the
    hub's first handshake may reach a remote that does not know its key yet, the case where
    Connected waits on the probe's schedule. `probe_interval`: every agent's --probe-interval
    (None: the kit's 0.5 s)."""

    def __init__(self, lab: Lab, live: int = 2, workers: int = 8, *, mutual: bool = False,
                 probe_interval: float | None = None) -> None:
        self.lab = lab
        self.mutual = mutual
        args = () if probe_interval is None else ("--probe-interval", str(probe_interval))
        hub_node = lab.node("hub")
        self.spokes: list[Cluster] = []
        spoke_nodes = []
        for i in range(live):
            node = lab.node(f"spk{i}")
            link_nodes(hub_node, f"100.64.{i}.1", node, f"100.64.{i}.2")
            spoke_nodes.append(node)
        self.hub = lab.cluster("hub", hub_node, "100.64.0.1", workers=workers, agent_args=args)
        for i, node in enumerate(spoke_nodes):
            spoke = lab.cluster(f"spoke{i}", node, f"100.64.{i}.2", agent_args=args)
            spoke.ensure_namespace(SPOKE_TENANT_NS)
            if not mutual:
                spoke.create_tep(self.spoke_body(i))
            self.spokes.append(spoke)
        if not mutual:
            for spoke in self.spokes:
                wait_for(f"{spoke.name}: tunnel to the hub programmed",
                         lambda s=spoke: len(s.netagent.list_tunnels()) == 1, interval=POLL)  # type: ignore[misc]
        self.hub.ensure_namespace(HUB_TENANT_NS)

    def spoke_body(self, i: int) -> dict[str, Any]:
        return spoke_tep(i, f"100.64.{i}.1", self.hub.public_key)

    def bodies(self, n: int) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            if i < len(self.spokes):
                out.append(hub_tep(i, self.spokes[i].underlay_ip, self.spokes[i].public_key))
            else:  # nobody there: documentation range, no route from the hub
                out.append(hub_tep(i, f"203.0.113.{1 + i % 250}", generate().public_key))
        return out

    def _kernel(self) -> tuple[set[str], set[str]]:
        out = self.hub.node.exec_in_netns(LIQO_NETNS, [
            "sh", "-c", "wg show liqo.tunnel peers; echo --; ip -4 route show table main dev liqo.tunnel",
        ]).stdout
        peers, _, routes = out.partition("--\n")
        return set(peers.split()), {line.split()[0] for line in routes.splitlines() if line.strip()}

    def burst(self, n: int, timeout: float = 90.0, live_at: str = "spread",
              stagger: float = 0.0, remote_delay: float = 0.0) -> FanoutRun:
        """`live_at` places the live TunnelEndpoints in the creation order: "first", "last" or
        "spread" (evenly), since the controller's queue serves them in that order. `stagger` > 0
        creates them one at a time, that many seconds apart (one apply after another, no queue),
        instead of all at once. `remote_delay` (mutual only): a remote's TunnelEndpoint is created
        that long after the hub's, and a live TunnelEndpoint's times count from the later one (the
        moment the peering is complete)."""
        bodies = self.bodies(n)
        live_bodies, dead_bodies = bodies[: len(self.spokes)], bodies[len(self.spokes):]
        if live_at == "first":
            bodies = live_bodies + dead_bodies
        elif live_at == "last":
            bodies = dead_bodies + live_bodies
        elif live_at == "spread":
            slots = {int((k + 0.5) * n / len(live_bodies)): b for k, b in enumerate(live_bodies)}
            rest = iter(dead_bodies)
            bodies = [slots[i] if i in slots else next(rest) for i in range(n)]
        else:
            raise ValueError(f"live_at: {live_at!r} is not first, last or spread")
        names = [b["metadata"]["name"] for b in bodies]
        want = {b["metadata"]["name"]: (b["spec"]["backend_config"]["publicKey"], b["spec"]["remotePodCIDR"],
                                        b["spec"]["remoteExternalCIDR"]) for b in bodies}
        live = [b["metadata"]["name"] for b in live_bodies]
        created: dict[str, float] = {}
        timers: list[threading.Timer] = []
        remote_created: dict[str, float] = {}

        spoke_of = {b["metadata"]["name"]: i for i, b in enumerate(live_bodies)} if self.mutual else {}

        def create(body: dict[str, Any]) -> None:
            name = body["metadata"]["name"]
            t = time.monotonic()
            self.hub.kube.create(TUNNEL_ENDPOINTS, body, HUB_TENANT_NS)
            created[name] = t
            if name in spoke_of:  # the other side of the peering, right after (or remote_delay later)
                i = spoke_of[name]
                if remote_delay > 0:
                    timer = threading.Timer(remote_delay, create_remote, (name, i))
                    timers.append(timer)
                    timer.start()
                else:
                    create_remote(name, i)

        def create_remote(name: str, i: int) -> None:
            self.spokes[i].kube.create(TUNNEL_ENDPOINTS, self.spoke_body(i), SPOKE_TENANT_NS)
            if remote_delay > 0:
                remote_created[name] = time.monotonic()

        def create_staggered() -> None:
            for body in bodies:
                create(body)
                time.sleep(stagger)

        creator: Future[None] | None = None
        pool = ThreadPoolExecutor(1)
        if stagger > 0:  # watched while it creates
            creator = pool.submit(create_staggered)
        else:
            with ThreadPoolExecutor(8) as burst_pool:  # "at once": as fast as an apply of many objects
                list(burst_pool.map(create, bodies))
        programmed: dict[str, float] = {}
        connected: dict[str, float] = {}

        def all_seen() -> bool:
            # Each call records what is newly programmed or Connected, with the time it was seen.
            if creator is not None and creator.done():
                creator.result()  # a failed creation fails the burst
            known = set(created)
            peers, routes = self._kernel()
            now = time.monotonic()
            for name, (key, pod, ext) in want.items():
                if name in known and name not in programmed and key in peers and pod in routes \
                        and ext in routes:
                    programmed[name] = now
            items = self.hub.kube.list(TUNNEL_ENDPOINTS, HUB_TENANT_NS)["items"]
            now = time.monotonic()
            for obj in items:
                name = obj["metadata"]["name"]
                status = ((obj.get("status") or {}).get("connection") or {}).get("status")
                if name in known and name in live and name not in connected and status == "Connected":
                    connected[name] = now
            return len(programmed) >= n and len(connected) >= len(live)

        try:
            wait_for("the burst programmed and connected", all_seen, timeout + n * stagger)
        except AssertionError:
            raise AssertionError(
                f"after {timeout}s: {len(programmed)}/{n} programmed, {len(connected)}/{len(live)} "
                f"connected; missing {sorted(set(names) - set(programmed))[:5]}") from None
        finally:
            pool.shutdown(wait=True)
            for timer in timers:
                timer.join()
        return FanoutRun(created, programmed, connected, live, remote_created)

    def clear(self, timeout: float = 90.0) -> None:
        """Deletes every hub TunnelEndpoint and waits until the hub's agent holds no tunnel."""
        for obj in self.hub.kube.list(TUNNEL_ENDPOINTS, HUB_TENANT_NS)["items"]:
            self.hub.kube.delete(TUNNEL_ENDPOINTS, obj["metadata"]["name"], HUB_TENANT_NS)
        wait_for("the hub's TunnelEndpoints to go",
                 lambda: not self.hub.kube.list(TUNNEL_ENDPOINTS, HUB_TENANT_NS)["items"], timeout, POLL)
        wait_for("the hub's tunnels to go", lambda: not self.hub.netagent.list_tunnels(), timeout, POLL)
        if self.mutual:  # each burst creates the remotes' side again
            for spoke in self.spokes:
                for obj in spoke.kube.list(TUNNEL_ENDPOINTS, SPOKE_TENANT_NS)["items"]:
                    spoke.kube.delete(TUNNEL_ENDPOINTS, obj["metadata"]["name"], SPOKE_TENANT_NS)
            for spoke in self.spokes:
                wait_for(f"{spoke.name}: its tunnel to go", lambda s=spoke: not s.netagent.list_tunnels(),  # type: ignore[misc]
                         timeout, POLL)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return sorted_values[rank - 1]
