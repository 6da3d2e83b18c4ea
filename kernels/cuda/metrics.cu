/* metrics.cu: the evaluation-metric family on the GPU, beside
 * core/cpu/cpu_metrics.c: column sums and centring of feature sets, the
 * k-NN radii and manifold-count decisions over f64 distance blocks, and the
 * finishing passes of cdist and the covariance.
 *
 * Exactness. The CPU makes every decision as an f64 computation would: the
 * f64 distance of a pair is exact_dist (cpu_metrics.c), the input rows'
 * squared differences summed in a fixed order (four interleaved partial sums
 * for f32 rows, one running sum for f64 rows). The GPU decides from
 *   v = ||a||^2 + ||b||^2 - 2 a.b
 * over f64 centred rows (a cuBLAS DGEMM block), which differs from the true
 * squared distance by at most
 *   e = 4 (D + 8) u (|a| + |b|_max)^2 + (D + 8) 1e-300     (u = 2^-53)
 * (the dot product's gamma_D |a||b|, the norms', the three final operations'
 * and the centring's roundings, with room to spare; the last term covers
 * underflow), and the computed exact_dist^2 differs from the true squared
 * distance by a relative g = 2 (D + 8) u at most. So a decision d <= r is
 * taken from v only when [v - e, v + e], widened by g and by 8u for the
 * rounding of r^2, lies wholly on one side of r^2; every other pair is
 * recomputed by exact_dist in the CPU's order, with the multiplications and
 * additions spelled __dmul_rn/__dadd_rn so that nvcc cannot contract them into
 * FMAs (the CPU build targets baseline x86-64, which has no FMA). The
 * decisions, and the radii (k-th smallest exact_dist), are then bit for bit
 * the CPU's.
 *
 * Where this could still part from the CPU: only through the bounds
 * themselves, i.e. if cuBLAS's DGEMM were not IEEE f64 arithmetic (it is on
 * Hopper's FP64 tensor cores; CUDA 13's opt-in fixed-point emulation of DGEMM
 * on newer parts would need e re-derived), or if the CPU build were compiled
 * with FMA contraction (-march with FMA), which moves exact_dist by an ulp and
 * so can flip pairs whose distance lies within ~1e-16 relative of a radius.
 *
 * k-NN radii: a warp per row keeps the K' = k + 8 smallest (v, j) of the row
 * (lexicographic, so ties are deterministic), recomputes those K' pairs
 * exactly and takes the k-th smallest. That is the answer if no other row can
 * be closer: every row left out has v >= v_K', so it holds when
 * (v_K' - e)(1 - g) >= R^2 (1 + 8u). Rows where it fails (many near-ties at
 * the k-th distance) are listed, and a block per listed row recomputes the
 * whole row exactly. */
#include <limits.h>
#include "common.cuh"

#define U64 (1.0 / 9007199254740992.0) /* f64 unit roundoff */
#define KNN_EXTRA 8
#define KC_MAX (ADK_KNN_MAXK + KNN_EXTRA)
#define FULL 0xffffffffu

/* ---- exact_dist of cpu_metrics.c, operation for operation ------------------------ */

ADK_INLINE double exact_dist(const float *a, const float *b, int64_t d) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t t = 0;
  for (; t + 4 <= d; t += 4) {
    const double q0 = __dsub_rn((double)a[t], (double)b[t]), q1 = __dsub_rn((double)a[t + 1], (double)b[t + 1]);
    const double q2 = __dsub_rn((double)a[t + 2], (double)b[t + 2]), q3 = __dsub_rn((double)a[t + 3], (double)b[t + 3]);
    s0 = __dadd_rn(s0, __dmul_rn(q0, q0));
    s1 = __dadd_rn(s1, __dmul_rn(q1, q1));
    s2 = __dadd_rn(s2, __dmul_rn(q2, q2));
    s3 = __dadd_rn(s3, __dmul_rn(q3, q3));
  }
  for (; t < d; t++) {
    const double q = __dsub_rn((double)a[t], (double)b[t]);
    s0 = __dadd_rn(s0, __dmul_rn(q, q));
  }
  return sqrt(__dadd_rn(__dadd_rn(s0, s1), __dadd_rn(s2, s3)));
}

