"""How the service turns settings into Kafka client options and log lines (no broker)."""

from __future__ import annotations

import io
import json
import logging
import ssl

from daemon.app import edge_config
from daemon.kafka import client_security_kwargs
from daemon.logs import setup_logging
from daemon.settings import Settings

PASSWORD = "s3cret-scram-password"


def _sasl_settings(protocol: str) -> Settings:
    return Settings(kafka={"security_protocol": protocol, "sasl_mechanism": "SCRAM-SHA-512",
                           "sasl_username": "padimd", "sasl_password": PASSWORD})


def test_scram_settings_reach_the_client_with_the_password_unwrapped() -> None:
    kwargs = client_security_kwargs(edge_config(_sasl_settings("SASL_PLAINTEXT")))
    assert kwargs == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                      "sasl_plain_username": "padimd", "sasl_plain_password": PASSWORD}


def test_sasl_ssl_builds_a_verifying_ssl_context() -> None:
    kwargs = client_security_kwargs(edge_config(_sasl_settings("SASL_SSL")))
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_edge_config_repr_does_not_show_the_password() -> None:
    assert PASSWORD not in repr(edge_config(_sasl_settings("SASL_SSL")))


def test_json_log_lines_redact_registered_secrets() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = setup_logging("INFO", "json", secrets=[PASSWORD], stream=stream)
    try:
        logging.getLogger("padimd.test").warning("broker said: bad password %s", PASSWORD)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["msg"] == "broker said: bad password ***"
    assert line["level"] == "WARNING"


def test_escaped_spellings_of_a_secret_are_redacted_too() -> None:
    # aiokafka at DEBUG logs a SASL PLAIN login request with its bytes, where repr
    # escapes a backslash, a quote or a non-ASCII character of the password.
    password = "pä\\ss\"wo'rd-1"
    stream = io.StringIO()
    root, aiokafka = logging.getLogger(), logging.getLogger("aiokafka")
    levels = root.level, aiokafka.level
    aiokafka.setLevel(logging.NOTSET)  # an INFO setup_logging before set it to WARNING
    handler = setup_logging("DEBUG", "plain", secrets=[password], stream=stream)
    try:
        log = logging.getLogger("aiokafka.conn")
        log.debug("Request 3: %s", ("SaslAuthenticateRequest_v1", b"\x00padimd\x00" + password.encode()))
        log.debug("config %r", {"sasl_plain_password": password})
        log.debug("plain %s", password)
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        aiokafka.setLevel(levels[1])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert all("***" in line for line in lines), lines
    for fragment in ("pä", "rd-1", "xc3"):  # pieces only the password holds
        assert not any(fragment in line for line in lines), (fragment, lines)
