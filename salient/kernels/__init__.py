"""Mask math on the device (torch reference path, CPU and GPU)."""

from .boxes import box_masks, grid_cells, paste_boxes, sliding_windows, squares
from .fills import FILL_NAMES, blend_into, blur, check_fill, fill_tensor, match_layout
from .rise_masks import draw_grids, interp_matrix, rise_masks

__all__ = [
    "FILL_NAMES", "blend_into", "blur", "box_masks", "check_fill", "draw_grids", "fill_tensor",
    "grid_cells", "interp_matrix", "match_layout", "paste_boxes", "rise_masks", "sliding_windows", "squares",
]
