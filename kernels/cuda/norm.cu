/* norm.cu: group, batch and layer normalisation on the GPU, beside
 * core/cpu/cpu_norm.c. Statistics in double (group norm's in one shifted pass,
 * the others with two passes: mean, then squared deviations), saved mean/rstd
 * in f64, f32 outputs
 * computed as ((x - mu_hi) - mu_lo) * a + c so a large mean does not cancel
 * against a small spread. One block per statistic (a (n, group), a channel, a
 * row); block sums are fixed trees, so results do not depend on timing. */
#include "common.cuh"

#define NORM_THREADS 256

/* y = (x - mu) * a + c in the data's precision (mu split for f32) */
ADK_INLINE float norm_affine(float x, double mu, double a, double c) {
  const float mh = (float)mu, ml = (float)(mu - (double)mh);
  return ((x - mh) - ml) * (float)a + (float)c;
}
ADK_INLINE double norm_affine(double x, double mu, double a, double c) { return (x - mu) * a + c; }

/* dx = dy * a + (x - mu) * b + c */
ADK_INLINE float norm_dx(float g, float x, double mu, double a, double b, double c) {
  const float mh = (float)mu, ml = (float)(mu - (double)mh);
  return g * (float)a + ((x - mh) - ml) * (float)b + (float)c;
}
ADK_INLINE double norm_dx(double g, double x, double mu, double a, double b, double c) {
  return g * a + (x - mu) * b + c;
}

/* ======================================================================= group norm */

template <typename T>
__global__ void group_norm_fwd_kernel(T *y, double *mean, double *rstd, const T *x, const T *w, const T *b,
                                      int64_t C, int64_t S, int64_t G, double eps) {
  const int64_t ng = blockIdx.x, n = ng / G, g = ng % G, Cg = C / G, D = Cg * S;
  const T *xs = x + (n * C + g * Cg) * S;
  /* one pass for both moments (the group is read twice, not three times), about
   * a shift K = the group's first value: in double, E[(x-K)^2] - E[x-K]^2 loses
   * nothing that matters unless the group's mean is ~1e8 spreads from K */
  const double K = D ? (double)xs[0] : 0.0;
  double s = 0, q = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const double d = (double)xs[i] - K;
    s += d;
    q += d * d;
  }
  s = adk_block_sum(s);
  q = adk_block_sum(q);
  const double ms = D ? s / (double)D : 0.0;
  const double mu = K + ms;
  const double var = D ? fmax(q / (double)D - ms * ms, 0.0) : 0.0;
  const double rs = 1.0 / sqrt(var + eps);
  if (threadIdx.x == 0) { mean[ng] = mu; rstd[ng] = rs; }
  for (int64_t cc = 0; cc < Cg; cc++) {
    const int64_t c = g * Cg + cc;
    const double a = rs * (w ? (double)w[c] : 1.0), bc = b ? (double)b[c] : 0.0;
    const T *xr = xs + cc * S;
    T *yr = y + (n * C + c) * S;
    for (int64_t i = threadIdx.x; i < S; i += blockDim.x) yr[i] = norm_affine(xr[i], mu, a, bc);
  }
}

extern "C" cudaError_t ad_launch_group_norm_fwd(const adk_ctx *c, void *y, double *mean, double *rstd,
                                                const void *x, const void *w, const void *b, int dtype, int64_t N,
                                                int64_t C, int64_t S, int64_t G, double eps) {
  if (N * G == 0) return cudaSuccess;
  if (N * G > INT32_MAX) return cudaErrorInvalidValue;
  ADK_DISPATCH_F(dtype, T, (group_norm_fwd_kernel<T><<<(unsigned)(N * G), NORM_THREADS, 0, c->stream>>>(
                              (T *)y, mean, rstd, (const T *)x, (const T *)w, (const T *)b, C, S, G, eps)));
  return adk_launched();
}

