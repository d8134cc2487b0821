"""A netagent that is not privileged (the chart's capabilities mode: NET_ADMIN, NET_RAW, SYS_ADMIN).
It finds /proc/sys read-only, as a container engine mounts it: `make_proc_sys_writable` makes that one
bind mount writable in its own mount namespace, keeping the mount's other flags, so forwarding can be
turned on in liqo-netns. And after a restart of its container liqo-netns is a leftover mount point
(the mount did not propagate to the host) that it cannot even open without CAP_DAC_OVERRIDE: it is
replaced, not an error."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import pytest

from sandbox.testkit.hosts import Node
from services.netagent.kernel.netns import make_proc_sys_writable

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for mount namespaces"),
]


def remount_and_write() -> tuple[bool, bool, bool, str]:
    """In the node: whether it remounted, whether /proc/sys is then writable (and nosuid kept), a
    second call's answer, and ip_forward after writing it."""
    changed = make_proc_sys_writable()
    flags = os.statvfs("/proc/sys").f_flag
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        forward = f.read().strip()
    return changed, not flags & os.ST_RDONLY and bool(flags & os.ST_NOSUID), make_proc_sys_writable(), forward


def test_read_only_proc_sys_is_made_writable_in_the_agents_mount_namespace(
    node_factory: Callable[[str], Node],
) -> None:
    node = node_factory("procsys")
    # What runc does for a container that is not privileged: /proc/sys bound onto itself, read-only.
    node.run("mount", "--bind", "/proc/sys", "/proc/sys")
    node.run("mount", "-o", "remount,bind,ro,nosuid,nodev,noexec", "/proc/sys")
    assert node.run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward", check=False).returncode != 0
    changed, writable, again, forward = node.call(remount_and_write)
    assert changed and writable and not again and forward == "1"
    # The machine's own /proc/sys was never read-only and is untouched.
    assert not os.statvfs("/proc/sys").f_flag & os.ST_RDONLY


def test_a_leftover_netns_file_is_replaced_without_dac_override(node_factory: Callable[[str], Node]) -> None:
    node = node_factory("capsnetns")
    node.run("mkdir", "-p", "/run/netns")
    node.run("install", "-m", "0", "/dev/null", "/run/netns/liqo-left")  # what a dead mount leaves
    no_dac = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    # Without the capability the leftover cannot be opened: what the fix is about.
    assert node.run(*no_dac, "cat", "/run/netns/liqo-left", check=False).returncode != 0
    code = ("from services.netagent.kernel.netns import ensure_netns, netns_exists\n"
            "assert not netns_exists('liqo-left')\n"
            "assert ensure_netns('liqo-left') and netns_exists('liqo-left')\n"
            "print('ok')")
    cp = node.run(*no_dac, sys.executable, "-c", code, check=False)
    assert cp.returncode == 0 and cp.stdout.strip() == "ok", cp.stderr
    assert node.run("ip", "netns", "list").stdout.split()[0] == "liqo-left"
