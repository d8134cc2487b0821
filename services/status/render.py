"""Rendering the reports: text tables (one per cluster, then the diagnosis list) or one JSON document.
Pure: strings in, strings out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from services.status.model import ERROR, ClusterReport, Finding, LeaseRow
from services.status.report import format_bytes, format_duration

NONE = "-"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = []
    for row in [list(header), *[list(r) for r in rows]]:
        lines.append(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def _opt(v: Any, fmt: Any = str) -> str:
    return NONE if v is None or v == "" else str(fmt(v))


def _lease(lease: LeaseRow | None) -> str:
    if lease is None:
        return "  Lease: none (no replica ever led)"
    held = f", held for {format_duration(lease.held_for_s)}" if lease.held_for_s is not None else ""
    renewed = (f", renewed {format_duration(lease.renewed_ago_s)} ago"
               if lease.renewed_ago_s is not None else "")
    duration = f", duration {lease.duration_s}s" if lease.duration_s else ""
    return (f"  Lease {lease.name}: holder {lease.holder or '(none)'}{held}{renewed}{duration}, "
            f"transitions {lease.transitions}")


def render_cluster(r: ClusterReport) -> list[str]:
    out = [f"cluster {r.name} (namespace {r.namespace})"]
    out += [f"  ! {e}" for e in r.read_errors]
    out += table(
        ["REPLICA", "NODE", "IP", "LABEL", "AGENT", "EPOCH", "MTU", "LEASE"],
        [[p.pod, _opt(p.node), _opt(p.ip), _opt(p.label), _opt(p.agent_role), _opt(p.epoch), _opt(p.mtu),
          "holder" if p.lease_holder else ""] for p in r.replicas])
    out.append(_lease(r.lease))
    if r.tunnels:
        out += table(
            ["TUNNELENDPOINT", "CLUSTER", "ENDPOINT", "STATUS", "LATENCY", "HANDSHAKE", "RX", "TX", "NAT"],
            [[t.name, t.cluster, t.endpoint, _opt(t.status), _opt(t.latency),
              _opt(t.handshake_age_s, lambda s: f"{format_duration(s)} ago"),
              _opt(t.rx_bytes, format_bytes), _opt(t.tx_bytes, format_bytes),
              str(t.nat_entries) if t.agent_nat_entries in (None, t.nat_entries)
              else f"{t.nat_entries} (agent {t.agent_nat_entries})"] for t in r.tunnels])
    else:
        out.append("  TunnelEndpoints: none")
    return out


def render_findings(findings: Sequence[Finding]) -> list[str]:
    if not findings:
        return ["diagnosis: healthy, nothing to fix"]
    errors = sum(f.severity == ERROR for f in findings)
    out = [f"diagnosis: {errors} error(s), {len(findings) - errors} warning(s)"]
    for f in findings:
        out.append(f"  {f.severity.upper():7} [{f.cluster}] {f.code}: {f.message}")
        out.append(f"          fix: {f.fix}")
    return out


def render_text(reports: Sequence[ClusterReport], findings: Sequence[Finding]) -> str:
    lines: list[str] = []
    for r in reports:
        lines += [*render_cluster(r), ""]
    lines += render_findings(findings)
    return "\n".join(lines) + "\n"


def render_json(reports: Sequence[ClusterReport], findings: Sequence[Finding]) -> str:
    doc = {
        "healthy": not any(f.severity == ERROR for f in findings),
        "clusters": [asdict(r) for r in reports],
        "findings": [asdict(f) for f in findings],
    }
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"
