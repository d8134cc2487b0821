"""The whole Liqo-owned iptables state of liqo-netns, computed from the desired tunnels (pure).

Chains and rules follow Liqo's gateway: global chains LIQO-PREROUTING, LIQO-POSTROUTING (nat) and
LIQO-FORWARD (filter), jumped to from the built-ins, and per cluster LIQO-PSTRT-CLS-x (SNAT/NETMAP of
what we send), LIQO-PRRT-CLS-x (NETMAP back to our pods), LIQO-PRRT-MAP-CLS-x (DNAT of the NatMapping
entries) and LIQO-FRWD-EXT-CLS-x (drops the peer's traffic to our remapped external CIDR that no
entry translated). The sender translates sources, the receiver translates destinations. Rules are
values: a tuple of arguments in the exact canonical form `iptables-legacy-save` prints them, so the
applier compares tuples and never substrings (Liqo bug #2659). Differences from Liqo, all deliberate:
- the per-cluster chain suffix is a hash of the whole cluster ID: Liqo used the ID's first
  dash-separated token, which collides for IDs sharing a prefix and overflows iptables' 28-character
  chain name limit for long IDs;
- every cluster's map chain starts with the probe DNAT (our probe address -> the tunnel IP), so the
  UDP probe works before any NatMapping exists;
- TCP MSS is clamped on the tunnel device in both directions (chain LIQO-MSS in mangle).
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import re
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import NoReturn

from services.common.tunnelspec import SpecError, TunnelSpec, check_cluster_name
from services.netagent.config import AgentConfig

__all__ = [
    "BUILTIN_JUMPS",
    "MAX_NAT_ENTRIES",
    "TABLES",
    "Args",
    "NatMap",
    "Ruleset",
    "cluster_chains",
    "comment_label",
    "desired_state",
    "gc_paused",
    "is_liqo_chain",
    "jump_target",
    "parse_nat_map",
]

Args = tuple[str, ...]  # one rule, without "-A CHAIN", as iptables-legacy-save prints it
TABLES = ("filter", "mangle", "nat")
CHAIN_PREFIX = "LIQO-"
MAX_NAT_ENTRIES = 65536
# IPv4 header (20) + TCP header (20): the largest TCP payload that fits the tunnel MTU.
TCP_IP_HEADERS = 40

PREROUTING, POSTROUTING, FORWARD, MSS = "LIQO-PREROUTING", "LIQO-POSTROUTING", "LIQO-FORWARD", "LIQO-MSS"
# (table, built-in chain) -> the global Liqo chain jumped to from its first rule.
BUILTIN_JUMPS: Mapping[tuple[str, str], str] = {
    ("nat", "PREROUTING"): PREROUTING,
    ("nat", "POSTROUTING"): POSTROUTING,
    ("filter", "FORWARD"): FORWARD,
    ("mangle", "FORWARD"): MSS,
}


@dataclass(frozen=True)
class Ruleset:
    """Liqo-owned iptables state: table -> chain -> rules in order.

    For every `LIQO-*` chain: all its rules (an empty tuple is an existing empty chain). For a
    chain Liqo does not own (a built-in such as PREROUTING): its rules from the top down to the last
    rule that jumps to a LIQO chain. The desired state of a built-in is exactly the one jump, so a
    jump that is missing, duplicated or not first shows up as a difference, while rules of others
    below it are not Liqo's and never appear.
    """

    tables: Mapping[str, Mapping[str, tuple[Args, ...]]] = field(default_factory=dict)

    def table(self, name: str) -> Mapping[str, tuple[Args, ...]]:
        return self.tables.get(name, {})

    def rule_count(self) -> int:
        return sum(len(rules) for chains in self.tables.values() for rules in chains.values())


def is_liqo_chain(chain: str) -> bool:
    return chain.startswith(CHAIN_PREFIX)


def jump_target(args: Args) -> str | None:
    """The chain a rule jumps or goes to, if any."""
    for i, a in enumerate(args[:-1]):
        if a in ("-j", "-g"):
            return args[i + 1]
    return None


@dataclass(frozen=True)
class ClusterChains:
    postrouting: str  # nat
    prerouting: str  # nat
    map: str  # nat
    forward_ext: str  # filter


def cluster_chains(suffix: str) -> ClusterChains:
    return ClusterChains(
        postrouting=f"LIQO-PSTRT-CLS-{suffix}",
        prerouting=f"LIQO-PRRT-CLS-{suffix}",
        map=f"LIQO-PRRT-MAP-CLS-{suffix}",
        forward_ext=f"LIQO-FRWD-EXT-CLS-{suffix}",
    )


# What a cluster name may carry into an iptables comment as is; anything else is replaced.
_SAFE_NAME_RE = re.compile(r"[A-Za-z0-9._-]{0,63}")
_UNSAFE_CHAR_RE = re.compile(r"[^A-Za-z0-9._-]")
LABEL_NAME_MAX = 32


def comment_label(spec: TunnelSpec) -> str:
    """The cluster as iptables comments name it: bounded, ASCII-safe, and rendered and read back
    byte-exactly whatever the name (iptables cuts comments at 255 bytes, possibly inside a UTF-8
    character, and line-breaking characters split iptables-save's output). A name of
    `[A-Za-z0-9._-]` is kept as is (Liqo's comments); any other is reduced to those characters,
    truncated, and followed by the cluster id, which tells clusters apart."""
    name = spec.cluster_name
    if _SAFE_NAME_RE.fullmatch(name):
        return name
    return f"{_UNSAFE_CHAR_RE.sub('_', name)[:LABEL_NAME_MAX]}~{spec.cluster_id}"


def _comment(text: str) -> Args:
    # iptables-save would escape these, and Liqo's parser choked on them: never emit them.
    if any(c in text for c in "\"\\\n"):
        raise SpecError(f"iptables comment {text!r} must not contain double quotes, backslashes or newlines")
    return ("-m", "comment", "--comment", text)


def _net(n: IPv4Network) -> str:
    return str(n)  # canonical CIDR, as iptables prints it (a host is "a.b.c.d/32")


# Rendering a 10 000-entry map is on the path of every NAT map change: str(IPv4Address) alone would
# take 20 ms, so address strings are memoized (bounded; values never change, so it cannot go stale).
_MEMO_MAX = 1 << 18
_addr_memo: dict[int, str] = {}
_host_memo: dict[int, str] = {}


def _addr(n: int) -> str:
    s = _addr_memo.get(n)
    if s is None:
        if len(_addr_memo) >= _MEMO_MAX:
            _addr_memo.clear()
        s = _addr_memo[n] = socket.inet_ntoa(n.to_bytes(4, "big"))
    return s


def _host(n: int) -> str:
    s = _host_memo.get(n)
    if s is None:
        if len(_host_memo) >= _MEMO_MAX:
            _host_memo.clear()
        s = _host_memo[n] = _addr(n) + "/32"
    return s


def _dnat_rules(pairs: Iterable[tuple[int, int]]) -> list[Args]:
    """`-d new/32 -j DNAT --to-destination old` for (new, old) pairs."""
    return [("-d", _host(new), "-j", "DNAT", "--to-destination", _addr(old)) for new, old in pairs]


def _cluster_rules(
    spec: TunnelSpec, nat_map: Mapping[IPv4Address, IPv4Address], cfg: AgentConfig
) -> tuple[dict[str, list[Args]], dict[str, dict[str, tuple[Args, ...]]]]:
    """Jump rules for the global chains, and the cluster's own chains per table."""
    ch = cluster_chains(spec.chain_suffix)
    check_cluster_name(spec.cluster_name)  # what TunnelSpec.parse accepts; belt and braces
    name = comment_label(spec)
    local = spec.local_pod_cidr
    local_nat = spec.local_nat_pod_cidr
    r_pod, r_ext = _net(spec.eff_remote_pod_cidr), _net(spec.eff_remote_external_cidr)
    e_loc = _net(spec.local_remapped_external_cidr)

    jumps: dict[str, list[Args]] = {
        POSTROUTING: [
            ("-d", r_pod, *_comment(f"SNAT local traffic for '{name}' PodCIDR"), "-j", ch.postrouting),
            ("-d", r_ext, *_comment(f"SNAT local traffic for '{name}' ExternalCIDR"), "-j", ch.postrouting),
        ],
        PREROUTING: [
            ("-s", r_pod, "-d", e_loc, *_comment(f"DNAT '{name}' traffic for local ExternalCIDR"),
             "-j", ch.map),
        ],
        FORWARD: [("-s", r_pod, "-d", e_loc, "-j", ch.forward_ext)],
    }
    if local_nat is not None:
        # The source match matters: several peers may remap our pods onto the same CIDR.
        jumps[PREROUTING].append(
            ("-s", r_pod, "-d", _net(local_nat), *_comment(f"DNAT '{name}' traffic for local PodCIDR"),
             "-j", ch.prerouting)
        )

    # Our pods keep their host part (NETMAP); anything else (node, host-network pods, the probe
    # socket) is SNATed to one address the peer can route back to us.
    pstrt: list[Args] = []
    if local_nat is not None:
        pstrt += [
            ("-s", _net(local), "-d", r_pod, "-j", "NETMAP", "--to", _net(local_nat)),
            ("-s", _net(local), "-d", r_ext, "-j", "NETMAP", "--to", _net(local_nat)),
        ]
    snat_to = str((local_nat or local).network_address)
    pstrt += [
        ("!", "-s", _net(local), "-d", r_pod, "-j", "SNAT", "--to-source", snat_to),
        ("!", "-s", _net(local), "-d", r_ext, "-j", "SNAT", "--to-source", snat_to),
    ]
    prrt: list[Args] = []
    if local_nat is not None:
        prrt.append(("-s", r_pod, "-d", _net(local_nat), "-j", "NETMAP", "--to", _net(local)))

    probe = int(spec.local_probe_address)
    # Sorted by the new address: a stable order keeps a one-entry change a one-rule edit.
    mapping = _dnat_rules([(probe, int(cfg.tunnel_ip))])
    if isinstance(nat_map, NatMap) and not nat_map.has_new(probe):
        mapping += nat_map.rules  # rendered when parsed: a one-entry change re-renders one rule
    else:
        entries = sorted([(int(new), int(old)) for old, new in nat_map.items()])
        mapping += _dnat_rules(e for e in entries if e[0] != probe)

    drop = (*_comment(f"Avoid forwarding '{name}' remapped ExternalCIDR to liqo.gateway"), "-j", "DROP")
    chains: dict[str, dict[str, tuple[Args, ...]]] = {
        "nat": {ch.postrouting: tuple(pstrt), ch.prerouting: tuple(prrt), ch.map: tuple(mapping)},
        "filter": {ch.forward_ext: (drop,)},
    }
    return jumps, chains


def _mss_rules(cfg: AgentConfig) -> tuple[Args, ...]:
    mss = str(cfg.mtu - TCP_IP_HEADERS)
    syn = ("-p", "tcp", "-m", "tcp", "--tcp-flags", "SYN,RST", "SYN", "-j", "TCPMSS", "--set-mss", mss)
    return (("-o", cfg.wg_device, *syn), ("-i", cfg.wg_device, *syn))


def desired_state(
    specs: Iterable[TunnelSpec], nat_maps: Mapping[str, Mapping[IPv4Address, IPv4Address]], cfg: AgentConfig
) -> Ruleset:
    """The complete Liqo-owned state for these tunnels: global chains and their jumps from the
    built-ins (present even with no tunnel, as Liqo's Init), MSS clamping, and per cluster its four
    chains, its jumps and its NAT map (entries of clusters without a spec are ignored)."""
    if cfg.mtu <= TCP_IP_HEADERS:
        raise SpecError(f"mtu: {cfg.mtu} too small")
    tables: dict[str, dict[str, tuple[Args, ...]]] = {t: {} for t in TABLES}
    for (table, builtin), target in BUILTIN_JUMPS.items():
        tables[table][builtin] = (("-j", target),)
    global_rules: dict[str, list[Args]] = {PREROUTING: [], POSTROUTING: [], FORWARD: []}
    owners: dict[str, str] = {}
    for spec in sorted(specs, key=lambda s: s.cluster_id):
        other = owners.setdefault(spec.chain_suffix, spec.cluster_id)
        if other != spec.cluster_id:
            raise SpecError(f"cluster_id: {spec.cluster_id!r} and {other!r} hash to the same chain suffix")
        jumps, chains = _cluster_rules(spec, nat_maps.get(spec.cluster_id, {}), cfg)
        for chain, rules in jumps.items():
            global_rules[chain] += rules
        for table, own in chains.items():
            tables[table].update(own)
    tables["nat"][PREROUTING] = tuple(global_rules[PREROUTING])
    tables["nat"][POSTROUTING] = tuple(global_rules[POSTROUTING])
    tables["filter"][FORWARD] = tuple(global_rules[FORWARD])
    tables["mangle"][MSS] = _mss_rules(cfg)
    return Ruleset(tables)


def _ipv4_int(s: str) -> int | None:
    """Strict dotted quad (no leading zeros, no spaces) as an integer; None if it is not one."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, s), "big")
    except (OSError, ValueError, TypeError):
        return None


def _is_workload(n: int) -> bool:
    """Not unspecified, broadcast, loopback (127/8) or multicast (224/4)."""
    return n not in (0, 0xFFFFFFFF) and n >> 24 != 127 and n >> 28 != 0xE


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC while building 10 000-entry structures: collections triggered by the burst of
    allocations scan every live object and made a 15 ms parse take 15-40 ms. Garbage waits a few
    milliseconds, nothing more."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class NatMap(Mapping[IPv4Address, IPv4Address]):
    """A validated NAT map (old -> new) that also carries its DNAT rules, sorted by new address.

    Immutable, so the rules cannot drift from the entries. Entries are kept as integers and turned
    into addresses only when read: building 20 000 IPv4Address objects was half the cost of parsing
    a 10 000-entry map. It lets `desired_state` reuse the rules and `parse_nat_map` derive the next
    map from this one when only a few entries change."""

    __slots__ = ("_by_new", "_by_old", "_news", "_rules")

    def __init__(
        self,
        by_new: dict[int, int],
        news: list[int],
        rules: tuple[Args, ...],
        by_old: dict[int, int] | None = None,
    ) -> None:
        self._by_new = by_new
        self._by_old = dict(zip(by_new.values(), by_new, strict=True)) if by_old is None else by_old
        self._news = news  # sorted new addresses, parallel to _rules
        self._rules = rules

    @property
    def rules(self) -> tuple[Args, ...]:
        """`-d new/32 -j DNAT --to-destination old` per entry, by ascending new address."""
        return self._rules

    def has_new(self, new: int) -> bool:
        return new in self._by_new

    def targets(self) -> Iterable[int]:
        """The DNAT targets (old addresses) as integers, for bulk checks."""
        return self._by_old.keys()

    def as_strings(self) -> dict[str, str]:
        """{old: new} as dotted quads (for persisting), without str(IPv4Address)'s cost per entry."""
        return {_addr(old): _addr(new) for old, new in self._by_old.items()}

    def __getitem__(self, key: IPv4Address) -> IPv4Address:
        if not isinstance(key, IPv4Address):
            raise KeyError(key)
        return IPv4Address(self._by_old[int(key)])

    def __iter__(self) -> Iterator[IPv4Address]:
        return map(IPv4Address, self._by_old)

    def __len__(self) -> int:
        return len(self._by_old)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NatMap):  # integers, not IPv4Address.__eq__ per entry
            return self._by_old == other._by_old
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class _MapContext:
    ext: IPv4Network
    ext_net: int
    ext_mask: int
    probe: int
    tunnel_ip: IPv4Address

    def check(self, old_s: str, new_s: str, old: int, new: int, taken: Mapping[int, int]) -> bool:
        """True to keep the entry, False for Liqo's tunnel entry (merged); raises if invalid."""
        if new & self.ext_mask != self.ext_net or not _is_workload(old) or new == self.probe or new in taken:
            if new == self.probe and old == int(self.tunnel_ip):
                return False
            _refuse(old_s, new_s, self.ext, self.probe, self.tunnel_ip, taken)
        return True


# Per cluster: the context, the raw map and the NatMap of the last successful parse.
_MEMO_CLUSTERS = 64
_parse_memo: dict[str, tuple[_MapContext, dict[str, str], NatMap]] = {}


def parse_nat_map(
    spec: TunnelSpec, mappings: Mapping[str, str], *, tunnel_ip: IPv4Address = AgentConfig.tunnel_ip
) -> NatMap:
    """Validates a NatMapping (key: real/old workload IP, value: new IP in the external CIDR the
    remote uses for us) and returns old -> new. Raises SpecError naming a bad entry.

    Liqo's NatMapping always carries `tunnel IP -> <E*>.1`: that entry repeats the built-in probe
    DNAT and is merged into it (left out of the result); anything else mapped onto the probe address
    is refused. Maps are resent whole on every change: when only a few entries differ from the
    cluster's previous map, only those are parsed (same result, a fraction of the cost)."""
    if len(mappings) > MAX_NAT_ENTRIES:
        raise SpecError(f"mappings: {len(mappings)} entries, at most {MAX_NAT_ENTRIES}")
    ext = spec.local_remapped_external_cidr
    probe = int(spec.local_probe_address)
    ctx = _MapContext(ext, int(ext.network_address), int(ext.netmask), probe, tunnel_ip)
    memo = _parse_memo.get(spec.cluster_id)
    result = None
    with gc_paused():
        if memo is not None and memo[0] == ctx:
            result = _parse_changes(ctx, memo[1], memo[2], mappings)
        if result is None:
            result = _parse_all(ctx, mappings)
    _parse_memo.pop(spec.cluster_id, None)
    if len(_parse_memo) >= _MEMO_CLUSTERS:
        _parse_memo.pop(next(iter(_parse_memo)))
    _parse_memo[spec.cluster_id] = (ctx, dict(mappings), result)
    return result


def _parse_all(ctx: _MapContext, mappings: Mapping[str, str]) -> NatMap:
    # The loop is the cost of a 10 000-entry map: inet_pton is as strict as IPv4Address and ten
    # times faster, and the common case is checked inline; anything unusual goes through ctx.check
    # (and _refuse, which says what is wrong).
    pton, af, from_bytes = socket.inet_pton, socket.AF_INET, int.from_bytes
    ext_net, ext_mask, probe = ctx.ext_net, ctx.ext_mask, ctx.probe
    by_new: dict[int, int] = {}
    for old_s, new_s in mappings.items():
        try:
            old, new = from_bytes(pton(af, old_s), "big"), from_bytes(pton(af, new_s), "big")
        except (OSError, ValueError, TypeError):
            _refuse(old_s, new_s, ctx.ext, ctx.probe, ctx.tunnel_ip, {})
        if (
            new & ext_mask != ext_net or new == probe or new in by_new
            or old >> 24 == 127 or old >> 28 == 0xE or old == 0 or old == 0xFFFFFFFF
        ) and not ctx.check(old_s, new_s, old, new, by_new):
            continue
        by_new[new] = old
    news = sorted(by_new)
    return NatMap(by_new, news, tuple(_dnat_rules([(new, by_new[new]) for new in news])))


def _parse_changes(ctx: _MapContext, prev_raw: Mapping[str, str], prev: NatMap,
                   mappings: Mapping[str, str]) -> NatMap | None:
    """The map for `mappings` derived from the previous one, or None if too much changed."""
    limit = max(64, len(mappings) // 8)
    gone: list[str] = []
    for k, v in prev_raw.items():
        if mappings.get(k) != v:
            gone.append(k)
            if len(gone) > limit:
                return None
    came: list[tuple[str, str]] = []
    for k, v in mappings.items():
        if prev_raw.get(k) != v:
            came.append((k, v))
            if len(gone) + len(came) > limit:
                return None
    by_new, by_old = dict(prev._by_new), dict(prev._by_old)
    news, rules = list(prev._news), list(prev._rules)
    for old_s in gone:
        old = _ipv4_int(old_s)
        new = by_old.pop(old, None) if old is not None else None
        if new is None:
            continue  # Liqo's tunnel entry: never stored
        del by_new[new]
        i = bisect.bisect_left(news, new)
        del news[i], rules[i]
    for old_s, new_s in came:
        old, new = _ipv4_int(old_s), _ipv4_int(new_s)
        if old is None or new is None:
            _refuse(old_s, new_s, ctx.ext, ctx.probe, ctx.tunnel_ip, by_new)
        if not ctx.check(old_s, new_s, old, new, by_new):
            continue
        by_new[new], by_old[old] = old, new
        i = bisect.bisect_left(news, new)
        news.insert(i, new)
        rules.insert(i, _dnat_rules([(new, old)])[0])
    return NatMap(by_new, news, tuple(rules), by_old)


def _refuse(
    old_s: str, new_s: str, ext: IPv4Network, probe: int, tunnel_ip: IPv4Address, taken: Mapping[int, int]
) -> NoReturn:
    """Raises the SpecError that says what is wrong with this entry."""
    where = f"mappings[{old_s!r}]"
    old, new = _ipv4_int(old_s), _ipv4_int(new_s)
    if old is None:
        raise SpecError(f"{where}: key {old_s!r} is not an IPv4 address") from None
    if new is None:
        raise SpecError(f"{where}: value {new_s!r} is not an IPv4 address") from None
    if not _is_workload(old):
        raise SpecError(f"{where}: {old_s} cannot be a workload address") from None
    if IPv4Address(new) not in ext:
        raise SpecError(f"{where}: {new_s} is outside the local external CIDR {ext}") from None
    if new == probe:
        raise SpecError(f"{where}: {new_s} is reserved for the probe (DNAT to {tunnel_ip})") from None
    raise SpecError(f"{where}: {new_s} is already the new address of {IPv4Address(taken[new])}") from None
