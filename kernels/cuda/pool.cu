/* pool.cu: max / average / adaptive-average 2-D pooling on the GPU, forward
 * and backward, beside core/cpu/cpu_pool.c. NCHW contiguous f32/f64 seen as
 * P = N*C planes. Window bounds are the CPU's (PyTorch's) to the index; sums
 * in double. Forward: one thread per output. Backward: average pooling
 * gathers, per input element, from the outputs whose windows cover it (no
 * atomics, deterministic); max pooling scatters through the saved indices
 * with atomicAdd (windows may overlap). */
#include "common.cuh"

static int64_t stride_or_kernel(int s, int k) { return s > 0 ? s : k; }
static int64_t dilation_or_one(int d) { return d > 0 ? d : 1; }

struct pool_geom {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  bool count_include_pad;
  int divisor_override;
};

static pool_geom geom_of(const adk_pool2d *a) {
  pool_geom g;
  g.kh = a->kernel[0];
  g.kw = a->kernel[1];
  g.sh = stride_or_kernel(a->stride[0], a->kernel[0]);
  g.sw = stride_or_kernel(a->stride[1], a->kernel[1]);
  g.ph = a->padding[0];
  g.pw = a->padding[1];
  g.dh = dilation_or_one(a->dilation[0]);
  g.dw = dilation_or_one(a->dilation[1]);
  g.count_include_pad = a->count_include_pad;
  g.divisor_override = a->divisor_override;
  return g;
}

/* ---- max --------------------------------------------------------------------- */
template <typename T>
__global__ void max_pool2d_fwd_kernel(T *y, int64_t *ind, const T *x, int64_t P, int64_t H, int64_t W, int64_t Ho,
                                      int64_t Wo, pool_geom g) {
  ADK_GRID_LOOP(k, P * Ho * Wo) {
    const int64_t ow = k % Wo, oh = (k / Wo) % Ho, p = k / (Wo * Ho);
    int64_t h0 = oh * g.sh - g.ph, h1 = h0 + (g.kh - 1) * g.dh + 1;
    if (h1 > H) h1 = H;
    while (h0 < 0) h0 += g.dh;
    int64_t w0 = ow * g.sw - g.pw, w1 = w0 + (g.kw - 1) * g.dw + 1;
    if (w1 > W) w1 = W;
    while (w0 < 0) w0 += g.dw;
    const T *xp = x + p * H * W;
    int64_t bi = h0 * W + w0;
    double best = -INFINITY;
    for (int64_t ih = h0; ih < h1; ih += g.dh)
      for (int64_t iw = w0; iw < w1; iw += g.dw) {
        const double v = (double)xp[ih * W + iw];
        if (v > best || v != v) { best = v; bi = ih * W + iw; }   /* NaN wins (the last one) */
      }
    y[k] = (T)best;
    ind[k] = bi;
  }
}

extern "C" cudaError_t ad_launch_max_pool2d_fwd(const adk_ctx *c, void *y, int64_t *indices, const void *x, int dtype,
                                                int64_t P, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                                                const adk_pool2d *a) {
  const int64_t n = P * Ho * Wo;
  if (n == 0) return cudaSuccess;
  pool_geom g = geom_of(a);
  ADK_DISPATCH_F(dtype, T, (max_pool2d_fwd_kernel<T><<<adk_blocks(c, n, 256), 256, 0, c->stream>>>(
                              (T *)y, indices, (const T *)x, P, H, W, Ho, Wo, g)));
  return adk_launched();
}

template <typename T>
__global__ void max_pool2d_bwd_kernel(T *dx, const T *dy, const int64_t *ind, int64_t P, int64_t HW, int64_t OHW) {
  ADK_GRID_LOOP(k, P * OHW) {
    const int64_t p = k / OHW, i = ind[k];
    if (i >= 0 && i < HW) atomicAdd(dx + p * HW + i, dy[k]);
  }
}

extern "C" cudaError_t ad_launch_max_pool2d_bwd(const adk_ctx *c, void *dx, const void *dy, const int64_t *indices,
                                                int dtype, int64_t P, int64_t HW, int64_t OHW) {
  if (P * HW == 0) return cudaSuccess;
  cudaError_t e = cudaMemsetAsync(dx, 0, (size_t)(P * HW) * (dtype == ADK_F64 ? 8 : 4), c->stream);
  if (e != cudaSuccess || P * OHW == 0) return e;
  ADK_DISPATCH_F(dtype, T, (max_pool2d_bwd_kernel<T><<<adk_blocks(c, P * OHW, 256), 256, 0, c->stream>>>(
                              (T *)dx, (const T *)dy, indices, P, HW, OHW)));
  return adk_launched();
}