/* Per (n, group), with A = sum_c w_c sum(dy), B = sum_c w_c sum(dy x):
 *   dx = dy (rs w_c) + (x - mu) k - rs A / D,  k = (A mu - B) rs^3 / D.
 * The per-(n, c) sums go to sdy/sdyx for dw and db. */
template <typename T>
__global__ void group_norm_bwd_kernel(T *dx, double *sdy, double *sdyx, const T *dy, const T *x,
                                      const double *mean, const double *rstd, const T *w, int64_t C, int64_t S,
                                      int64_t G) {
  const int64_t ng = blockIdx.x, n = ng / G, g = ng % G, Cg = C / G, D = Cg * S;
  const double mu = mean[ng], rs = rstd[ng];
  double A = 0, B = 0;
  for (int64_t cc = 0; cc < Cg; cc++) {
    const int64_t c = g * Cg + cc, off = (n * C + c) * S;
    double a = 0, bs = 0;
    for (int64_t i = threadIdx.x; i < S; i += blockDim.x) {
      double gv = (double)dy[off + i];
      a += gv;
      bs += gv * (double)x[off + i];
    }
    a = adk_block_sum(a);
    bs = adk_block_sum(bs);
    if (threadIdx.x == 0) { sdy[n * C + c] = a; sdyx[n * C + c] = bs; }
    const double wc = w ? (double)w[c] : 1.0;
    A += wc * a;
    B += wc * bs;
  }
  if (!dx || D == 0) return;
  const double k = (A * mu - B) * rs * rs * rs / (double)D, c0 = -rs * A / (double)D;
  for (int64_t cc = 0; cc < Cg; cc++) {
    const int64_t c = g * Cg + cc, off = (n * C + c) * S;
    const double a = rs * (w ? (double)w[c] : 1.0);
    for (int64_t i = threadIdx.x; i < S; i += blockDim.x) dx[off + i] = norm_dx(dy[off + i], x[off + i], mu, a, k, c0);
  }
}

/* dw_c = sum_n (sdyx - mu sdy) rs, db_c = sum_n sdy, n in order */
template <typename T>
__global__ void group_norm_wb_kernel(T *dw, T *db, const double *sdy, const double *sdyx, const double *mean,
                                     const double *rstd, int64_t N, int64_t C, int64_t G) {
  const int64_t Cg = C / G;
  ADK_GRID_LOOP(c, C) {
    double aw = 0, ab = 0;
    for (int64_t n = 0; n < N; n++) {
      const int64_t ng = n * G + c / Cg;
      aw += (sdyx[n * C + c] - mean[ng] * sdy[n * C + c]) * rstd[ng];
      ab += sdy[n * C + c];
    }
    if (dw) dw[c] = (T)aw;
    if (db) db[c] = (T)ab;
  }
}

extern "C" cudaError_t ad_launch_group_norm_bwd(const adk_ctx *c, void *dx, void *dw, void *db, const void *dy,
                                                const void *x, const double *mean, const double *rstd,
                                                const void *w, int dtype, int64_t N, int64_t C, int64_t S,
                                                int64_t G) {
  if (N * G > INT32_MAX) return cudaErrorInvalidValue;
  const int64_t nc = N * C > 0 ? N * C : 1;
  adk_scratch sums(c, 2 * (size_t)nc * sizeof(double));
  if (!sums.p) return cudaErrorMemoryAllocation;
  double *sdy = sums.as<double>(), *sdyx = sdy + nc;
  cudaError_t e = cudaSuccess;
  if (N * G > 0) {
    ADK_DISPATCH_F(dtype, T, (group_norm_bwd_kernel<T><<<(unsigned)(N * G), NORM_THREADS, 0, c->stream>>>(
                                (T *)dx, sdy, sdyx, (const T *)dy, (const T *)x, mean, rstd, (const T *)w, C, S,
                                G)));
    if ((e = adk_launched()) != cudaSuccess) return e;
  }
  if ((dw || db) && C > 0) {
    if (N == 0) {  /* no samples: zero gradients */
      size_t es = dtype == ADK_F64 ? 8 : 4;
      if (dw && (e = cudaMemsetAsync(dw, 0, (size_t)C * es, c->stream)) != cudaSuccess) return e;
      if (db && (e = cudaMemsetAsync(db, 0, (size_t)C * es, c->stream)) != cudaSuccess) return e;
      return cudaSuccess;
    }
    ADK_DISPATCH_F(dtype, T, (group_norm_wb_kernel<T><<<adk_blocks(c, C, 128), 128, 0, c->stream>>>(
                                (T *)dw, (T *)db, sdy, sdyx, mean, rstd, N, C, G)));
    e = adk_launched();
  }
  return e;
}