ADK_INLINE double exact_dist(const double *a, const double *b, int64_t d) {
  double s0 = 0;
  for (int64_t t = 0; t < d; t++) {
    const double q = __dsub_rn(a[t], b[t]);
    s0 = __dadd_rn(s0, __dmul_rn(q, q));
  }
  return sqrt(s0);   /* the CPU's (s0 + 0) + (0 + 0) */
}

ADK_INLINE double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
  return v;
}
ADK_INLINE long long warp_sum_ll(long long v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
  return v;
}

/* the smallest (v, tag) over the warp, every lane getting it (ties to the smaller tag) */
ADK_INLINE void warp_argmin(double &v, long long &tag) {
  for (int o = 16; o > 0; o >>= 1) {
    const double ov = __shfl_xor_sync(FULL, v, o);
    const long long ot = __shfl_xor_sync(FULL, tag, o);
    if (ov < v || (ov == v && ot < tag)) { v = ov; tag = ot; }
  }
}

/* The q-th (1-based) smallest of the union of the lanes' ascending lists
 * list[0..len); each lane passes its own list. */
ADK_INLINE double warp_kth(const double *list, int len, int q) {
  const int lane = threadIdx.x & 31;
  int h = 0;
  double best = INFINITY;
  for (int s = 0; s < q; s++) {
    double v = h < len ? list[h] : INFINITY;
    long long tag = lane;
    warp_argmin(v, tag);
    if (tag == lane) h++;
    best = v;
  }
  return best;
}

/* ---- column sums, centring, non-finite rows --------------------------------------- */

template <typename T>
__global__ void colsum_part_kernel(double *part, const T *x, int64_t n, int64_t d, int64_t chunk) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= d) return;
  const int64_t i0 = (int64_t)blockIdx.y * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
  double acc = 0;
  for (int64_t i = i0; i < i1; i++) acc += (double)x[i * d + t];
  part[(int64_t)blockIdx.y * d + t] = acc;
}

__global__ void colsum_fold_kernel(double *sum, const double *part, int64_t d, int splits) {
  ADK_GRID_LOOP(t, d) {
    double acc = 0;
    for (int s = 0; s < splits; s++) acc += part[(int64_t)s * d + t];
    sum[t] += acc;
  }
}

extern "C" cudaError_t ad_launch_metrics_column_sums(const adk_ctx *c, double *sum, const void *x, int dtype,
                                                     int64_t n, int64_t d) {
  if (n == 0 || d == 0) return cudaSuccess;
  /* row chunks of 256 over gridDim.y (a fixed split: the sums do not depend on timing) */
  int64_t splits = (n + 255) / 256;
  if (splits > 1024) splits = 1024;
  const int64_t chunk = (n + splits - 1) / splits;
  splits = (n + chunk - 1) / chunk;
  adk_scratch part(c, (size_t)splits * (size_t)d * sizeof(double));
  if (!part.p) return cudaErrorMemoryAllocation;
  const dim3 grid((unsigned)((d + 127) / 128), (unsigned)splits);
  ADK_DISPATCH_F(dtype, T, (colsum_part_kernel<T><<<grid, 128, 0, c->stream>>>(part.as<double>(), (const T *)x, n, d,
                                                                              chunk)));
  cudaError_t e = adk_launched();
  if (e != cudaSuccess) return e;
  colsum_fold_kernel<<<adk_blocks(c, d, 256), 256, 0, c->stream>>>(sum, part.as<double>(), d, (int)splits);
  return adk_launched();
}

template <typename T>
__global__ void nonfinite_kernel(unsigned long long *row, const T *x, int64_t n, int64_t d) {
  ADK_GRID_LOOP(k, n * d) {
    if (!isfinite((double)x[k])) atomicMin(row, (unsigned long long)(k / d));
  }
}

extern "C" cudaError_t ad_launch_metrics_first_nonfinite(const adk_ctx *c, const void *x, int dtype, int64_t n,
                                                         int64_t d, int64_t *row) {
  *row = -1;
  if (n == 0 || d == 0) return cudaSuccess;
  adk_scratch flag(c, sizeof(unsigned long long));
  if (!flag.p) return cudaErrorMemoryAllocation;
  cudaError_t e = cudaMemsetAsync(flag.p, 0xff, sizeof(unsigned long long), c->stream);
  if (e != cudaSuccess) return e;
  ADK_DISPATCH_F(dtype, T, (nonfinite_kernel<T><<<adk_blocks(c, n * d, 256), 256, 0, c->stream>>>(
                              flag.as<unsigned long long>(), (const T *)x, n, d)));
  if ((e = adk_launched()) != cudaSuccess) return e;
  unsigned long long v = 0;
  if ((e = cudaMemcpyAsync(&v, flag.p, sizeof v, cudaMemcpyDeviceToHost, c->stream)) != cudaSuccess) return e;
  if ((e = cudaStreamSynchronize(c->stream)) != cudaSuccess) return e;
  *row = v == ~0ull ? -1 : (int64_t)v;
  return cudaSuccess;
}

