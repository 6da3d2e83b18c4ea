/* resample.cu: nearest and bilinear 2-D upsampling and N-d padding on the GPU,
 * forward and backward, beside core/cpu/cpu_resample.c. Source indices and
 * weights are the CPU's (PyTorch's) formulas evaluated per output with the
 * same roundings: products that the CPU rounds separately use __fmul_rn /
 * __dmul_rn so the compiler cannot fuse them into a multiply-add, which
 * would move an index by an ulp. Forward data movers (nearest, pad) work on
 * any dtype by element size; backward scatters with atomicAdd (f32/f64). */
#include "common.cuh"

/* ---- nearest ------------------------------------------------------------------ */
ADK_INLINE int64_t nearest_src(int64_t dst, int64_t in, int64_t out) {
  if (out == in) return dst;
  if (out == 2 * in) return dst >> 1;
  const float scale = __fdiv_rn((float)in, (float)out);
  const int64_t s = (int64_t)floorf(__fmul_rn((float)dst, scale));
  return s < in - 1 ? s : in - 1;
}

template <typename U>
__global__ void upsample_nearest2d_fwd_kernel(U *y, const U *x, int64_t P, int64_t H, int64_t W, int64_t Ho,
                                              int64_t Wo) {
  ADK_GRID_LOOP(k, P * Ho * Wo) {
    const int64_t ow = k % Wo, oh = (k / Wo) % Ho, p = k / (Wo * Ho);
    y[k] = x[(p * H + nearest_src(oh, H, Ho)) * W + nearest_src(ow, W, Wo)];
  }
}

extern "C" cudaError_t ad_launch_upsample_nearest2d_fwd(const adk_ctx *c, void *y, const void *x, size_t esize,
                                                        int64_t P, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  const int64_t n = P * Ho * Wo;
  if (n == 0) return cudaSuccess;
  const unsigned g = adk_blocks(c, n, 256);
  switch (esize) {
  case 8: upsample_nearest2d_fwd_kernel<uint64_t><<<g, 256, 0, c->stream>>>((uint64_t *)y, (const uint64_t *)x, P, H, W, Ho, Wo); break;
  case 4: upsample_nearest2d_fwd_kernel<uint32_t><<<g, 256, 0, c->stream>>>((uint32_t *)y, (const uint32_t *)x, P, H, W, Ho, Wo); break;
  case 2: upsample_nearest2d_fwd_kernel<uint16_t><<<g, 256, 0, c->stream>>>((uint16_t *)y, (const uint16_t *)x, P, H, W, Ho, Wo); break;
  default: upsample_nearest2d_fwd_kernel<uint8_t><<<g, 256, 0, c->stream>>>((uint8_t *)y, (const uint8_t *)x, P, H, W, Ho, Wo); break;
  }
  return adk_launched();
}

template <typename T>
__global__ void upsample_nearest2d_bwd_kernel(T *dx, const T *dy, int64_t P, int64_t H, int64_t W, int64_t Ho,
                                              int64_t Wo) {
  ADK_GRID_LOOP(k, P * Ho * Wo) {
    const int64_t ow = k % Wo, oh = (k / Wo) % Ho, p = k / (Wo * Ho);
    atomicAdd(dx + (p * H + nearest_src(oh, H, Ho)) * W + nearest_src(ow, W, Wo), dy[k]);
  }
}

extern "C" cudaError_t ad_launch_upsample_nearest2d_bwd(const adk_ctx *c, void *dx, const void *dy, int dtype,
                                                        int64_t P, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  if (P * H * W == 0) return cudaSuccess;
  cudaError_t e = cudaMemsetAsync(dx, 0, (size_t)(P * H * W) * (dtype == ADK_F64 ? 8 : 4), c->stream);
  if (e != cudaSuccess || P * Ho * Wo == 0) return e;
  ADK_DISPATCH_F(dtype, T, (upsample_nearest2d_bwd_kernel<T><<<adk_blocks(c, P * Ho * Wo, 256), 256, 0, c->stream>>>(
                              (T *)dx, (const T *)dy, P, H, W, Ho, Wo)));
  return adk_launched();
}

/* ---- bilinear ----------------------------------------------------------------- */
struct lin_w { int64_t i0, i1; double l0, l1; };