/* ---- average --------------------------------------------------------------------- */
/* the window of output (oh, ow) clipped to the input and its divisor; false when
 * the window lies entirely in the padding */
ADK_INLINE bool avg_win(const pool_geom &g, int64_t H, int64_t W, int64_t oh, int64_t ow, int64_t *h0, int64_t *h1,
                        int64_t *w0, int64_t *w1, double *div) {
  int64_t a0 = oh * g.sh - g.ph, b0 = ow * g.sw - g.pw;
  int64_t a1 = a0 + g.kh, b1 = b0 + g.kw;
  if (a1 > H + g.ph) a1 = H + g.ph;
  if (b1 > W + g.pw) b1 = W + g.pw;
  const int64_t pool_size = (a1 - a0) * (b1 - b0);
  if (a0 < 0) a0 = 0;
  if (b0 < 0) b0 = 0;
  if (a1 > H) a1 = H;
  if (b1 > W) b1 = W;
  if (a0 >= a1 || b0 >= b1) return false;
  *h0 = a0; *h1 = a1; *w0 = b0; *w1 = b1;
  if (g.divisor_override) *div = g.divisor_override;
  else if (g.count_include_pad) *div = (double)pool_size;
  else *div = (double)((a1 - a0) * (b1 - b0));
  return true;
}

/* The common case (no padding, kernel == stride, every window inside the
 * input: floor mode, or ceil mode that adds no partial window) in 32-bit
 * index math: the windows tile the input without overlap or clipping, so each
 * input element has at most one window and every divisor is avg_win's
 * kh*kw (or the override). The sums below run in the general kernels' order,
 * so the bits are theirs. */
static bool avg_tiles(const pool_geom &g, int64_t P, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  return g.ph == 0 && g.pw == 0 && g.kh == g.sh && g.kw == g.sw && Ho > 0 && Wo > 0 && Ho * g.kh <= H &&
         Wo * g.kw <= W && P * H * W <= INT32_MAX;
}
static double avg_tile_div(const pool_geom &g) {
  return g.divisor_override ? (double)g.divisor_override : (double)(g.kh * g.kw);
}

/* KH, KW: the window when known at compile time (2x2: the loads of a window
 * are all issued before the first add), 0: kh, kw at run time */
template <typename T, int KH, int KW>
__global__ void avg_pool2d_fwd_tiled_kernel(T *y, const T *x, uint32_t n, uint32_t H, uint32_t W, uint32_t Ho,
                                            uint32_t Wo, uint32_t kh_, uint32_t kw_, double div) {
  const uint32_t kh = KH ? KH : kh_, kw = KW ? KW : kw_;
  for (uint32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < n; k += blockDim.x * gridDim.x) {
    const uint32_t r = k / Wo, ow = k - r * Wo, p = r / Ho, oh = r - p * Ho;
    const T *xp = x + ((p * H + oh * kh) * W + ow * kw);
    double s = 0;
#pragma unroll
    for (uint32_t i = 0; i < kh; i++)
#pragma unroll
      for (uint32_t j = 0; j < kw; j++) s += (double)xp[i * W + j];
    s /= div;
    y[k] = (T)s;
  }
}

/* Backward per output (one division per window, not per input element): its
 * window gets dy/div, and the last window of a row / column also zeroes the
 * inputs right of / below it that no window covers. s starts at 0 as in the
 * general path (0 + -0 is +0). */
template <typename T, int KH, int KW>
__global__ void avg_pool2d_bwd_tiled_kernel(T *dx, const T *dy, uint32_t n, uint32_t H, uint32_t W, uint32_t Ho,
                                            uint32_t Wo, uint32_t kh_, uint32_t kw_, double div) {
  const uint32_t kh = KH ? KH : kh_, kw = KW ? KW : kw_;
  for (uint32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < n; k += blockDim.x * gridDim.x) {
    const uint32_t r = k / Wo, ow = k - r * Wo, p = r / Ho, oh = r - p * Ho;
    double s = 0;
    s += (double)dy[k] / div;
    const T v = (T)s;
    const uint32_t h0 = oh * kh, h1 = h0 + kh, w0 = ow * kw, w1 = w0 + kw, we = ow == Wo - 1 ? W : w1;
    T *dp = dx + p * H * W;
#pragma unroll
    for (uint32_t i = 0; i < kh; i++)
#pragma unroll
      for (uint32_t j = 0; j < kw; j++) dp[(h0 + i) * W + w0 + j] = v;
    for (uint32_t ih = h0; ih < h1; ih++)
      for (uint32_t iw = w1; iw < we; iw++) dp[ih * W + iw] = (T)0;
    if (oh == Ho - 1)
      for (uint32_t ih = h1; ih < H; ih++)
        for (uint32_t iw = w0; iw < we; iw++) dp[ih * W + iw] = (T)0;
  }
}