/* a warp per row: xc = x - centre in f64 and its squared norm */
template <typename T>
__global__ void centre_kernel(double *xc, double *n2, const T *x, int64_t n, int64_t d, const double *centre) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; i < n; i += warps) {
    double acc = 0;
    for (int64_t t = lane; t < d; t += 32) {
      const double v = (double)x[i * d + t] - centre[t];
      xc[i * d + t] = v;
      acc += v * v;
    }
    acc = warp_sum_d(acc);
    if (lane == 0 && n2) n2[i] = acc;
  }
}

extern "C" cudaError_t ad_launch_metrics_centre(const adk_ctx *c, double *xc, double *n2, const void *x, int dtype,
                                                int64_t n, int64_t d, const double *centre) {
  if (n == 0) return cudaSuccess;
  int64_t blocks = (n + 7) / 8, cap = (int64_t)(c->num_sms > 0 ? c->num_sms : 80) * 32;
  if (blocks > cap) blocks = cap;
  ADK_DISPATCH_F(dtype, T, (centre_kernel<T><<<(unsigned)blocks, 256, 0, c->stream>>>(xc, n2, (const T *)x, n, d,
                                                                                       centre)));
  return adk_launched();
}

/* ---- k-NN radii ----------------------------------------------------------------- */

/* a warp per row of the block; see the header comment */
template <typename T>
__global__ void __launch_bounds__(128) knn_rows_kernel(double *radii, const double *G, int64_t i0, int64_t b,
                                                       const T *x, int64_t n, int64_t d, const double *n2, double nmax,
                                                       const int64_t *ids, int k, int kc,
                                                       unsigned long long *short_row, int64_t *flagged,
                                                       unsigned *nflag) {
  const int lane = threadIdx.x & 31;
  const int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (r >= b) return;   /* whole warps */
  const int64_t i = i0 + r;
  const double *g = G + r * n;
  const double n2i = n2[i];
  const int64_t idi = ids ? ids[i] : 0;
  /* this lane's kc smallest (v, j), ascending; j grows, so equal v keep j order */
  double tv[KC_MAX];
  int64_t tj[KC_MAX];
  int len = 0;
  long long seen = 0;
  for (int64_t j = lane; j < n; j += 32) {
    if (j == i || (ids && ids[j] == idi)) continue;
    seen++;
    const double v = n2i + n2[j] - 2.0 * g[j];
    if (len < kc || v < tv[len - 1]) {
      int p = len < kc ? len++ : kc - 1;
      while (p > 0 && tv[p - 1] > v) { tv[p] = tv[p - 1]; tj[p] = tj[p - 1]; p--; }
      tv[p] = v;
      tj[p] = j;
    }
  }
  const long long total = warp_sum_ll(seen);
  if (total < k) {
    if (lane == 0) {
      radii[i] = NAN;
      atomicMin(short_row, (unsigned long long)i);
    }
    return;
  }
  /* the row's nc smallest (v, j); candidate q is kept by lane q % 32 in slot q / 32 */
  const int nc = total < kc ? (int)total : kc;
  int head = 0;
  int64_t cj[2] = {0, 0};
  double last = 0;
  for (int q = 0; q < nc; q++) {
    double v = head < len ? tv[head] : INFINITY;
    long long j = head < len ? (long long)tj[head] : LLONG_MAX;
    const long long mine = j;
    warp_argmin(v, j);
    if (head < len && mine == j) head++;
    if ((q & 31) == lane) cj[q >> 5] = j;
    last = v;
  }
  /* their exact distances; R = the k-th smallest */
  const T *xi = x + i * d;
  double ex[2];
  int ne = 0;
  for (int q = lane, s = 0; q < nc; q += 32, s++) ex[ne++] = exact_dist(xi, x + cj[s] * d, d);
  if (ne == 2 && ex[1] < ex[0]) { const double t = ex[0]; ex[0] = ex[1]; ex[1] = t; }
  const double R = warp_kth(ex, ne, k);
  if (total > nc) {
    const double s = sqrt(n2i) + nmax;
    const double e = 4.0 * (double)(d + 8) * U64 * s * s + (double)(d + 8) * 1e-300;
    const double gg = 2.0 * (double)(d + 8) * U64;
    if (!((last - e) * (1.0 - gg) >= R * R * (1.0 + 8.0 * U64))) {
      if (lane == 0) flagged[atomicAdd(nflag, 1u)] = i;
      return;
    }
  }
  if (lane == 0) radii[i] = R;
}

