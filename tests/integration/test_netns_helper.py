"""services/common/netns.py on a kit node: a socket born in a named netns lives there while the
caller's threads stay where they were; a command runs in the netns and fails naming itself."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import threading
from collections.abc import Callable

import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.nodes import add_netns
from services.common.netns import in_netns, nsenter_argv, run_in, socket_in

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

ONLY_THERE = "169.254.88.1"  # an address only the named netns has


def _net_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_nsenter_argv() -> None:
    argv = nsenter_argv("/run/netns/x", ["ip", "link"])
    assert argv == ["nsenter", "--net=/run/netns/x", "--", "ip", "link"]
    with pytest.raises(ValueError, match="empty command"):
        nsenter_argv("/run/netns/x", [])


def test_the_helper_in_a_named_netns(node_factory: Callable[[str], Node]) -> None:
    node = node_factory("netns-helper")
    ns = add_netns(node, "lgt-netns-helper")
    node.run("ip", "-n", ns, "addr", "add", f"{ONLY_THERE}/32", "dev", "lo")
    node.call(_in_node, f"/run/netns/{ns}", timeout=60)


def _raise_key_error() -> None:
    raise KeyError("from fn")


def _in_node(ns_file: str) -> None:
    """Runs inside the node (its mount namespace holds /run/netns/NAME)."""
    before, threads_before = _net_inode(), set(threading.enumerate())

    # A socket born there binds the address only that netns has; the caller's own socket cannot.
    with socket_in(ns_file) as inside:
        inside.bind((ONLY_THERE, 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as here, pytest.raises(OSError) as e:
        here.bind((ONLY_THERE, 0))
    assert e.value.errno == errno.EADDRNOTAVAIL
    with socket_in(ns_file, socket.AF_INET, socket.SOCK_STREAM) as tcp:
        assert tcp.type == socket.SOCK_STREAM

    # fn's result and exception come back; the worker entered the netns, the caller did not.
    assert in_netns(ns_file, _net_inode) != before
    with pytest.raises(KeyError, match="from fn"):
        in_netns(ns_file, _raise_key_error)
    with pytest.raises(FileNotFoundError):
        in_netns(ns_file + "-absent", lambda: None)
    assert _net_inode() == before
    assert set(threading.enumerate()) == threads_before  # the worker threads are gone

    # A command runs in the netns; a failure names the command, not nsenter.
    assert ONLY_THERE in run_in(ns_file, ["ip", "-o", "addr", "show", "dev", "lo"]).stdout
    assert ONLY_THERE not in subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], check=True,
                                            capture_output=True, text=True).stdout
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_in(ns_file, ["ip", "link", "show", "dev", "absent0"])
    assert failed.value.cmd == ["ip", "link", "show", "dev", "absent0"]
    assert "absent0" in failed.value.stderr
    assert run_in(ns_file, ["false"], check=False).returncode == 1
    assert run_in(ns_file, ["cat"], input="piped").stdout == "piped"
