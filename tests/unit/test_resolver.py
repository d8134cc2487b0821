"""Endpoint resolution keeps the current address while DNS still answers with it."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address
from typing import Any

import pytest

from services.netagent.errors import Transient
from services.netagent.kernel.resolver import resolve_endpoint

A, B, C = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"), IPv4Address("192.0.2.3")


def answers(monkeypatch: pytest.MonkeyPatch, *ips: IPv4Address) -> None:
    def fake(host: str, port: Any, family: int = 0, type: int = 0) -> list[Any]:
        assert family == socket.AF_INET
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (str(ip), 0)) for ip in ips]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.mark.parametrize(
    ("dns", "current", "want"),
    [
        ((A, B), None, A),  # first answer when nothing is programmed yet
        ((A, B), B, B),  # round robin reordered: keep the programmed address
        ((A, C), B, A),  # the programmed address left the answer set: move
    ],
)
def test_dns_names(
    monkeypatch: pytest.MonkeyPatch,
    dns: tuple[IPv4Address, ...],
    current: IPv4Address | None,
    want: IPv4Address,
) -> None:
    answers(monkeypatch, *dns)
    assert resolve_endpoint("gw.example.com", current) == want


def test_literal_is_not_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    answers(monkeypatch)  # would fail the lookup
    assert resolve_endpoint("192.0.2.9", A) == IPv4Address("192.0.2.9")


def test_failures_are_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    answers(monkeypatch)
    with pytest.raises(Transient, match="no IPv4 address"):
        resolve_endpoint("gw.example.com", None)

    def broken(*_: Any, **__: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", broken)
    with pytest.raises(Transient, match="does not resolve"):
        resolve_endpoint("gw.example.com", A)