/* a block per listed row: every other row's exact distance, the k-th smallest */
template <typename T>
__global__ void __launch_bounds__(256) knn_exact_kernel(double *radii, const int64_t *flagged, const unsigned *nflag,
                                                        const T *x, int64_t n, int64_t d, const int64_t *ids,
                                                        int k) {
  __shared__ double part[8][ADK_KNN_MAXK];
  if (blockIdx.x >= *nflag) return;   /* whole blocks */
  const int64_t i = flagged[blockIdx.x];
  const int64_t idi = ids ? ids[i] : 0;
  const T *xi = x + i * d;
  double tk[ADK_KNN_MAXK];
  int len = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    if (j == i || (ids && ids[j] == idi)) continue;
    const double v = exact_dist(xi, x + j * d, d);
    if (len < k || v < tk[len - 1]) {
      int p = len < k ? len++ : k - 1;
      while (p > 0 && tk[p - 1] > v) { tk[p] = tk[p - 1]; p--; }
      tk[p] = v;
    }
  }
  /* each warp's k smallest into shared memory, then warp 0 merges the 8 lists */
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  int h = 0;
  for (int q = 0; q < k; q++) {
    double v = h < len ? tk[h] : INFINITY;
    long long tag = lane;
    warp_argmin(v, tag);
    if (tag == lane) h++;
    if (lane == 0) part[w][q] = v;
  }
  __syncthreads();
  if (w == 0) {
    const double R = warp_kth(lane < nw ? part[lane] : part[0], lane < nw ? k : 0, k);
    if (lane == 0) radii[i] = R;
  }
}

extern "C" cudaError_t ad_launch_knn_radii_block(const adk_ctx *c, double *radii, const double *G, int64_t i0,
                                                 int64_t b, const void *x, int dtype, int64_t n, int64_t d,
                                                 const double *n2, double nmax, const int64_t *ids, int64_t k,
                                                 unsigned long long *short_row) {
  if (b <= 0) return cudaSuccess;
  if (k < 1 || k > ADK_KNN_MAXK || b > INT32_MAX) return cudaErrorInvalidValue;
  const int kc = (int)k + KNN_EXTRA;
  /* the rows left to the exact pass: b indices and their count */
  adk_scratch list(c, (size_t)b * sizeof(int64_t) + sizeof(unsigned));
  if (!list.p) return cudaErrorMemoryAllocation;
  int64_t *flagged = list.as<int64_t>();
  unsigned *nflag = (unsigned *)(flagged + b);
  cudaError_t e = cudaMemsetAsync(nflag, 0, sizeof(unsigned), c->stream);
  if (e != cudaSuccess) return e;
  const unsigned blocks = (unsigned)((b + 3) / 4);
  ADK_DISPATCH_F(dtype, T, (knn_rows_kernel<T><<<blocks, 128, 0, c->stream>>>(
                              radii, G, i0, b, (const T *)x, n, d, n2, nmax, ids, (int)k, kc, short_row, flagged,
                              nflag)));
  if ((e = adk_launched()) != cudaSuccess) return e;
  ADK_DISPATCH_F(dtype, T, (knn_exact_kernel<T><<<(unsigned)b, 256, 0, c->stream>>>(radii, flagged, nflag,
                                                                                     (const T *)x, n, d, ids, (int)k)));
  return adk_launched();
}

/* ---- manifold counts ------------------------------------------------------------- */

/* d(i, j) <= r from v, or from exact_dist (computed once per pair, in *ex) */
template <typename T>
ADK_INLINE bool within(double r, double lo, double hi, double *ex, const T *a, const T *b, int64_t d) {
  const double r2 = r * r;
  if (hi < r2 * (1.0 - 8.0 * U64)) return true;
  if (lo > r2 * (1.0 + 8.0 * U64)) return false;
  if (*ex < 0) *ex = exact_dist(a, b, d);
  return *ex <= r;
}

