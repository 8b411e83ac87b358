"""The real Kafka broker behind the test suite, and topics on it.

The suite never mocks Kafka. The broker comes from, in this order:

1. ``$PADIMD_KAFKA_BOOTSTRAP`` ("host:port"): scripts/test.sh starts one broker for
   the whole run and sets it; CI or a developer can point it at any broker. It must
   answer a metadata request within ``$PADIMD_KAFKA_CHECK_TIMEOUT_S`` (20 s).
2. testcontainers' ``KafkaContainer``, when the optional ``docker`` extra is
   installed and a Docker engine answers.
3. The local KRaft broker of scripts/kafka-broker.sh, started in a temp directory.

A broker that is given but dead, or that cannot be started, fails every test that
needs it, with the reason and the broker log; it is never a skip.

Helpers here are synchronous so that sync tests, async tests and session fixtures can
all use them: the aiokafka calls run in a private event loop on a worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import subprocess
import time
import uuid
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError, for_code

REPO_ROOT = Path(__file__).resolve().parents[1]
BROKER_SCRIPT = REPO_ROOT / "scripts" / "kafka-broker.sh"
SERVER_PROPERTIES_TEMPLATE = REPO_ROOT / "tools" / "kafka" / "server.properties.in"

BOOTSTRAP_ENV = "PADIMD_KAFKA_BOOTSTRAP"
CHECK_TIMEOUT_ENV = "PADIMD_KAFKA_CHECK_TIMEOUT_S"
DEFAULT_CHECK_TIMEOUT_S = 20.0

# Matches the broker's message.max.bytes: camera frames can be several MiB.
TOPIC_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
TOPIC_READY_TIMEOUT_S = 30.0
# First start may resolve the jars with Maven before the broker's own start timeout.
BROKER_SCRIPT_TIMEOUT_S = 600.0
CONTAINER_IMAGE = "confluentinc/cp-kafka:7.6.0"

T = TypeVar("T")


class BrokerUnavailable(RuntimeError):
    """No Kafka broker could be reached or started; the message says why."""


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion in a fresh event loop on a worker thread.

    Works from plain code and from inside a running loop (an async test), where
    ``asyncio.run`` would refuse. The aiokafka clients live and die inside ``coro``.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def check_timeout_s() -> float:
    raw = os.environ.get(CHECK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_CHECK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise BrokerUnavailable(f"${CHECK_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise BrokerUnavailable(f"${CHECK_TIMEOUT_ENV}={raw!r} must be positive")
    return value


# --- is a broker there? -----------------------------------------------------------


async def _broker_ids(bootstrap: str, request_timeout_s: float) -> list[int]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="padimd-tests-check",
        request_timeout_ms=int(request_timeout_s * 1000),
    )
    try:
        await admin.start()  # a metadata request to the bootstrap address
        cluster = await admin.describe_cluster()  # a second one, through the cluster
        return sorted(broker["node_id"] for broker in cluster["brokers"])
    finally:
        await admin.close()


def check_bootstrap(bootstrap: str, timeout_s: float = DEFAULT_CHECK_TIMEOUT_S) -> list[int]:
    """Ids of the brokers that ``bootstrap`` lists in answer to a metadata request.

    Retries until ``timeout_s`` (a broker may still be finishing its start), then
    raises ``BrokerUnavailable`` naming the address and the last error.
    """
    deadline = time.monotonic() + timeout_s
    attempts = 0
    while True:
        attempts += 1
        remaining_s = max(deadline - time.monotonic(), 0.5)
        try:
            ids = run_async(
                asyncio.wait_for(
                    _broker_ids(bootstrap, request_timeout_s=min(remaining_s, 5.0)),
                    timeout=remaining_s,
                )
            )
        except Exception as exc:  # any failure is a reason to retry, then to report
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            if ids:
                return ids
            last_error = "the metadata answer listed no brokers"
        if time.monotonic() + 0.5 >= deadline:
            raise BrokerUnavailable(
                f"no Kafka broker answered a metadata request at {bootstrap!r} within "
                f"{timeout_s:g} s ({attempts} attempts; last error: {last_error})"
            )
        time.sleep(0.5)


async def _warm_up_coordinators(bootstrap: str, timeout_s: float) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="padimd-tests-check")
    try:
        await admin.start()
        deadline = time.monotonic() + timeout_s
        # 0: group coordinator (__consumer_offsets), 1: transactions (__transaction_state)
        for coordinator_type in (0, 1):
            while True:
                try:
                    await admin.find_coordinator("padimd-tests-warm-up", coordinator_type)
                    break
                except KafkaError as exc:
                    if not exc.retriable or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
    finally:
        await admin.close()


def warm_up_coordinators(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Have the broker create its group and transaction coordinator topics now.

    A fresh broker creates them on first use and answers "coordinator not available"
    meanwhile; doing it once per session keeps that (and aiokafka's ERROR log lines
    about it) out of the tests' first consumer group or transaction.
    """
    try:
        run_async(_warm_up_coordinators(bootstrap, timeout_s))
    except Exception as exc:
        raise BrokerUnavailable(
            f"the broker at {bootstrap!r} did not provide a group/transaction coordinator "
            f"within {timeout_s:g} s: {type(exc).__name__}: {exc}"
        ) from exc


