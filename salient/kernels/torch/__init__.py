"""The reference kernels in torch: any device torch runs on (CPU, CUDA)."""

from .boxes import box_masks, paste_boxes
from .fills import blend_into, blend_over, blend_terms, blur, fill_tensor, is_channels_last, match_layout
from .rise_masks import draw_grids, interp_matrix, rise_masks, rise_weighted_sum

__all__ = [
    "blend_into", "blend_over", "blend_terms", "blur", "box_masks", "draw_grids", "fill_tensor", "interp_matrix",
    "is_channels_last", "match_layout", "paste_boxes", "rise_masks", "rise_weighted_sum",
]
