"""Runs a controller only while this gateway's netagent holds the ACTIVE role.

Only the active replica may change the dataplane or write status: the controller starts paused, is
resumed (a full resync) when the netagent's WatchRole stream says ACTIVE and the controller's own
precondition (`ready`) holds, and is paused at once when the role is lost or the stream breaks.
"""

from __future__ import annotations

from collections.abc import Callable

from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.kube.controller import Controller, Manager
from services.common.netagent_client import NetAgentClient, RoleWatcher

__all__ = ["RoleGate"]


class RoleGate:
    def __init__(
        self,
        mgr: Manager,
        controller: Controller,
        netagent: NetAgentClient,
        *,
        ready: Callable[[], bool] = lambda: True,
        on_resume: Callable[[], None] = lambda: None,
        on_message: Callable[[pb.WatchRoleResponse], None] | None = None,
    ) -> None:
        self.controller = controller
        self.ready = ready
        self.on_resume = on_resume
        controller.pause()  # until the netagent says ACTIVE
        self.watcher = RoleWatcher(netagent, self._on_role, on_message)
        mgr.add_runnable("role-watch", self.watcher.run)

    @property
    def active(self) -> bool:
        """The netagent's role is ACTIVE (as last seen on the stream)."""
        return self.watcher.active

    def refresh(self) -> None:
        """Re-evaluates after `ready()` may have changed (e.g. the device got its key)."""
        self._on_role(self.watcher.active)

    def _on_role(self, active: bool) -> None:
        if active and self.ready():
            self.controller.resume()
            self.on_resume()
        elif not active:
            self.controller.pause()
