"""Gradient-training plumbing shared by the learned variants (SVDD, NVP).

Both train a small network on patch embeddings with Adam, a fixed number of
steps per incoming batch, each step on a random subset of that batch's
patches. Resuming such training exactly needs more than the weights: Adam's
moment estimates and step counts, and the state of the random generator that
picks the patch subsets. This module turns both into flat tensors plus
JSON-able metadata (the shape persist.py stores) and back.
"""

from __future__ import annotations

from typing import Any

import torch

from padim.errors import PersistError

# Keys of the flat tensor dict; "<i>" is the parameter's index in the optimizer.
_OPTIM_PREFIX = "optim."


def sample_rows(num_rows: int, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``min(num_samples, num_rows)`` distinct rows, drawn with ``generator``.

    Without replacement, so that a step never sees a patch twice and a batch
    smaller than the sample size is used whole (in a random order).
    """
    return torch.randperm(num_rows, generator=generator)[:num_samples]


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and JSON-able metadata.

    Tensors are keyed ``optim.<param index>.<name>`` (e.g. ``optim.3.exp_avg``);
    the metadata keeps the param groups (lr, betas, ...) and any non-tensor
    per-parameter values.
    """
    tensors: dict[str, torch.Tensor] = {}
    for index, param_state in optimizer.state_dict()["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM_PREFIX}{index}.{name}"] = value.detach().cpu().contiguous().clone()
    return tensors, optimizer_meta(optimizer)


def optimizer_meta(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The JSON-able part of :func:`optimizer_to_flat`: param groups and non-tensor values."""
    state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state["state"].items():
        for name, value in param_state.items():
            if not isinstance(value, torch.Tensor):
                scalars.setdefault(str(index), {})[name] = value
    groups = [_jsonable_group(group) for group in state["param_groups"]]
    return {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> None:
    """Restore ``optimizer`` from :func:`optimizer_to_flat` output.

    Raises :class:`PersistError` when the saved state does not fit the
    optimizer's parameters (a file for another architecture, or a corrupt one).
    """
    try:
        groups = [_group_from_json(group) for group in meta["param_groups"]]
        per_param: dict[int, dict[str, Any]] = {}
        for index, values in meta.get("scalars", {}).items():
            per_param.setdefault(int(index), {}).update(values)
        for key, value in tensors.items():
            if not key.startswith(_OPTIM_PREFIX):
                continue
            index, name = key[len(_OPTIM_PREFIX) :].split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
    except (KeyError, TypeError, ValueError) as exc:
        raise PersistError(f"optimizer state is malformed: {exc}") from exc
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in per_param.items():
        if not 0 <= index < len(params):
            raise PersistError(f"optimizer state names parameter {index}, the model has {len(params)}")
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != params[index].shape:
                raise PersistError(
                    f"optimizer state {name!r} of parameter {index} has shape {tuple(value.shape)}, "
                    f"the parameter has {tuple(params[index].shape)}"
                )
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except (KeyError, ValueError) as exc:
        raise PersistError(f"optimizer state does not fit the model: {exc}") from exc


def generator_to_tensor(generator: torch.Generator) -> torch.Tensor:
    """The generator's full state as a uint8 tensor (5056 bytes for the CPU generator)."""
    return generator.get_state().clone()


def generator_from_tensor(generator: torch.Generator, state: torch.Tensor) -> None:
    """Restore ``generator`` from :func:`generator_to_tensor` output."""
    try:
        generator.set_state(state.to(torch.uint8).contiguous())
    except RuntimeError as exc:
        raise PersistError(f"random generator state is invalid: {exc}") from exc


def _jsonable_group(group: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in group.items()}


def _group_from_json(group: dict[str, Any]) -> dict[str, Any]:
    # JSON has no tuples; Adam's betas (and any other hyper-parameter pair) were
    # tuples and are compared/unpacked as such. "params" stays a list of indices.
    return {
        key: tuple(value) if isinstance(value, list) and key != "params" else value
        for key, value in group.items()
    }
