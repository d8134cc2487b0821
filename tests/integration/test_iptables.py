"""The iptables applier against the real kernel, in a throwaway netns per test, checked with
iptables-legacy-save: canonical rendering, idempotency, updates, removal, atomic failure, adoption.
The netns belongs to a kit node and each test body runs inside that node (sandbox.testkit.nodes)."""

from __future__ import annotations

import dataclasses
import os
import secrets
import shlex
from ipaddress import IPv4Address

import pytest

from sandbox.testkit.nodes import in_node_netns
from services.common.tunnelspec import TunnelSpec
from services.netagent.config import AgentConfig
from services.netagent.kernel.iptables import Iptables
from services.netagent.kernel.netns import run_in_netns
from services.netagent.plan import natrules
from services.netagent.plan.iptables import IptablesError
from services.netagent.plan.natrules import Args, Ruleset, desired_state, parse_nat_map

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
CFG = AgentConfig()


def run(netns: str, *cmd: str, stdin: str | None = None) -> str:
    return run_in_netns(netns, cmd, input=stdin).stdout


def save(netns: str) -> str:
    """The whole iptables state, minus the timestamp comments."""
    lines = run(netns, "iptables-legacy-save").splitlines()
    return "\n".join(line for line in lines if not line.startswith("#"))


def by_table(text: str) -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        elif line != "COMMIT":
            current.append(line)
    return tables


def kernel_rules(netns: str) -> set[tuple[str, str, Args]]:
    """Every rule of every table as (table, chain, args), parsed independently with shlex."""
    rules: set[tuple[str, str, Args]] = set()
    table = ""
    for line in save(netns).splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            # iptables-save writes ' as \' inside double quotes, which POSIX shell quoting keeps.
            words = shlex.split(line.replace("\\'", "'"))
            rules.add((table, words[1], tuple(words[2:])))
    return rules


def flat(rs: Ruleset) -> set[tuple[str, str, Args]]:
    return {(t, c, r) for t, chains in rs.tables.items() for c, rules in chains.items() for r in rules}


def tunnel(n: int, *, local_nat: bool = False, remote_nat_pod: bool = False, remote_nat_ext: bool = False,
           name: str = "", local_nat_ext: bool = False) -> TunnelSpec:
    """Cluster n: remote pods 10.{n}.0.0/16, remote external 10.1{n}.0.0/16, remapped to 10.6{n}/10.7{n}."""
    return TunnelSpec.parse(
        cluster_id=f"cluster-{n}",
        cluster_name=name or f"name {n}",
        local_pod_cidr="10.0.0.0/16",
        local_nat_pod_cidr="10.80.0.0/16" if local_nat else "None",
        local_external_cidr="10.201.0.0/16",
        local_nat_external_cidr="10.90.0.0/16" if local_nat_ext else "None",
        remote_pod_cidr=f"10.{n}.0.0/16",
        remote_nat_pod_cidr=f"10.6{n}.0.0/16" if remote_nat_pod else "None",
        remote_external_cidr=f"10.1{n}.0.0/16",
        remote_nat_external_cidr=f"10.7{n}.0.0/16" if remote_nat_ext else "None",
        endpoint="192.0.2.10",
        endpoint_port=5871,
        public_key=KEY,
    )


def nat_map(spec: TunnelSpec, n: int, first: int = 10) -> dict[IPv4Address, IPv4Address]:
    ext = spec.local_remapped_external_cidr.network_address
    return parse_nat_map(spec, {f"10.0.{i >> 8}.{i & 255}": str(ext + i) for i in range(first, first + n)})


def all_kinds() -> tuple[list[TunnelSpec], dict[str, dict[IPv4Address, IPv4Address]]]:
    """All eight NAT combinations at once (clusters 1..8), plus a remapped external CIDR and maps."""
    specs = [tunnel(i + 1, local_nat=bool(i & 4), remote_nat_pod=bool(i & 2), remote_nat_ext=bool(i & 1))
             for i in range(8)]
    specs.append(tunnel(9, local_nat_ext=True, name="x y-z"))
    return specs, {s.cluster_id: nat_map(s, 5) for s in specs}


@in_node_netns("ipt")
def test_what_we_render_is_what_the_kernel_prints(netns: str) -> None:
    specs, maps = all_kinds()
    desired = desired_state(specs, maps, CFG)
    before = kernel_rules(netns)
    assert Iptables(netns).apply(desired)
    # Parsed with shlex, independently of the applier's parser: every rule kind round-trips as is.
    assert kernel_rules(netns) - before == flat(desired)
    assert Iptables(netns).read() == desired