/* PyTorch's source index and weights for f32 data: an f32 scale, the index kept
 * in double, f32 weights (see cpu_resample.c) */
ADK_INLINE lin_w lin_weight_f32(int64_t o, int64_t in, int64_t out, bool ac) {
  if (out == in) return lin_w{o, o, 1.0, 0.0};
  const float scale = ac ? (out > 1 ? __fdiv_rn((float)(in - 1), (float)(out - 1)) : 0.0f)
                         : __fdiv_rn((float)in, (float)out);
  double real = ac ? __dmul_rn((double)scale, (double)o)
                   : __dadd_rn(__dmul_rn((double)scale, __dadd_rn((double)o, 0.5)), -0.5);
  if (!ac && real < 0) real = 0;
  const int64_t i0 = (int64_t)real;
  const float l1 = (float)fmin(fmax(real - (double)i0, 0.0), 1.0);
  return lin_w{i0, i0 + (i0 < in - 1 ? 1 : 0), (double)(1.0f - l1), (double)l1};
}
ADK_INLINE lin_w lin_weight_f64(int64_t o, int64_t in, int64_t out, bool ac) {
  if (out == in) return lin_w{o, o, 1.0, 0.0};
  const double scale = ac ? (out > 1 ? (double)(in - 1) / (double)(out - 1) : 0.0) : (double)in / (double)out;
  double real = ac ? __dmul_rn(scale, (double)o) : __dadd_rn(__dmul_rn(scale, __dadd_rn((double)o, 0.5)), -0.5);
  if (!ac && real < 0) real = 0;
  const int64_t i0 = (int64_t)real;
  const double l1 = fmin(fmax(real - (double)i0, 0.0), 1.0);
  return lin_w{i0, i0 + (i0 < in - 1 ? 1 : 0), 1.0 - l1, l1};
}

__global__ void upsample_bilinear2d_fwd_f32_kernel(float *y, const float *x, int64_t P, int64_t H, int64_t W,
                                                   int64_t Ho, int64_t Wo, bool ac) {
  ADK_GRID_LOOP(k, P * Ho * Wo) {
    const int64_t ow = k % Wo, oh = (k / Wo) % Ho, p = k / (Wo * Ho);
    const lin_w h = lin_weight_f32(oh, H, Ho, ac), w = lin_weight_f32(ow, W, Wo, ac);
    const float *r0 = x + (p * H + h.i0) * W, *r1 = x + (p * H + h.i1) * W;
    const float w0 = (float)w.l0, w1 = (float)w.l1, h0 = (float)h.l0, h1 = (float)h.l1;
    /* the CPU's order of roundings: (r0 w0 + r0 w1) h0 + (r1 w0 + r1 w1) h1 */
    const float a = __fadd_rn(__fmul_rn(r0[w.i0], w0), __fmul_rn(r0[w.i1], w1));
    const float b = __fadd_rn(__fmul_rn(r1[w.i0], w0), __fmul_rn(r1[w.i1], w1));
    y[k] = __fadd_rn(__fmul_rn(a, h0), __fmul_rn(b, h1));
  }
}
__global__ void upsample_bilinear2d_fwd_f64_kernel(double *y, const double *x, int64_t P, int64_t H, int64_t W,
                                                   int64_t Ho, int64_t Wo, bool ac) {
  ADK_GRID_LOOP(k, P * Ho * Wo) {
    const int64_t ow = k % Wo, oh = (k / Wo) % Ho, p = k / (Wo * Ho);
    const lin_w h = lin_weight_f64(oh, H, Ho, ac), w = lin_weight_f64(ow, W, Wo, ac);
    const double *r0 = x + (p * H + h.i0) * W, *r1 = x + (p * H + h.i1) * W;
    y[k] = (r0[w.i0] * w.l0 + r0[w.i1] * w.l1) * h.l0 + (r1[w.i0] * w.l0 + r1[w.i1] * w.l1) * h.l1;
  }
}