/* ======================================================================= batch norm */

template <typename T>
__global__ void batch_norm_fwd_kernel(T *y, double *smean, double *srstd, const T *x, const T *w, const T *b,
                                      T *rmean, T *rvar, int64_t N, int64_t C, int64_t S, bool training,
                                      double momentum, double eps) {
  const int64_t c = blockIdx.x, M = N * S;
  double mu, rs;
  if (training) {
    double s = 0;
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) s += (double)x[((j / S) * C + c) * S + j % S];
    mu = M ? adk_block_sum(s) / (double)M : 0.0;
    double q = 0;
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
      double d = (double)x[((j / S) * C + c) * S + j % S] - mu;
      q += d * d;
    }
    q = adk_block_sum(q);
    const double var = M ? q / (double)M : 0.0;
    rs = 1.0 / sqrt(var + eps);
    if (threadIdx.x == 0) {
      if (rmean) rmean[c] = (T)((1.0 - momentum) * (double)rmean[c] + momentum * mu);
      if (rvar) {
        const double unbiased = M > 1 ? q / (double)(M - 1) : var;
        rvar[c] = (T)((1.0 - momentum) * (double)rvar[c] + momentum * unbiased);
      }
    }
  } else {
    mu = (double)rmean[c];
    rs = 1.0 / sqrt((double)rvar[c] + eps);
  }
  if (threadIdx.x == 0) { smean[c] = mu; srstd[c] = rs; }
  const double a = rs * (w ? (double)w[c] : 1.0), bc = b ? (double)b[c] : 0.0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const int64_t k = ((j / S) * C + c) * S + j % S;
    y[k] = norm_affine(x[k], mu, a, bc);
  }
}

extern "C" cudaError_t ad_launch_batch_norm_fwd(const adk_ctx *c, void *y, double *save_mean, double *save_rstd,
                                                const void *x, const void *w, const void *b, void *running_mean,
                                                void *running_var, int dtype, int64_t N, int64_t C, int64_t S,
                                                bool training, double momentum, double eps) {
  if (C == 0) return cudaSuccess;
  if (C > INT32_MAX) return cudaErrorInvalidValue;
  ADK_DISPATCH_F(dtype, T, (batch_norm_fwd_kernel<T><<<(unsigned)C, NORM_THREADS, 0, c->stream>>>(
                              (T *)y, save_mean, save_rstd, (const T *)x, (const T *)w, (const T *)b,
                              (T *)running_mean, (T *)running_var, N, C, S, training, momentum, eps)));
  return adk_launched();
}

/* training: dx = w rs (dy - mean(dy) - xhat mean(dy xhat)); eval: dx = w rs dy */
template <typename T>
__global__ void batch_norm_bwd_kernel(T *dx, T *dw, T *db, const T *dy, const T *x, const double *mean,
                                      const double *rstd, const T *w, int64_t N, int64_t C, int64_t S,
                                      bool training) {
  const int64_t c = blockIdx.x, M = N * S;
  const double mu = mean[c], rs = rstd[c];
  double sdy = 0, sdyx = 0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const int64_t k = ((j / S) * C + c) * S + j % S;
    const double g = (double)dy[k];
    sdy += g;
    sdyx += g * (double)x[k];
  }
  sdy = adk_block_sum(sdy);
  sdyx = adk_block_sum(sdyx);
  const double sdyxhat = (sdyx - mu * sdy) * rs;
  if (threadIdx.x == 0) {
    if (dw) dw[c] = (T)sdyxhat;
    if (db) db[c] = (T)sdy;
  }
  if (!dx) return;
  const double a = rs * (w ? (double)w[c] : 1.0);
  double k = 0, c0 = 0;
  if (training && M > 0) {
    k = -a * rs * sdyxhat / (double)M;
    c0 = -a * sdy / (double)M;
  }
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const int64_t i = ((j / S) * C + c) * S + j % S;
    dx[i] = norm_dx(dy[i], x[i], mu, a, k, c0);
  }
}

