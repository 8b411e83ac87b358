"""PaDiMShared, PaDiMSVDD and PaDiMNVP through PaDiM's public surface.

Small and fast on purpose: 64x64 images, a randomly initialised ResNet18
(weights="none", no download; its features still separate the structured
images below), 32 channels, a few images.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

import padim
from padim.errors import ConfigurationError, IncompatibleModelError, InputError, NotFittedError, PersistError
from padim.features import FeatureExtractor
from padim.model import PaDiM
from padim.persist import decode, encode
from padim.variants import PaDiMNVP, PaDiMShared, PaDiMSVDD
from padim.variants import GradientPatchModel, TrainingDivergedError

SIZE = 64
DIM = 32
# Small but enough to learn the stripes: 20 Adam steps on 256 patches per batch,
# and a 3-block flow (the 7-block default is exercised by its own test).
FAST: dict[str, dict[str, object]] = {
    "PaDiMShared": {},
    "PaDiMSVDD": {"steps_per_batch": 20, "patches_per_step": 256},
    "PaDiMNVP": {"steps_per_batch": 20, "patches_per_step": 256, "num_blocks": 3, "hidden": 64},
}

VARIANTS = [PaDiMShared, PaDiMSVDD, PaDiMNVP]
GRADIENT_VARIANTS = [PaDiMSVDD, PaDiMNVP]
Model = PaDiMShared | PaDiMSVDD | PaDiMNVP


def stripes(n: int, seed: int, defect: bool = False) -> torch.Tensor:
    """Grey vertical stripes at a random phase with mild noise: float (n, 3, 64, 64) in [0, 1].

    ``defect`` paints a red 16x16 square in the middle: a region no normal image has.
    """
    g = torch.Generator().manual_seed(seed)
    xx = torch.arange(SIZE, dtype=torch.float32).expand(SIZE, SIZE)
    phase = torch.rand(n, 1, 1, generator=g) * 2 * torch.pi
    grey = 0.5 + 0.3 * torch.sin(0.8 * xx + phase) + 0.05 * torch.randn(n, SIZE, SIZE, generator=g)
    imgs = grey.clamp(0, 1).unsqueeze(1).repeat(1, 3, 1, 1)
    if defect:
        imgs[:, :, 24:40, 24:40] = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)
    return imgs


TRAIN = stripes(8, seed=0)
HELD_OUT = stripes(4, seed=1)
DEFECTIVE = stripes(4, seed=2, defect=True)


@pytest.fixture(scope="module")
def extractor(small_extractor: FeatureExtractor) -> FeatureExtractor:
    """The library tests' backbone (tests/padim/conftest.py), shared as the daemon shares one."""
    assert small_extractor.size == (SIZE, SIZE) and small_extractor.num_embeddings == DIM
    return small_extractor


@pytest.fixture(scope="module")
def train_embeddings(extractor: FeatureExtractor) -> torch.Tensor:
    """TRAIN through the backbone once; most tests learn from these (B, d, h, w) directly."""
    return extractor(TRAIN)


@pytest.fixture
def make(extractor: FeatureExtractor) -> Callable[..., Model]:
    def build(cls: type[Model], **kwargs: object) -> Model:
        return cls(extractor=extractor, **{**FAST[cls.__name__], **kwargs})  # type: ignore[arg-type]

    return build


@pytest.fixture
def learn(train_embeddings: torch.Tensor) -> Callable[..., Model]:
    """Teach a model TRAIN (or images[start:stop] of it) in batches of 4."""

    def run(model: Model, start: int = 0, stop: int = len(TRAIN)) -> Model:
        for batch in train_embeddings[start:stop].split(4):
            model.train_embeddings(batch)
        return model

    return run


@pytest.fixture(scope="module")
def fitted(extractor: FeatureExtractor, train_embeddings: torch.Tensor) -> Callable[[type[Model]], Model]:
    """One model per variant trained on TRAIN, shared by the tests that only read it."""
    cache: dict[type[Model], Model] = {}

    def get(cls: type[Model]) -> Model:
        if cls not in cache:
            model = cls(extractor=extractor, **FAST[cls.__name__])  # type: ignore[arg-type]
            for batch in TRAIN.split(4):  # the public path, images in
                model.train_one_batch(batch)
            cache[cls] = model
        return cache[cls]

    return get


# ---------------------------------------------------------------------- detection and shapes


@pytest.mark.parametrize("cls", VARIANTS)
def test_defective_images_score_above_every_held_out_normal(
    cls: type[Model], fitted: Callable[[type[Model]], Model]
) -> None:
    model = fitted(cls)
    normal_scores, _ = model.score(HELD_OUT)
    defective_scores, _ = model.score(DEFECTIVE)
    assert float(defective_scores.min()) > float(normal_scores.max())


