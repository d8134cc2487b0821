"""The gateway Service's LoadBalancer, emulated on a cluster's lb node."""

from __future__ import annotations

import logging
import re
import threading
import time

from sandbox.testkit.hosts import Node, NodeError
from services.common.vocabulary import WIREGUARD_PORT

__all__ = ["ServiceVIP"]

REPAIR_INTERVAL = 0.25  # seconds

log = logging.getLogger(__name__)


class ServiceVIP:
    """The gateway Service's LoadBalancer, on the lb node: UDP `port` to the VIP is DNATed to the
    active replica, and what the active replica sends from that port leaves SNATed to the VIP (so the
    remote WireGuard sees one stable endpoint). Changing the backend swaps the nat table atomically
    (iptables-legacy-restore, the lb node is ours alone) and then deletes the conntrack entries of
    the port, which would otherwise keep steering the flow to the old replica."""

    def __init__(self, node: Node, vip: str, wan_dev: str, port: int = WIREGUARD_PORT) -> None:
        self.node, self.vip, self.wan_dev, self.port = node, vip, wan_dev, port
        self.backend: str | None = None
        self.history: list[tuple[float, str | None]] = []  # (time.time(), backend) per change
        self.repaired = 0  # untranslated egress flows removed (see _repair)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._repairer = threading.Thread(target=self._repair_loop, daemon=True)
        self._repairer.start()

    def close(self) -> None:
        self._stop.set()
        self._repairer.join(5)

    def _repair_loop(self) -> None:
        while not self._stop.wait(REPAIR_INTERVAL):
            try:
                self._repair()
            except (NodeError, OSError):
                if self._stop.is_set():
                    return  # the node went away with the cluster
                log.warning("VIP flow repair failed", exc_info=True)

    def _repair(self) -> None:
        """A real load balancer never lets the gateway's packets out other than as VIP:port; this one
        can: when both clusters' first handshakes cross, the egress SNAT to VIP:port finds that tuple
        taken by the ingress flow being confirmed at the same instant, and netfilter then lets the flow
        out untranslated, or from another port (or gives the ingress flow another reply port), and
        keeps it so. The remote WireGuard roams to that address, or its packets reach a flow that the
        backend's answers never match. Such flows (egress not answered at VIP:port, ingress not
        answered by backend:port) are removed; the next packets make a consistent pair."""
        with self._lock:
            backend = self.backend
            if backend is None:
                return
            port = str(self.port)
            egress = self.node.run("conntrack", "-L", "-p", "udp", "--orig-src", backend, "--sport", port,
                                   check=False).stdout
            ingress = self.node.run("conntrack", "-L", "-p", "udp", "--orig-dst", self.vip, "--dport", port,
                                    check=False).stdout
            for line in [*egress.splitlines(), *ingress.splitlines()]:
                fields = re.findall(r"(src|dst|sport|dport)=(\S+)", line)
                if len(fields) < 8:
                    continue
                orig, reply = dict(fields[:4]), dict(fields[4:8])
                if orig["src"] == backend:  # egress: must come back to VIP:port
                    good = (reply["dst"], reply["dport"]) == (self.vip, port)
                else:  # ingress: the backend must answer from, and to, the WireGuard port
                    good = (reply["src"], reply["sport"], reply["dport"]) == (backend, port, orig["sport"])
                if good:
                    continue
                self.node.run("conntrack", "-D", "-p", "udp", "--orig-src", orig["src"],
                              "--orig-dst", orig["dst"], "--sport", orig["sport"], "--dport", orig["dport"],
                              check=False)
                self.repaired += 1
                log.info("VIP %s: removed flow %s", self.vip, line)

    def rules(self, backend: str | None) -> str:
        lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                 ":POSTROUTING ACCEPT [0:0]"]
        if backend is not None:
            p = self.port
            lines += [
                f"-A PREROUTING -d {self.vip}/32 -p udp -m udp --dport {p}"
                f" -j DNAT --to-destination {backend}:{p}",
                f"-A POSTROUTING -s {backend}/32 -o {self.wan_dev} -p udp -m udp --sport {p}"
                f" -j SNAT --to-source {self.vip}:{p}",
            ]
        return "\n".join([*lines, "COMMIT", ""])

    def point_to(self, backend: str | None) -> bool:
        """Sends the VIP's traffic to `backend` (None: no endpoint, packets are refused). Returns
        whether anything changed."""
        with self._lock:
            if backend == self.backend:
                return False
            self.node.run("iptables-legacy-restore", input=self.rules(backend))
            cp = self.node.run("conntrack", "-D", "-p", "udp", "--dport", str(self.port), check=False)
            if cp.returncode != 0 and "0 flow entries" not in cp.stderr:
                raise NodeError(f"conntrack -D failed: {cp.stderr.strip()}")
            log.info("VIP %s -> %s", self.vip, backend)
            self.backend = backend
            self.history.append((time.time(), backend))
            return True
