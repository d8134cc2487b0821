"""One netlink socket: a request and its replies, matched by sequence number, errors raised."""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
from types import TracebackType
from typing import Self

from services.netagent.kernel.netlink.codec import (
    NLMSG_DONE,
    NLMSG_ERROR,
    NetlinkError,
    Raw,
    encode_message,
    error_of,
    split_messages,
)

__all__ = ["NLM_F_ACK", "NLM_F_CREATE", "NLM_F_DUMP", "NLM_F_EXCL", "NLM_F_REPLACE", "NetlinkSocket"]

NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
KERNEL_PORT = 0  # the sender address of what the kernel sends
TIMEOUT = 30.0  # seconds: a kernel that never answers must not hang a caller forever
_FIRST_RECV = 1 << 15


class NetlinkSocket:
    """A netlink socket of `protocol`, or `sock` (one born in another netns); closed on exit."""

    def __init__(self, protocol: int, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                          protocol)
        try:
            self.sock.settimeout(TIMEOUT)
            self.sock.bind((0, 0))
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):  # short error replies, with the reason
                with contextlib.suppress(OSError):  # an old kernel: the errno alone, which is enough
                    self.sock.setsockopt(SOL_NETLINK, option, 1)
        except BaseException:
            self.sock.close()
            raise
        self._seq = itertools.count(1)
        self._buf = bytearray(_FIRST_RECV)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def request(self, kind: int, body: bytes, flags: int = 0) -> list[Raw]:
        """Sends one request and returns its replies: a dump's messages up to NLMSG_DONE, or what a
        get or a change answers up to its ack. NetlinkError when the kernel refuses it."""
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        seq = next(self._seq)
        flags |= NLM_F_REQUEST if dump else NLM_F_REQUEST | NLM_F_ACK
        self.sock.send(encode_message(kind, flags, seq, body))
        replies: list[Raw] = []
        while True:
            for raw in self._receive():
                if raw.seq != seq:
                    continue  # a late answer to an earlier request that gave up
                if raw.kind == NLMSG_ERROR:
                    error = error_of(raw)
                    if error is not None:
                        raise error
                    return replies
                if raw.kind == NLMSG_DONE:
                    if len(raw.body) >= 4 and (code := struct.unpack_from("=i", raw.body)[0]) < 0:
                        raise NetlinkError(-code, f"dump failed: errno {-code}")
                    return replies
                replies.append(raw)

    def _receive(self) -> list[Raw]:
        """The messages of the next datagram, whatever its size; one not from the kernel (another
        process with CAP_NET_ADMIN can write to this socket) is dropped."""
        size = self.sock.recv_into(self._buf, len(self._buf), socket.MSG_PEEK | socket.MSG_TRUNC)
        if size > len(self._buf):
            self._buf = bytearray(size)
        size, (port, _) = self.sock.recvfrom_into(self._buf, len(self._buf))
        if port != KERNEL_PORT:
            return []
        return list(split_messages(memoryview(self._buf)[:size]))