@pytest.mark.slow
def test_default_sized_flow_detects_the_defects_too(make: Callable[..., Model], learn: Callable[..., Model]) -> None:
    model = learn(make(PaDiMNVP, num_blocks=7, hidden=130))
    normal_scores, _ = model.score(HELD_OUT)
    defective_scores, _ = model.score(DEFECTIVE)
    assert float(defective_scores.min()) > float(normal_scores.max())


@pytest.mark.parametrize("cls", VARIANTS)
def test_defect_is_localised_where_it_was_painted(cls: type[Model], fitted: Callable[[type[Model]], Model]) -> None:
    _, maps = fitted(cls).score(DEFECTIVE[:1])
    row, col = divmod(int(maps[0].argmax()), SIZE)
    assert 16 <= row < 48 and 16 <= col < 48


@pytest.mark.parametrize("cls", VARIANTS)
def test_predict_gives_finite_float32_distances_on_the_patch_grid(
    cls: type[Model], fitted: Callable[[type[Model]], Model]
) -> None:
    model = fitted(cls)
    distances = model.predict(HELD_OUT[:3])
    assert distances.shape == (3, *model.grid) and distances.dtype == torch.float32
    assert bool(torch.isfinite(distances).all())


@pytest.mark.parametrize("cls", VARIANTS)
def test_score_gives_one_score_and_one_full_size_map_per_image(
    cls: type[Model], fitted: Callable[[type[Model]], Model]
) -> None:
    scores, maps = fitted(cls).score(HELD_OUT[:3])
    assert scores.shape == (3,) and maps.shape == (3, SIZE, SIZE)
    assert torch.equal(scores, maps.flatten(1).amax(1))


@pytest.mark.parametrize("cls", VARIANTS)
def test_num_trained_counts_images(cls: type[Model], make: Callable[..., Model], learn: Callable[..., Model]) -> None:
    model = learn(make(cls), 0, 6)  # batches of 4 and 2
    assert model.num_trained == pytest.approx(6.0)


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("cls", VARIANTS)
def test_scoring_before_learning_raises_not_fitted(cls: type[Model], make: Callable[..., Model]) -> None:
    with pytest.raises(NotFittedError):
        make(cls).predict(HELD_OUT)


@pytest.mark.parametrize("cls", VARIANTS)
@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(torch.rand(2, 3, 32, 32), id="wrong-size"),
        pytest.param(torch.rand(3, SIZE, SIZE), id="no-batch-dim"),
        pytest.param((torch.rand(2, 3, SIZE, SIZE) * 255).to(torch.uint8), id="uint8"),
        pytest.param(torch.rand(2, 3, SIZE, SIZE) * 255, id="0-255-range"),
        pytest.param(torch.full((2, 3, SIZE, SIZE), float("nan")), id="nan"),
    ],
)
def test_bad_images_raise_input_error_when_learning(
    cls: type[Model], bad: torch.Tensor, make: Callable[..., Model]
) -> None:
    model = make(cls)
    with pytest.raises(InputError):
        model.train_one_batch(bad)
    assert model.num_trained == 0


@pytest.mark.parametrize("cls", VARIANTS)
def test_bad_images_raise_input_error_when_scoring(cls: type[Model], fitted: Callable[[type[Model]], Model]) -> None:
    with pytest.raises(InputError):
        fitted(cls).score(torch.rand(2, 1, SIZE, SIZE))


@pytest.mark.parametrize("cls", VARIANTS)
def test_embeddings_of_another_shape_raise_input_error(cls: type[Model], make: Callable[..., Model]) -> None:
    model = make(cls)
    with pytest.raises(InputError):
        model.train_embeddings(torch.rand(2, DIM + 1, *model.grid))


@pytest.mark.parametrize("cls", GRADIENT_VARIANTS)
def test_non_finite_embeddings_are_refused_before_they_reach_the_network(
    cls: type[Model], make: Callable[..., Model], train_embeddings: torch.Tensor
) -> None:
    model = make(cls)
    bad = train_embeddings[:2].clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError):
        model.train_embeddings(bad)
    assert model.num_trained == 0


