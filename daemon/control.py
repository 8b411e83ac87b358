"""Operator commands from the control topic: parse, validate, apply, acknowledge.

A command is JSON ``{"command": "reset"|"freeze"|"unfreeze"|"set_threshold",
"camera": "...", "threshold": 1.5, "request_id": "..."}``. Every command gets an ack on
the output topic (header ``type: control_ack``) with ``status`` ``ok`` or ``error`` and a
``reason``; a malformed command or an unknown camera is an error ack, never a crash.
``set_threshold`` with ``"threshold": null`` removes the operator's override.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from daemon.models import ModelRegistry
from daemon.records import OutboundMessage

CommandName = Literal["reset", "freeze", "unfreeze", "set_threshold"]
ErrorReason = Literal["invalid_command", "unknown_camera"]
MAX_COMMAND_BYTES = 64 * 1024


class ControlCommand(BaseModel):
    """One validated operator command."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: CommandName
    camera: str = Field(min_length=1, max_length=256)
    threshold: float | None = None
    request_id: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _threshold_fits_command(self) -> ControlCommand:
        if self.command == "set_threshold":
            if "threshold" not in self.model_fields_set:
                raise ValueError("set_threshold needs a 'threshold' (a number, or null to clear)")
            if self.threshold is not None and not math.isfinite(self.threshold):
                raise ValueError("threshold must be a finite number")
        elif self.threshold is not None:
            raise ValueError(f"{self.command} takes no 'threshold'")
        return self


@dataclass(frozen=True, slots=True)
class ControlError:
    """Why a control record is not a valid command (a value, not an exception)."""

    detail: str
    request_id: str | None  # recovered from the JSON when possible, for the ack


class ControlAck(BaseModel):
    """The reply to one command."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["control_ack"] = "control_ack"
    request_id: str | None
    command: str | None
    camera: str | None
    status: Literal["ok", "error"]
    reason: ErrorReason | None = None
    detail: str | None = None
    cameras_affected: int = 0  # models changed (one per partition the camera is seen on)


def parse_command(value: bytes | None) -> ControlCommand | ControlError:
    """The command in a control record's value, or why it is not one."""
    if not value:
        return ControlError("empty control record", None)
    if len(value) > MAX_COMMAND_BYTES:
        return ControlError(f"control record is {len(value)} bytes, at most {MAX_COMMAND_BYTES}",
                            None)
    try:
        raw = json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return ControlError(f"not JSON: {exc}", None)
    request_id = raw.get("request_id") if isinstance(raw, dict) else None
    request_id = request_id if isinstance(request_id, str) else None
    try:
        return ControlCommand.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'command'}: "
            f"{str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors())
        return ControlError(problems, request_id)


def apply_command(command: ControlCommand, registry: ModelRegistry) -> ControlAck:
    """Carry out ``command`` on every model of its camera (call on the model worker)."""
    states = registry.by_camera(command.camera)
    if not states:
        return ControlAck(request_id=command.request_id, command=command.command,
                          camera=command.camera, status="error", reason="unknown_camera",
                          detail="this instance owns no camera with that id")
    for state in states:
        if command.command == "reset":
            state.reset()
        elif command.command == "freeze":
            state.frozen = True
        elif command.command == "unfreeze":
            state.frozen = False
        else:
            state.threshold.set_override(command.threshold)
        state.dirty = True  # the change must survive a restart
    return ControlAck(request_id=command.request_id, command=command.command,
                      camera=command.camera, status="ok", cameras_affected=len(states))


def error_ack(error: ControlError) -> ControlAck:
    """The ack for a control record that is not a valid command."""
    return ControlAck(request_id=error.request_id, command=None, camera=None, status="error",
                      reason="invalid_command", detail=error.detail[:1000])


def ack_message(ack: ControlAck, topic: str) -> OutboundMessage:
    """The Kafka message carrying ``ack``."""
    key = ack.camera.encode("utf-8") if ack.camera is not None else None
    return OutboundMessage(
        topic=topic, key=key, value=ack.model_dump_json().encode("utf-8"),
        headers=(("type", b"control_ack"), ("content-type", b"application/json")),
        kind="control_ack", capture_time_s=None)
