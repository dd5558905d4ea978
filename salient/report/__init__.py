"""PNG overlays, DiDA-View panels, HTML report."""

from .colormaps import DEFAULT_CMAP, colorize, sequential_colors, signed_colors, signed_scale
from .overlay import overlay, resize_map, save_overlay, save_png
from .panel import panel, save_panel

__all__ = [
    "DEFAULT_CMAP", "colorize", "overlay", "panel", "resize_map", "save_overlay", "save_panel", "save_png",
    "sequential_colors", "signed_colors", "signed_scale",
]