@in_node_netns("ipt")
def test_second_apply_changes_nothing_and_a_new_instance_adopts(netns: str) -> None:
    specs, maps = all_kinds()
    desired = desired_state(specs, maps, CFG)
    ipt = Iptables(netns)
    assert ipt.apply(desired)
    first = save(netns)
    restores = ipt.restores
    assert not ipt.apply(desired)
    assert ipt.restores == restores  # cached: no process at all
    adopter = Iptables(netns)  # a restarted agent: reads, finds everything, writes nothing
    assert not adopter.apply(desired)
    assert adopter.restores == 0
    assert save(netns) == first
    assert adopter.cluster_suffixes() == {s.chain_suffix for s in specs}


@in_node_netns("ipt")
def test_update_replaces_old_rules(netns: str) -> None:
    ipt = Iptables(netns)
    old = tunnel(1)
    ipt.apply(desired_state([old], {old.cluster_id: nat_map(old, 50)}, CFG))
    new = tunnel(1, local_nat=True, remote_nat_pod=True)
    cfg = dataclasses.replace(CFG, mtu=1400)
    desired = desired_state([new], {new.cluster_id: nat_map(new, 50, first=30)}, cfg)
    assert ipt.apply(desired)
    assert Iptables(netns).read() == desired
    rules = kernel_rules(netns)
    assert not any("10.1.0.0/16" in r[2] for r in rules)  # R* moved to 10.61.0.0/16
    assert not any("--to-destination" in r[2] and "10.0.0.10" in r[2] for r in rules)  # entries 10..29 gone
    clamp = ("-o", "liqo.tunnel", "-p", "tcp", "-m", "tcp", "--tcp-flags", "SYN,RST", "SYN", "-j", "TCPMSS")
    assert ("mangle", "LIQO-MSS", (*clamp, "--set-mss", "1360")) in rules


@in_node_netns("ipt")
def test_removing_a_cluster_leaves_the_others_intact(netns: str) -> None:
    a, b = tunnel(1, local_nat=True), tunnel(2, remote_nat_pod=True)
    maps = {a.cluster_id: nat_map(a, 20), b.cluster_id: nat_map(b, 20)}
    ipt = Iptables(netns)
    ipt.apply(desired_state([a, b], maps, CFG))
    b_chains = {c for c in desired_state([b], maps, CFG).tables["nat"] if c.endswith(b.chain_suffix)}
    b_before = {r for r in kernel_rules(netns) if r[1] in b_chains or b.chain_suffix in r[2][-1]}
    assert ipt.apply(desired_state([b], maps, CFG))
    assert Iptables(netns).cluster_suffixes() == {b.chain_suffix}
    after = kernel_rules(netns)
    assert {r for r in after if r[1] in b_chains or b.chain_suffix in r[2][-1]} == b_before
    assert not any(a.chain_suffix in r[1] or a.chain_suffix in r[2][-1] for r in after)


FOREIGN = """*nat
:OTHER - [0:0]
-A PREROUTING -s 192.0.2.0/24 -j ACCEPT
-A POSTROUTING -o eth9 -j MASQUERADE
-A OTHER -d 198.51.100.1/32 -j RETURN
COMMIT
*filter
-A FORWARD -i eth9 -j ACCEPT
-A INPUT -p udp -m udp --dport 5871 -j ACCEPT
COMMIT
*raw
-A PREROUTING -p udp -m udp --dport 9 -j CT --notrack
COMMIT
"""


@in_node_netns("ipt")
def test_foreign_rules_survive_and_remove_all_restores_the_rest_exactly(netns: str) -> None:
    run(netns, "iptables-legacy-restore", "--noflush", stdin=FOREIGN)
    untouched = save(netns)
    specs, maps = all_kinds()
    ipt = Iptables(netns)
    ipt.apply(desired_state(specs, maps, CFG))
    listing = run(netns, "iptables-legacy", "-t", "nat", "-S", "PREROUTING").splitlines()
    assert listing[1:] == ["-A PREROUTING -j LIQO-PREROUTING", "-A PREROUTING -s 192.0.2.0/24 -j ACCEPT"]
    Iptables(netns).remove_all()
    assert "LIQO" not in run(netns, "iptables-legacy-save")
    after, before = by_table(save(netns)), by_table(untouched)
    assert {t: after[t] for t in before} == before
    # Tables we loaded (mangle, for MSS clamping) are left empty: built-in chains, no rule.
    loaded = [line for t in after.keys() - before.keys() for line in after[t]]
    assert all(line.startswith(":") and " ACCEPT " in line for line in loaded)


