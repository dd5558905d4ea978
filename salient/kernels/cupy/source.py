"""The CUDA C++ source of every CuPy kernel, as one string compiled once per process (NVRTC on a GPU,
g++ for the CPU twin, :mod:`.twin`).

Rules that keep the GPU and the CPU twin bit-identical: no CUDA headers; storage types ``float``, ``bf16``
and ``f16`` (``store`` rounds a float to nearest-even by integer bit arithmetic); every multiply-add an
explicit ``fmaf`` (compiled with ``--fmad=false`` / ``-ffp-contract=off``, no flush to zero); grid-stride
loops over 64-bit element indices; integer scalars ``long long``, shapes and strides in elements (a
stride may be 0: a fill broadcast over pixels). Inputs are float32; outputs are written in the storage
type ``S`` at any strides.

A RISE mask value (:mod:`salient.kernels.torch.rise_masks`, ``rise_masks_3d``) is computed in the kernel
from the draw's grid G_i, shifts and interpolation matrices:
m_i[y, x] = Σ_a Wy[dy+y, a] Σ_b G_i[a, b] Wx[dx+x, b], and m_i[t, y, x] = Σ_a Wt[dt+t, a] Σ_b Wy[dy+y, b]
Σ_c G_i[a, b, c] Wx[dx+x, c] (sums in index order, fmaf accumulation).
"""

from __future__ import annotations

TARGETS_PER_THREAD = 8  # a weighted-sum thread accumulates this many targets (columns of the weights) at once

