"""The WireGuard device of the gateway, kernel or userspace, behind one protocol.

`open_device(cfg)` picks the backend: an existing device is adopted in the implementation it has
(a restart must not swap a working dataplane); otherwise "auto" takes the kernel module when it is
available and wireguard-go when not. Forcing "userspace" never creates a kernel link, even where the
module is loaded (Liqo still used the kernel module when userspace was requested); forcing "kernel"
without the module is an error. `resolve_implementation` is that decision alone, shared with the
wireguard container's `liqo-netagent wireguard`.
"""

from __future__ import annotations

from services.netagent.config import AgentConfig
from services.netagent.kernel.wireguard import link as wglink
from services.netagent.kernel.wireguard.kernel import KernelDevice, kernel_module_available
from services.netagent.kernel.wireguard.model import DeviceError, PeerConfig, PeerState, WireGuardDevice
from services.netagent.kernel.wireguard.userspace import UserspaceDevice

__all__ = [
    "IMPLEMENTATIONS",
    "DeviceError",
    "KernelDevice",
    "PeerConfig",
    "PeerState",
    "UserspaceDevice",
    "WireGuardDevice",
    "choose_implementation",
    "open_device",
    "resolve_implementation",
]

IMPLEMENTATIONS = ("auto", "kernel", "userspace")


def choose_implementation(requested: str, existing_kind: str | None, module_available: bool) -> str:
    """Pure choice of the backend: "kernel" or "userspace"."""
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"wireguard_implementation: {requested!r} not in {IMPLEMENTATIONS}")
    if requested == "kernel":
        if not module_available:
            raise DeviceError("wireguard_implementation=kernel but the wireguard module is not available")
        return "kernel"
    if requested == "userspace":
        return "userspace"
    if existing_kind == "wireguard":
        return "kernel"
    if existing_kind == "tun":
        return "userspace"
    return "kernel" if module_available else "userspace"


def resolve_implementation(cfg: AgentConfig) -> str:
    """"kernel" or "userspace" for cfg on this node: the one decision `serve` and the wireguard
    container (`liqo-netagent wireguard`) both make, so that they agree (an existing device keeps
    its implementation; "auto" takes the kernel module when available)."""
    _, kind = wglink.find_link(cfg)
    return choose_implementation(cfg.wireguard_implementation, kind, kernel_module_available())


def open_device(cfg: AgentConfig, create: bool = True) -> WireGuardDevice:
    """The device object for cfg (touches nothing: `ensure()` creates). With create=False the device
    must exist already (FileNotFoundError otherwise), e.g. to delete it on uninstall."""
    where, kind = wglink.find_link(cfg)
    if not create and where is None:
        raise FileNotFoundError(f"{cfg.wg_device} does not exist")
    impl = choose_implementation(cfg.wireguard_implementation, kind, kernel_module_available())
    if not create:  # adopt what exists, whatever was requested
        impl = "kernel" if kind == "wireguard" else "userspace"
    if impl == "kernel":
        return KernelDevice(cfg)
    return UserspaceDevice(cfg, spawn=cfg.wireguard_go_mode != "external")
