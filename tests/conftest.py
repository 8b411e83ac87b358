"""Suite-wide fixtures and hooks: the real Kafka broker and its topics, CI strictness,
and a default per-test timeout. Broker selection is explained in kafka_support.py."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest

from tests.kafka_support import (
    BOOTSTRAP_ENV,
    BrokerUnavailable,
    ContainerBroker,
    LocalBroker,
    SaslBroker,
    TopicFactory,
    docker_engine_answers,
    require_bootstrap,
)

# pytester runs small pytest sessions inside a test: the tests of this conftest's own
# hooks and fixtures use it (tests/test_kafka_fixture.py).
pytest_plugins = ["pytester"]

# Generous: a hung broker call or deadlock fails one test instead of eating CI's budget.
DEFAULT_TIMEOUT_S = 300


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """"host:port" of a real Kafka broker that answered a metadata request.

    pytest caches a session fixture's failure, so an unusable broker costs one check
    and then fails (not skips) every test that asks for it.
    """
    given = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if given:
        yield require_bootstrap(given, source=f"${BOOTSTRAP_ENV}={given}")
        return

    broker: ContainerBroker | LocalBroker
    if docker_engine_answers():
        broker = ContainerBroker()
    else:
        broker = LocalBroker(tmp_path_factory.mktemp("kafka"))
    try:
        bootstrap = broker.start()
    except BrokerUnavailable as exc:
        pytest.fail(f"could not start a Kafka broker with {broker.describe()}:\n{exc}", pytrace=False)
    try:
        yield require_bootstrap(bootstrap, source=broker.describe())
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    """A broker of its own with a SASL_PLAINTEXT listener (PLAIN and SCRAM-SHA-256).

    Always started here with ``scripts/kafka-broker.sh start --sasl``, whatever
    ``$PADIMD_KAFKA_BOOTSTRAP`` says: the shared broker has no SASL listener. Yields
    ``(plaintext_bootstrap, sasl_bootstrap, username, password)``; fails (never skips)
    with the broker log when it cannot start or refuses the test user; stopped at the
    end of the session.
    """
    broker = LocalBroker(tmp_path_factory.mktemp("kafka-sasl"), sasl=True)
    try:
        try:
            info = broker.start_sasl()
        except BrokerUnavailable as exc:
            pytest.fail(
                f"could not start a SASL Kafka broker with {broker.describe()}:\n{exc}\n"
                f"{broker.log_tail()}",
                pytrace=False,
            )
        yield info
    finally:
        broker.stop()


@pytest.fixture
def kafka_topics(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    """Factory of fresh topics for this test, deleted after it: ``inp, out = kafka_topics(4, 1)``."""
    factory = TopicFactory(kafka_bootstrap, owner=request.node.name)
    yield factory
    factory.delete_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI, a skipped test marked ``kafka`` is a failure: CI must exercise the broker."""
    report = yield
    if (
        in_ci()
        and report.skipped
        and not hasattr(report, "wasxfail")  # xfail is an expectation, not a skip
        and item.get_closest_marker("kafka") is not None
    ):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true and this test is marked 'kafka', but it was skipped ({reason}). "
            "In CI every Kafka test must run against the real broker."
        )
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the broker ``kafka``; give every test a timeout.

    The marker is added even where a test forgot it, so that ``-m "not kafka"`` and
    the CI rule above see every broker test. The timeout is DEFAULT_TIMEOUT_S unless
    --timeout, $PYTEST_TIMEOUT, the ini option or the test's own timeout marker says
    otherwise (--timeout=0 disables it, e.g. for debugging).
    """
    broker_fixtures = {"kafka_bootstrap", "kafka_sasl_broker"}
    for item in items:
        uses_broker = not broker_fixtures.isdisjoint(getattr(item, "fixturenames", ()))
        if uses_broker and not item.get_closest_marker("kafka"):
            item.add_marker(pytest.mark.kafka)

    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError("pytest-timeout is not installed: run scripts/setup.sh")
    configured = (
        config.getoption("timeout", None) is not None
        or os.environ.get("PYTEST_TIMEOUT", "").strip()
        or config.getini("timeout")
    )
    if configured:
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT_S))