def require_bootstrap(bootstrap: str, source: str, timeout_s: float | None = None) -> str:
    """``bootstrap`` when a broker answers there, else fail the test (never skip)."""
    try:
        check_bootstrap(bootstrap, check_timeout_s() if timeout_s is None else timeout_s)
        warm_up_coordinators(bootstrap)
    except BrokerUnavailable as exc:
        pytest.fail(f"Kafka broker from {source} is not usable: {exc}", pytrace=False)
    return bootstrap


# --- where a broker comes from ----------------------------------------------------


class SaslBroker(NamedTuple):
    """A broker started with ``kafka-broker.sh start --sasl`` (the kafka_sasl_broker fixture).

    ``plaintext_bootstrap`` needs no login (admin, test producers and readers);
    ``sasl_bootstrap`` is the SASL_PLAINTEXT listener, which accepts PLAIN and
    SCRAM-SHA-256 for ``username``/``password``. The repr hides the password.
    """

    plaintext_bootstrap: str
    sasl_bootstrap: str
    username: str
    password: str

    def __repr__(self) -> str:
        return (f"SaslBroker(plaintext_bootstrap={self.plaintext_bootstrap!r}, "
                f"sasl_bootstrap={self.sasl_bootstrap!r}, username={self.username!r}, "
                "password='***')")


SASL_USERNAME = "padimd"  # the fixed user of kafka-broker.sh --sasl
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256")


async def _sasl_login(bootstrap: str, mechanism: str, username: str, password: str) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="padimd-tests-check",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_plain_username=username,
        sasl_plain_password=password,
    )
    try:
        await admin.start()  # connect, authenticate, one metadata request
        await admin.describe_cluster()  # and a second one, through the cluster
    finally:
        await admin.close()


