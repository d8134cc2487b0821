"""The kernel WireGuard backend, through netlink (rtnetlink for the link, the generic netlink family
"wireguard" for keys and peers), on sockets born in the netns without forking. The netlink boundary
is injectable for unit tests; tests/kernel runs it on a real kernel in a guest."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from services.common.keys import decode_b64, public_key_of
from services.netagent.config import AgentConfig
from services.netagent.kernel.netlink.codec import Message
from services.netagent.kernel.netlink.wireguard import NETLINK_GENERIC, PeerChange, WireGuard
from services.netagent.kernel.netns import host_iproute, kernel_errors, netns_iproute, netns_socket
from services.netagent.kernel.wireguard import link as wglink
from services.netagent.kernel.wireguard.model import PeerConfig, PeerState

__all__ = ["KernelDevice", "kernel_module_available"]


def netns_wireguard(netns: str) -> WireGuard:
    """The generic netlink family "wireguard" inside `netns` (the kernel looks the device up by name
    there), on a socket a thread opens in it: never a forked child of the threaded gRPC server."""
    return WireGuard(netns_socket(netns, socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                  NETLINK_GENERIC))


def kernel_module_available(sys_root: str = "/sys", lib_root: str = "/lib/modules",
                            release: str | None = None) -> bool:
    """True when the wireguard module is loaded or built in, or can be loaded (present on disk)."""
    if os.path.isdir(os.path.join(sys_root, "module", "wireguard")):
        return True
    release = release or os.uname().release
    base = os.path.join(lib_root, release)
    try:
        with open(os.path.join(base, "modules.builtin")) as f:
            if any(line.rstrip().endswith("/wireguard.ko") for line in f):
                return True
    except OSError:
        pass
    try:
        with open(os.path.join(base, "modules.dep")) as f:
            return any(line.split(":", 1)[0].rsplit("/", 1)[-1].startswith("wireguard.ko") for line in f)
    except OSError:
        return False


def peer_state_of(nla: Message) -> PeerState:
    """A PeerState from a WGDEVICE_A_PEERS entry of a WG_CMD_GET_DEVICE reply."""
    endpoint = nla.get_attr("WGPEER_A_ENDPOINT")
    hs = nla.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
    allowed = []
    for a in nla.get_attr("WGPEER_A_ALLOWEDIPS") or []:
        if a.get_attr("WGALLOWEDIP_A_FAMILY") == socket.AF_INET:
            cidr = f"{a.get_attr('WGALLOWEDIP_A_IPADDR')}/{a.get_attr('WGALLOWEDIP_A_CIDR_MASK')}"
            allowed.append(IPv4Network(cidr, strict=False))
    ep_ip: IPv4Address | None = None
    ep_port: int | None = None
    if endpoint is not None and ":" not in str(endpoint.get("addr", ":")):
        ep_ip, ep_port = IPv4Address(endpoint["addr"]), int(endpoint["port"])
    last = None
    if hs is not None and hs.get("tv_sec"):
        last = hs["tv_sec"] + hs.get("tv_nsec", 0) / 1e9
    return PeerState(
        public_key=nla.get_attr("WGPEER_A_PUBLIC_KEY"),
        endpoint_ip=ep_ip,
        endpoint_port=ep_port,
        allowed_ips=tuple(allowed),
        persistent_keepalive=nla.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0,
        last_handshake=last,
        rx_bytes=nla.get_attr("WGPEER_A_RX_BYTES") or 0,
        tx_bytes=nla.get_attr("WGPEER_A_TX_BYTES") or 0,
    )


def _peer_spec(peer: PeerConfig) -> PeerChange:
    return {
        "public_key": peer.public_key,
        "endpoint_addr": str(peer.endpoint_ip),
        "endpoint_port": peer.endpoint_port,
        "persistent_keepalive": peer.persistent_keepalive,
        "allowed_ips": [str(n) for n in peer.allowed_ips],
        "replace_allowed_ips": True,
    }


class KernelDevice:
    implementation = "kernel"

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        host: Callable[[], Any] | None = None,
        gw: Callable[[], Any] | None = None,
        wg: Callable[[], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self._host = host or host_iproute
        self._gw = gw or (lambda: netns_iproute(cfg.netns_name))
        self._wg = wg or (lambda: netns_wireguard(cfg.netns_name))

    # ---- device ----

    def _info(self) -> list[Message]:
        with self._wg() as wg, kernel_errors(f"wireguard info {self.cfg.wg_device}"):
            return list(wg.info(self.cfg.wg_device))

    def exists(self) -> bool:
        where, kind = wglink.find_link(self.cfg, self._host, self._gw)
        return where is not None and kind == "wireguard"

    def ensure(self, private_key_b64: str | None, listen_port: int, mtu: int) -> bool:
        if private_key_b64 is not None:
            decode_b64(private_key_b64)  # validate before touching anything
        changed = False
        where, kind = wglink.find_link(self.cfg, self._host, self._gw)
        if where is not None and kind != "wireguard":
            # A userspace TUN of the same (Liqo-owned) name: replaced, its daemon exits with it.
            wglink.delete_link(self.cfg, self._host, self._gw)
            where = None
        if where is None:
            with self._host() as h, kernel_errors(f"create {self.cfg.wg_device}"):
                h.add_link(self.cfg.wg_device, "wireguard")
            changed = True
        changed |= wglink.place_link(self.cfg, mtu, self._host, self._gw)
        info = self._info()
        attrs = info[0] if info else None
        have_port = attrs.get_attr("WGDEVICE_A_LISTEN_PORT") if attrs is not None else None
        have_pub = attrs.get_attr("WGDEVICE_A_PUBLIC_KEY") if attrs is not None else None
        port = listen_port if have_port != listen_port else None
        key = private_key_b64 if private_key_b64 is not None and have_pub != public_key_of(private_key_b64) \
            else None
        if port is not None or key is not None:
            with self._wg() as wg, kernel_errors(f"configure {self.cfg.wg_device}"):
                wg.set(self.cfg.wg_device, private_key=key, listen_port=port)
            changed = True
        return changed

    def public_key(self) -> str | None:
        try:
            info = self._info()
        except OSError:
            return None
        if not info:
            return None
        pub = info[0].get_attr("WGDEVICE_A_PUBLIC_KEY")
        return str(pub) if pub else None

    def delete(self) -> bool:
        return wglink.delete_link(self.cfg, self._host, self._gw)

    # ---- peers ----

    def peers(self) -> list[PeerState]:
        out: list[PeerState] = []
        for msg in self._info():  # a large peer list spans several messages
            for nla in msg.get_attr("WGDEVICE_A_PEERS") or []:
                out.append(peer_state_of(nla))
        return out

    def set_peer(self, peer: PeerConfig) -> None:
        with self._wg() as wg, kernel_errors(f"set peer on {self.cfg.wg_device}"):
            wg.set(self.cfg.wg_device, peers=[_peer_spec(peer)])

    def reset_peer(self, peer: PeerConfig) -> None:
        remove = {"public_key": peer.public_key, "remove": True}
        with self._wg() as wg, kernel_errors(f"reset peer on {self.cfg.wg_device}"):
            wg.set(self.cfg.wg_device, peers=[remove, _peer_spec(peer)])

    def remove_peer(self, public_key: str) -> bool:
        if all(p.public_key != public_key for p in self.peers()):
            return False
        with self._wg() as wg, kernel_errors(f"remove peer on {self.cfg.wg_device}"):
            wg.set(self.cfg.wg_device, peers=[{"public_key": public_key, "remove": True}])
        return True

    def remove_all_peers(self) -> None:
        # One message (fencing must be quick), not one dump and one message per peer.
        removals = [{"public_key": p.public_key, "remove": True} for p in self.peers()]
        if removals:
            with self._wg() as wg, kernel_errors(f"remove all peers on {self.cfg.wg_device}"):
                wg.set(self.cfg.wg_device, peers=removals)

