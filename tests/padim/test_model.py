"""PaDiM's public surface: learn, score, resume, merge, forget."""

from __future__ import annotations

import pytest
import torch

from padim import FeatureExtractor, NotFittedError, PaDiM, load_model

from tests.padim.support import random_images


def structured_images(n: int, seed: int, stripes: int = 8) -> torch.Tensor:
    """Vertical stripes with noise: a 'normal' texture a random backbone can model."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, stripes * 3.1416, 64)
    pattern = (0.5 + 0.3 * torch.sin(x)).expand(64, 64)
    noise = 0.05 * torch.randn(n, 3, 64, 64, generator=generator)
    return (pattern + noise).clamp(0, 1)


def test_predict_returns_one_distance_per_patch(small_model: PaDiM) -> None:
    small_model.train_one_batch(random_images(8, seed=0))
    distances = small_model.predict(random_images(5, seed=1))
    assert distances.shape == (5, *small_model.grid) == (5, 16, 16)
    assert distances.dtype == torch.float32
    assert bool(torch.all(distances > 0))


def test_score_gives_smoothed_maps_at_input_size_and_their_maxima(small_model: PaDiM) -> None:
    small_model.train_one_batch(random_images(8, seed=0))
    scores, maps = small_model.score(random_images(3, seed=2))
    assert scores.shape == (3,)
    assert maps.shape == (3, 64, 64)
    torch.testing.assert_close(scores, maps.flatten(1).amax(1))


def test_defect_scores_above_normal_images(small_model: PaDiM) -> None:
    small_model.train_one_batch(structured_images(32, seed=0))
    normal = structured_images(4, seed=1)
    defective = normal.clone()
    defective[:, :, 20:36, 20:36] = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)
    normal_scores, _ = small_model.score(normal)
    defect_scores, maps = small_model.score(defective)
    assert float(defect_scores.min()) > float(normal_scores.max())
    # The map peaks inside the pasted square (grown by the blur and receptive field).
    peak = maps[0].argmax()
    row, col = divmod(int(peak), 64)
    assert 8 <= row <= 48 and 8 <= col <= 48


def test_batch_and_single_image_predictions_agree(small_model: PaDiM) -> None:
    small_model.train_one_batch(random_images(8, seed=0))
    batch = random_images(4, seed=3)
    together = small_model.predict(batch)
    one_by_one = torch.cat([small_model.predict(batch[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-4)


def test_scoring_before_two_images_raises(small_model: PaDiM) -> None:
    with pytest.raises(NotFittedError):
        small_model.predict(random_images(1, seed=0))
    small_model.train_one_batch(random_images(1, seed=0))
    with pytest.raises(NotFittedError):
        small_model.score(random_images(1, seed=0))


def test_train_save_load_train_on_equals_uninterrupted(small_extractor: FeatureExtractor, tmp_path) -> None:
    batches = [random_images(6, seed=s) for s in range(4)]
    uninterrupted = PaDiM(extractor=small_extractor)
    for b in batches:
        uninterrupted.train_one_batch(b)
    resumed = PaDiM(extractor=small_extractor)
    resumed.train_one_batch(batches[0])
    resumed.train_one_batch(batches[1])
    probe = random_images(3, seed=9)
    resumed.predict(probe)  # scoring in between must not disturb learning
    resumed.save(tmp_path / "m.padim")
    resumed = PaDiM.load(tmp_path / "m.padim")  # a fresh backbone, rebuilt from the file
    resumed.train_one_batch(batches[2])
    resumed.train_one_batch(batches[3])
    assert resumed.num_trained == uninterrupted.num_trained == 24
    torch.testing.assert_close(resumed.predict(probe), uninterrupted.predict(probe), rtol=1e-5, atol=1e-5)


def test_merged_models_equal_one_trained_on_both(small_extractor: FeatureExtractor) -> None:
    a, b, both = (PaDiM(extractor=small_extractor) for _ in range(3))
    first, second = random_images(10, seed=1), random_images(7, seed=2)
    a.train_one_batch(first)
    b.train_one_batch(second)
    both.train_one_batch(first)
    both.train_one_batch(second)
    a.merge(b)
    probe = random_images(2, seed=3)
    torch.testing.assert_close(a.predict(probe), both.predict(probe), rtol=1e-5, atol=1e-5)


def test_train_accepts_a_dataloader_of_tuples(small_model: PaDiM) -> None:
    images = random_images(10, seed=4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=4)
    small_model.train(loader)
    assert small_model.num_trained == 10


def test_forgetting_follows_drift(small_extractor: FeatureExtractor) -> None:
    old_look, new_look = structured_images(24, seed=0, stripes=4), structured_images(24, seed=1, stripes=12)
    forgetting = PaDiM(extractor=small_extractor, half_life=8)
    remembering = PaDiM(extractor=small_extractor)
    for model in (forgetting, remembering):
        model.train_one_batch(old_look[:12])
        for start in range(0, 24, 4):
            model.train_one_batch(new_look[start : start + 4])
    assert forgetting.num_trained < 24 < remembering.num_trained
    probe_old = structured_images(4, seed=5, stripes=4)
    # Having forgotten the old look, the drifting model finds it more anomalous.
    assert float(forgetting.score(probe_old)[0].mean()) > float(remembering.score(probe_old)[0].mean())


def test_reset_forgets_everything(small_model: PaDiM) -> None:
    small_model.train_one_batch(random_images(4, seed=0))
    small_model.reset()
    assert small_model.num_trained == 0
    with pytest.raises(NotFittedError):
        small_model.predict(random_images(1, seed=0))


def test_load_model_dispatches_on_the_file_header(small_model: PaDiM) -> None:
    small_model.train_one_batch(random_images(4, seed=0))
    loaded = load_model(small_model.to_bytes())
    assert isinstance(loaded, PaDiM)
    assert loaded.num_trained == 4


def test_state_is_independent_of_images_learned(small_model: PaDiM) -> None:
    before = small_model.state_bytes()
    for seed in range(5):
        small_model.train_one_batch(random_images(16, seed=seed))
    assert small_model.state_bytes() == before