/* a warp per real row of the block, the lanes along the fake rows */
template <typename T>
__global__ void __launch_bounds__(128) manifold_rows_kernel(int64_t *fir, int64_t *rir, int64_t *rif,
                                                            const double *G, int64_t i0, int64_t b, int64_t m,
                                                            const T *real, const T *fake, int64_t d,
                                                            const double *rn2, const double *fn2, double fmax,
                                                            const double *rr, const double *rf) {
  const int lane = threadIdx.x & 31;
  const int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (r >= b) return;   /* whole warps */
  const int64_t i = i0 + r;
  const double *g = G + r * m;
  const double n2i = rn2[i], s = sqrt(n2i) + fmax;
  const double e = 4.0 * (double)(d + 8) * U64 * s * s + (double)(d + 8) * 1e-300;
  const double gg = 2.0 * (double)(d + 8) * U64;
  const double ri = rr[i];
  const T *xi = real + i * d;
  long long in_real = 0, in_fake = 0;
  for (int64_t j = lane; j < m; j += 32) {
    const double v = n2i + fn2[j] - 2.0 * g[j];
    const double lo = (v - e) * (1.0 - gg), hi = (v + e) * (1.0 + gg);
    double ex = -1.0;
    if (within(ri, lo, hi, &ex, xi, fake + j * d, d)) {
      in_real++;
      atomicAdd((unsigned long long *)&fir[j], 1ull);
    }
    if (rf) in_fake += within(rf[j], lo, hi, &ex, xi, fake + j * d, d);
  }
  in_real = warp_sum_ll(in_real);
  in_fake = warp_sum_ll(in_fake);
  if (lane == 0) {
    rir[i] = in_real;
    if (rif) rif[i] = in_fake;
  }
}

extern "C" cudaError_t ad_launch_manifold_counts_block(const adk_ctx *c, int64_t *fir, int64_t *rir, int64_t *rif,
                                                       const double *G, int64_t i0, int64_t b, int64_t m,
                                                       const void *real, const void *fake, int dtype, int64_t d,
                                                       const double *rn2, const double *fn2, double fmax,
                                                       const double *rr, const double *rf) {
  if (b <= 0) return cudaSuccess;
  if (b > INT32_MAX) return cudaErrorInvalidValue;
  const unsigned blocks = (unsigned)((b + 3) / 4);
  ADK_DISPATCH_F(dtype, T, (manifold_rows_kernel<T><<<blocks, 128, 0, c->stream>>>(
                              fir, rir, rif, G, i0, b, m, (const T *)real, (const T *)fake, d, rn2, fn2, fmax, rr,
                              rf)));
  return adk_launched();
}

/* ---- cdist and covariance finishing passes --------------------------------------- */

__global__ void cdist_finish_kernel(double *o, const double *na, const double *nb, int64_t n, int64_t m) {
  ADK_GRID_LOOP(k, n * m) {
    const double v = o[k] + na[k / m] + nb[k % m];
    o[k] = v > 0 ? sqrt(v) : 0.0;
  }
}

extern "C" cudaError_t ad_launch_cdist_finish(const adk_ctx *c, double *o, const double *na, const double *nb,
                                              int64_t n, int64_t m) {
  if (n * m == 0) return cudaSuccess;
  cdist_finish_kernel<<<adk_blocks(c, n * m, 256), 256, 0, c->stream>>>(o, na, nb, n, m);
  return adk_launched();
}

/* each upper element's thread also writes its mirror: no element is written twice */
__global__ void cov_finish_kernel(double *s, int64_t d, double scale) {
  ADK_GRID_LOOP(k, d * d) {
    const int64_t i = k / d, j = k % d;
    if (j >= i) {
      const double v = s[k] * scale;
      s[k] = v;
      s[j * d + i] = v;
    }
  }
}

extern "C" cudaError_t ad_launch_cov_finish(const adk_ctx *c, double *s, int64_t d, double scale) {
  if (d == 0) return cudaSuccess;
  cov_finish_kernel<<<adk_blocks(c, d * d, 256), 256, 0, c->stream>>>(s, d, scale);
  return adk_launched();
}