@pytest.mark.parametrize("cls", GRADIENT_VARIANTS)
def test_a_diverging_step_raises_and_leaves_the_weights_alone(
    cls: type[Model], make: Callable[..., Model], learn: Callable[..., Model], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = learn(make(cls, steps_per_batch=1), 0, 4)
    assert isinstance(model, GradientPatchModel)
    weights = [p.detach().clone() for p in model.net.parameters()]
    monkeypatch.setattr(model, "_loss", lambda patches: model.net(patches)[0].sum() * float("nan"))
    with pytest.raises(TrainingDivergedError):
        learn(model, 4, 8)
    assert all(torch.equal(p, w) for p, w in zip(model.net.parameters(), weights))


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (PaDiMShared, {"epsilon": 0.0}),
        (PaDiMShared, {"half_life": -1.0}),
        (PaDiMSVDD, {"objective": "hard"}),
        (PaDiMSVDD, {"nu": 0.0}),
        (PaDiMSVDD, {"num_heads": 0}),
        (PaDiMNVP, {"num_blocks": 0}),
        (PaDiMNVP, {"patches_per_step": 1}),
        (PaDiMNVP, {"lr": 0.0}),
    ],
)
def test_invalid_hyper_parameters_raise_configuration_error(
    cls: type[Model], kwargs: dict[str, object], make: Callable[..., Model]
) -> None:
    with pytest.raises(ConfigurationError):
        make(cls, **kwargs)


def test_nvp_rejects_a_one_channel_embedding() -> None:
    ex = FeatureExtractor(backbone="resnet18", weights="none", size=SIZE, num_embeddings=1, seed=0)
    with pytest.raises(ConfigurationError):
        PaDiMNVP(extractor=ex)


# ---------------------------------------------------------------------- persistence


@pytest.mark.parametrize("cls", VARIANTS)
def test_saved_and_loaded_model_predicts_identically(
    cls: type[Model], fitted: Callable[[type[Model]], Model], tmp_path: Path
) -> None:
    model = fitted(cls)
    model.save(tmp_path / "model.padim")
    loaded = cls.load(tmp_path / "model.padim")  # builds its own extractor from the file
    assert torch.equal(loaded.predict(HELD_OUT), model.predict(HELD_OUT))


