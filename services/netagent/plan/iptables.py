"""Iptables scripts as data (pure): the Liqo-owned part of `iptables-legacy-save` output parsed into
a `natrules.Ruleset`, and the `iptables-legacy-restore --noflush` script that turns one table's
current state into the desired one, writing only the difference. `services.netagent.kernel.iptables`
runs them.

Only `LIQO-*` chains and, in other chains, rules jumping to a `LIQO-*` chain are ever read or written.

The parser never raises, whatever the kernel holds (the text comes decoded with `surrogateescape`,
so undecodable bytes survive as lone surrogates and go back out as the same bytes). A rule we could
not have written (anything but printable ASCII, quotes or backslashes) in a `LIQO-*` chain is never
deleted by content: its chain is rewritten. A foreign rule jumping into a `LIQO-*` chain is deleted
by content, escaped exactly as iptables-save printed it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

from services.netagent.plan.natrules import TABLES, Args, Ruleset, is_liqo_chain, jump_target

__all__ = [
    "Chains", "IptablesError", "parse_save", "render_delete", "render_rule", "table_order", "table_script",
]

# Above this many single-rule edits (or a quarter of the chain) rewriting the chain is cheaper:
# libiptc inserts and deletes by walking the chain, so many of them are quadratic.
MIN_EDIT_BUDGET = 64
_TOKEN_RE = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_ESCAPE_RE = re.compile(r"\\(.)")

Chains = Mapping[str, tuple[Args, ...]]


class IptablesError(Exception):
    """Rendering, reading or writing iptables failed; nothing was changed by the failed write
    (UNAVAILABLE)."""


def _split(line: str) -> list[str]:
    if '"' not in line:
        return line.split()
    return [
        _ESCAPE_RE.sub(r"\1", m.group(1)) if m.group(1) is not None else m.group(2)
        for m in _TOKEN_RE.finditer(line)
    ]


def _owned_head(rules: Sequence[Args]) -> tuple[Args, ...]:
    """A foreign chain's rules down to its last jump into a LIQO chain (empty if there is none)."""
    for i in range(len(rules) - 1, -1, -1):
        target = jump_target(rules[i])
        if target is not None and is_liqo_chain(target):
            return tuple(rules[: i + 1])
    return ()


def parse_save(text: str) -> Ruleset:
    """The Liqo-owned part of `iptables-legacy-save` output (see `Ruleset`)."""
    tables: dict[str, dict[str, tuple[Args, ...]]] = {}
    liqo: dict[str, list[Args]] = {}
    foreign: dict[str, list[Args]] = {}
    table = ""
    # Lines end at "\n" only: str.splitlines() also breaks at \x0b, \x1c, \x85, U+2028...,
    # which a comment written by somebody else may hold.
    for line in text.split("\n"):
        if not line or line[0] == "#":
            continue
        if line[0] == "*":
            table, liqo, foreign = line[1:].strip(), {}, {}
        elif not table:
            continue  # nothing outside a table is ours
        elif line[0] == ":":
            name = line[1:].split(" ", 1)[0]
            if is_liqo_chain(name):
                liqo[name] = []
        elif line.startswith("-A "):
            words = _split(line)
            if len(words) < 2:
                continue
            chain, rule = words[1], tuple(words[2:])
            if is_liqo_chain(chain):
                liqo.setdefault(chain, []).append(rule)
            else:
                foreign.setdefault(chain, []).append(rule)
        elif line.strip() == "COMMIT" and table:
            owned = {name: tuple(rules) for name, rules in liqo.items()}
            for name, rules in foreign.items():
                head = _owned_head(rules)
                if head:
                    owned[name] = head
            if owned:
                tables[table] = owned
    return Ruleset(tables)


def _plain(rule: Args) -> bool:
    """True for a rule we could have written: printable ASCII, no quotes or backslashes."""
    return all(a.isascii() and a.isprintable() and '"' not in a and "\\" not in a for a in rule)


