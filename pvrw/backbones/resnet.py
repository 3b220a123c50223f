"""The ``resnet18`` entry: the ImageNet ResNet18 trunk PIE-G uses (stem, ``layer1``, ``layer2``; spatial map kept).

Registered with :func:`~pvrw.backbones.registry.register_backbone` when :mod:`pvrw.backbones` is imported. Facts
(layer cut, normalisation, file format) follow shared/reference/backbones.md.
"""

from __future__ import annotations

import torch
from torch import nn

from pvrw.backbones.config import BackboneCfg
from pvrw.backbones.registry import register_backbone
from pvrw.backbones.weights import HFFile, WeightSources

PIEG_MEAN = (0.5, 0.5, 0.5)  # PIE-G: obs / 255 - 0.5
PIEG_STD = (1.0, 1.0, 1.0)


def _resnet_trunk_side(side: int) -> int:
    for _ in range(3):  # conv1 (s2), maxpool (s2), layer2 (s2); each gives ceil(x / 2)
        side = -(-side // 2)
    return side


class PiegResNetTrunk(nn.Module):
    """torchvision ResNet18 cut after ``layer2`` as in PIE-G: conv1, bn1, relu, maxpool, layer1, layer2.

    The full ResNet18 is built so that a complete torchvision/timm checkpoint is checked strictly; ``layer3``,
    ``layer4`` and ``fc`` are dropped after loading.
    """

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        self.weights_module = torchvision.models.resnet18(weights=None)

    def drop_unused(self) -> None:
        for name in ("layer3", "layer4", "avgpool", "fc"):
            setattr(self.weights_module, name, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.weights_module
        return r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))


@register_backbone
def resnet18() -> BackboneCfg:
    """ImageNet ResNet18 trunk as in PIE-G (spatial map kept; PIE-G normalisation ``obs/255 - 0.5``)."""

    def build(resolution: int, bn_mode: str = "frozen") -> nn.Module:
        return PiegResNetTrunk()  # the full net until weights are loaded (strict check), then drop_unused()

    return BackboneCfg(
        name="resnet18",
        architecture="torchvision resnet18: conv1, bn1, relu, maxpool, layer1, layer2 (stride 8, 128 channels)",
        build_model=build,
        output_shape=lambda resolution, **_: (128, _resnet_trunk_side(resolution), _resnet_trunk_side(resolution)),
        mean=PIEG_MEAN, std=PIEG_STD, normalisation="pieg(obs/255-0.5)", resolution_multiple=1, min_resolution=8,
        default_resolution=112,
        weights=WeightSources(
            filenames=("resnet18-f37072fd.pth",),
            hf_files=(HFFile("timm/resnet18.tv_in1k", "model.safetensors"),),
            url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
            size="44.7 MB", licence="BSD-3-Clause (torchvision; ImageNet-derived)"),
        formats=("torchvision_resnet",),
        options={"bn_mode": ("frozen", "pieg")},
        option_doc={"bn_mode": 'BatchNorm: "frozen" = always running statistics (a truly frozen PVR); "pieg" = '
                               "follows .train() like PIE-G's encoder, whose BN layers use batch statistics and update "
                               "their running stats during agent updates (only matters when the backbone sits inside "
                               "a trained module; PVRObservation always runs it in eval)."},
        description="PIE-G ResNet18 trunk, 128 x H/8 x W/8 spatial map",
    )