extern "C" cudaError_t ad_launch_batch_norm_bwd(const adk_ctx *c, void *dx, void *dw, void *db, const void *dy,
                                                const void *x, const double *mean, const double *rstd,
                                                const void *w, int dtype, int64_t N, int64_t C, int64_t S,
                                                bool training) {
  if (C == 0) return cudaSuccess;
  if (C > INT32_MAX) return cudaErrorInvalidValue;
  ADK_DISPATCH_F(dtype, T, (batch_norm_bwd_kernel<T><<<(unsigned)C, NORM_THREADS, 0, c->stream>>>(
                              (T *)dx, (T *)dw, (T *)db, (const T *)dy, (const T *)x, mean, rstd, (const T *)w, N, C,
                              S, training)));
  return adk_launched();
}

/* ======================================================================= layer norm */

template <typename T>
__global__ void layer_norm_fwd_kernel(T *y, double *mean, double *rstd, const T *x, const T *w, const T *b,
                                      int64_t D, double eps) {
  const int64_t m = blockIdx.x;
  const T *xs = x + m * D;
  T *ys = y + m * D;
  double s = 0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) s += (double)xs[d];
  const double mu = D ? adk_block_sum(s) / (double)D : 0.0;
  double q = 0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) { double v = (double)xs[d] - mu; q += v * v; }
  const double var = D ? adk_block_sum(q) / (double)D : 0.0;
  const double rs = 1.0 / sqrt(var + eps);
  if (threadIdx.x == 0) { mean[m] = mu; rstd[m] = rs; }
  if (!w && !b) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ys[d] = norm_affine(xs[d], mu, rs, 0.0);
    return;
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const double xh = ((double)xs[d] - mu) * rs;
    ys[d] = (T)(xh * (w ? (double)w[d] : 1.0) + (b ? (double)b[d] : 0.0));
  }
}

static int row_threads(int64_t D) { return D >= 1024 ? 256 : D >= 256 ? 128 : 64; }

extern "C" cudaError_t ad_launch_layer_norm_fwd(const adk_ctx *c, void *y, double *mean, double *rstd,
                                                const void *x, const void *w, const void *b, int dtype, int64_t M,
                                                int64_t D, double eps) {
  if (M == 0) return cudaSuccess;
  if (M > INT32_MAX) return cudaErrorInvalidValue;
  ADK_DISPATCH_F(dtype, T, (layer_norm_fwd_kernel<T><<<(unsigned)M, row_threads(D), 0, c->stream>>>(
                              (T *)y, mean, rstd, (const T *)x, (const T *)w, (const T *)b, D, eps)));
  return adk_launched();
}

/* per row: dxhat = dy w; dx = rs (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) */
template <typename T>
__global__ void layer_norm_bwd_dx_kernel(T *dx, const T *dy, const T *x, const double *mean, const double *rstd,
                                         const T *w, int64_t D) {
  const int64_t m = blockIdx.x;
  const T *xs = x + m * D, *gs = dy + m * D;
  const double mu = mean[m], rs = rstd[m];
  double s1 = 0, s2 = 0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const double gx = (double)gs[d] * (w ? (double)w[d] : 1.0), xh = ((double)xs[d] - mu) * rs;
    s1 += gx;
    s2 += gx * xh;
  }
  s1 = adk_block_sum(s1) / (double)D;
  s2 = adk_block_sum(s2) / (double)D;
  T *ds = dx + m * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const double gx = (double)gs[d] * (w ? (double)w[d] : 1.0), xh = ((double)xs[d] - mu) * rs;
    ds[d] = (T)(rs * (gx - s1 - xh * s2));
  }
}