extern "C" cudaError_t ad_launch_upsample_bilinear2d_fwd(const adk_ctx *c, void *y, const void *x, int dtype,
                                                         int64_t P, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                                                         bool align_corners) {
  const int64_t n = P * Ho * Wo;
  if (n == 0) return cudaSuccess;
  const unsigned g = adk_blocks(c, n, 256);
  if (dtype == ADK_F32)
    upsample_bilinear2d_fwd_f32_kernel<<<g, 256, 0, c->stream>>>((float *)y, (const float *)x, P, H, W, Ho, Wo,
                                                                 align_corners);
  else if (dtype == ADK_F64)
    upsample_bilinear2d_fwd_f64_kernel<<<g, 256, 0, c->stream>>>((double *)y, (const double *)x, P, H, W, Ho, Wo,
                                                                 align_corners);
  else
    return cudaErrorInvalidValue;
  return adk_launched();
}

template <typename T>
__global__ void upsample_bilinear2d_bwd_kernel(T *dx, const T *dy, int64_t P, int64_t H, int64_t W, int64_t Ho,
                                               int64_t Wo, bool ac) {
  ADK_GRID_LOOP(k, P * Ho * Wo) {
    const int64_t ow = k % Wo, oh = (k / Wo) % Ho, p = k / (Wo * Ho);
    const bool f64 = sizeof(T) == 8;
    const lin_w h = f64 ? lin_weight_f64(oh, H, Ho, ac) : lin_weight_f32(oh, H, Ho, ac);
    const lin_w w = f64 ? lin_weight_f64(ow, W, Wo, ac) : lin_weight_f32(ow, W, Wo, ac);
    const double g = (double)dy[k];
    T *r0 = dx + (p * H + h.i0) * W, *r1 = dx + (p * H + h.i1) * W;
    atomicAdd(r0 + w.i0, (T)(g * h.l0 * w.l0));
    atomicAdd(r0 + w.i1, (T)(g * h.l0 * w.l1));
    atomicAdd(r1 + w.i0, (T)(g * h.l1 * w.l0));
    atomicAdd(r1 + w.i1, (T)(g * h.l1 * w.l1));
  }
}

extern "C" cudaError_t ad_launch_upsample_bilinear2d_bwd(const adk_ctx *c, void *dx, const void *dy, int dtype,
                                                         int64_t P, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                                                         bool align_corners) {
  if (P * H * W == 0) return cudaSuccess;
  cudaError_t e = cudaMemsetAsync(dx, 0, (size_t)(P * H * W) * (dtype == ADK_F64 ? 8 : 4), c->stream);
  if (e != cudaSuccess || P * Ho * Wo == 0) return e;
  ADK_DISPATCH_F(dtype, T, (upsample_bilinear2d_bwd_kernel<T><<<adk_blocks(c, P * Ho * Wo, 256), 256, 0, c->stream>>>(
                              (T *)dx, (const T *)dy, P, H, W, Ho, Wo, align_corners)));
  return adk_launched();
}

/* ---- pad --------------------------------------------------------------------------- */
struct pad_geom {
  int ndim;
  int64_t yshape[ADK_MAX_DIMS], xshape[ADK_MAX_DIMS], before[ADK_MAX_DIMS];
  int mode;
};

/* source index of padded position i (before already subtracted), or -1 for the fill */
ADK_INLINE int64_t pad_src(int64_t i, int64_t n, int mode) {
  if (i >= 0 && i < n) return i;
  if (mode == 0 || n == 0) return -1;
  if (mode == 1) {
    if (i < 0) i = -i;
    if (i >= n) i = 2 * (n - 1) - i;
    return i;
  }
  return i < 0 ? 0 : n - 1;
}

/* offset in x of y's element k, or -1 when it falls in constant padding */
ADK_INLINE int64_t pad_offset(const pad_geom &g, int64_t k) {
  int64_t off = 0, stride = 1;
  for (int d = g.ndim - 1; d >= 0; d--) {
    const int64_t i = k % g.yshape[d];
    k /= g.yshape[d];
    const int64_t s = pad_src(i - g.before[d], g.xshape[d], g.mode);
    if (s < 0) return -1;
    off += s * stride;
    stride *= g.xshape[d];
  }
  return off;
}

template <typename U>
__global__ void pad_fwd_kernel(U *y, const U *x, int64_t n, pad_geom g, U fill) {
  ADK_GRID_LOOP(k, n) {
    const int64_t s = pad_offset(g, k);
    y[k] = s < 0 ? fill : x[s];
  }
}

