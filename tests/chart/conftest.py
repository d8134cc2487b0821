"""Shared helpers of the chart's tests: values built on the chart's required ones."""

from __future__ import annotations

import copy
from typing import Any

from sandbox.testkit import chart


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` deep-merged onto a copy of `base`."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = merge(out[k], v) if nested else copy.deepcopy(v)
    return out


def values(**over: Any) -> dict[str, Any]:
    """The required values plus `over` (deep-merged)."""
    return merge(chart.REQUIRED_VALUES, over)


# The sandbox's values (podman 4.3 kube play: no containerPorts without a bridge network, no
# projected volumes, the wireguard socket directory visible from the emulated node).
SANDBOX = values(
    ports={"declare": False},
    kubeconfig={"hostPath": "/var/lib/lgw/kubeconfig"},
    wireguard={"socketHostPath": "/var/lib/lgw/wireguard", "implementation": "userspace"},
    labeler={"extraArgs": ["--lease-duration=3", "--renew-deadline=2", "--retry-period=0.5"]},
    tunnel={"extraArgs": ["--status-min-interval=0.5"]},
    netagent={"extraArgs": ["--probe-interval=0.5"]},
)
