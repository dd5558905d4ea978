"""ImageNet class names from torchvision's weight metadata (no download)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def imagenet_labels() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def default_labels(n_classes: int) -> list[str]:
    return imagenet_labels() if n_classes == 1000 else [f"class_{i}" for i in range(n_classes)]
