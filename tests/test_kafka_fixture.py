"""The Kafka test fixtures themselves: a real round trip through the broker, topics
made as asked, and loud failures (never skips) when no broker is usable."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.kafka_support import (
    BOOTSTRAP_ENV,
    BROKER_SCRIPT,
    CHECK_TIMEOUT_ENV,
    TOPIC_MAX_MESSAGE_BYTES,
    SASL_MECHANISMS,
    SASL_USERNAME,
    BrokerUnavailable,
    TopicFactory,
    check_bootstrap,
    check_sasl_login,
    container_env,
    describe_topic_configs,
    require_bootstrap,
    run_async,
)

CONFTEST = Path(__file__).with_name("conftest.py")


def inner_session(pytester: pytest.Pytester) -> None:
    """A pytester session with this suite's conftest and markers."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini(
        "[pytest]\n"
        "markers =\n    kafka: needs a broker\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )


def dead_address() -> str:
    """A local port that nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.mark.kafka
async def test_produce_consume_round_trip(kafka_bootstrap: str, kafka_topics: TopicFactory) -> None:
    (topic,) = kafka_topics(2)
    # 5 MiB: above both Kafka's and aiokafka's 1 MiB defaults, so this also proves the
    # broker's and the topic's 16 MiB limits are in effect.
    big_frame = bytes(range(256)) * (5 * 4096)
    sent = []
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, max_request_size=TOPIC_MAX_MESSAGE_BYTES, acks="all"
    )
    await producer.start()
    try:
        for i in range(10):
            key = f"cam-{i % 5}".encode()
            value = big_frame if i == 4 else f"frame {i}".encode()
            headers = [("label", b"normal"), ("capture_ts", str(1_700_000_000 + i).encode())]
            meta = await producer.send_and_wait(topic, value, key=key, headers=headers)
            sent.append((meta.partition, meta.offset, key, value, tuple(headers)))
    finally:
        await producer.stop()

    received = []
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{topic}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=TOPIC_MAX_MESSAGE_BYTES,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while len(received) < len(sent) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                received += [
                    (r.partition, r.offset, r.key, r.value, tuple(r.headers)) for r in records
                ]
        await consumer.commit()
        partitions = consumer.partitions_for_topic(topic)
        committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await consumer.stop()

    assert sorted(received) == sorted(sent)
    # cam-0..3 hash to partition 1, cam-4 to 0 (murmur2, as the Java client does).
    assert partitions == {s[0] for s in sent} == {0, 1}
    # Same key, same partition: what per-camera ordering relies on.
    for key in {s[2] for s in sent}:
        assert len({s[0] for s in sent if s[2] == key}) == 1
    assert committed == {p: 1 + max(s[1] for s in sent if s[0] == p) for p in partitions}


@pytest.mark.kafka
def test_topic_factory_makes_topics_as_asked_and_deletes_them(kafka_bootstrap: str) -> None:
    factory = TopicFactory(kafka_bootstrap, owner="factory check/1")
    names = factory(3, 1, config={"retention.ms": "3600000"})
    assert len(set(names)) == 2 and all(n.startswith("padimd-factory-check-1-") for n in names)

    async def describe() -> dict[str, int]:
        """{topic: partition count} for every topic the broker has."""
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
        finally:
            await admin.close()

    topics = run_async(describe())
    assert [topics.get(n) for n in names] == [3, 1]
    configs = run_async(describe_topic_configs(kafka_bootstrap, names))
    for name in names:
        assert configs[name]["max.message.bytes"] == str(TOPIC_MAX_MESSAGE_BYTES)
        assert configs[name]["retention.ms"] == "3600000"

    factory.delete_all()
    deadline = time.monotonic() + 15
    while set(names) & set(run_async(describe())) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(names) & set(run_async(describe()))
    assert factory.created == []


def is_broker_process(pid: int) -> bool:
    try:  # a zombie's cmdline is empty, so it does not count
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


@pytest.mark.kafka
@pytest.mark.slow
def test_broker_script_start_status_stop(tmp_path: Path) -> None:
    """scripts/kafka-broker.sh as scripts/test.sh and developers use it."""

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(BROKER_SCRIPT), *args, "--dir", str(tmp_path)],
            capture_output=True, text=True, timeout=300, check=False,
        )

    assert script("status").returncode == 3
    started = script("start")
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip()
    try:
        assert (tmp_path / "bootstrap").read_text().strip() == bootstrap
        pid = int((tmp_path / "broker.pid").read_text())
        assert is_broker_process(pid)
        assert check_bootstrap(bootstrap, timeout_s=10) == [1]
        status = script("status")
        assert (status.returncode, status.stdout.strip()) == (0, bootstrap)
        again = script("start")  # already running: same broker, not a second one
        assert (again.returncode, again.stdout.strip()) == (0, bootstrap)
    finally:
        stopped = script("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not (tmp_path / "broker.pid").exists() and not (tmp_path / "bootstrap").exists()
    assert not is_broker_process(pid)
    assert script("status").returncode == 3
    assert "Kafka Server started" in (tmp_path / "broker.log").read_text()


@pytest.mark.kafka
@pytest.mark.slow
def test_broker_script_sasl_listener_checks_passwords_and_keeps_them_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """start --sasl: PLAIN and SCRAM-SHA-256 log in, a wrong password does not, and the
    password is only in the two mode-600 files, never in the output or the logs."""

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(BROKER_SCRIPT), *args, "--dir", str(tmp_path)],
            capture_output=True, text=True, timeout=300, check=False,
        )

    started = script("start", "--sasl")
    assert started.returncode == 0, started.stderr
    try:
        plaintext = started.stdout.strip()  # stdout is still just the PLAINTEXT address
        sasl = (tmp_path / "bootstrap_sasl").read_text().strip()
        password = (tmp_path / "sasl_password").read_text().strip()
        assert plaintext == (tmp_path / "bootstrap").read_text().strip() != sasl
        assert len(password) >= 16
        for name in ("sasl_password", "server.properties"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
        assert check_bootstrap(plaintext, timeout_s=10) == [1]
        for mechanism in SASL_MECHANISMS:
            check_sasl_login(sasl, mechanism, SASL_USERNAME, password)
            caplog.clear()
            with pytest.raises(BrokerUnavailable, match=f"with {mechanism} .*Unable to bootstrap"):
                check_sasl_login(sasl, mechanism, SASL_USERNAME, password + "x")
            # aiokafka only logs why it could not bootstrap: the broker said no.
            assert "SaslAuthenticationFailed" in caplog.text
    finally:
        stopped = script("stop")
    assert stopped.returncode == 0, stopped.stderr
    for output in (started.stdout, started.stderr, stopped.stdout, stopped.stderr,
                   (tmp_path / "broker.log").read_text(), (tmp_path / "format.log").read_text()):
        assert password not in output
    assert not (tmp_path / "sasl_password").exists()
    assert not (tmp_path / "bootstrap_sasl").exists()


def test_bootstrap_check_fails_loudly_for_a_dead_address() -> None:
    address = dead_address()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=f"no Kafka broker answered .*{address}"):
        check_bootstrap(address, timeout_s=2)
    assert time.monotonic() - started < 15  # bounded by its timeout, not hanging
    with pytest.raises(pytest.fail.Exception, match=f"from \\$X is not usable.*{address}"):
        require_bootstrap(address, source="$X", timeout_s=1)


def test_fixture_fails_and_never_skips_when_the_given_broker_is_dead(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = dead_address()
    monkeypatch.setenv(BOOTSTRAP_ENV, address)
    monkeypatch.setenv(CHECK_TIMEOUT_ENV, "1")
    inner_session(pytester)
    pytester.makepyfile(
        """
        def test_one(kafka_bootstrap):
            pass

        def test_two(kafka_topics):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([f"*{BOOTSTRAP_ENV}={address} is not usable*"])


