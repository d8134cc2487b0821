"""The netagent's kernel appliers: the namespace, veth, WireGuard device, routes, rules, iptables and
the probe's socket.

Each reads the part of the kernel's state it owns, diffs it against what `services.netagent.plan`
computed and writes only the difference. Nothing here forks the (threaded) agent process: namespaces
are entered by short-lived threads or by `nsenter` children (`services.common.netns`).
"""