def check_sasl_login(
    bootstrap: str, mechanism: str, username: str, password: str, timeout_s: float = 20.0
) -> None:
    """Log in to ``bootstrap`` with ``mechanism``; ``BrokerUnavailable`` if that fails."""
    try:
        run_async(asyncio.wait_for(_sasl_login(bootstrap, mechanism, username, password),
                                   timeout=timeout_s))
    except Exception as exc:
        # aiokafka's messages name the mechanism and the user, never the password.
        raise BrokerUnavailable(
            f"SASL_PLAINTEXT login as {username!r} with {mechanism} at {bootstrap!r} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


class LocalBroker:
    """The single-node KRaft broker of scripts/kafka-broker.sh, in its own directory.

    ``sasl=True`` starts it with ``--sasl`` (see ``start_sasl``).
    """

    def __init__(self, directory: Path, sasl: bool = False) -> None:
        self.directory = directory
        self.sasl = sasl

    def describe(self) -> str:
        flag = " --sasl" if self.sasl else ""
        return f"scripts/kafka-broker.sh{flag} (dir {self.directory})"

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the broker's log, for failure messages."""
        log = self.directory / "broker.log"
        if not log.is_file():
            return f"(no {log})"
        text = log.read_text(errors="replace").splitlines()[-lines:]
        return f"----- last {len(text)} lines of {log} -----\n" + "\n".join(text)

    def _script(self, command: str) -> subprocess.CompletedProcess[str]:
        flags = ["--sasl"] if self.sasl and command == "start" else []
        try:
            return subprocess.run(
                ["bash", str(BROKER_SCRIPT), command, "--dir", str(self.directory), *flags],
                capture_output=True,
                text=True,
                timeout=BROKER_SCRIPT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerUnavailable(
                f"scripts/kafka-broker.sh {command} did not finish in "
                f"{BROKER_SCRIPT_TIMEOUT_S:g} s\n{exc.stderr or ''}"
            ) from exc

    def start(self) -> str:
        done = self._script("start")
        if done.returncode != 0:
            # The script's stderr already holds the broker log tail.
            raise BrokerUnavailable(
                f"scripts/kafka-broker.sh start failed (exit {done.returncode}):\n"
                f"{done.stderr}{done.stdout}"
            )
        return done.stdout.strip().splitlines()[-1]

    def start_sasl(self) -> SaslBroker:
        """Start (``sasl=True``), check both listeners and both mechanisms, describe it."""
        if not self.sasl:
            raise ValueError("start_sasl needs LocalBroker(..., sasl=True)")
        plaintext = self.start()
        try:
            sasl = (self.directory / "bootstrap_sasl").read_text().strip()
            password = (self.directory / "sasl_password").read_text().strip()
        except OSError as exc:
            raise BrokerUnavailable(f"the --sasl broker wrote no address or password: {exc}") from exc
        if not sasl or not password:
            raise BrokerUnavailable("the --sasl broker wrote an empty address or password")
        check_bootstrap(plaintext, check_timeout_s())
        warm_up_coordinators(plaintext)
        for mechanism in SASL_MECHANISMS:
            check_sasl_login(sasl, mechanism, SASL_USERNAME, password)
        return SaslBroker(plaintext, sasl, SASL_USERNAME, password)

    def stop(self) -> None:
        done = self._script("stop")
        if done.returncode != 0:
            raise BrokerUnavailable(
                f"scripts/kafka-broker.sh stop failed (exit {done.returncode}):\n{done.stderr}"
            )


def container_env() -> dict[str, str]:
    """The local broker's settings as cp-kafka image variables (one source of truth).

    cp-kafka maps ``KAFKA_FOO_BAR`` to ``foo.bar``. Listener, role and path settings
    are the container's own business and are left out.
    """
    own = re.compile(r"^(process\.roles|node\.id|controller\.|listeners|advertised\.|"
                     r"inter\.broker\.listener|listener\.security|log\.dirs)")
    env = {}
    for line in SERVER_PROPERTIES_TEMPLATE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if own.match(key) or "@" in value:
            continue
        env["KAFKA_" + key.upper().replace(".", "_")] = value
    return env


def docker_engine_answers() -> bool:
    """True when testcontainers (the optional ``docker`` extra) and a Docker engine are there."""
    try:
        import docker  # installed with testcontainers
        import testcontainers.kafka  # noqa: F401
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, no permission, engine down: all mean "no Docker"
        return False


class ContainerBroker:
    """testcontainers' KafkaContainer (KRaft), configured like the local broker."""

    def __init__(self) -> None:
        self._container: Any = None

    def describe(self) -> str:
        return f"testcontainers KafkaContainer ({CONTAINER_IMAGE})"

    def start(self) -> str:
        from testcontainers.kafka import KafkaContainer

        container = KafkaContainer(CONTAINER_IMAGE).with_kraft()
        for key, value in container_env().items():
            container.with_env(key, value)
        try:
            container.start()
        except Exception as exc:
            raise BrokerUnavailable(f"{self.describe()} did not start: {exc}") from exc
        self._container = container
        return container.get_bootstrap_server()

    def stop(self) -> None:
        if self._container is not None:
            self._container.stop()
            self._container = None


# --- topics -----------------------------------------------------------------------


def _raise_for_topic_errors(action: str, errors: list[tuple[str, int]]) -> None:
    failed = [f"{topic}: {for_code(code).__name__}" for topic, code in errors if code != 0]
    if failed:
        raise BrokerUnavailable(f"could not {action} topics: " + ", ".join(failed))


async def _create_topics(bootstrap: str, wanted: dict[str, int], config: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="padimd-tests-topics")
    try:
        await admin.start()
        response = await admin.create_topics(
            [NewTopic(name, n, 1, topic_configs=config) for name, n in wanted.items()]
        )
        _raise_for_topic_errors("create", [(e[0], e[1]) for e in response.topic_errors])
        # Creation returns once the controller committed it; wait until every
        # partition has a leader so that the first produce does not race it.
        deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
        while True:
            topics = await admin.describe_topics(list(wanted))
            ready = {
                t["topic"]
                for t in topics
                if t["error_code"] == 0
                and len(t["partitions"]) == wanted[t["topic"]]
                and all(p["error_code"] == 0 and p["leader"] >= 0 for p in t["partitions"])
            }
            if ready == set(wanted):
                break
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"topics {sorted(set(wanted) - ready)} had no leaders after "
                    f"{TOPIC_READY_TIMEOUT_S:g} s"
                )
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    # The broker answers metadata from a cache it updates just before it takes up
    # leadership, so a produce right now can still get NotLeaderForPartition. Listing
    # offsets is served by the partition itself, and aiokafka retries it until it is.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id="padimd-tests-topics")
    await consumer.start()
    try:
        await consumer.end_offsets(
            [TopicPartition(name, p) for name, n in wanted.items() for p in range(n)]
        )
    finally:
        await consumer.stop()


async def _delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="padimd-tests-topics")
    try:
        await admin.start()
        response = await admin.delete_topics(names)
        # A test may have deleted its topic itself: that is not an error.
        errors = [
            (topic, code)
            for topic, code in response.topic_error_codes
            if code != UnknownTopicOrPartitionError.errno
        ]
        _raise_for_topic_errors("delete", errors)
    finally:
        await admin.close()


