"""`padimd --config FILE` as a process: configuration errors and a SIGTERM drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.daemon.integration.support import (
    REPO_ROOT,
    DaemonProcess,
    committed_offset,
    config,
    frame,
    free_port,
    make_topics,
    normal_frames,
    produce,
    to_toml,
)

FRAMES = 5


def test_invalid_config_exits_2_with_one_message_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka]\nmax_message_bytes = -5\n")
    done = subprocess.run([sys.executable, "-m", "daemon", "--config", str(bad)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "kafka.max_message_bytes" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.kafka
async def test_sigterm_exits_0_after_committing_every_processed_frame(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    port = free_port()
    cfg_path = tmp_path / "padimd.toml"
    # No periodic checkpoint during the test: only the drain can commit.
    cfg_path.write_text(to_toml(config(kafka_bootstrap, topics, tmp_path / "snap",
                                       group_id=topics.input, http_port=port,
                                       snapshot_interval_s=3600.0)))
    daemon = DaemonProcess(cfg_path, port, tmp_path / "padimd.log")
    try:
        daemon.start()
        await daemon.wait_ready()
        await produce(kafka_bootstrap, topics.input,
                      [frame(v, "cam-t", "normal") for v in normal_frames(FRAMES)])
        await daemon.wait_sample("padimd_frames_learned_total", {"camera": "cam-t"},
                                 lambda v: v == FRAMES)
        exit_code = daemon.terminate()
    finally:
        daemon.ensure_stopped()
    assert exit_code == 0, daemon.log()
    assert await committed_offset(kafka_bootstrap, topics.input, topics.input) == FRAMES


@pytest.mark.kafka
async def test_second_signal_during_the_drain_exits_at_once(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    port = free_port()
    cfg_path = tmp_path / "padimd.toml"
    cfg_path.write_text(to_toml(config(kafka_bootstrap, topics, tmp_path / "snap",
                                       group_id=topics.input, http_port=port)))
    daemon = DaemonProcess(cfg_path, port, tmp_path / "padimd.log")
    try:
        daemon.start()
        await daemon.wait_ready()
        # Two different signals: two SIGTERMs sent back to back may merge into one.
        # Pending signals are delivered lowest number first, so either may be "second".
        os.kill(daemon.pid, signal.SIGTERM)
        os.kill(daemon.pid, signal.SIGINT)
        exit_code = daemon.terminate()
    finally:
        daemon.ensure_stopped()
    assert exit_code in (128 + signal.SIGINT, 128 + signal.SIGTERM), daemon.log()
    assert "drained" not in daemon.log()