template <typename T>
__global__ void avg_pool2d_fwd_kernel(T *y, const T *x, int64_t P, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                                      pool_geom g) {
  ADK_GRID_LOOP(k, P * Ho * Wo) {
    const int64_t ow = k % Wo, oh = (k / Wo) % Ho, p = k / (Wo * Ho);
    int64_t h0, h1, w0, w1;
    double div, s = 0;
    if (avg_win(g, H, W, oh, ow, &h0, &h1, &w0, &w1, &div)) {
      for (int64_t ih = h0; ih < h1; ih++)
        for (int64_t iw = w0; iw < w1; iw++) s += (double)x[(p * H + ih) * W + iw];
      s /= div;
    }
    y[k] = (T)s;
  }
}

extern "C" cudaError_t ad_launch_avg_pool2d_fwd(const adk_ctx *c, void *y, const void *x, int dtype, int64_t P,
                                                int64_t H, int64_t W, int64_t Ho, int64_t Wo, const adk_pool2d *a) {
  const int64_t n = P * Ho * Wo;
  if (n == 0) return cudaSuccess;
  pool_geom g = geom_of(a);
  if (avg_tiles(g, P, H, W, Ho, Wo)) {
    const bool k22 = g.kh == 2 && g.kw == 2;
    ADK_DISPATCH_F(dtype, T, ((k22 ? avg_pool2d_fwd_tiled_kernel<T, 2, 2> : avg_pool2d_fwd_tiled_kernel<T, 0, 0>)
                              <<<adk_blocks(c, n, 256), 256, 0, c->stream>>>((T *)y, (const T *)x, (uint32_t)n, H, W,
                                                                             Ho, Wo, g.kh, g.kw, avg_tile_div(g))));
    return adk_launched();
  }
  ADK_DISPATCH_F(dtype, T, (avg_pool2d_fwd_kernel<T><<<adk_blocks(c, n, 256), 256, 0, c->stream>>>(
                              (T *)y, (const T *)x, P, H, W, Ho, Wo, g)));
  return adk_launched();
}

/* input (ih, iw) receives g/div from every output whose clipped window covers it;
 * those outputs have oh*sh - ph <= ih < oh*sh - ph + kh */
template <typename T>
__global__ void avg_pool2d_bwd_kernel(T *dx, const T *dy, int64_t P, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                                      pool_geom g) {
  ADK_GRID_LOOP(k, P * H * W) {
    const int64_t iw = k % W, ih = (k / W) % H, p = k / (W * H);
    int64_t oh0 = (ih + g.ph - g.kh) / g.sh, oh1 = (ih + g.ph) / g.sh;
    int64_t ow0 = (iw + g.pw - g.kw) / g.sw, ow1 = (iw + g.pw) / g.sw;
    if (oh0 < 0) oh0 = 0;
    if (ow0 < 0) ow0 = 0;
    if (oh1 > Ho - 1) oh1 = Ho - 1;
    if (ow1 > Wo - 1) ow1 = Wo - 1;
    double s = 0;
    for (int64_t oh = oh0; oh <= oh1; oh++)
      for (int64_t ow = ow0; ow <= ow1; ow++) {
        int64_t h0, h1, w0, w1;
        double div;
        if (!avg_win(g, H, W, oh, ow, &h0, &h1, &w0, &w1, &div)) continue;
        if (ih < h0 || ih >= h1 || iw < w0 || iw >= w1) continue;
        s += (double)dy[(p * Ho + oh) * Wo + ow] / div;
      }
    dx[k] = (T)s;
  }
}

