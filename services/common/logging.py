"""Structured logs shared by every process: one JSON object per line on stderr, private keys redacted.

`log.info("tunnel ensured", extra={"cluster_id": cid})` prints
`{"ts": "...Z", "level": "info", "component": "netagent", "logger": "...", "msg": "tunnel ensured",
"cluster_id": "..."}`. The redaction filter sits on the handler, so it sees every record from every
logger: a WireGuard private key never reaches the output, whatever field or message carried it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["REDACTED", "JsonFormatter", "RedactPrivateKeys", "redact_text", "redact_value", "setup_logging"]

REDACTED = "<redacted>"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}
# A WireGuard key: 32 bytes as base64 (44 characters, one '=') or as hex (wireguard-go's UAPI).
_KEY_VALUE = r"(?:[A-Za-z0-9+/]{43}=|[0-9a-fA-F]{64})"
_KEY = re.compile(_KEY_VALUE)
# "private_key=...", "privateKey: ...", '"private-key": "..."', "private key ..." inside free text.
_IN_TEXT = re.compile(r"(private[ _-]?key[\"']?\s*[:= ]\s*[\"']?)" + _KEY_VALUE, re.IGNORECASE)
# The record's own attributes; everything else on a record came from `extra`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_MAX_DEPTH = 8


def _is_key_field(name: str) -> bool:
    """`private_key`, `privateKey` and their spellings (private-key, PRIVATE_KEY, ...)."""
    return re.sub(r"[^a-z]", "", name.lower()) == "privatekey"


def redact_text(text: str) -> str:
    return _IN_TEXT.sub(lambda m: m.group(1) + REDACTED, text)


def redact_value(name: str, value: Any, depth: int = 0) -> Any:
    """The value logged under `name`, with private keys replaced by REDACTED (recursing into
    dicts, lists and tuples)."""
    if _is_key_field(name) and value is not None and value != "":
        return REDACTED
    if isinstance(value, str):
        if "private" in name.lower() and _KEY.fullmatch(value.strip()):
            return REDACTED
        return redact_text(value)
    if depth >= _MAX_DEPTH:
        return value if isinstance(value, (int, float, bool, type(None))) else REDACTED
    if isinstance(value, dict):
        return {k: redact_value(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(name, v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return redact_value(name, value.decode("utf-8", "replace"), depth + 1)
    return value


class RedactPrivateKeys(logging.Filter):
    """Rewrites the record in place: message, `extra` fields and exception text."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what can be shown
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact_text(message), None
        for name, value in list(vars(record).items()):
            if name not in _STANDARD and not name.startswith("_"):
                setattr(record, name, redact_value(name, value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_") and name not in out:
                out[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the sys.stderr of the moment, so a replaced stderr (tests, daemonizing) still works."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(component: str, level: str = "info") -> None:
    """Routes every logger to one JSON line per record on stderr; idempotent (replaces its own
    handler, leaves handlers others installed, such as pytest's)."""
    try:
        threshold = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level {level!r}: one of {', '.join(LEVELS)}") from None
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter(component))
    handler.addFilter(RedactPrivateKeys())
    handler.set_name("liqo-json")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "liqo-json"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(threshold)
    # Chatty libraries: their retries are reported once by our own code.
    logging.getLogger("urllib3").setLevel(max(threshold, logging.WARNING))