static bool pad_geom_of(pad_geom *g, int ndim, const int64_t *yshape, const int64_t *xshape, const int64_t *before,
                        int mode) {
  if (ndim > ADK_MAX_DIMS) return false;
  g->ndim = ndim;
  g->mode = mode;
  for (int d = 0; d < ndim; d++) {
    g->yshape[d] = yshape[d];
    g->xshape[d] = xshape[d];
    g->before[d] = before[d];
  }
  return true;
}

/* the fill value's bit pattern in dt (the CPU's value_bytes) */
static uint64_t pad_value_bits(int dt, double v) {
  uint64_t b = 0;
  switch (dt) {
  case ADK_F32: { float f = (float)v; memcpy(&b, &f, 4); break; }
  case ADK_F64: memcpy(&b, &v, 8); break;
  case ADK_F16: b = ad_f32_to_f16((float)v); break;
  case ADK_BF16: b = ad_f32_to_bf16((float)v); break;
  case ADK_I64: { int64_t i = (int64_t)v; memcpy(&b, &i, 8); break; }
  case ADK_I32: { int32_t i = (int32_t)v; uint32_t u; memcpy(&u, &i, 4); b = u; break; }
  case ADK_U8: b = (uint8_t)(int64_t)v; break;
  case ADK_BOOL: b = v != 0; break;
  default: break;
  }
  return b;
}

extern "C" cudaError_t ad_launch_pad_fwd(const adk_ctx *c, void *y, const void *x, int dtype, int ndim,
                                         const int64_t *yshape, const int64_t *xshape, const int64_t *before, int mode,
                                         double value) {
  pad_geom g;
  if (!pad_geom_of(&g, ndim, yshape, xshape, before, mode)) return cudaErrorInvalidValue;
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= yshape[d];
  if (n == 0) return cudaSuccess;
  const uint64_t bits = pad_value_bits(dtype, value);
  const unsigned blocks = adk_blocks(c, n, 256);
  switch (adk_dtype_size(dtype)) {
  case 8: pad_fwd_kernel<uint64_t><<<blocks, 256, 0, c->stream>>>((uint64_t *)y, (const uint64_t *)x, n, g, bits); break;
  case 4: pad_fwd_kernel<uint32_t><<<blocks, 256, 0, c->stream>>>((uint32_t *)y, (const uint32_t *)x, n, g, (uint32_t)bits); break;
  case 2: pad_fwd_kernel<uint16_t><<<blocks, 256, 0, c->stream>>>((uint16_t *)y, (const uint16_t *)x, n, g, (uint16_t)bits); break;
  default: pad_fwd_kernel<uint8_t><<<blocks, 256, 0, c->stream>>>((uint8_t *)y, (const uint8_t *)x, n, g, (uint8_t)bits); break;
  }
  return adk_launched();
}

template <typename T>
__global__ void pad_bwd_kernel(T *dx, const T *dy, int64_t n, pad_geom g) {
  ADK_GRID_LOOP(k, n) {
    const int64_t s = pad_offset(g, k);
    if (s >= 0) atomicAdd(dx + s, dy[k]);
  }
}

extern "C" cudaError_t ad_launch_pad_bwd(const adk_ctx *c, void *dx, const void *dy, int dtype, int ndim,
                                         const int64_t *yshape, const int64_t *xshape, const int64_t *before,
                                         int mode) {
  pad_geom g;
  if (!pad_geom_of(&g, ndim, yshape, xshape, before, mode)) return cudaErrorInvalidValue;
  int64_t n = 1, nx = 1;
  for (int d = 0; d < ndim; d++) { n *= yshape[d]; nx *= xshape[d]; }
  if (nx == 0) return cudaSuccess;
  cudaError_t e = cudaMemsetAsync(dx, 0, (size_t)nx * (dtype == ADK_F64 ? 8 : 4), c->stream);
  if (e != cudaSuccess || n == 0) return e;
  ADK_DISPATCH_F(dtype, T, (pad_bwd_kernel<T><<<adk_blocks(c, n, 256), 256, 0, c->stream>>>((T *)dx, (const T *)dy,
                                                                                           n, g)));
  return adk_launched();
}