async def describe_topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    """``{topic: {config name: value}}`` as the broker reports it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="padimd-tests-topics")
    try:
        await admin.start()
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
        result: dict[str, dict[str, str]] = {}
        for response in responses:
            for resource in response.resources:
                _, _, _, topic, entries = resource[:5]
                result[topic] = {entry[0]: entry[1] for entry in entries}
        return result
    finally:
        await admin.close()


class TopicFactory:
    """Creates uniquely named topics for one test and deletes them afterwards.

    ``names = factory(4, 1)`` creates two topics, with 4 and 1 partitions, replication
    factor 1 and ``max.message.bytes`` 16 MiB (plus ``config``), and returns their names
    once every partition has a leader. ``delete_all()`` removes what it created.
    """

    def __init__(self, bootstrap: str, owner: str) -> None:
        self.bootstrap = bootstrap
        # Topic names allow [a-zA-Z0-9._-]; keep the test's name to read broker logs.
        self._prefix = "padimd-" + re.sub(r"[^a-zA-Z0-9._-]+", "-", owner).strip("-")[:80]
        self.created: list[str] = []

    def __call__(self, *partitions: int, config: Mapping[str, str] | None = None) -> list[str]:
        if not partitions or any(n < 1 for n in partitions):
            raise ValueError(f"give one partition count >= 1 per topic, got {partitions}")
        wanted = {f"{self._prefix}-{uuid.uuid4().hex[:10]}": n for n in partitions}
        topic_config = {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES), **(config or {})}
        self.created.extend(wanted)  # deleted afterwards even if creation half failed
        run_async(_create_topics(self.bootstrap, wanted, topic_config))
        return list(wanted)

    def delete_all(self) -> None:
        if self.created:
            names, self.created = self.created, []
            run_async(_delete_topics(self.bootstrap, names))
