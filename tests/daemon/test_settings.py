"""daemon.settings: TOML file + PADIMD_* environment, frozen, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from daemon.settings import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own PADIMD_* variables must not leak into these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("PADIMD_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "padimd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\nbootstrap_servers = "broker:29092"\n[model]\nsize = [96, 128]\n')
    settings = load_settings(path)
    assert settings.kafka.bootstrap_servers == "broker:29092"
    assert settings.model.size == (96, 128)


def test_env_overrides_file_and_keeps_the_rest_of_the_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[kafka]\nbootstrap_servers = "file:9092"\ngroup_id = "from-file"\n')
    monkeypatch.setenv("PADIMD_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    settings = load_settings(path)
    assert settings.kafka.bootstrap_servers == "env:9092"
    assert settings.kafka.group_id == "from-file"


def test_env_list_accepts_commas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PADIMD_KAFKA__INPUT_TOPICS", "cams-a, cams-b")
    assert load_settings(write(tmp_path, "")).kafka.input_topics == ("cams-a", "cams-b")


def test_bad_choice_names_key_value_and_choices(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\nsasl_mechanism = "FOO"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "kafka.sasl_mechanism: 'FOO' is not one of" in message
    assert "SCRAM-SHA-512" in message


def test_bad_env_value_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PADIMD_HTTP__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"http\.port: 'not-a-port'"):
        load_settings(write(tmp_path, ""))


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\nbootstrap_server = "typo:9092"\n')
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server: unknown key"):
        load_settings(path)


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scorring: unknown key"):
        load_settings(write(tmp_path, "[scorring]\nheatmaps = true\n"))


def test_misspelt_secret_key_value_is_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\nsasl_pasword = "hunter2-secret"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "hunter2-secret" not in str(info.value)
    assert "kafka.sasl_pasword" in str(info.value)


def test_password_is_secret(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\n'
                           'sasl_username = "u"\nsasl_password = "hunter2-secret"\n')
    settings = load_settings(path)
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2-secret"
    assert "hunter2-secret" not in repr(settings)


def test_sasl_without_credentials_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\n')
    with pytest.raises(ConfigError, match=r"kafka: .*needs sasl_username, sasl_password"):
        load_settings(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[kafka\n"))


def test_model_size_must_fit_the_backbone_grid(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.size: .*multiples of 16"):
        load_settings(write(tmp_path, "[model]\nsize = [100, 100]\n"))


def test_fixed_threshold_needs_a_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fixed_value"):
        load_settings(write(tmp_path, '[threshold]\nmode = "fixed"\n'))


def test_camera_override_merges_over_global_policy(tmp_path: Path) -> None:
    path = write(tmp_path, '[threshold]\nquantile = 0.99\n'
                           '[threshold.cameras."dock-2"]\nmode = "fixed"\nfixed_value = 7.5\n')
    settings = load_settings(path)
    assert settings.threshold.policy_for("dock-2").fixed_value == 7.5
    assert settings.threshold.policy_for("dock-2").mode == "fixed"
    assert settings.threshold.policy_for("other").quantile == 0.99
    assert settings.threshold.policy_for("other").mode == "quantile"


def test_settings_are_frozen() -> None:
    settings = load_settings(None)
    with pytest.raises(ValidationError):
        settings.http.port = 1  # type: ignore[misc]


def test_example_config_loads_and_targets_a_local_broker() -> None:
    settings = load_settings(REPO / "config.example.toml")
    assert settings.kafka.bootstrap_servers == "localhost:9092"
    assert isinstance(settings, Settings)


def _documented_keys(text: str) -> set[str]:
    """``section.key`` for every key set or shown commented out in the example file."""
    import re

    keys: set[str] = set()
    section = ""
    for line in text.splitlines():
        header = re.match(r"^#?\s*\[([a-z_]+)(?:\.[a-z_]+\.\"[^\"]+\")?\]\s*$", line)
        if header:
            section = header.group(1) + (".cameras.*" if ".cameras." in line else "")
            continue
        key = re.match(r"^#?\s*([a-z_]+)\s*=", line)
        if key and section:
            keys.add(f"{section}.{key.group(1)}")
    return keys


def test_example_config_documents_every_key() -> None:
    from daemon.settings import CameraThresholdOverride

    expected = {
        f"{section}.{key}"
        for section, field in Settings.model_fields.items()
        for key in field.annotation.model_fields  # type: ignore[union-attr]
        if key != "cameras"
    }
    expected |= {f"threshold.cameras.*.{key}" for key in CameraThresholdOverride.model_fields}
    documented = _documented_keys((REPO / "config.example.toml").read_text(encoding="utf-8"))
    assert expected - documented == set()
    assert documented - expected == set()


def test_empty_control_topic_disables_control(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(write(tmp_path, '[kafka]\ncontrol_topic = ""\n')).kafka.control_topic is None
    monkeypatch.setenv("PADIMD_KAFKA__CONTROL_TOPIC", "")
    assert load_settings(write(tmp_path, "")).kafka.control_topic is None


def test_scoring_before_more_frames_than_channels_draws_an_advisory(tmp_path: Path) -> None:
    path = write(tmp_path, "[model]\nnum_embeddings = 100\nmin_frames_before_scoring = 50\n")
    (advice,) = load_settings(path).advisories()
    assert "model.min_frames_before_scoring (50)" in advice


def test_default_settings_draw_no_advisory(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")).advisories() == []
