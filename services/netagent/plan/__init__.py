"""The netagent's pure planning: desired kernel state and decisions computed as data.

Nothing here touches the kernel, spawns a process or opens a socket (no netlink, subprocess,
ctypes or socket objects; tests/unit/test_plan_split.py checks it): every function is a function
of its arguments and an injected clock, so it is unit-tested without root. `services.netagent.kernel`
applies what these modules compute.
"""
