"""Poison pills (docs/security.md, What stays out of reach): whatever TunnelSpec.parse accepts renders
to iptables rules that parse back to the same structure, and the iptables-save parser never raises on
bytes it did not write."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sandbox.testkit.resources import SAMPLE_KEY, sample_spec
from services.common.tunnelspec import SpecError, TunnelSpec
from services.netagent.config import AgentConfig
from services.netagent.plan.iptables import parse_save, render_delete, render_rule, table_script
from services.netagent.plan.natrules import Ruleset, comment_label, desired_state

CFG = AgentConfig()
MAX_COMMENT_BYTES = 255  # XT_MAX_COMMENT_LEN - 1: iptables cuts longer comments


def save_text(rs: Ruleset) -> str:
    """`rs` as iptables-legacy-save prints it: per table its chains declared, then `-A` lines."""
    out = []
    for table, chains in sorted(rs.tables.items()):
        out.append(f"*{table}")
        out += [f":{c} - [0:0]" if c.startswith("LIQO-") else f":{c} ACCEPT [0:0]" for c in sorted(chains)]
        out += [render_rule(c, r) for c in sorted(chains) for r in chains[c]]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


POISON_NAMES = [
    "\U0001f600" * 63,  # 252 bytes: with the comment's text, iptables cut it inside a character
    "東京 ☃ \u200d",
    "it's",  # refused: quotes
    "a\x0bb",  # refused: splitlines() breaks there
    "a\x1cb",
    "a\u2028b",
    "a\x85b",
    "a\rb",
    "a\tb c",
    "\ud800",  # a lone surrogate: refused
    "",
    "x" * 63,
]


@pytest.mark.parametrize("name", POISON_NAMES)
def test_any_accepted_name_renders_ascii_and_parses_back(name: str) -> None:
    try:
        s = sample_spec(cluster_name=name)
    except SpecError as e:
        assert str(e).startswith("cluster_name: ")
        assert any(c in name for c in "'\x0b\x1c\u2028\x85\r\t\ud800")
        return
    rs = desired_state([s], {}, CFG)
    text = save_text(rs)
    assert text.isascii()
    assert parse_save(text) == rs
    label = comment_label(s)
    assert label == name or label.endswith(f"~{s.cluster_id}")
    for chains in rs.tables.values():
        for rules in chains.values():
            for rule in rules:
                for i, a in enumerate(rule[:-1]):
                    if a == "--comment":
                        assert len(rule[i + 1].encode()) <= MAX_COMMENT_BYTES


CIDRS = ["10.0.0.0/16", "10.1.0.0/16", "10.60.0.0/16", "10.70.0.0/16", "10.80.0.0/16", "10.90.0.0/16",
         "10.201.0.0/16", "10.202.0.0/24", "192.168.5.0/24", "100.64.0.0/10"]
NAT = st.one_of(st.just("None"), st.sampled_from(CIDRS))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    cluster_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fullmatch=True),
    cluster_name=st.text(max_size=63),
    cidrs=st.tuples(st.sampled_from(CIDRS), NAT, st.sampled_from(CIDRS), NAT, st.sampled_from(CIDRS), NAT,
                    st.sampled_from(CIDRS), NAT),
)
def test_property_every_accepted_spec_round_trips(cluster_id: str, cluster_name: str,
                                                  cidrs: tuple[str, ...]) -> None:
    lp, lnp, le, lne, rp, rnp, re_, rne = cidrs
    try:
        s = TunnelSpec.parse(
            cluster_id=cluster_id, cluster_name=cluster_name, local_pod_cidr=lp, local_nat_pod_cidr=lnp,
            local_external_cidr=le, local_nat_external_cidr=lne, remote_pod_cidr=rp,
            remote_nat_pod_cidr=rnp, remote_external_cidr=re_, remote_nat_external_cidr=rne,
            endpoint="172.31.0.2", endpoint_port=5871, public_key=SAMPLE_KEY,
        )
    except SpecError:
        assume(False)
        return
    rs = desired_state([s], {}, CFG)
    text = save_text(rs)
    assert text.isascii()
    assert parse_save(text) == rs
    # ...and the restore script that creates it from nothing is ASCII as well
    for table in rs.tables:
        script = table_script(table, {}, rs.table(table))
        assert script is not None and script.isascii()


@settings(max_examples=100, deadline=None)
@given(name=st.text(max_size=63))
def test_property_names_only_fail_with_a_cluster_name_error(name: str) -> None:
    try:
        s = sample_spec(cluster_name=name)
    except SpecError as e:
        assert str(e).startswith("cluster_name: ")
        return
    assert parse_save(save_text(desired_state([s], {}, CFG))) == desired_state([s], {}, CFG)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_property_the_parser_never_raises(data: bytes) -> None:
    head = b"*nat\n:LIQO-X - [0:0]\n-A LIQO-X "
    for blob in (data, head + data + b"\nCOMMIT\n", b"*nat\n-A PREROUTING " + data + b" -j LIQO-X\nCOMMIT\n"):
        parse_save(blob.decode("utf-8", "surrogateescape"))


ODD = [
    "\xff\xfe",  # undecodable bytes, as surrogateescape decodes them
    "\U0001f600" * 62 + "\xf0\x9f",  # a comment cut inside a character
    "a\x0bb\x1cc\u2028d",
    'quote"d',
    "back\\slash",
]


@pytest.mark.parametrize("odd", ODD)
def test_odd_rules_in_a_liqo_chain_make_it_rewritten(odd: str) -> None:
    raw = odd.encode("latin-1", "replace") if odd.startswith("\xff") else odd.encode("utf-8", "surrogatepass")
    if odd.startswith("\U0001f600"):
        raw = ("\U0001f600" * 62).encode() + b"\xf0\x9f"
    comment = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    text = (b"*filter\n:FORWARD ACCEPT [0:0]\n:LIQO-FORWARD - [0:0]\n-A FORWARD -j LIQO-FORWARD\n"
            b'-A LIQO-FORWARD -s 10.1.0.0/16 -m comment --comment "' + comment + b'" -j DROP\n'
            b"-A LIQO-FORWARD -s 10.2.0.0/16 -j DROP\nCOMMIT\n").decode("utf-8", "surrogateescape")
    cur = parse_save(text)
    rules = cur.table("filter")["LIQO-FORWARD"]
    assert len(rules) == 2
    desired = {"FORWARD": (("-j", "LIQO-FORWARD"),), "LIQO-FORWARD": (("-s", "10.2.0.0/16", "-j", "DROP"),)}
    script = table_script("filter", cur.table("filter"), desired)
    assert script is not None
    assert ":LIQO-FORWARD - [0:0]" in script and "-D LIQO-FORWARD" not in script  # rewritten, not named
    script.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("odd", ODD)
def test_odd_foreign_jumps_are_deleted_exactly_as_printed(odd: str) -> None:
    printed = '"' + odd.replace("\\", "\\\\").replace('"', '\\"') + '"'
    line = f"-A PREROUTING -m comment --comment {printed} -j LIQO-PREROUTING"
    cur = parse_save(f"*nat\n:PREROUTING ACCEPT [0:0]\n{line}\nCOMMIT\n")
    (rule,) = cur.table("nat")["PREROUTING"]
    assert rule[3] == odd
    assert render_delete("PREROUTING", rule) == line.replace("-A ", "-D ", 1)
    script = table_script("nat", cur.table("nat"), {})
    assert script is not None and line.replace("-A ", "-D ", 1) in script


@pytest.mark.parametrize(
    "text",
    [
        "-A LIQO-X -j DROP\nCOMMIT\n",  # no table
        "*nat\n-A\n-A \n:\n*\nCOMMIT\n",
        "*nat\n-A LIQO-X \"unterminated\nCOMMIT\n",
        "*nat\r\n:LIQO-X - [0:0]\r\n-A LIQO-X -j DROP\r\nCOMMIT\r\n",
        "\x00\x01\x02",
    ],
)
def test_garbage_never_raises(text: str) -> None:
    parse_save(text)