SOURCE = r"""
struct bf16 { unsigned short bits; };
struct f16 { unsigned short bits; };

#define SALIENT_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

__device__ __forceinline__ void store(float* p, float v) { *p = v; }

__device__ __forceinline__ void store(bf16* p, float v) {  // round to nearest even; a NaN stays a (quiet) NaN
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p->bits = (unsigned short)((u >> 16) | 0x40u); return; }
    p->bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ void store(f16* p, float v) {  // round to nearest even, subnormals, overflow to inf
    unsigned int u = __float_as_uint(v);
    unsigned int sign = (u >> 16) & 0x8000u;
    unsigned int a = u & 0x7fffffffu;
    unsigned int h;
    if (a > 0x7f800000u) {
        h = 0x7e00u | ((a >> 13) & 0x3ffu);  // quiet NaN, the payload's top bits
    } else if (a >= 0x477ff000u) {
        h = 0x7c00u;  // >= 65520 rounds to inf
    } else if (a >= 0x38800000u) {  // a normal half: re-bias the exponent by -112, round at bit 13
        h = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13;
    } else {  // a subnormal half (or zero): value / 2^-24 = mant * 2^(e - 126), rounded to an integer
        unsigned int e = a >> 23;
        unsigned int shift = 126u - e;
        if (e == 0u || shift > 24u) {
            h = 0u;
        } else {
            unsigned int mant = (a & 0x7fffffu) | 0x800000u;
            unsigned int q = mant >> shift;
            unsigned int rem = mant & ((1u << shift) - 1u);
            unsigned int half = 1u << (shift - 1u);
            h = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
        }
    }
    p->bits = (unsigned short)(sign | h);
}

// m[y, x] = sum_a wy_row[a] * sum_b g[a, b] * wx_row[b]
__device__ __forceinline__ float rise_value_2d(const float* g, const float* wy_row, const float* wx_row, long long s) {
    float m = 0.0f;
    for (long long a = 0; a < s; ++a) {
        float inner = 0.0f;
        for (long long b = 0; b < s; ++b) inner = fmaf(g[a * s + b], wx_row[b], inner);
        m = fmaf(wy_row[a], inner, m);
    }
    return m;
}

// m[t, y, x] = sum_a wt_row[a] * sum_b wy_row[b] * sum_c g[a, b, c] * wx_row[c]
__device__ __forceinline__ float rise_value_3d(const float* g, const float* wt_row, const float* wy_row,
                                               const float* wx_row, long long st, long long s) {
    float m = 0.0f;
    for (long long a = 0; a < st; ++a) {
        m = fmaf(wt_row[a], rise_value_2d(g + a * s * s, wy_row, wx_row, s), m);
    }
    return m;
}

// mask `mask` (absolute index in the draw) at pixel (y, x)
__device__ __forceinline__ float rise_mask_2d(const float* grids, const long long* shifts, const float* wy,
                                              const float* wx, long long s, long long mask, long long y, long long x) {
    const long long dy = shifts[2 * mask], dx = shifts[2 * mask + 1];
    return rise_value_2d(grids + mask * s * s, wy + (dy + y) * s, wx + (dx + x) * s, s);
}

__device__ __forceinline__ float rise_mask_3d(const float* grids, const long long* shifts, const float* wt,
                                              const float* wy, const float* wx, long long st, long long s,
                                              long long mask, long long t, long long y, long long x) {
    const long long dt = shifts[3 * mask], dy = shifts[3 * mask + 1], dx = shifts[3 * mask + 2];
    return rise_value_3d(grids + mask * st * s * s, wt + (dt + t) * st, wy + (dy + y) * s, wx + (dx + x) * s, st, s);
}

// out[j, c, y, x] = u + m_{first+j}[y, x] * (x_img - u), for j < k; x_img, u (C, H, W) by strides
template <typename S>
__global__ void rise_blend_2d(S* out, const float* img, const float* u, const float* grids, const long long* shifts,
                              const float* wy, const float* wx, long long k, long long C, long long H, long long W,
                              long long s, long long first, long long o0, long long o1, long long o2, long long o3,
                              long long x0, long long x1, long long x2, long long u0, long long u1, long long u2) {
    SALIENT_LOOP(i, k * H * W) {
        const long long x = i % W, y = (i / W) % H, j = i / (W * H);
        const float m = rise_mask_2d(grids, shifts, wy, wx, s, first + j, y, x);
        for (long long c = 0; c < C; ++c) {
            const float fill = u[c * u0 + y * u1 + x * u2];
            store(out + j * o0 + c * o1 + y * o2 + x * o3, fmaf(m, img[c * x0 + y * x1 + x * x2] - fill, fill));
        }
    }
}

// out[j, c, t, y, x] = u + m_{first+j}[t, y, x] * (x_img - u); x_img, u (C, T, H, W) by strides
template <typename S>
__global__ void rise_blend_3d(S* out, const float* img, const float* u, const float* grids, const long long* shifts,
                              const float* wt, const float* wy, const float* wx, long long k, long long C, long long T,
                              long long H, long long W, long long st, long long s, long long first, long long o0,
                              long long o1, long long o2, long long o3, long long o4, long long x0, long long x1,
                              long long x2, long long x3, long long u0, long long u1, long long u2, long long u3) {
    SALIENT_LOOP(i, k * T * H * W) {
        const long long x = i % W, y = (i / W) % H, t = (i / (W * H)) % T, j = i / (W * H * T);
        const float m = rise_mask_3d(grids, shifts, wt, wy, wx, st, s, first + j, t, y, x);
        for (long long c = 0; c < C; ++c) {
            const float fill = u[c * u0 + t * u1 + y * u2 + x * u3];
            store(out + j * o0 + c * o1 + t * o2 + y * o3 + x * o4,
                  fmaf(m, img[c * x0 + t * x1 + y * x2 + x * x3] - fill, fill));
        }
    }
}

#define SALIENT_TCHUNK @TARGETS_PER_THREAD@  // targets accumulated per thread

// total[t, y, x] = sum_{j < k} w[j, t] * m_{first+j}[y, x] (j ascending), written contiguous (nt, H, W)
__global__ void rise_wsum_2d(float* total, const float* w, const float* grids, const long long* shifts,
                             const float* wy, const float* wx, long long k, long long nt, long long H, long long W,
                             long long s, long long first, long long w0, long long w1) {
    const long long chunks = (nt + SALIENT_TCHUNK - 1) / SALIENT_TCHUNK;
    SALIENT_LOOP(i, chunks * H * W) {
        const long long x = i % W, y = (i / W) % H, t0 = (i / (W * H)) * SALIENT_TCHUNK;
        float acc[SALIENT_TCHUNK];
        for (int q = 0; q < SALIENT_TCHUNK; ++q) acc[q] = 0.0f;
        for (long long j = 0; j < k; ++j) {
            const float m = rise_mask_2d(grids, shifts, wy, wx, s, first + j, y, x);
            for (int q = 0; q < SALIENT_TCHUNK; ++q) {
                if (t0 + q < nt) acc[q] = fmaf(w[j * w0 + (t0 + q) * w1], m, acc[q]);
            }
        }
        for (int q = 0; q < SALIENT_TCHUNK; ++q) {
            if (t0 + q < nt) total[((t0 + q) * H + y) * W + x] = acc[q];
        }
    }
}

// total[q, t, y, x] = sum_{j < k} w[j, q] * m_{first+j}[t, y, x], written contiguous (nq, T, H, W)
__global__ void rise_wsum_3d(float* total, const float* w, const float* grids, const long long* shifts,
                             const float* wt, const float* wy, const float* wx, long long k, long long nq, long long T,
                             long long H, long long W, long long st, long long s, long long first, long long w0,
                             long long w1) {
    const long long chunks = (nq + SALIENT_TCHUNK - 1) / SALIENT_TCHUNK;
    SALIENT_LOOP(i, chunks * T * H * W) {
        const long long x = i % W, y = (i / W) % H, t = (i / (W * H)) % T, q0 = (i / (W * H * T)) * SALIENT_TCHUNK;
        float acc[SALIENT_TCHUNK];
        for (int q = 0; q < SALIENT_TCHUNK; ++q) acc[q] = 0.0f;
        for (long long j = 0; j < k; ++j) {
            const float m = rise_mask_3d(grids, shifts, wt, wy, wx, st, s, first + j, t, y, x);
            for (int q = 0; q < SALIENT_TCHUNK; ++q) {
                if (q0 + q < nq) acc[q] = fmaf(w[j * w0 + (q0 + q) * w1], m, acc[q]);
            }
        }
        for (int q = 0; q < SALIENT_TCHUNK; ++q) {
            if (q0 + q < nq) total[(((q0 + q) * T + t) * H + y) * W + x] = acc[q];
        }
    }
}

// out[j] = base except box j = (t0, t1, y0, y1, x0, x1) (half-open), which shows inner; (C, T, H, W) by strides
template <typename S>
__global__ void paste_boxes(S* out, const float* base, const float* inner, const long long* boxes, long long k,
                            long long C, long long T, long long H, long long W, long long o0, long long o1,
                            long long o2, long long o3, long long o4, long long b0, long long b1, long long b2,
                            long long b3, long long i0, long long i1, long long i2, long long i3) {
    SALIENT_LOOP(i, k * T * H * W) {
        const long long x = i % W, y = (i / W) % H, t = (i / (W * H)) % T, j = i / (W * H * T);
        const long long* box = boxes + 6 * j;
        const bool in = t >= box[0] && t < box[1] && y >= box[2] && y < box[3] && x >= box[4] && x < box[5];
        for (long long c = 0; c < C; ++c) {
            const float v = in ? inner[c * i0 + t * i1 + y * i2 + x * i3] : base[c * b0 + t * b1 + y * b2 + x * b3];
            store(out + j * o0 + c * o1 + t * o2 + y * o3 + x * o4, v);
        }
    }
}

// out[j, c, t, y, x] = base + keep * (top - base), keep = rank[y, x] < counts[j] ? 1 : 0
template <typename S>
__global__ void curve_blend(S* out, const float* top, const float* base, const long long* rank,
                            const long long* counts, long long k, long long C, long long T, long long H, long long W,
                            long long o0, long long o1, long long o2, long long o3, long long o4, long long p0,
                            long long p1, long long p2, long long p3, long long b0, long long b1, long long b2,
                            long long b3, long long r0, long long r1, long long n0) {
    SALIENT_LOOP(i, k * T * H * W) {
        const long long x = i % W, y = (i / W) % H, t = (i / (W * H)) % T, j = i / (W * H * T);
        const float keep = rank[y * r0 + x * r1] < counts[j * n0] ? 1.0f : 0.0f;
        for (long long c = 0; c < C; ++c) {
            const float b = base[c * b0 + t * b1 + y * b2 + x * b3];
            store(out + j * o0 + c * o1 + t * o2 + y * o3 + x * o4,
                  fmaf(keep, top[c * p0 + t * p1 + y * p2 + x * p3] - b, b));
        }
    }
}

// out[i] = src[i] in the storage type (contiguous)
template <typename S>
__global__ void cast(S* out, const float* src, long long n) {
    SALIENT_LOOP(i, n) { store(out + i, src[i]); }
}
""".replace("@TARGETS_PER_THREAD@", str(TARGETS_PER_THREAD))

STORAGE_TYPES = ("float", "bf16", "f16")
TEMPLATES = ("rise_blend_2d", "rise_blend_3d", "paste_boxes", "curve_blend", "cast")
NAME_EXPRESSIONS: tuple[str, ...] = (
    *(f"{kernel}<{s}>" for kernel in TEMPLATES for s in STORAGE_TYPES), "rise_wsum_2d", "rise_wsum_3d",
)
OPTIONS = ("-std=c++17", "--fmad=false", "--ftz=false", "--prec-div=true", "--prec-sqrt=true")