def _quote_exact(arg: str) -> str:
    """An argument read back from iptables-save, quoted and escaped the way it printed it (so that a
    `-D` of somebody else's odd rule names exactly that rule)."""
    if arg and arg.isascii() and arg.isprintable() and not any(c in arg for c in ' "\\'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_delete(chain: str, rule: Args) -> str:
    """`-D chain rule` for a rule as read back, whatever it holds (`render_rule` refuses quotes)."""
    if _plain(rule):
        return render_rule(chain, rule, "-D")
    return f"-D {chain} " + " ".join(map(_quote_exact, rule))


def _quote(arg: str) -> str:
    if any(c in arg for c in '"\\\n\r'):
        raise IptablesError(f"cannot render argument {arg!r}: quotes, backslashes and newlines are refused")
    if arg == "" or any(c.isspace() for c in arg):
        return f'"{arg}"'
    return arg


def _join(rule: Args) -> str:
    line = " ".join(rule)
    # Fast path (10 000-rule scripts): no argument needs quoting or is refused.
    if (
        line.count(" ") == len(rule) - 1
        and "" not in rule
        and '"' not in line
        and "\\" not in line
        and "\t" not in line
        and "\n" not in line
        and "\r" not in line
    ):
        return line
    return " ".join(map(_quote, rule))


def render_rule(chain: str, rule: Args, op: str = "-A", position: int | None = None) -> str:
    """One restore line, e.g. `-A LIQO-MSS -o liqo.tunnel ...` or `-I FORWARD 1 -j LIQO-FORWARD`."""
    if position is None:
        return f"{op} {chain} {_join(rule)}"
    return f"{op} {chain} {position} {_join(rule)}"


def _append_block(chain: str, rules: Sequence[Args]) -> str:
    """`-A chain rule` lines for a whole chain. A 10 000-entry map is rendered on every rewrite, so
    the common case (nothing to quote or refuse) is checked once on the block, not per argument."""
    block = "\n".join([f"-A {chain} " + " ".join(rule) for rule in rules])
    spaces = sum(map(len, rules)) + len(rules)  # "-A", chain, args: one space before each but "-A"
    if (
        block.count(" ") == spaces
        and block.count("\n") == len(rules) - 1
        and not any(bad in block for bad in ('"', "\\", "\t", "\r", "  ", " \n"))
        and not block.endswith(" ")
    ):
        return block
    return "\n".join(render_rule(chain, rule) for rule in rules)


def _chain_edits(chain: str, cur: tuple[Args, ...], des: tuple[Args, ...]) -> list[str] | None:
    """Few in-place edits turning `cur` into `des`, or None when rewriting the chain is cheaper.

    Deletions name the rule, not its number: with a stale view of the chain the restore then fails
    (and the caller re-reads) instead of deleting somebody else's rule."""
    budget = max(MIN_EDIT_BUDGET, len(des) // 4)
    if abs(len(des) - len(cur)) > budget:
        return None
    # Only the part between the common head and tail can differ (one pass, no hashing).
    n = min(len(cur), len(des))
    p = 0
    while p < n and cur[p] == des[p]:
        p += 1
    t = 0
    while t < n - p and cur[len(cur) - 1 - t] == des[len(des) - 1 - t]:
        t += 1
    a, b = cur[p : len(cur) - t], des[p : len(des) - t]
    a_set, b_set = set(a), set(b)
    gone = [r for r in a if r not in b_set]
    new = [j for j, r in enumerate(b) if r not in a_set]
    if len(gone) + len(new) > budget:
        return None
    if len(a_set) != len(a) or len(b_set) != len(b):
        return None  # duplicates: deleting by content would be ambiguous
    in_order = [r for r in a if r in b_set] == [r for r in b if r in a_set]
    doomed = gone if in_order else a
    if not all(map(_plain, doomed)):
        return None  # not ours (odd bytes, quotes): rewrite the chain rather than name the rule
    # A rule deleted by content must be the only one like it in the whole chain.
    if (any(cur.count(r) > 1 for r in doomed) if len(doomed) <= 8 else len(set(cur)) != len(cur)):
        return None
    if in_order:
        # The rules kept stay in order: delete the gone ones, then insert each new one at its final
        # position, top-down, so that everything above it is already in place.
        return [render_rule(chain, r, "-D") for r in gone] + [
            render_rule(chain, b[j], "-I", p + j + 1) for j in new
        ]
    # Kept rules were reordered: a sequence diff, applied bottom-up so that the positions above each
    # edit are still those of `cur`.
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    if sum((i2 - i1) + (j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal") > budget:
        return None
    lines: list[str] = []
    for tag, i1, i2, j1, j2 in reversed(ops):
        if tag in ("delete", "replace"):
            lines += [render_rule(chain, rule, "-D") for rule in a[i1:i2]]
        if tag in ("insert", "replace"):
            lines += [render_rule(chain, rule, "-I", p + i1 + 1 + k) for k, rule in enumerate(b[j1:j2])]
    return lines


def table_script(table: str, current: Chains, desired: Chains) -> str | None:
    """The restore script (for `--noflush`) turning the owned state `current` of one table into
    `desired`, or None when they are equal."""
    declare: list[str] = []  # create new chains, flush rewritten and doomed ones
    edits: list[str] = []
    remove: list[str] = []  # -X last: every reference to a doomed chain is gone by then
    for chain in sorted(current.keys() | desired.keys()):
        cur, des = current.get(chain), desired.get(chain)
        if cur == des:
            continue
        if not is_liqo_chain(chain):
            for rule in des or ():
                target = jump_target(rule)
                if target is None or not is_liqo_chain(target):
                    raise ValueError(f"{table}/{chain}: only jumps to LIQO chains may be owned, not {rule}")
            # Remove every Liqo jump, then put the desired ones on top; others' rules stay.
            edits += [render_delete(chain, r) for r in cur or () if is_liqo_chain(jump_target(r) or "")]
            edits += [render_rule(chain, r, "-I", i + 1) for i, r in enumerate(des or ())]
        elif des is None:
            declare.append(f"-F {chain}")
            remove.append(f"-X {chain}")
        else:
            lines = None if cur is None else _chain_edits(chain, cur, des)
            if lines is None:  # new or rewritten: ":CHAIN" creates it or, with --noflush, flushes it
                declare.append(f":{chain} - [0:0]")
                if des:
                    edits.append(_append_block(chain, des))
            else:
                edits += lines
    if not (declare or edits or remove):
        return None
    return "\n".join([f"*{table}", *declare, *edits, *remove, "COMMIT", ""])


def table_order(table: str) -> int:
    """Tables are written in this order (filter, mangle, nat; any other last)."""
    return TABLES.index(table) if table in TABLES else len(TABLES)
