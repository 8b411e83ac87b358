"""Logging setup for the padimd service: plain text or JSON lines, secrets redacted.

The library (`padim`) never configures logging; the service does it once, here, at
start-up. Every handler gets a `SecretRedactor`, so a secret value that slips into a
message or an exception text (a broker error echoing a SASL config, say) is masked
before it reaches a log line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Literal, TextIO

LogFormat = Literal["plain", "json"]

_REDACTED = "***"
# Attributes every LogRecord has; anything else was passed through `extra=` and is
# emitted as a JSON field.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
) | {"message", "asctime", "taskName"}


class SecretRedactor(logging.Filter):
    """Replace any registered secret value in a record's rendered text with `***`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Short strings would mask innocent words; real secrets are longer than this.
        # Longest first, so that a spelling is never half-masked by a shorter one.
        self._secrets = tuple(sorted(
            {form for s in secrets if s and len(s) >= 4 for form in _spellings(s)},
            key=len, reverse=True,
        ))

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        text = record.getMessage()
        redacted = self._redact(text)
        if redacted != text:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now so the redacted text is what handlers print.
            record.exc_text = self._redact(
                logging.Formatter().formatException(record.exc_info)
            )
            record.exc_info = None
        return True

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text


def _spellings(secret: str) -> set[str]:
    """The ways ``secret`` can appear in a rendered log line.

    As is, and inside the repr of a str or of its UTF-8 bytes, where a backslash, a
    quote or a non-ASCII character is escaped: aiokafka's DEBUG log of a SASL PLAIN
    login shows the request's bytes, ``b'\\x00user\\x00password'``. repr escapes a
    quote only when the text around it holds both kinds, so both spellings are kept.
    """
    forms = {secret}
    encoded = secret.encode("utf-8", "surrogateescape")
    # With both quote kinds in it, repr uses '...' and escapes every ' inside:
    # repr('"' + x + "'") is '"<x escaped>\'' (and b'"<x escaped>\'' for bytes).
    for escaped in (repr('"' + secret + "'")[2:-3], repr(b'"' + encoded + b"'")[3:-3]):
        forms.add(escaped)
        forms.add(escaped.replace("\\'", "'"))  # the same where ' is not escaped
    return forms


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value if _is_json_scalar(value) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def _is_json_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def setup_logging(
    level: str = "INFO",
    fmt: LogFormat = "plain",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Configure the root logger once for the service and return the installed handler.

    Replaces handlers installed by an earlier call (tests call this repeatedly).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(SecretRedactor(secrets))
    handler.set_name("padimd")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "padimd"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiokafka logs every reconnect attempt at INFO/ERROR; keep its chatter to warnings
    # unless the operator asked for debug output.
    if root.level > logging.DEBUG:
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    return handler