@in_node_netns("ipt")
def test_a_failed_write_leaves_every_table_as_it_was(netns: str) -> None:
    s = tunnel(1, local_nat=True)
    ipt = Iptables(netns)
    good = desired_state([s], {s.cluster_id: nat_map(s, 10)}, CFG)
    ipt.apply(good)
    before = save(netns)
    # The new name changes filter (committed first) and nat; nat then fails on a bad address.
    new_name = dataclasses.replace(s, cluster_name="renamed")
    renamed = desired_state([new_name], {s.cluster_id: nat_map(s, 11)}, CFG)
    chain = natrules.cluster_chains(s.chain_suffix).map
    nat = dict(renamed.tables["nat"])
    nat[chain] = (*nat[chain], ("-d", "10.201.0.99/32", "-j", "DNAT", "--to-destination", "10.0.0.256"))
    broken = Ruleset({**renamed.tables, "nat": nat})
    blamed = r"10\.0\.0\.256.*\(script line \d+: -[AI] LIQO-PRRT-MAP-CLS-.*10\.0\.0\.256\)"
    with pytest.raises(IptablesError, match=blamed):
        ipt.apply(broken)
    assert save(netns) == before  # filter was rolled back, nat never committed
    assert not ipt.apply(good)  # re-read after the failure: nothing to do
    assert ipt.apply(renamed) and Iptables(netns).read() == renamed


@in_node_netns("ipt")
def test_changes_behind_our_back_are_repaired(netns: str) -> None:
    s = tunnel(1)
    ipt = Iptables(netns)
    mapping = nat_map(s, 100)
    desired = desired_state([s], {s.cluster_id: mapping}, CFG)
    ipt.apply(desired)
    chain = natrules.cluster_chains(s.chain_suffix).map
    # Somebody deletes a mapping, puts a rule above our jump and duplicates it.
    run(netns, "iptables-legacy", "-t", "nat", "-D", chain, "-d", "10.201.0.50/32", "-j", "DNAT",
        "--to-destination", "10.0.0.50")
    run(netns, "iptables-legacy", "-t", "nat", "-I", "PREROUTING", "1", "-s", "192.0.2.1", "-j", "ACCEPT")
    run(netns, "iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-j", "LIQO-PREROUTING")
    assert not ipt.apply(desired)  # the cache is trusted until invalidated...
    ipt.invalidate()
    assert ipt.apply(desired)  # ...then the kernel is re-read and repaired
    assert Iptables(netns).read() == desired
    listing = run(netns, "iptables-legacy", "-t", "nat", "-S", "PREROUTING").splitlines()
    assert listing[1:] == ["-A PREROUTING -j LIQO-PREROUTING", "-A PREROUTING -s 192.0.2.1/32 -j ACCEPT"]
    # A stale cache cannot delete the wrong rule: the delete names the rule, fails, and the retry
    # after a fresh read converges.
    run(netns, "iptables-legacy", "-t", "nat", "-D", chain, "-d", "10.201.0.60/32", "-j", "DNAT",
        "--to-destination", "10.0.0.60")
    changed = dict(mapping)
    changed[IPv4Address("10.0.0.60")] = IPv4Address("10.201.5.5")
    desired2 = desired_state([s], {s.cluster_id: changed}, CFG)
    assert ipt.apply(desired2)
    assert Iptables(netns).read() == desired2


@in_node_netns("ipt")
def test_one_entry_change_in_a_large_map_is_one_small_restore(netns: str) -> None:
    s = tunnel(1, local_nat=True)
    big = nat_map(s, 10000)
    ipt = Iptables(netns)
    ipt.apply(desired_state([s], {s.cluster_id: big}, CFG))
    changed = dict(big)
    changed[IPv4Address("10.0.20.0")] = IPv4Address("10.201.250.250")  # moves to the end
    restores = ipt.restores
    desired = desired_state([s], {s.cluster_id: changed}, CFG)
    assert ipt.apply(desired)
    assert ipt.restores == restores + 1
    assert Iptables(netns).read() == desired
    assert ("nat", natrules.cluster_chains(s.chain_suffix).map,
            ("-d", "10.201.250.250/32", "-j", "DNAT", "--to-destination", "10.0.20.0")) in kernel_rules(netns)


def test_a_missing_netns_is_an_error_not_a_crash() -> None:
    with pytest.raises(IptablesError, match="nsenter"):
        Iptables(f"lgt-ipt-absent-{secrets.token_hex(4)}").apply(desired_state([], {}, CFG))
