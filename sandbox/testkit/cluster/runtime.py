"""Where a gateway replica's processes run: the `ReplicaRuntime` interface, and `ProcessRuntime`,
which runs them as child processes in the replica's emulated node.

A runtime knows each process by its name ("netagent", "tunnel", "natmap", "labeler") and keeps its
log in `<workdir>/<name>.log`, also across restarts and node reboots. Another runtime (for instance
one running each process as a container of a pod) implements the same interface.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from sandbox.testkit.hosts import Node, NodeError, dies_with_us
from sandbox.testkit.netagent import ROOT, NetAgent, NetAgentError

__all__ = ["NETAGENT", "ProcessRuntime", "ReplicaRuntime"]

log = logging.getLogger(__name__)

NETAGENT = "netagent"


class ReplicaRuntime(Protocol):
    """Starts, signals and observes the processes of one gateway replica."""

    def start(self, name: str) -> None:
        """Starts `name` unless it runs; returns once it serves (the netagent: answers GetInfo)."""

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Sends `sig` to `name` (if it runs) and waits for it to exit; SIGKILL after `timeout`."""

    def alive(self, name: str) -> bool:
        """Whether `name` runs."""

    def exit_code(self, name: str) -> int | None:
        """`name`'s exit status; None while it runs or before it was started."""

    def started(self) -> list[str]:
        """The names started at least once."""

    def log(self, name: str) -> str:
        """Everything `name` wrote (stdout and stderr), over all its runs."""

    def release(self) -> None:
        """Forgets the processes of a host that is gone (they died with it), reaping them."""


class ProcessRuntime:
    """ReplicaRuntime for a replica on an emulated node: every process a child of this process in
    the node's namespaces, the netagent through the kit's `NetAgent`. `node()` is the replica's
    node of the moment (None while it is down); `command(name)` the controllers' command lines;
    `socket` the netagent's operator socket (every method), `role_sockets` each controller's own
    socket ("labeler", "tunnel", "natmap"; the kit's default next to `socket` when absent);
    `netagent_args` what the netagent gets after its sockets and state file."""

    def __init__(self, node: Callable[[], Node | None], workdir: Path, *, command: Callable[[str], list[str]],
                 env: Mapping[str, str], socket: Path, state: Path, netagent_args: list[str],
                 role_sockets: Mapping[str, Path] | None = None) -> None:
        self._node, self.workdir, self._command = node, workdir, command
        self.env, self.socket, self.state, self.netagent_args = dict(env), socket, state, netagent_args
        self.role_sockets = dict(role_sockets or {})
        self._procs: dict[str, subprocess.Popen[Any]] = {}
        self._agent: NetAgent | None = None

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def _proc(self, name: str) -> subprocess.Popen[Any] | None:
        if name == NETAGENT:
            return self._agent.proc if self._agent is not None else None
        return self._procs.get(name)

    def start(self, name: str) -> None:
        node = self._node()
        if node is None:
            raise NodeError(f"{self.workdir.name}: node is down")
        if self.alive(name):
            return
        if name == NETAGENT:
            if self._agent is not None:
                self._agent.close()
            self._agent = NetAgent(node, self.workdir, socket=self.socket, state=self.state,
                                   role_sockets=dict(self.role_sockets), args=self.netagent_args,
                                   env=self.env, probe_interval=None, shutdown_grace=None)
            self._agent.start(timeout=30)
            return
        with open(self.log_path(name), "ab") as logf:
            self._procs[name] = node.popen(dies_with_us(self._command(name)), stdin=subprocess.DEVNULL,
                                           stdout=logf, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        proc = self._proc(name)
        if proc is None or proc.poll() is not None:
            return
        if name == NETAGENT and self._agent is not None:
            with contextlib.suppress(NetAgentError):  # it ignored `sig`: SIGKILLed, as the others
                self._agent.stop(sig, timeout)
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def alive(self, name: str) -> bool:
        proc = self._proc(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int | None:
        """The id of the process started for `name` while it runs, else None (it may be a launcher,
        `nsenter`, whose child is the program)."""
        proc = self._proc(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def exit_code(self, name: str) -> int | None:
        proc = self._proc(name)
        return proc.poll() if proc is not None else None

    def started(self) -> list[str]:
        return [*([NETAGENT] if self._agent is not None else []), *self._procs]

    def log(self, name: str) -> str:
        p = self.log_path(name)
        return p.read_text(errors="replace") if p.exists() else ""

    def release(self) -> None:
        for name in self.started():
            proc = self._proc(name)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        if self._agent is not None:
            self._agent.close()
