"""Shared structured logging: one JSON object per line, and no private key ever in the output."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import Any

import pytest

from services.common.logging import REDACTED, redact_text, redact_value, setup_logging

PRIVATE = base64.b64encode(os.urandom(32)).decode()  # a WireGuard key's shape: 44 characters
PRIVATE_HEX = os.urandom(32).hex()  # as wireguard-go's UAPI writes it
PUBLIC = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    setup_logging("netagent", "info")

    def read() -> tuple[str, list[dict[str, Any]]]:
        err = capsys.readouterr().err
        return err, [json.loads(line) for line in err.splitlines()]

    yield read
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_one_json_object_per_line(logs: Any) -> None:
    log = logging.getLogger("services.netagent.agent")
    extra = {"cluster_id": "c-1", "routes": 3, "ip": IPv4Address("10.0.0.1")}
    log.info("tunnel ensured: %s", "c-1", extra=extra)
    log.debug("hidden at info")
    log.warning("slow apply", extra={"seconds": 0.25})
    raw, records = logs()
    assert len(raw.splitlines()) == 2
    first, second = records
    assert first["msg"] == "tunnel ensured: c-1"
    assert (first["level"], first["component"]) == ("info", "netagent")
    assert first["logger"] == "services.netagent.agent"
    assert (first["cluster_id"], first["routes"], first["ip"]) == ("c-1", 3, "10.0.0.1")
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2024-01-01T00:00:00.000Z")
    assert second["level"] == "warning" and second["seconds"] == 0.25


def test_setup_is_idempotent_and_validates_the_level(logs: Any) -> None:
    setup_logging("netagent", "DEBUG")
    logging.getLogger("x").debug("once")
    _, records = logs()
    assert [r["msg"] for r in records] == ["once"]
    with pytest.raises(ValueError):
        setup_logging("netagent", "verbose")


def test_private_keys_never_reach_the_output(logs: Any) -> None:
    log = logging.getLogger("services.netagent.server")
    log.info("configure device", extra={"private_key": PRIVATE, "public_key": PUBLIC, "listen_port": 5871})
    log.info("secret", extra={"privateKey": PRIVATE})
    log.info("secret", extra={"wg_private": PRIVATE, "private_key_hex": PRIVATE_HEX})
    log.info("nested", extra={"request": {"spec": {"privateKey": PRIVATE, "publicKey": PUBLIC}}})
    log.info("nested list", extra={"private_keys": [PRIVATE, PRIVATE]})
    log.info("formatted private_key=%s", PRIVATE)
    log.info("uapi set", extra={"body": f"set=1\nprivate_key={PRIVATE_HEX}\nlisten_port=5871\n"})
    log.info('json body {"privateKey": "%s"}', PRIVATE)
    log.info("bytes", extra={"payload": f"private-key: {PRIVATE}".encode()})
    try:
        raise ValueError(f"wireguard-go refused private_key={PRIVATE_HEX}")
    except ValueError:
        log.exception("apply failed")
    raw, records = logs()
    assert PRIVATE not in raw and PRIVATE_HEX not in raw
    assert PRIVATE.replace("/", "\\/") not in raw and PRIVATE[:20] not in raw
    assert len(records) == 10
    first = records[0]
    assert first["private_key"] == REDACTED
    assert first["public_key"] == PUBLIC  # public keys stay useful in logs
    assert records[1]["privateKey"] == REDACTED
    assert records[2]["wg_private"] == REDACTED and records[2]["private_key_hex"] == REDACTED
    assert records[3]["request"] == {"spec": {"privateKey": REDACTED, "publicKey": PUBLIC}}
    assert records[4]["private_keys"] == [REDACTED, REDACTED]
    assert records[6]["body"] == f"set=1\nprivate_key={REDACTED}\nlisten_port=5871\n"
    assert records[7]["msg"] == f'json body {{"privateKey": "{REDACTED}"}}'
    assert records[8]["payload"] == f"private-key: {REDACTED}"
    assert records[5]["msg"] == f"formatted private_key={REDACTED}"
    assert "exc" in records[9] and REDACTED in records[9]["exc"]


@pytest.mark.parametrize(
    ("name", "value", "want"),
    [
        ("private_key", PRIVATE, REDACTED),
        ("privateKey", "not even a key", REDACTED),  # a known field is redacted whatever it holds
        ("PRIVATE-KEY", PRIVATE, REDACTED),
        ("my_private_thing", PRIVATE, REDACTED),
        ("my_private_thing", "short", "short"),
        ("public_key", PUBLIC, PUBLIC),
        ("cluster_id", "c-1", "c-1"),
        ("private_key", None, None),
        ("port", 5871, 5871),
        ("cfg", {"PrivateKey": PRIVATE, "mtu": 1340}, {"PrivateKey": REDACTED, "mtu": 1340}),
        ("cmd", f"wg set liqo.tunnel private-key {PRIVATE}", f"wg set liqo.tunnel private-key {REDACTED}"),
    ],
)
def test_redact_value(name: str, value: object, want: object) -> None:
    assert redact_value(name, value) == want


def test_redact_text_leaves_public_keys() -> None:
    text = f"peer public_key={PUBLIC} private key: {PRIVATE}"
    assert redact_text(text) == f"peer public_key={PUBLIC} private key: {REDACTED}"
