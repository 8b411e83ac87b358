"""SASL against a real broker: padimd logs in with PLAIN and SCRAM-SHA-256 and serves
frames, and a wrong password stops it with a clear error and without leaking secrets.

The broker is the `kafka_sasl_broker` fixture's own (scripts/kafka-broker.sh --sasl):
the service talks only to its SASL_PLAINTEXT listener, while the test's producers,
readers and topic admin use its PLAINTEXT listener. The password reaches the service
the way a deployment gives it: PADIMD_KAFKA__SASL_PASSWORD over a TOML file without it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.settings import load_settings
from tests.daemon.integration.support import (
    MIN_FRAMES_BEFORE_SCORING,
    REPO_ROOT,
    config,
    defective_frames,
    event_ids_cover,
    events_of,
    frame,
    ids_of,
    make_topics,
    normal_frames,
    produce,
    read_until,
    running,
    to_toml,
)
from tests.kafka_support import SaslBroker, TopicFactory

pytestmark = pytest.mark.kafka

PASSWORD_ENV = "PADIMD_KAFKA__SASL_PASSWORD"
TRAIN = MIN_FRAMES_BEFORE_SCORING + 2
CAMERA = "cam-sasl"
# A wrong password must end the service: loading the tiny model takes seconds, the
# broker's refusal well under one. Far below this, yet never an endless retry loop.
FAIL_WITHIN_S = 90.0


@pytest.fixture
def sasl_topics(kafka_sasl_broker: SaslBroker, request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    """Fresh topics on the SASL broker (made through its PLAINTEXT listener)."""
    factory = TopicFactory(kafka_sasl_broker.plaintext_bootstrap, owner=request.node.name)
    yield factory
    factory.delete_all()


def sasl_config_file(broker: SaslBroker, topics, tmp_path: Path, mechanism: str,
                     log_level: str = "INFO") -> Path:
    """A TOML config that points padimd at the SASL listener; no password in it."""
    cfg = config(
        broker.sasl_bootstrap, topics, tmp_path / "snap", group_id=topics.input,
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_username": broker.username,
        },
        logging={"level": log_level},
    )
    path = tmp_path / "padimd.toml"
    path.write_text(to_toml(cfg))
    assert broker.password not in path.read_text()
    return path


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
async def test_service_logs_in_with_sasl_and_serves_frames(
    mechanism: str,
    kafka_sasl_broker: SaslBroker,
    sasl_topics: TopicFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = kafka_sasl_broker
    plaintext = broker.plaintext_bootstrap
    topics = make_topics(sasl_topics)
    config_path = sasl_config_file(broker, topics, tmp_path, mechanism)
    monkeypatch.setenv(PASSWORD_ENV, broker.password)
    settings = load_settings(config_path)
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == broker.password
    assert settings.kafka.bootstrap_servers == broker.sasl_bootstrap

    # The service's own level (INFO), aiokafka included. At DEBUG aiokafka logs each
    # request, and a PLAIN SaslAuthenticate request holds the password: that is left
    # to the service's log redactor, checked in the wrong-password test below.
    caplog.set_level(logging.INFO)
    async with running(settings) as svc:
        await produce(plaintext, topics.input,
                      [frame(v, CAMERA, "normal") for v in normal_frames(TRAIN)])
        [ack] = await produce(plaintext, topics.input, [frame(defective_frames(1)[0], CAMERA)])
        records = await read_until(plaintext, topics.output, event_ids_cover(set(ids_of([ack]))))
        learned = svc.sample("padimd_frames_learned_total", camera=CAMERA)
    assert svc.exit_code == 0
    assert learned == TRAIN
    [event] = [e for e in events_of(records) if e["event_id"] == ids_of([ack])[0]]
    assert event["camera"] == CAMERA
    assert event["model"]["frames_learned"] == TRAIN
    assert caplog.records, "nothing was logged: the leak check below would be vacuous"
    assert broker.password not in caplog.text


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_wrong_password_exits_with_an_authentication_error(
    mechanism: str, kafka_sasl_broker: SaslBroker, sasl_topics: TopicFactory, tmp_path: Path
) -> None:
    """`padimd --config` (a real process) exits 1 at once; the log says why, no secret.

    At DEBUG, where aiokafka logs every request (a PLAIN login request carries the
    password), so that the leak check covers the most talkative configuration.
    """
    broker = kafka_sasl_broker
    topics = make_topics(sasl_topics)
    config_path = sasl_config_file(broker, topics, tmp_path, mechanism, log_level="DEBUG")
    wrong = "wrong-" + broker.password[::-1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADIMD_")}
    env.update({"PYTHONPATH": str(REPO_ROOT), PASSWORD_ENV: wrong})
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "daemon", "--config", str(config_path)],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=FAIL_WITHIN_S, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"padimd still running {FAIL_WITHIN_S:g} s after a refused login:\n"
                    f"{exc.stdout}{exc.stderr}")
    took_s = time.monotonic() - started
    log = done.stdout + done.stderr
    assert done.returncode == 1, f"exit {done.returncode} after {took_s:.1f} s:\n{log}"
    assert "SaslAuthenticationFailed" in log, log
    assert "padimd failed" in log, log
    assert broker.password not in log
    assert wrong not in log
    if mechanism == "PLAIN":
        # The login request was logged, with the password masked by the redactor.
        assert "SaslAuthenticateRequest" in log and "***" in log, log