@pytest.mark.parametrize("cls", VARIANTS)
def test_bytes_round_trip_keeps_configuration_and_count(
    cls: type[Model], make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    model = learn(make(cls, blur_sigma=2.0, seed=5), 0, 4)
    loaded = cls.from_bytes(model.to_bytes(), extractor=model.extractor)
    assert loaded.num_trained == model.num_trained
    assert (loaded.blur_sigma, loaded.seed) == (2.0, 5)
    assert loaded._model_config() == model._model_config()


@pytest.mark.parametrize("cls", VARIANTS)
def test_load_model_returns_the_saved_variant(cls: type[Model], fitted: Callable[[type[Model]], Model]) -> None:
    model = fitted(cls)
    assert type(padim.load_model(model.to_bytes(), extractor=model.extractor)) is cls


def test_loading_one_variant_as_another_is_refused(fitted: Callable[[type[Model]], Model]) -> None:
    with pytest.raises(IncompatibleModelError):
        PaDiMSVDD.from_bytes(fitted(PaDiMNVP).to_bytes())


@pytest.mark.parametrize("cls", VARIANTS)
def test_a_file_that_is_not_a_model_is_refused(cls: type[Model], tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    with pytest.raises(PersistError):
        cls.load(path)


def test_a_safetensors_file_of_someone_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    path.write_bytes(st_save({"weight": torch.ones(3)}, metadata={"format": "pt"}))
    with pytest.raises(PersistError):
        PaDiMSVDD.load(path)


@pytest.mark.parametrize("cls", VARIANTS)
def test_a_corrupted_model_file_is_refused(cls: type[Model], fitted: Callable[[type[Model]], Model]) -> None:
    data = bytearray(fitted(cls).to_bytes())
    data[-5] ^= 0xFF  # inside the last tensor
    with pytest.raises(PersistError):
        cls.from_bytes(bytes(data))


@pytest.mark.parametrize("cls", GRADIENT_VARIANTS)
def test_a_file_whose_network_does_not_fit_its_config_is_refused(
    cls: type[Model], fitted: Callable[[type[Model]], Model]
) -> None:
    # A hand-edited (or buggy) file: config says 2 heads/blocks, tensors are for 3.
    model = fitted(cls)
    record = decode(model.to_bytes())
    key = "num_heads" if cls is PaDiMSVDD else "num_blocks"
    record.config["model"][key] = 2
    forged = encode(cls.variant, record.config, record.tensors)
    with pytest.raises(PersistError):
        cls.from_bytes(forged, extractor=model.extractor)


# ---------------------------------------------------------------------- resuming and determinism


@pytest.mark.parametrize("cls", VARIANTS)
def test_training_resumed_from_a_snapshot_equals_uninterrupted_training(
    cls: type[Model], fitted: Callable[[type[Model]], Model], make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    interrupted = learn(make(cls), 0, 4)
    resumed = cls.from_bytes(interrupted.to_bytes(), extractor=interrupted.extractor)
    learn(resumed, 4, 8)
    # fitted(cls) learned the same batches in one go (from images, the same embeddings).
    expected, got = fitted(cls).predict(HELD_OUT), resumed.predict(HELD_OUT)
    if cls is PaDiMShared:
        assert torch.equal(got, expected)  # exact statistics, saved in float64
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", GRADIENT_VARIANTS)
def test_resuming_without_the_optimizer_state_would_diverge(
    cls: type[Model], fitted: Callable[[type[Model]], Model], make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    # Counter-check of the test above: the saved Adam moments are what make the
    # resumed run equal; a fresh optimizer on the same weights ends elsewhere.
    resumed = cls.from_bytes(learn(make(cls), 0, 4).to_bytes(), extractor=fitted(cls).extractor)
    assert isinstance(resumed, GradientPatchModel)
    resumed.optimizer = torch.optim.Adam(resumed.net.parameters(), lr=resumed.lr, weight_decay=resumed.weight_decay)
    learn(resumed, 4, 8)
    assert not torch.allclose(resumed.predict(HELD_OUT), fitted(cls).predict(HELD_OUT), rtol=1e-3)


@pytest.mark.parametrize("cls", GRADIENT_VARIANTS)
def test_same_seed_and_data_give_the_same_model(
    cls: type[Model], fitted: Callable[[type[Model]], Model], make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    again = learn(make(cls))  # seed 0, like fitted(cls)
    assert torch.equal(again.predict(HELD_OUT), fitted(cls).predict(HELD_OUT))


@pytest.mark.parametrize("cls", GRADIENT_VARIANTS)
def test_another_seed_gives_another_model(
    cls: type[Model], fitted: Callable[[type[Model]], Model], make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    other = learn(make(cls, seed=8))
    assert not torch.allclose(other.predict(HELD_OUT), fitted(cls).predict(HELD_OUT))


@pytest.mark.parametrize("cls", GRADIENT_VARIANTS)
def test_batch_order_changes_a_gradient_trained_model(
    cls: type[Model], fitted: Callable[[type[Model]], Model], make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    # The documented price of online training: no exact statistics.
    backward = learn(learn(make(cls), 4, 8), 0, 4)
    assert not torch.allclose(backward.predict(HELD_OUT), fitted(cls).predict(HELD_OUT), rtol=1e-3)


@pytest.mark.parametrize("cls", GRADIENT_VARIANTS)
def test_building_and_training_leave_the_global_rng_alone(
    cls: type[Model], make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    learn(make(cls), 0, 4)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("cls", GRADIENT_VARIANTS)
def test_learning_works_inside_no_grad(
    cls: type[Model], make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    # Callers (the daemon) often wrap model calls in no_grad; learning must still step.
    model = make(cls, steps_per_batch=2)
    with torch.no_grad():
        learn(model, 0, 4)
    before = model.predict(HELD_OUT)
    with torch.no_grad():
        learn(model, 4, 8)
    assert not torch.equal(model.predict(HELD_OUT), before)


@pytest.mark.parametrize("cls", GRADIENT_VARIANTS)
def test_learning_works_inside_inference_mode(
    cls: type[Model], fitted: Callable[[type[Model]], Model], make: Callable[..., Model]
) -> None:
    model = make(cls)
    with torch.inference_mode():
        for batch in TRAIN.split(4):
            model.train_one_batch(batch)
    assert torch.equal(model.predict(HELD_OUT), fitted(cls).predict(HELD_OUT))


@pytest.mark.parametrize("cls", VARIANTS)
def test_reset_forgets_everything_learned(
    cls: type[Model], fitted: Callable[[type[Model]], Model], make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    model = make(cls)
    model.train_one_batch(DEFECTIVE)
    model.reset()
    with pytest.raises(NotFittedError):
        model.predict(HELD_OUT)
    learn(model)
    assert torch.equal(model.predict(HELD_OUT), fitted(cls).predict(HELD_OUT))


def test_train_takes_a_dataloader_of_image_label_tuples(
    fitted: Callable[[type[Model]], Model], make: Callable[..., Model]
) -> None:
    model = make(PaDiMSVDD)
    model.train([(batch, torch.zeros(len(batch))) for batch in TRAIN.split(4)])
    assert torch.equal(model.predict(HELD_OUT), fitted(PaDiMSVDD).predict(HELD_OUT))


# ---------------------------------------------------------------------- PaDiMShared specifics


def test_shared_state_does_not_grow_with_the_patch_grid(make: Callable[..., Model]) -> None:
    shared = make(PaDiMShared)
    per_position = PaDiM(extractor=shared.extractor)
    assert shared.state_bytes() * shared.extractor.num_positions == per_position.state_bytes()


def test_shared_merge_equals_learning_both_halves(
    fitted: Callable[[type[Model]], Model], make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    left, right = learn(make(PaDiMShared), 0, 4), learn(make(PaDiMShared), 4, 8)
    assert isinstance(left, PaDiMShared) and isinstance(right, PaDiMShared)
    left.merge(right)
    torch.testing.assert_close(left.predict(HELD_OUT), fitted(PaDiMShared).predict(HELD_OUT), rtol=1e-5, atol=1e-5)


def test_shared_refuses_to_merge_a_per_position_padim(
    fitted: Callable[[type[Model]], Model], learn: Callable[..., Model]
) -> None:
    shared = fitted(PaDiMShared)
    assert isinstance(shared, PaDiMShared)
    with pytest.raises(ConfigurationError):
        shared.merge(learn(PaDiM(extractor=shared.extractor)))


def test_shared_distances_do_not_depend_on_position(fitted: Callable[[type[Model]], Model]) -> None:
    model = fitted(PaDiMShared)
    emb = model.extractor(HELD_OUT[:2])
    rotated = emb.flip(-1).flip(-2)  # every patch moved to another position
    expected = model.predict_embeddings(emb).flip(-1).flip(-2)
    assert torch.equal(model.predict_embeddings(rotated), expected)


def test_shared_is_fitted_after_one_image(make: Callable[..., Model], learn: Callable[..., Model]) -> None:
    # One image gives h*w samples of the single Gaussian (PaDiM needs two images).
    model = learn(make(PaDiMShared), 0, 1)
    assert bool(torch.isfinite(model.predict(HELD_OUT)).all())


def test_shared_forgetting_halves_old_images_after_half_life(
    make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    model = learn(make(PaDiMShared, half_life=4.0))
    # 4 images, then 4 more that decay the first 4 to half weight: 4 * 0.5 + 4.
    assert model.num_trained == pytest.approx(6.0)


# ---------------------------------------------------------------------- PaDiMSVDD specifics


def test_svdd_centres_are_fixed_by_the_first_batch(make: Callable[..., Model], learn: Callable[..., Model]) -> None:
    model = learn(make(PaDiMSVDD, steps_per_batch=2), 0, 4)
    assert isinstance(model, PaDiMSVDD)
    centres = model.heads.centres.clone()
    learn(model, 4, 8)
    assert torch.equal(model.heads.centres, centres)


def test_svdd_soft_boundary_keeps_about_nu_of_training_patches_outside(
    make: Callable[..., Model], learn: Callable[..., Model], train_embeddings: torch.Tensor
) -> None:
    # One head: with several, a patch outside one sphere may be inside another.
    model = learn(make(PaDiMSVDD, objective="soft-boundary", nu=0.1, num_heads=1))
    # The radius comes from the last batch; a patch outside the sphere scores > 0.
    outside = float((model.predict_embeddings(train_embeddings[4:]) > 0).float().mean())
    assert outside == pytest.approx(0.1, abs=0.01)


def test_svdd_soft_boundary_radii_survive_a_round_trip(
    make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    model = learn(make(PaDiMSVDD, objective="soft-boundary"), 0, 4)
    loaded = PaDiMSVDD.from_bytes(model.to_bytes(), extractor=model.extractor)
    assert bool((loaded.heads.radii > 0).all()) and torch.equal(loaded.heads.radii, model.heads.radii)
    assert torch.equal(loaded.predict(HELD_OUT), model.predict(HELD_OUT))


def test_svdd_training_pulls_normal_patches_towards_the_centres(
    make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    model = learn(make(PaDiMSVDD, steps_per_batch=3), 0, 4)
    before = float(model.predict(HELD_OUT).mean())
    for _ in range(10):
        learn(model, 4, 8)
    assert float(model.predict(HELD_OUT).mean()) < 0.8 * before


# ---------------------------------------------------------------------- PaDiMNVP specifics


def test_nvp_training_raises_the_likelihood_of_held_out_normals(
    make: Callable[..., Model], learn: Callable[..., Model]
) -> None:
    model = learn(make(PaDiMNVP, steps_per_batch=1), 0, 4)
    before = float(model.predict(HELD_OUT).mean())
    for _ in range(10):
        learn(model, 4, 8)
    assert float(model.predict(HELD_OUT).mean()) < before - 1.0  # nats per patch
