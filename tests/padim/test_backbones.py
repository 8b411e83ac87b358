"""Backbones: real bundled weights, strict checkpoint loading, frozen eval mode."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from padim import FeatureExtractor, WeightsError
from padim.backbones import (
    EfficientNetLite0,
    _read_state_dict,
    bundled_lite0_weights_path,
    load_backbone,
)
from padim.images import image_to_tensor

# ImageNet classes 281-285 are the domestic cats.
CAT_CLASSES = range(281, 286)


def test_bundled_lite0_weights_recognise_a_real_photo() -> None:
    from skimage import data

    net = EfficientNetLite0()
    net.load_state_dict(_read_state_dict(bundled_lite0_weights_path()), strict=True)
    net.eval()
    image = image_to_tensor(Image.fromarray(data.chelsea()), (224, 224))
    with torch.no_grad():
        top = int(net(((image - 0.5) / 0.5).unsqueeze(0)).argmax())
    assert top in CAT_CLASSES


@pytest.mark.parametrize(
    ("backbone", "channels", "grid"),
    [("efficientnet_lite0", 176, (16, 16)), ("resnet18", 448, (16, 16))],
)
def test_taps_cover_all_channels_on_the_first_grid(backbone: str, channels: int, grid: tuple[int, int]) -> None:
    extractor = FeatureExtractor(backbone=backbone, weights="none", size=64, num_embeddings=channels)
    assert extractor(torch.rand(2, 3, 64, 64)).shape == (2, channels, *grid)


def test_extraction_leaves_batchnorm_statistics_untouched() -> None:
    extractor = FeatureExtractor(backbone="resnet18", weights="none", size=64, num_embeddings=16)
    before = {k: v.clone() for k, v in extractor._net.state_dict().items()}
    extractor(torch.rand(4, 3, 64, 64))
    after = extractor._net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not extractor._net.training


def test_channel_subset_is_seeded() -> None:
    a = FeatureExtractor(backbone="resnet18", weights="none", size=64, num_embeddings=100, seed=3)
    b = FeatureExtractor(backbone="resnet18", weights="none", size=64, num_embeddings=100, seed=3)
    c = FeatureExtractor(backbone="resnet18", weights="none", size=64, num_embeddings=100, seed=4)
    assert torch.equal(a.channel_indices, b.channel_indices)
    assert not torch.equal(a.channel_indices, c.channel_indices)


def test_paper_default_embedding_sizes() -> None:
    assert FeatureExtractor(backbone="resnet18", weights="none", size=64, num_embeddings=None).num_embeddings == 100
    assert (
        FeatureExtractor(backbone="wide_resnet50_2", weights="none", size=64, num_embeddings=None).num_embeddings
        == 550
    )


def test_local_checkpoint_loads_and_is_identified_by_hash(tmp_path: Path) -> None:
    source = load_backbone("resnet18", "none", seed=1)
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    # Give BatchNorm real-looking statistics so the untrained-checkpoint guard passes.
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.fill_(0.5)
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    loaded = load_backbone("resnet18", path)
    assert loaded.weights_id.startswith("sha256:")
    assert torch.equal(loaded.taps.layer1[0].conv1.weight, net.layer1[0].conv1.weight)
    assert source.weights_id == "none"


def test_prefixed_checkpoint_is_an_error_naming_the_prefix(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    state = {f"module.{k}": v for k, v in resnet18(weights=None).state_dict().items()}
    path = tmp_path / "prefixed.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="'module.'"):
        load_backbone("resnet18", path)


def test_checkpoint_with_untrained_batchnorm_is_refused(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    path = tmp_path / "random.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="never trained"):
        load_backbone("resnet18", path)


def test_pickled_checkpoint_is_not_executed(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # noqa: ANN204
            return (marker.write_text, ("executed",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(WeightsError, match="cannot read"):
        load_backbone("resnet18", path)
    assert not marker.exists()


def test_offline_imagenet_resnet_names_the_file_to_provide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match=r"resnet18-f37072fd\.pth") as excinfo:
        load_backbone("resnet18", "imagenet")
    assert str(tmp_path) in str(excinfo.value)


def test_image_helper_resizes_to_model_size() -> None:
    image = Image.fromarray(np.full((50, 70, 3), 255, dtype=np.uint8))
    tensor = image_to_tensor(image, (64, 32))
    assert tensor.shape == (3, 64, 32)
    assert float(tensor.min()) == 1.0
