"""Anomaly maps: upsampling, the separable blur, image scores."""

from __future__ import annotations

import torch
from torchvision.transforms.v2.functional import gaussian_blur as torchvision_blur

from padim.postprocess import anomaly_maps, blur_kernel_size, gaussian_blur, image_scores


def test_separable_blur_equals_torchvision_2d_blur() -> None:
    maps = torch.rand(3, 1, 56, 72, generator=torch.Generator().manual_seed(0))
    k = blur_kernel_size(4.0)
    expected = torchvision_blur(maps, kernel_size=[k, k], sigma=[4.0, 4.0])
    torch.testing.assert_close(gaussian_blur(maps, 4.0), expected, rtol=1e-5, atol=1e-5)


def test_blur_preserves_a_constant_map() -> None:
    maps = torch.full((1, 1, 40, 40), 3.5)
    torch.testing.assert_close(gaussian_blur(maps, 4.0), maps)


def test_maps_are_upsampled_to_input_size_and_scores_are_their_maxima() -> None:
    distances = torch.zeros(2, 16, 16)
    distances[1, 8, 8] = 10.0
    maps = anomaly_maps(distances, (64, 64), blur_sigma=4.0)
    assert maps.shape == (2, 64, 64)
    scores = image_scores(maps)
    assert float(scores[0]) == 0.0
    assert float(scores[1]) > 0.0
    row, col = divmod(int(maps[1].argmax()), 64)
    assert abs(row - 34) <= 3 and abs(col - 34) <= 3  # patch (8, 8) covers pixels 32..35


def test_blur_sigma_zero_leaves_the_upsampled_map() -> None:
    distances = torch.rand(1, 8, 8)
    sharp = anomaly_maps(distances, (32, 32), blur_sigma=0.0)
    assert float(sharp.max()) <= float(distances.max()) + 1e-6
