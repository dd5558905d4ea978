"""The reference kernels in torch: any device torch runs on (CPU, CUDA)."""

from .boxes import box_masks, paste_boxes
from .fills import blend_into, blend_over, blend_terms, blur, fill_tensor, is_channels_last, match_layout
from .rise_masks import draw_grids, interp_matrix, rise_masks, rise_weighted_sum
from .rise_masks_3d import draw_grids_3d, rise_masks_3d, rise_weighted_sum_3d

__all__ = [
    "blend_into", "blend_over", "blend_terms", "blur", "box_masks", "draw_grids", "draw_grids_3d", "fill_tensor",
    "interp_matrix", "is_channels_last", "match_layout", "paste_boxes", "rise_masks", "rise_masks_3d",
    "rise_weighted_sum", "rise_weighted_sum_3d",
]
