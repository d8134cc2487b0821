"""The netagent's own netlink: rtnetlink for links, addresses, routes, rules and neighbours, and the
generic netlink family "wireguard". Narrow on purpose: what the agent reads and writes, nothing else
(a general netlink library costs the privileged process megabytes of modules it never runs)."""
