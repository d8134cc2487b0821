"""pyroute2 without its package `__init__`, which imports every family it supports (IPDB, NDB with
sqlite3, conntrack, ethtool, nl80211, IPVS, ...): ~5 MB of RSS the netagent never uses.

`install()` registers `pyroute2` as a bare package before anything imports it, so that our
imports of its submodules (`pyroute2.iproute`, `pyroute2.netns`, `pyroute2.netlink...`) load only
those. A name the bare package lacks (a `from pyroute2 import X` anywhere, ours or a library's)
runs the real `__init__` into it then: the same objects, only later. The netagent's `main`
installs it before anything else (every command); tests importing the kernel modules get the
ordinary package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

__all__ = ["install"]


def install() -> None:
    """Registers the bare package unless pyroute2 is already imported (then nothing changes)."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.origin is None or spec.submodule_search_locations is None:
        return
    origin = spec.origin
    pkg = types.ModuleType("pyroute2")
    pkg.__file__ = origin
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__package__ = "pyroute2"
    loaded = False

    def __getattr__(name: str) -> Any:
        nonlocal loaded
        if name.startswith("__") or loaded:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}")
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:  # `from pyroute2 import config`
            return importlib.import_module(f"pyroute2.{name}")
        loaded = True
        with open(origin, "rb") as f:
            exec(compile(f.read(), origin, "exec"), pkg.__dict__)
        return getattr(pkg, name)

    pkg.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["pyroute2"] = pkg
