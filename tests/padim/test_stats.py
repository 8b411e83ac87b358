"""GaussianStats against float64 batch statistics computed by numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from padim import GaussianStats, NotFittedError

EPSILON = 0.01


def correlated_samples(n: int, positions: int, dim: int, offset: float, seed: int) -> np.ndarray:
    """(n, P, d) float32-representable samples: correlated, spread ~1, mean ~``offset``."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dim, dim)) * np.linspace(0.05, 1.0, dim)
    mean = offset * (1.0 + rng.random((positions, dim)))
    x = rng.standard_normal((n, positions, dim)) @ mixing.T + mean
    return x.astype(np.float32).astype(np.float64)


def reference_distances(train: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Mahalanobis distances (Nq, P) with np.cov and an explicit float64 inverse."""
    out = np.empty(query.shape[:2])
    for p in range(train.shape[1]):
        cov = np.cov(train[:, p, :], rowvar=False) + EPSILON * np.eye(train.shape[2])
        inv = np.linalg.inv(cov)
        diff = query[:, p, :] - train[:, p, :].mean(axis=0)
        out[:, p] = np.sqrt(np.einsum("ni,ij,nj->n", diff, inv, diff))
    return out


def stream(stats: GaussianStats, data: np.ndarray, batch: int) -> None:
    for start in range(0, len(data), batch):
        stats.update(torch.from_numpy(data[start : start + batch]).float())


@pytest.mark.parametrize("offset", [0.0, 100.0], ids=["centred", "mean-100x-spread"])
def test_streamed_distances_match_float64_batch_statistics(offset: float) -> None:
    train = correlated_samples(3000, 4, 48, offset, seed=1)
    query = correlated_samples(40, 4, 48, offset, seed=2)
    query += train.mean(axis=0) - query.mean(axis=0)  # same neighbourhood, different draws
    stats = GaussianStats(4, 48)
    stream(stats, train, batch=16)
    got = stats.mahalanobis(torch.from_numpy(query).float(), EPSILON).double().numpy()
    expected = reference_distances(train, query)
    assert np.max(np.abs(got - expected) / expected) < 1e-4


def test_uneven_batches_give_the_same_statistics() -> None:
    data = correlated_samples(500, 3, 16, 10.0, seed=3)
    a, b = GaussianStats(3, 16), GaussianStats(3, 16)
    stream(a, data, batch=7)
    stream(b, data, batch=64)
    assert a.count == b.count == 500
    torch.testing.assert_close(a.covariance(), b.covariance(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-12, atol=1e-12)


def test_merging_two_halves_equals_streaming_the_whole() -> None:
    data = correlated_samples(1000, 5, 24, 50.0, seed=4)
    whole, first, second = GaussianStats(5, 24), GaussianStats(5, 24), GaussianStats(5, 24)
    stream(whole, data, batch=16)
    stream(first, data[:400], batch=16)
    stream(second, data[400:], batch=16)
    first.merge(second)
    assert first.count == whole.count
    torch.testing.assert_close(first.mean, whole.mean, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(first.covariance(), whole.covariance(), rtol=1e-5, atol=1e-7)


def test_covariance_is_sample_covariance_plus_epsilon() -> None:
    data = correlated_samples(200, 2, 8, 0.0, seed=5)
    stats = GaussianStats(2, 8)
    stream(stats, data, batch=32)
    expected = np.cov(data[:, 1, :], rowvar=False) + EPSILON * np.eye(8)
    np.testing.assert_allclose(stats.covariance(EPSILON)[1].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_one_sample_is_not_enough() -> None:
    stats = GaussianStats(2, 4)
    stats.update(torch.zeros(1, 2, 4))
    with pytest.raises(NotFittedError, match="more than one image"):
        stats.mahalanobis(torch.zeros(1, 2, 4))


def test_decay_halves_the_weight_of_old_samples() -> None:
    old = correlated_samples(100, 1, 4, 0.0, seed=6)
    new = correlated_samples(100, 1, 4, 5.0, seed=7)
    stats = GaussianStats(1, 4)
    stream(stats, old, batch=100)
    stats.decay(0.5)
    stream(stats, new, batch=100)
    assert stats.count == pytest.approx(150.0)
    expected_mean = (0.5 * old.sum(axis=0) + new.sum(axis=0)) / 150.0
    np.testing.assert_allclose(stats.mean.numpy(), expected_mean, rtol=1e-10)


def test_scoring_cache_refreshes_only_after_a_change() -> None:
    data = correlated_samples(64, 2, 4, 0.0, seed=8)
    stats = GaussianStats(2, 4)
    stream(stats, data, batch=32)
    first = stats.precision(EPSILON)
    assert stats.precision(EPSILON) is first
    stats.update(torch.from_numpy(data[:8]).float())
    assert stats.precision(EPSILON) is not first


def test_state_dict_round_trip_is_exact() -> None:
    data = correlated_samples(300, 3, 12, 20.0, seed=9)
    stats = GaussianStats(3, 12)
    stream(stats, data, batch=16)
    restored = GaussianStats(3, 12)
    restored.load_state_dict(stats.state_dict())
    assert restored.count == stats.count
    assert torch.equal(restored.mean, stats.mean)
    assert torch.equal(restored.scatter.triu(), stats.scatter.triu())
    query = torch.from_numpy(data[:5]).float()
    torch.testing.assert_close(restored.mahalanobis(query), stats.mahalanobis(query), rtol=1e-6, atol=1e-6)


def test_memory_does_not_depend_on_samples_seen() -> None:
    stats = GaussianStats(4, 8)
    before = stats.state_bytes()
    stream(stats, correlated_samples(2000, 4, 8, 0.0, seed=10), batch=50)
    assert stats.state_bytes() == before
