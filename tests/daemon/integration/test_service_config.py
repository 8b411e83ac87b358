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