@pytest.mark.parametrize("ci", ["true", None])
def test_ci_turns_skipped_kafka_tests_into_failures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    # A dead address keeps the inner session from starting a broker, should it try.
    monkeypatch.setenv(BOOTSTRAP_ENV, dead_address())
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    inner_session(pytester)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.kafka
        def test_kafka_skipped():
            pytest.skip("pretend the broker is missing")

        @pytest.mark.kafka
        @pytest.mark.xfail(reason="an expected failure is not a skip")
        def test_kafka_xfail():
            assert False

        def test_other_skipped():
            pytest.skip("not a Kafka test")

        # Uses the broker but forgot the marker: the conftest marks it.
        @pytest.mark.skip(reason="skipped before its fixtures")
        def test_unmarked_broker_user(kafka_bootstrap):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rA")
    if ci:
        # A skip during setup (the skip marker) turned failure counts as an error.
        result.assert_outcomes(failed=1, errors=1, skipped=1, xfailed=1)
        result.stdout.fnmatch_lines(["*CI=true and this test is marked 'kafka'*pretend the broker*"])
        result.stdout.fnmatch_lines(["*CI=true and this test is marked 'kafka'*before its fixtures*"])
    else:
        result.assert_outcomes(skipped=3, xfailed=1)


def test_default_timeout_applies_unless_configured(pytester: pytest.Pytester) -> None:
    inner_session(pytester)
    pytester.makepyfile(
        """
        import pytest

        def test_default(request):
            assert request.node.get_closest_marker("timeout").args == (300,)

        @pytest.mark.timeout(7)
        def test_own(request):
            assert request.node.get_closest_marker("timeout").args == (7,)
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    # With --timeout given, no marker is added and pytest-timeout uses the option.
    pytester.makepyfile(
        """
        def test_cli(request):
            assert request.node.get_closest_marker("timeout") is None
        """
    )
    pytester.runpytest("-p", "no:cacheprovider", "--timeout=30").assert_outcomes(passed=1)


def test_container_broker_gets_the_local_broker_settings() -> None:
    env = container_env()
    assert env["KAFKA_MESSAGE_MAX_BYTES"] == str(TOPIC_MAX_MESSAGE_BYTES)
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    # Listeners, roles and paths belong to the container image, not to us.
    assert not any(k.startswith(("KAFKA_LISTENERS", "KAFKA_LOG_DIRS", "KAFKA_CONTROLLER")) for k in env)


def test_run_async_works_inside_a_running_loop() -> None:
    async def outer() -> int:
        return run_async(asyncio.sleep(0, result=42))

    assert asyncio.run(outer()) == 42