/* dw, db: column sums over rows. Block (32 columns x 8 row lanes) per column
 * tile and row chunk; partial sums per chunk, then added in chunk order. */
#define LN_CHUNKS 64
template <typename T>
__global__ void layer_norm_wb_partial_kernel(double *part, const T *dy, const T *x, const double *mean,
                                             const double *rstd, int64_t M, int64_t D) {
  __shared__ double sw[8][33], sb[8][33];
  const int64_t d = (int64_t)blockIdx.x * 32 + threadIdx.x;
  const int64_t chunk = (M + gridDim.y - 1) / gridDim.y, m0 = blockIdx.y * chunk;
  const int64_t m1 = m0 + chunk < M ? m0 + chunk : M;
  double aw = 0, ab = 0;
  if (d < D)
    for (int64_t m = m0 + threadIdx.y; m < m1; m += 8) {
      const double g = (double)dy[m * D + d];
      aw += g * ((double)x[m * D + d] - mean[m]) * rstd[m];
      ab += g;
    }
  sw[threadIdx.y][threadIdx.x] = aw;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && d < D) {
    for (int r = 1; r < 8; r++) { aw += sw[r][threadIdx.x]; ab += sb[r][threadIdx.x]; }
    part[(int64_t)blockIdx.y * 2 * D + d] = aw;
    part[(int64_t)blockIdx.y * 2 * D + D + d] = ab;
  }
}
template <typename T>
__global__ void layer_norm_wb_final_kernel(T *dw, T *db, const double *part, int chunks, int64_t D) {
  ADK_GRID_LOOP(d, D) {
    double aw = 0, ab = 0;
    for (int p = 0; p < chunks; p++) { aw += part[(int64_t)p * 2 * D + d]; ab += part[(int64_t)p * 2 * D + D + d]; }
    if (dw) dw[d] = (T)aw;
    if (db) db[d] = (T)ab;
  }
}

extern "C" cudaError_t ad_launch_layer_norm_bwd(const adk_ctx *c, void *dx, void *dw, void *db, const void *dy,
                                                const void *x, const double *mean, const double *rstd,
                                                const void *w, int dtype, int64_t M, int64_t D) {
  if (M > INT32_MAX) return cudaErrorInvalidValue;
  cudaError_t e;
  if (dx && M > 0 && D > 0) {
    ADK_DISPATCH_F(dtype, T, (layer_norm_bwd_dx_kernel<T><<<(unsigned)M, row_threads(D), 0, c->stream>>>(
                                (T *)dx, (const T *)dy, (const T *)x, mean, rstd, (const T *)w, D)));
    if ((e = adk_launched()) != cudaSuccess) return e;
  }
  if ((dw || db) && D > 0) {
    const int chunks = M >= 8 * LN_CHUNKS ? LN_CHUNKS : 1;
    adk_scratch part(c, (size_t)chunks * 2 * (size_t)D * sizeof(double));
    if (!part.p) return cudaErrorMemoryAllocation;
    dim3 grid((unsigned)((D + 31) / 32), (unsigned)chunks), block(32, 8);
    ADK_DISPATCH_F(dtype, T, (layer_norm_wb_partial_kernel<T><<<grid, block, 0, c->stream>>>(
                                part.as<double>(), (const T *)dy, (const T *)x, mean, rstd, M, D)));
    if ((e = adk_launched()) != cudaSuccess) return e;
    ADK_DISPATCH_F(dtype, T, (layer_norm_wb_final_kernel<T><<<adk_blocks(c, D, 128), 128, 0, c->stream>>>(
                                (T *)dw, (T *)db, part.as<double>(), chunks, D)));
    return adk_launched();
  }
  return cudaSuccess;
}
