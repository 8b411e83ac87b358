"""The per-camera model registry and the worker thread the model runs on.

All cameras share ONE ``padim.FeatureExtractor``: a batch of frames from many cameras
costs one backbone forward, after which each camera's ``PaDiM`` learns or scores its own
embeddings. A camera's model is scoped to the partition its frames arrive on
(``CameraKey``), which is what moves between instances on a rebalance.

Camera state is mutated only on the registry's single worker thread (``ModelWorker``),
so it needs no locks, and the event loop stays free for heartbeats and /metrics.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import torch
from padim import FeatureExtractor, PaDiM

from daemon.core import CameraView
from daemon.records import TopicPartition
from daemon.settings import ModelSettings, ThresholdSettings
from daemon.thresholds import CameraThreshold

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True, order=True)
class CameraKey:
    """A camera as seen on one input partition."""

    source: TopicPartition
    camera: str


@dataclass(slots=True)
class CameraState:
    """Everything the daemon knows about one camera (mutated on the worker thread only)."""

    key: CameraKey
    model: PaDiM
    threshold: CameraThreshold
    frames_learned: int = 0  # unweighted; routing's "fitted" test uses it
    frozen: bool = False
    last_learned_offset: int | None = None  # in key.source
    snapshot_version: int = 0  # sequence number of the last snapshot written or restored
    dirty: bool = False  # changed since the last snapshot

    def view(self) -> CameraView:
        """The routing view of this camera."""
        return CameraView(frames_learned=self.frames_learned, frozen=self.frozen,
                          last_learned_offset=self.last_learned_offset)

    def reset(self) -> None:
        """Forget everything learned (model, threshold samples, override) and unfreeze.

        ``last_learned_offset`` stays: frames learned before the reset must not be
        learned again if the broker replays them."""
        self.model.reset()
        self.threshold.clear()
        self.frames_learned = 0
        self.frozen = False
        self.dirty = True


def build_extractor(settings: ModelSettings) -> FeatureExtractor:
    """The shared backbone for ``settings`` (device ``auto`` picks CUDA when present)."""
    return FeatureExtractor(
        backbone=settings.backbone, weights=settings.weights, size=settings.size,
        num_embeddings=settings.num_embeddings, seed=settings.seed, device=settings.device)


class ModelRegistry:
    """The cameras this instance owns, each with a model on the shared extractor."""

    def __init__(
        self, model: ModelSettings, threshold: ThresholdSettings, extractor: FeatureExtractor
    ) -> None:
        self._model_settings = model
        self._threshold_settings = threshold
        self.extractor = extractor
        self._cameras: dict[CameraKey, CameraState] = {}

    def new_model(self) -> PaDiM:
        """An empty model on the shared extractor."""
        return PaDiM(extractor=self.extractor, epsilon=self._model_settings.epsilon,
                     half_life=self._model_settings.half_life)

    def new_threshold(
        self, camera: str, *, override: float | None = None, scores: Iterable[float] = ()
    ) -> CameraThreshold:
        """The threshold state for ``camera`` under the configured policy."""
        settings = self._threshold_settings
        return CameraThreshold(settings.policy_for(camera), window=settings.window,
                               min_normal_scores=settings.min_normal_scores,
                               override=override, scores=scores)

    def get(self, key: CameraKey) -> CameraState | None:
        """The camera's state, if known."""
        return self._cameras.get(key)

    def get_or_create(self, key: CameraKey) -> CameraState:
        """The camera's state, created empty on first sight."""
        state = self._cameras.get(key)
        if state is None:
            state = CameraState(key=key, model=self.new_model(),
                                threshold=self.new_threshold(key.camera))
            self._cameras[key] = state
        return state

    def add(self, state: CameraState) -> None:
        """Register a restored camera (replacing any state for the same key)."""
        self._cameras[state.key] = state

    def remove(self, key: CameraKey) -> None:
        """Forget a camera (after its partition was released)."""
        self._cameras.pop(key, None)

    def in_partitions(self, partitions: Iterable[TopicPartition]) -> list[CameraState]:
        """The cameras whose frames arrive on any of ``partitions``."""
        wanted = set(partitions)
        return [s for k, s in sorted(self._cameras.items()) if k.source in wanted]

    def by_camera(self, camera: str) -> list[CameraState]:
        """Every state of ``camera`` (one per partition it was seen on)."""
        return [s for k, s in sorted(self._cameras.items()) if k.camera == camera]

    def __iter__(self) -> Iterator[CameraState]:
        return iter([s for _, s in sorted(self._cameras.items())])

    def __len__(self) -> int:
        return len(self._cameras)


class ModelWorker:
    """One dedicated thread for the model: CPU/GPU-heavy work and every mutation of
    camera state happen there, one job at a time and in submission order."""

    def __init__(self, threads: int = 0) -> None:
        """``threads`` > 0 sets torch's CPU threads for the model work; 0 keeps the default."""
        # Set on the worker thread itself: OpenMP keeps the thread count per thread.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="padimd-model",
            initializer=torch.set_num_threads if threads else None,
            initargs=(threads,) if threads else ())

    async def threads(self) -> int:
        """torch's CPU thread count as seen by the model thread."""
        return await self.run(torch.get_num_threads)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the worker thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Wait for the running job, then stop the thread."""
        self._executor.shutdown(wait=True, cancel_futures=True)
