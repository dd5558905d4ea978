"""Mask math: host-side geometry and fill checks, and the device kernels behind a backend object.

- :mod:`.geometry`, :mod:`.fill_kinds`: boxes as numbers and fill names, on the host (methods use them);
- :mod:`.backend`: the backend a worker picks for its device (:func:`kernels_for`); queries reach the
  device kernels only through it (``ItemContext.kernels``);
- :mod:`.torch`: the reference kernels (CPU and GPU); a ``cupy`` backend sits beside it.
The device kernels are re-exported here for tests and benchmarks.
"""

from .backend import BACKENDS, kernels_for, parse_kernels
from .fill_kinds import FILL_NAMES, FillError, check_fill
from .geometry import box_mean, grid_cells, sliding_windows, space_time_cells, squares, time_segments
from .torch import (
    blend_into,
    blend_over,
    blend_terms,
    blur,
    box_masks,
    draw_grids,
    draw_grids_3d,
    fill_tensor,
    interp_matrix,
    is_channels_last,
    match_layout,
    paste_boxes,
    rise_masks,
    rise_masks_3d,
    rise_weighted_sum,
    rise_weighted_sum_3d,
)
from .torch.backend import TORCH, TorchKernels

__all__ = [
    "BACKENDS", "FILL_NAMES", "TORCH", "FillError", "TorchKernels", "blend_into", "blend_over", "blend_terms", "blur",
    "box_mean", "box_masks", "check_fill", "draw_grids", "draw_grids_3d", "fill_tensor", "grid_cells", "interp_matrix",
    "is_channels_last", "kernels_for", "match_layout", "parse_kernels", "paste_boxes", "rise_masks", "rise_masks_3d",
    "rise_weighted_sum", "rise_weighted_sum_3d", "sliding_windows", "space_time_cells", "squares", "time_segments",
]
