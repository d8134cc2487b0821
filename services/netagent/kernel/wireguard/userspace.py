"""The userspace WireGuard backend: wireguard-go, configured over its UAPI socket.

Two ways to have wireguard-go (`--wireguard-go-mode`):
- spawn: the agent starts wireguard-go WITHOUT -f: it daemonizes, so the dataplane survives the agent
  (a restarted agent finds the socket alive and adopts it).
- external: another process runs it (the gateway pod's `wireguard` container: `liqo-netagent
  wireguard`, which execs `wireguard-go -f`), sharing the socket directory; the agent never starts
  nor deletes a daemon, it waits (bounded) for the socket and places the link it finds.
Either way the TUN link is created in the host namespace, brought up there (the daemon only sees link
events in its own namespace) and moved into the netns; the daemon's UDP socket stays in the host
namespace. When the daemon dies, its TUN link goes with it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from services.common.keys import decode_b64, public_key_of
from services.netagent.config import AgentConfig
from services.netagent.kernel.netns import host_iproute, netns_iproute
from services.netagent.kernel.wireguard import link as wglink
from services.netagent.kernel.wireguard.model import DeviceError, PeerConfig, PeerState
from services.netagent.kernel.wireguard.uapi import (
    UapiClient,
    encode_device_set,
    encode_peer_remove,
    encode_peer_reset,
    encode_peer_set,
    encode_remove_all_peers,
)

__all__ = ["SOCKET_DIR", "UserspaceDevice"]

SOCKET_DIR = "/var/run/wireguard"
START_TIMEOUT = 5.0


class UserspaceDevice:
    implementation = "userspace"

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        binary: str = "wireguard-go",
        socket_dir: str = SOCKET_DIR,
        start_timeout: float = START_TIMEOUT,
        host: Callable[[], Any] | None = None,
        gw: Callable[[], Any] | None = None,
        spawn: bool = True,
    ) -> None:
        self.cfg = cfg
        self.spawn = spawn
        self.binary = binary
        self.socket_path = os.path.join(socket_dir, f"{cfg.wg_device}.sock")
        self.start_timeout = start_timeout
        self._host = host or host_iproute
        self._gw = gw or (lambda: netns_iproute(cfg.netns_name))
        self.uapi = UapiClient(self.socket_path)

    # ---- daemon ----

    def _start_daemon(self) -> None:
        """Starts wireguard-go (it forks its daemon and returns) and waits for a live UAPI socket:
        a daemon slow to come up is an error with a message, not a hang (Liqo #2316)."""
        env = {k: v for k, v in os.environ.items() if k not in ("WG_PROCESS_FOREGROUND", "LOG_LEVEL")}
        try:
            cp = subprocess.run([self.binary, self.cfg.wg_device], env=env, capture_output=True, text=True,
                                timeout=self.start_timeout, stdin=subprocess.DEVNULL, check=False)
        except FileNotFoundError:
            raise DeviceError(f"{self.binary} not found: install wireguard-go") from None
        except subprocess.TimeoutExpired:
            raise DeviceError(
                f"{self.binary} {self.cfg.wg_device} did not return in {self.start_timeout}s") from None
        if cp.returncode != 0:
            err = cp.stderr.strip().splitlines()
            raise DeviceError(f"{self.binary} {self.cfg.wg_device} exited {cp.returncode}: "
                              f"{err[-1] if err else 'no output'}")
        deadline = time.monotonic() + self.start_timeout
        while not self.uapi.alive():
            if time.monotonic() > deadline:
                raise DeviceError(f"{self.binary} started but {self.socket_path} did not answer "
                                  f"within {self.start_timeout}s")
            time.sleep(0.02)

    def _daemon(self) -> str:
        """"alive" (answers), "dead" (no socket, or refused: nobody listens) or "unresponsive"."""
        try:
            self.uapi.get()
        except DeviceError as e:
            dead = isinstance(e.__cause__, (FileNotFoundError, ConnectionRefusedError))
            return "dead" if dead else "unresponsive"
        except OSError:  # a timeout: somebody holds the socket
            return "unresponsive"
        return "alive"

    def _wait_socket_gone(self, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while os.path.exists(self.socket_path) and time.monotonic() < deadline:
            if not self.uapi.alive():
                break
            time.sleep(0.02)

    # ---- device ----

    def exists(self) -> bool:
        where, kind = wglink.find_link(self.cfg, self._host, self._gw)
        return where is not None and kind == "tun" and self.uapi.alive()

    def _wait_external(self) -> None:
        """External mode: returns once the wireguard container's daemon answers and its TUN exists.
        Waits (at most start_timeout) only while one of them is there: a TUN whose daemon is still
        opening its socket, or a socket whose TUN is being replaced. With neither, the container is
        not running: DeviceError at once (the link watcher calls again when its TUN appears)."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            where, kind = wglink.find_link(self.cfg, self._host, self._gw)
            if where is not None and kind != "tun":
                raise DeviceError(f"{self.cfg.wg_device} is a {kind or 'non-TUN'} link, not the TUN of "
                                  f"wireguard-go: --wireguard-go-mode external needs the userspace "
                                  f"implementation in the wireguard container")
            alive = self.uapi.alive()
            if alive and where is not None:
                return
            if not alive and where is None:
                raise DeviceError(self._not_running("no TUN link and no live socket"))
            if time.monotonic() > deadline:
                what = "no TUN link" if where is None else "its socket does not answer"
                raise DeviceError(self._not_running(f"{what} after {self.start_timeout:g}s"))
            time.sleep(0.01)

    def _not_running(self, what: str) -> str:
        return (f"wireguard-go for {self.cfg.wg_device} is not running ({what}; socket {self.socket_path}): "
                f"with --wireguard-go-mode external it runs in the gateway pod's wireguard container "
                f"(liqo-netagent wireguard --wg-device {self.cfg.wg_device}), which shares "
                f"{os.path.dirname(self.socket_path)} with the netagent")

    def ensure(self, private_key_b64: str | None, listen_port: int, mtu: int) -> bool:
        if private_key_b64 is not None:
            decode_b64(private_key_b64)  # validate before touching anything
        changed = False
        if self.spawn:
            where, kind = wglink.find_link(self.cfg, self._host, self._gw)
            daemon = self._daemon()
            if where is not None and kind == "tun" and daemon == "unresponsive":
                # Alive but slow (a timeout, not a refusal): never delete a working dataplane for
                # that; the resync asks again.
                raise DeviceError(f"wireguard-go for {self.cfg.wg_device} does not answer on "
                                  f"{self.socket_path}: left in place")
            alive = daemon == "alive"
            if where is not None and (kind != "tun" or not alive):
                # A kernel device, or a TUN whose daemon we cannot reach: not a device we can drive.
                wglink.delete_link(self.cfg, self._host, self._gw)
                self._wait_socket_gone()
                where = None
            if where is None:
                self._start_daemon()
                changed = True
        else:  # the daemon is the wireguard container's: never started nor deleted here
            self._wait_external()
        changed |= wglink.place_link(self.cfg, mtu, self._host, self._gw)
        info = self.uapi.get()
        port = listen_port if info.listen_port != listen_port else None
        key = None
        if private_key_b64 is not None and info.public_key != public_key_of(private_key_b64):
            key = private_key_b64
        if port is not None or key is not None:
            self.uapi.set(encode_device_set(key, port), "configure device")
            changed = True
        return changed

    def public_key(self) -> str | None:
        try:
            return self.uapi.get().public_key
        except (DeviceError, OSError):
            return None

    def delete(self) -> bool:
        """Deleting the TUN link makes wireguard-go exit (and remove its socket)."""
        deleted = wglink.delete_link(self.cfg, self._host, self._gw)
        self._wait_socket_gone()
        return deleted

    # ---- peers ----

    def peers(self) -> list[PeerState]:
        return list(self.uapi.get().peers)

    def set_peer(self, peer: PeerConfig) -> None:
        self.uapi.set(encode_peer_set(peer), "set peer")

    def reset_peer(self, peer: PeerConfig) -> None:
        # One UAPI set: wireguard-go applies it whole under its IPC lock, which every get also takes.
        self.uapi.set(encode_peer_reset(peer), "reset peer")

    def remove_peer(self, public_key: str) -> bool:
        if all(p.public_key != public_key for p in self.peers()):
            return False
        self.uapi.set(encode_peer_remove(public_key), "remove peer")
        return True

    def remove_all_peers(self) -> None:
        self.uapi.set(encode_remove_all_peers(), "remove all peers")
