"""The daemon's configuration: one frozen object read from a TOML file and the environment.

Every key of the file can be overridden by an environment variable named
``PADIMD_<SECTION>__<KEY>`` (e.g. ``PADIMD_KAFKA__BOOTSTRAP_SERVERS``); the environment
wins over the file, the file over the defaults. Unknown keys are errors, so a typo is
reported instead of silently ignored. ``load_settings`` turns every problem into one
``ConfigError`` whose message names the key path and the offending value.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

ENV_PREFIX = "PADIMD_"
ENV_NESTED_DELIMITER = "__"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
ImageFormat = Literal["JPEG", "PNG", "WEBP"]
ThresholdMode = Literal["fixed", "quantile"]

# Keys whose values must never be echoed in an error message or a log line.
_SECRET_KEY_PARTS = ("password", "secret", "token")


class ConfigError(ValueError):
    """The configuration file or environment is invalid; the message says where and why."""


def _split_list(value: object) -> object:
    """Accept ``a,b`` or a JSON list from the environment, and a list from TOML."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list: {exc.msg}") from exc
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return value


StrList = Annotated[tuple[str, ...], NoDecode]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """Connection to the broker and the topics the daemon reads and writes."""

    bootstrap_servers: str = "localhost:9092"
    input_topics: StrList = ("camera-frames",)
    output_topic: str = "padimd-events"
    dead_letter_topic: str = "padimd-dead-letters"
    control_topic: str | None = "padimd-control"
    group_id: str = "padimd"
    group_instance_id: str | None = None  # static membership: no rebalance on restart
    client_id: str = "padimd"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # Producer max_request_size and consumer max_partition_fetch_bytes: a frame larger
    # than the fetch size would be skipped by the client, so both follow this one key.
    max_message_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_records: int = Field(default=64, gt=0)
    session_timeout_ms: int = Field(default=45_000, gt=0)

    @field_validator("input_topics", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("control_topic", "group_instance_id", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # TOML has no null: "" is how a file (or PADIMD_KAFKA__CONTROL_TOPIC=) turns it off.
        return None if value == "" else value

    @field_validator("input_topics")
    @classmethod
    def _at_least_one_topic(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one input topic is required")
        return value

    @model_validator(mode="after")
    def _security_is_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            missing = [
                name
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    f"security_protocol {self.security_protocol} needs {', '.join(missing)}"
                )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile must be given together")
        return self


class InputSettings(_Section):
    """How input records are read and which ones are refused."""

    camera_header: str | None = None  # None or "": the record key is the camera id
    label_header: str = "label"
    capture_time_header: str = "capture_ts"
    max_image_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    # Decompression-bomb guard, checked from the image header before decoding pixels.
    max_pixels: int = Field(default=40_000_000, gt=0)
    allowed_formats: Annotated[tuple[ImageFormat, ...], NoDecode] = ("JPEG", "PNG", "WEBP")
    # Streams without operator labels can still train: treat unlabelled frames as normal.
    unlabelled_as_normal: bool = False

    @field_validator("camera_header", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("allowed_formats", mode="before")
    @classmethod
    def _split_upper(cls, value: object) -> object:
        value = _split_list(value)
        if isinstance(value, (list, tuple)):
            return tuple(v.upper() if isinstance(v, str) else v for v in value)
        return value


class ModelSettings(_Section):
    """The PaDiM model every camera gets (one backbone shared by all cameras)."""

    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"  # "none": random init, for tests only
    # (height, width) frames are resized to; multiples of 16 so the backbone's grids align
    size: tuple[int, int] = (224, 224)
    num_embeddings: int = Field(default=100, gt=0)
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    # CPU threads for torch; 0 keeps torch's default (one per core). On a host shared
    # with other busy processes fewer threads are steadier: a batched op waits for
    # its slowest thread, and the covariance factorisation stalls badly (bench/README.md).
    threads: int = Field(default=0, ge=0)
    epsilon: float = Field(default=0.01, gt=0)
    half_life: float | None = Field(default=None, gt=0)  # in frames; None: never forget
    # The covariance needs N >= 2, but is rank-deficient until N > num_embeddings:
    # scores taken earlier run several times too high (see Settings.advisories).
    min_frames_before_scoring: int = Field(default=200, ge=2)

    @field_validator("size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 32 or any(side % 16 for side in value):
            raise ValueError(f"sides must be multiples of 16 and at least 32, got {list(value)}")
        return value


class ScoringSettings(_Section):
    """Batching and what the events carry."""

    max_batch_size: int = Field(default=32, gt=0)
    max_batch_wait_ms: int = Field(default=50, ge=0)
    emit_all_frames: bool = False  # False: only anomalies become events
    heatmaps: bool = False
    region_min_area_px: int = Field(default=16, ge=1)  # at model size


class ThresholdPolicy(_Section):
    """How a camera's decision threshold is chosen."""

    mode: ThresholdMode = "quantile"
    fixed_value: float | None = None
    quantile: float = Field(default=0.995, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _fixed_needs_value(self) -> ThresholdPolicy:
        if self.mode == "fixed" and (self.fixed_value is None or not math.isfinite(self.fixed_value)):
            raise ValueError("mode 'fixed' needs a finite fixed_value")
        return self


class CameraThresholdOverride(_Section):
    """Per-camera override of the threshold policy; unset keys follow the global one."""

    mode: ThresholdMode | None = None
    fixed_value: float | None = None
    quantile: float | None = Field(default=None, gt=0.0, lt=1.0)


class ThresholdSettings(ThresholdPolicy):
    """The global threshold policy, learned window bounds and per-camera overrides."""

    min_normal_scores: int = Field(default=200, ge=1)
    # Short enough that early scores of a young model (which run high) roll out soon.
    window: int = Field(default=500, ge=1)
    cameras: dict[str, CameraThresholdOverride] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _window_holds_minimum(self) -> ThresholdSettings:
        if self.window < self.min_normal_scores:
            raise ValueError(
                f"window ({self.window}) must be >= min_normal_scores ({self.min_normal_scores})"
            )
        for camera in self.cameras:
            try:
                self.policy_for(camera)
            except ValidationError as exc:
                raise ValueError(f"cameras.{camera}: {exc.errors()[0]['msg']}") from exc
        return self

    def policy_for(self, camera: str) -> ThresholdPolicy:
        """The effective policy of ``camera``: its override merged over the global one."""
        base = ThresholdPolicy(mode=self.mode, fixed_value=self.fixed_value, quantile=self.quantile)
        override = self.cameras.get(camera)
        if override is None:
            return base
        changes = override.model_dump(exclude_none=True)
        return ThresholdPolicy.model_validate({**base.model_dump(), **changes})


class SnapshotSettings(_Section):
    """Where and how often camera models are written to disk."""

    dir: Path = Path(".padimd-state/snapshots")
    interval_s: float = Field(default=60.0, gt=0)
    retention: int = Field(default=3, ge=1)


class HttpSettings(_Section):
    """The /metrics, /livez and /readyz endpoint."""

    host: str = "0.0.0.0"
    port: int = Field(default=9108, ge=0, le=65535)  # 0: an ephemeral port


class LoggingSettings(_Section):
    """Log line format and level."""

    format: Literal["plain", "json"] = "plain"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class ShutdownSettings(_Section):
    """Bounded drain on SIGTERM (keep below Kubernetes' terminationGracePeriodSeconds)."""

    grace_s: float = Field(default=25.0, gt=0)


_toml_path: ContextVar[Path | None] = ContextVar("padimd_toml_path", default=None)


class Settings(BaseSettings):
    """The whole configuration. Build it with ``load_settings``; it is immutable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    kafka: KafkaSettings = KafkaSettings()
    input: InputSettings = InputSettings()
    model: ModelSettings = ModelSettings()
    scoring: ScoringSettings = ScoringSettings()
    threshold: ThresholdSettings = ThresholdSettings()
    snapshots: SnapshotSettings = SnapshotSettings()
    http: HttpSettings = HttpSettings()
    logging: LoggingSettings = LoggingSettings()
    shutdown: ShutdownSettings = ShutdownSettings()

    def advisories(self) -> list[str]:
        """Valid but doubtful choices, for a warning at start-up."""
        advice = []
        model = self.model
        if model.min_frames_before_scoring <= model.num_embeddings:
            advice.append(
                f"model.min_frames_before_scoring ({model.min_frames_before_scoring}) <= "
                f"model.num_embeddings ({model.num_embeddings}): each covariance is rank-deficient "
                "until a camera has learned more frames than channels, so early scores (and a "
                "threshold learned from them) run high; use at least 2x num_embeddings"
            )
        return advice

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: explicit arguments, then the environment, then the file.
        # No .env file: the environment is the deployment's job, not a file beside us.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


@contextmanager
def _reading(path: Path | None) -> Iterator[None]:
    token = _toml_path.set(path)
    try:
        yield
    finally:
        _toml_path.reset(token)


def load_settings(path: str | Path | None) -> Settings:
    """Read ``path`` (TOML; None: defaults only) and the ``PADIMD_*`` environment.

    Raises ConfigError naming the key path and value of the first problems found.
    """
    toml_path = None if path is None else Path(path)
    if toml_path is not None:
        if not toml_path.is_file():
            raise ConfigError(f"config file {str(toml_path)!r} does not exist or is not a file")
        try:
            tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(toml_path)!r} is not valid TOML: {exc}") from exc
    try:
        with _reading(toml_path):
            return Settings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:
        # Raised for an environment value that is not valid JSON for a nested field.
        raise ConfigError(f"environment: {exc}") from None


def _describe(exc: ValidationError) -> str:
    """One line per problem: ``key.path: 'value' why``; secrets are never echoed."""
    lines = [_describe_one(error) for error in exc.errors()]
    return "invalid configuration: " + "; ".join(lines)


def _describe_one(error: Any) -> str:
    loc = ".".join(str(part) for part in error["loc"]) or "<root>"
    kind = error["type"]
    if kind == "extra_forbidden":
        # Do not echo the value: a misspelt password key would leak the password.
        return f"{loc}: unknown key (check its spelling against config.example.toml)"
    shown = "<hidden>" if _is_secret(loc) else repr(error.get("input"))
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{loc}: {shown} is not one of {expected}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        return f"{loc}: required key is missing"
    if isinstance(error.get("input"), dict):
        return f"{loc}: {message}"  # a whole section: the message names the keys
    return f"{loc}: {shown} {message}"


def _is_secret(loc: str) -> bool:
    lowered = loc.lower()
    return any(part in lowered for part in _SECRET_KEY_PARTS)