extern "C" cudaError_t ad_launch_avg_pool2d_bwd(const adk_ctx *c, void *dx, const void *dy, int dtype, int64_t P,
                                                int64_t H, int64_t W, int64_t Ho, int64_t Wo, const adk_pool2d *a) {
  const int64_t n = P * H * W;
  if (n == 0) return cudaSuccess;
  pool_geom g = geom_of(a);
  if (avg_tiles(g, P, H, W, Ho, Wo)) {
    const int64_t no = P * Ho * Wo;
    const bool k22 = g.kh == 2 && g.kw == 2;
    ADK_DISPATCH_F(dtype, T, ((k22 ? avg_pool2d_bwd_tiled_kernel<T, 2, 2> : avg_pool2d_bwd_tiled_kernel<T, 0, 0>)
                              <<<adk_blocks(c, no, 256), 256, 0, c->stream>>>((T *)dx, (const T *)dy, (uint32_t)no, H,
                                                                              W, Ho, Wo, g.kh, g.kw,
                                                                              avg_tile_div(g))));
    return adk_launched();
  }
  ADK_DISPATCH_F(dtype, T, (avg_pool2d_bwd_kernel<T><<<adk_blocks(c, n, 256), 256, 0, c->stream>>>(
                              (T *)dx, (const T *)dy, P, H, W, Ho, Wo, g)));
  return adk_launched();
}

/* ---- adaptive average ---------------------------------------------------------------- */
ADK_INLINE int64_t start_index(int64_t o, int64_t out, int64_t in) { return (o * in) / out; }
ADK_INLINE int64_t end_index(int64_t o, int64_t out, int64_t in) { return ((o + 1) * in + out - 1) / out; }

template <typename T>
__global__ void adaptive_avg_pool2d_fwd_kernel(T *y, const T *x, int64_t P, int64_t H, int64_t W, int64_t Ho,
                                               int64_t Wo) {
  ADK_GRID_LOOP(k, P * Ho * Wo) {
    const int64_t ow = k % Wo, oh = (k / Wo) % Ho, p = k / (Wo * Ho);
    const int64_t h0 = start_index(oh, Ho, H), h1 = end_index(oh, Ho, H);
    const int64_t w0 = start_index(ow, Wo, W), w1 = end_index(ow, Wo, W);
    double s = 0;
    for (int64_t ih = h0; ih < h1; ih++)
      for (int64_t iw = w0; iw < w1; iw++) s += (double)x[(p * H + ih) * W + iw];
    y[k] = (T)(s / (double)((h1 - h0) * (w1 - w0)));
  }
}

extern "C" cudaError_t ad_launch_adaptive_avg_pool2d_fwd(const adk_ctx *c, void *y, const void *x, int dtype,
                                                         int64_t P, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  const int64_t n = P * Ho * Wo;
  if (n == 0) return cudaSuccess;
  ADK_DISPATCH_F(dtype, T, (adaptive_avg_pool2d_fwd_kernel<T><<<adk_blocks(c, n, 256), 256, 0, c->stream>>>(
                              (T *)y, (const T *)x, P, H, W, Ho, Wo)));
  return adk_launched();
}

/* outputs covering input row i: start(o) <= i < end(o); o runs near i*out/in */
template <typename T>
__global__ void adaptive_avg_pool2d_bwd_kernel(T *dx, const T *dy, int64_t P, int64_t H, int64_t W, int64_t Ho,
                                               int64_t Wo) {
  ADK_GRID_LOOP(k, P * H * W) {
    const int64_t iw = k % W, ih = (k / W) % H, p = k / (W * H);
    int64_t oh0 = (ih * Ho) / H - 1, oh1 = ((ih + 1) * Ho + H - 1) / H;
    int64_t ow0 = (iw * Wo) / W - 1, ow1 = ((iw + 1) * Wo + W - 1) / W;
    if (oh0 < 0) oh0 = 0;
    if (ow0 < 0) ow0 = 0;
    if (oh1 > Ho) oh1 = Ho;
    if (ow1 > Wo) ow1 = Wo;
    double s = 0;
    for (int64_t oh = oh0; oh < oh1; oh++) {
      const int64_t h0 = start_index(oh, Ho, H), h1 = end_index(oh, Ho, H);
      if (ih < h0 || ih >= h1) continue;
      for (int64_t ow = ow0; ow < ow1; ow++) {
        const int64_t w0 = start_index(ow, Wo, W), w1 = end_index(ow, Wo, W);
        if (iw < w0 || iw >= w1) continue;
        s += (double)dy[(p * Ho + oh) * Wo + ow] / (double)((h1 - h0) * (w1 - w0));
      }
    }
    dx[k] = (T)s;
  }
}

extern "C" cudaError_t ad_launch_adaptive_avg_pool2d_bwd(const adk_ctx *c, void *dx, const void *dy, int dtype,
                                                         int64_t P, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  const int64_t n = P * H * W;
  if (n == 0) return cudaSuccess;
  ADK_DISPATCH_F(dtype, T, (adaptive_avg_pool2d_bwd_kernel<T><<<adk_blocks(c, n, 256), 256, 0, c->stream>>>(
                              (T *)dx, (const T *)dy, P, H, W, Ho, Wo)));
  return adk_launched();
}
