"""The CuPy kernels without a GPU: every instantiation compiles through NVRTC (sm_80, sm_90), and the same
source, compiled for the CPU (the twin), agrees with the torch reference on every operation it overrides.

Tolerances: masks, blends, boxes and curve frames within 1e-6 (max abs difference; boxes are copies and
must be equal); weighted sums within 1e-5 of the reference's largest value (relative; the sums run in
another order). bf16/f16 batches: the stored bits equal torch's rounding of the twin's own float32
result, bit for bit. Results do not depend on the launch grid or on how masks are split across calls.
Skipped only where CuPy (compile tests) or g++ (twin tests) is missing, and never when CI is set.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from salient.kernels import TORCH
from salient.kernels.cupy import NAME_EXPRESSIONS, SOURCE, compile_check, twin_kernels
from salient.kernels.cupy.twin import compiler
from salient.queries.base import ItemContext

SIZE, CELLS = (24, 20), 5
CLIP, CELLS_T = (6, 12, 10), 3
FILLS = ("zero", "black", "blur", "mean", 0.25)
BLACK = torch.tensor([-2.1, -2.0, -1.8])
LAYOUTS = (torch.contiguous_format, torch.channels_last)


def _need(why: str | None) -> None:
    if why and os.environ.get("CI"):
        pytest.fail(f"must run in CI: {why}")
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def nvrtc():
    try:
        from cupy.cuda import compiler as nvrtc_compiler
    except ImportError as e:
        _need(f"CuPy is not importable ({e})")
    return nvrtc_compiler


@pytest.fixture(scope="module")
def twin():
    _need(None if compiler() else "no g++ for the CPU twin")
    return twin_kernels()


@pytest.fixture(scope="module")
def twin_1x1():
    _need(None if compiler() else "no g++ for the CPU twin")
    return twin_kernels(1, 1)


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _clip(seed: int = 1) -> torch.Tensor:
    return torch.randn(3, *CLIP, generator=torch.Generator().manual_seed(seed))


def _batch(k: int, shape: tuple[int, ...], layout=torch.contiguous_format, dtype=torch.float32) -> torch.Tensor:
    """A view of rows 1..k of a batch of k + 2 filled with 7: writes outside the view show up."""
    return torch.full((k + 2, *shape), 7.0, dtype=dtype).contiguous(memory_format=layout)[1:-1]


def _close(ours: torch.Tensor, ref: torch.Tensor, atol: float = 1e-6) -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert float((ours.double() - ref.double()).abs().max()) <= atol


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.int16).numpy()


# ---- NVRTC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_kernel_compiles_through_nvrtc(nvrtc, arch):
    mapping = compile_check(arch)
    assert set(mapping) == set(NAME_EXPRESSIONS) and all(sym.startswith("_Z") for sym in mapping.values())


def test_a_broken_kernel_fails_the_compile_check(nvrtc):
    broken = SOURCE.replace("store(out + i, src[i]);", "store(out + i, src);")  # no store(S*, const float*)
    assert broken != SOURCE
    with pytest.raises(nvrtc.CompileException):
        compile_check("sm_90", source=broken)


def test_importing_the_backend_does_not_import_cupy():
    code = "import sys, salient.kernels.cupy; assert 'cupy' not in sys.modules, 'cupy was imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# ---- the CPU twin against the torch reference -------------------------------------------------------


def test_masks_2d_match_the_reference_and_do_not_depend_on_ranges_or_grid(twin, twin_1x1):
    n = 300
    full = twin.rise_masks(5, 1, n, CELLS, 0.5, SIZE)
    _close(full, TORCH.rise_masks(5, 1, n, CELLS, 0.5, SIZE))
    assert torch.equal(twin_1x1.rise_masks(5, 1, n, CELLS, 0.5, SIZE), full)
    for a, b in ((120, 140), (0, 1), (255, 257), (299, 300), (7, 19)):  # across the 128-mask factor blocks
        assert torch.equal(twin.rise_masks(5, 1, n, CELLS, 0.5, SIZE, start=a, stop=b), full[a:b])
    for c in (1, 3):  # channels-last order: each value repeated over C
        out = torch.full((12, *SIZE, c), 7.0)
        assert twin.rise_masks(5, 1, n, CELLS, 0.5, SIZE, start=130, stop=142, out=out) is out
        assert torch.equal(out, full[130:142, :, :, None].expand_as(out))
    with pytest.raises(ValueError, match="not within"):
        twin.rise_masks(5, 1, n, CELLS, 0.5, SIZE, start=290, stop=301)


def test_masks_3d_match_the_reference_and_do_not_depend_on_ranges_or_grid(twin, twin_1x1):
    n = 140
    full = twin.rise_masks_3d(2, 0, n, 4, CELLS_T, 0.5, CLIP)
    _close(full, TORCH.rise_masks_3d(2, 0, n, 4, CELLS_T, 0.5, CLIP))
    assert torch.equal(twin_1x1.rise_masks_3d(2, 0, n, 4, CELLS_T, 0.5, CLIP), full)
    for a, b in ((120, 135), (3, 4)):
        assert torch.equal(twin.rise_masks_3d(2, 0, n, 4, CELLS_T, 0.5, CLIP, start=a, stop=b), full[a:b])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fill", FILLS)
def test_rise_blend_2d_matches_the_reference(twin, twin_1x1, layout, fill):
    x = _image()
    n, start, stop = 200, 120, 136
    ref = _batch(stop - start, x.shape, layout)
    TORCH.rise_blend(ItemContext("a", x, BLACK, TORCH), 3, 1, n, CELLS, 0.5, start, stop, ref, fill)
    outs = []
    for kernels in (twin, twin_1x1):
        out = _batch(stop - start, x.shape, layout)
        kernels.rise_blend(ItemContext("a", x, BLACK, kernels), 3, 1, n, CELLS, 0.5, start, stop, out, fill)
        assert (out._base[0] == 7).all() and (out._base[-1] == 7).all()  # nothing outside the batch
        outs.append(out)
    _close(outs[0], ref)
    assert torch.equal(outs[0], outs[1])  # grid 3x5 and 1x1
    halves = _batch(stop - start, x.shape, layout)  # masks split over two calls
    ctx = ItemContext("a", x, BLACK, twin)
    twin.rise_blend(ctx, 3, 1, n, CELLS, 0.5, start, start + 5, halves[:5], fill)
    twin.rise_blend(ctx, 3, 1, n, CELLS, 0.5, start + 5, stop, halves[5:], fill)
    assert torch.equal(halves, outs[0])


@pytest.mark.parametrize("fill", FILLS)
def test_rise_blend_3d_matches_the_reference(twin, twin_1x1, fill):
    x = _clip()
    n, start, stop = 150, 124, 133
    ref = _batch(stop - start, x.shape)
    TORCH.rise_blend_3d(ItemContext("c", x, BLACK, TORCH), 4, 2, n, 4, CELLS_T, 0.5, start, stop, ref, fill)
    outs = []
    for kernels in (twin, twin_1x1):
        out = _batch(stop - start, x.shape)
        kernels.rise_blend_3d(ItemContext("c", x, BLACK, kernels), 4, 2, n, 4, CELLS_T, 0.5, start, stop, out, fill)
        outs.append(out)
    _close(outs[0], ref)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(("start", "k", "targets"), [(0, 40, 1), (100, 60, 3), (250, 50, 9), (0, 300, 2)])
def test_weighted_sums_match_the_reference(twin, twin_1x1, start, k, targets):
    w = torch.rand(k, targets, generator=torch.Generator().manual_seed(start + k)) - 0.3
    ref = TORCH.rise_weighted_sum(6, 0, 300, CELLS, 0.5, SIZE, w, start)
    ours = twin.rise_weighted_sum(6, 0, 300, CELLS, 0.5, SIZE, w, start)
    _close(ours, ref, atol=1e-5 * float(ref.abs().max()))
    assert torch.equal(twin_1x1.rise_weighted_sum(6, 0, 300, CELLS, 0.5, SIZE, w, start), ours)
    # = Σ_j w_j M_j over the twin's own masks (the same mask values the blends use)
    masks = twin.rise_masks(6, 0, 300, CELLS, 0.5, SIZE, start=start, stop=start + k)
    _close(ours, torch.einsum("jt,jhw->thw", w.double(), masks.double()).float(), atol=1e-5 * float(ref.abs().max()))
    if k >= 100:  # the 3-D sums on fewer, bigger masks
        w3 = w[: k // 2]
        ref3 = TORCH.rise_weighted_sum_3d(6, 1, 300, 4, CELLS_T, 0.5, CLIP, w3, start)
        ours3 = twin.rise_weighted_sum_3d(6, 1, 300, 4, CELLS_T, 0.5, CLIP, w3, start)
        _close(ours3, ref3, atol=1e-5 * float(ref3.abs().max()))
        assert torch.equal(twin_1x1.rise_weighted_sum_3d(6, 1, 300, 4, CELLS_T, 0.5, CLIP, w3, start), ours3)


def _boxes_cases():
    image, clip = _image(3), _clip(4)
    flat_i, flat_c = torch.tensor([0.1, -0.2, 0.3]).view(3, 1, 1), torch.tensor([0.1, -0.2, 0.3]).view(3, 1, 1, 1)
    b2 = ((0, 3, 1, 4), (2, 24, 0, 20), (5, 6, 19, 20), (4, 4, 2, 5))  # the last is empty
    b3 = ((0, 2, 0, 3, 1, 4), (1, 6, 2, 12, 0, 10), (5, 6, 5, 6, 9, 10), (3, 3, 0, 5, 0, 5))
    for layout in LAYOUTS:
        yield image, flat_i, b2, layout
        yield image, torch.randn(3, *SIZE), b2, layout
    yield clip, flat_c, b2, torch.contiguous_format  # 2-D boxes on a clip: all frames
    yield clip, flat_c, b3, torch.contiguous_format
    yield clip, torch.randn(3, *CLIP), b3, torch.contiguous_format


BOX_CASES = list(_boxes_cases())  # images (both layouts; constant and full fills), clips with 2-D and 3-D boxes


@pytest.mark.parametrize("case", range(len(BOX_CASES)))
def test_paste_boxes_matches_the_reference(twin, twin_1x1, case):
    x, sub, boxes, layout = BOX_CASES[case]
    for base, inner in ((x, sub), (sub, x)):  # delete, keep
        ref = TORCH.paste_boxes(_batch(len(boxes), x.shape, layout), base, inner, boxes)
        ours = twin.paste_boxes(_batch(len(boxes), x.shape, layout), base, inner, boxes)
        assert torch.equal(ours, ref) and (ours._base[0] == 7).all() and (ours._base[-1] == 7).all()
        assert torch.equal(twin_1x1.paste_boxes(_batch(len(boxes), x.shape, layout), base, inner, boxes), ours)
    with pytest.raises(ValueError, match="boxes for a batch"):
        twin.paste_boxes(_batch(len(boxes) + 1, x.shape, layout), x, sub, boxes)


@pytest.mark.parametrize(("clip", "layout", "top", "base"), [
    (False, torch.contiguous_format, "zero", "image"), (False, torch.channels_last, "zero", "image"),
    (False, torch.channels_last, "image", "blur"), (True, torch.contiguous_format, "image", 0.5)])
def test_curve_frames_match_the_reference(twin, twin_1x1, clip, layout, top, base):
    x = _clip() if clip else _image()
    h, w = x.shape[-2:]
    rank = torch.randperm(h * w, generator=torch.Generator().manual_seed(5)).view(h, w)
    counts = torch.tensor([0, 1, 37, h * w // 2, h * w - 1, h * w])
    outs = {}
    for kernels in (TORCH, twin, twin_1x1):
        ctx = ItemContext("a", x, BLACK, kernels)
        out = _batch(len(counts), x.shape, layout)
        kernels.curve_blend(out, ctx.fill(top), ctx.fill(base), rank, counts)
        outs[kernels] = out
    _close(outs[twin], outs[TORCH])
    assert torch.equal(outs[twin], outs[twin_1x1])


# ---- bf16 / f16 storage -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_batches_are_torch_rounding_of_the_float32_ones(twin, dtype):
    x, clip = _image(), _clip()
    rank = torch.randperm(SIZE[0] * SIZE[1], generator=torch.Generator().manual_seed(1)).view(SIZE)
    ops = {
        "blend": lambda k, o: k.rise_blend(ItemContext("a", x, BLACK, k), 1, 0, 40, CELLS, 0.5, 3, 11, o, "blur"),
        "blend3d": lambda k, o: k.rise_blend_3d(ItemContext("c", clip, BLACK, k), 1, 0, 20, 4, CELLS_T, 0.5, 2, 10,
                                                o, "mean"),
        "boxes": lambda k, o: k.paste_boxes(o, x, BLACK.view(3, 1, 1), [(i, i + 9, 2, 2 + 2 * i) for i in range(8)]),
        "curve": lambda k, o: k.curve_blend(o, x, BLACK.view(3, 1, 1), rank, torch.arange(8) * 60),
    }
    for name, op in ops.items():
        shape = clip.shape if name == "blend3d" else x.shape
        layout = torch.contiguous_format if name == "blend3d" else torch.channels_last
        f32, low = _batch(8, shape, layout), _batch(8, shape, layout, dtype)
        op(twin, f32)
        op(twin, low)
        assert np.array_equal(_bits(low), _bits(f32.to(dtype))), name
    masks = twin.rise_masks(1, 0, 40, CELLS, 0.5, SIZE, start=3, stop=11)
    low = twin.rise_masks(1, 0, 40, CELLS, 0.5, SIZE, start=3, stop=11, out=torch.empty(8, *SIZE, 3, dtype=dtype))
    assert np.array_equal(_bits(low), _bits(masks[..., None].expand(low.shape).to(dtype)))
    masks3 = twin.rise_masks_3d(1, 0, 20, 4, CELLS_T, 0.5, CLIP, start=2, stop=5)
    low3 = twin.rise_masks_3d(1, 0, 20, 4, CELLS_T, 0.5, CLIP, start=2, stop=5, out=torch.empty(3, *CLIP, dtype=dtype))
    assert np.array_equal(_bits(low3), _bits(masks3.to(dtype)))


@pytest.mark.parametrize(("dtype", "name"), [(torch.bfloat16, "bf16"), (torch.float16, "f16")])
def test_the_float_conversion_rounds_like_torch(twin, dtype, name):
    """Every class of float32: random bit patterns, subnormals of both formats and their rounding ties,
    the overflow edge of f16, infinities and NaNs (a NaN must stay a NaN; torch itself stores NaNs with
    different bits on its scalar and vector paths, so only NaN-ness is compared)."""
    tiny = 2.0 ** -24  # the smallest f16 subnormal
    special = [0.0, -0.0, tiny, tiny / 2, tiny * 0.75, tiny * 1.5, tiny * 2.5, tiny * 1023.5, 2.0 ** -14,
               2.0 ** -14 * (1 - 2.0 ** -12), 65504.0, 65519.99, 65520.0, 65536.0, 1e5, -65520.0, 3.4e38,
               float("inf"), -float("inf"), 1e-39, -3e-40, 2.0 ** -126, 2.0 ** -149, 1.0 + 2.0 ** -8,
               1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 1.0 + 2.0 ** -11 + 2.0 ** -20]
    values = torch.tensor(special, dtype=torch.float32)
    random = torch.randint(-2**31, 2**31, (20000,), dtype=torch.int64, generator=torch.Generator().manual_seed(0))
    nans = torch.tensor([0x7FC00000, 0x7F800001, 0xFF800100, 0x7FFFFFFF, 0x7F801000], dtype=torch.int64)
    bits = torch.cat([values.view(torch.int32).long(), random, nans]).to(torch.int32)
    src = bits.view(torch.float32)
    out = torch.empty(src.shape, dtype=dtype)
    twin.launch(f"cast<{name}>", src.numel(), (out, src, src.numel()))
    ref = src.to(dtype)
    nan = torch.isnan(src)
    assert torch.equal(torch.isnan(out), nan)
    assert np.array_equal(_bits(out)[~nan.numpy()], _bits(ref)[~nan.numpy()])
    assert float(src[torch.isfinite(src)].abs().max()) > 65520 and bool((ref[: len(special)] == 0).any())


def test_batch_dtype_is_the_models():
    from salient.kernels.cupy import CupyKernels

    backend = CupyKernels(launcher=lambda *a: None)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert backend.batch_dtype(dtype) == dtype and TORCH.batch_dtype(dtype) == torch.float32
    assert backend.batch_dtype(torch.float64) == torch.float32


def test_launchers_check_devices_and_argument_kinds(twin):
    from salient.kernels.cupy.launch import CupyLauncher

    cpu, meta = torch.zeros(4), torch.empty(4, device="meta")
    with pytest.raises(ValueError, match="cast<float>: a tensor on cpu, not on a cuda device"):
        CupyLauncher()("cast<float>", 4, (cpu, cpu, 4))  # before CuPy is asked for anything
    with pytest.raises(ValueError, match="a tensor on meta, not on a cpu device"):
        twin.launch("cast<float>", 4, (meta, cpu, 4))
    with pytest.raises(TypeError, match="cannot pass a str"):
        twin.launch("cast<float>", 4, (cpu, cpu, "4"))
    src, out = torch.arange(4.0), torch.zeros(4)
    twin.launch("cast<float>", 4, (out, src, np.int64(4)))  # numpy integers are long long too
    assert torch.equal(out, src)
