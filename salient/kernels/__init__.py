"""Mask math on the device (torch reference path, CPU and GPU)."""

from .boxes import box_masks, grid_cells, paste_boxes, sliding_windows, squares
from .fills import (
    FILL_NAMES,
    blend_into,
    blend_over,
    blend_terms,
    blur,
    check_fill,
    fill_tensor,
    is_channels_last,
    match_layout,
)
from .rise_masks import draw_grids, interp_matrix, rise_masks, rise_weighted_sum

__all__ = [
    "FILL_NAMES", "blend_into", "blend_over", "blend_terms", "blur", "box_masks", "check_fill", "draw_grids",
    "fill_tensor", "grid_cells", "interp_matrix", "is_channels_last", "match_layout", "paste_boxes", "rise_masks",
    "rise_weighted_sum", "sliding_windows", "squares",
]
