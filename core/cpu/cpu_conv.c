/* cpu_conv.c: CPU conv2d forward, backward-data and backward-weight.
 *
 * Two implementations:
 *  - oneDNN (when built with AD_HAVE_DNNL, f32 only): primitives chosen with
 *    "any" memory formats, so oneDNN picks its blocked layouts (nChw8c with
 *    jit:avx2 kernels on this class of machine) and we reorder from and to
 *    plain NCHW around each call. Measured at ADM's shapes on 2 threads,
 *    forward+backward, this beats plain-NCHW oneDNN (which then uses its gemm
 *    kernels) by 7-16% and im2col + OpenBLAS by 9-36%, reorders included
 *    (tests/bench/README.md has the figures).
 *    Primitives and their reorders are cached per shape in a small LRU, so a
 *    training step does not rebuild them.
 *  - im2col + OpenBLAS GEMM: f64 (gradchecks), builds without oneDNN, and any
 *    configuration oneDNN declines. Images are spread over OpenMP threads,
 *    each running single-threaded GEMMs on its own column buffer; with fewer
 *    images than threads, OpenBLAS threads each product instead.
 * ADVDIFF_CONV=im2col in the environment forces the second path (benchmarks,
 * cross-checks). */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "../backend.h"
#include "../backend_conv.h"
#ifdef AD_HAVE_DNNL
#include <dnnl.h>
#include <dnnl_debug.h>
#include <pthread.h>
#endif

/* ---- geometry ---------------------------------------------------------------- */

typedef struct {
  int64_t N, C, H, W;     /* input */
  int64_t O, kh, kw;      /* weight (O, C/G, kh, kw) */
  int64_t Ho, Wo;         /* output */
  int64_t sh, sw, ph, pw, dh, dw, G;
  int64_t Cg, Og, K;      /* per group: in channels, out channels, Cg*kh*kw */
} conv_geom;

static conv_geom make_geom(const ad_tensor *x, const ad_tensor *w, const ad_tensor *y, const ad_conv2d_args *a) {
  conv_geom g;
  g.N = x->shape[0]; g.C = x->shape[1]; g.H = x->shape[2]; g.W = x->shape[3];
  g.O = w->shape[0]; g.kh = w->shape[2]; g.kw = w->shape[3];
  g.Ho = y->shape[2]; g.Wo = y->shape[3];
  g.sh = a->stride[0]; g.sw = a->stride[1];
  g.ph = a->padding[0]; g.pw = a->padding[1];
  g.dh = a->dilation[0]; g.dw = a->dilation[1];
  g.G = a->groups;
  g.Cg = g.C / g.G; g.Og = g.O / g.G; g.K = g.Cg * g.kh * g.kw;
  return g;
}

/* 1x1, stride 1, no padding: the input image already is the column matrix */
static bool is_pointwise(const conv_geom *g) {
  return g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
}

/* ---- im2col + GEMM ------------------------------------------------------------ */

static void gemm_dt(ad_dtype dt, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void *a, int64_t lda,
                    const void *b, int64_t ldb, double beta, void *c, int64_t ldc) {
  CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
  if (dt == AD_F32)
    cblas_sgemm(CblasRowMajor, TA, TB, (int)m, (int)n, (int)k, 1.0f, a, (int)lda, b, (int)ldb, (float)beta, c, (int)ldc);
  else
    cblas_dgemm(CblasRowMajor, TA, TB, (int)m, (int)n, (int)k, 1.0, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

/* Element moves by size, so one im2col serves f32 and f64. */
static inline void gather_row(size_t es, char *dst, const char *src, int64_t n, int64_t sstride) {
  if (sstride == 1) { memcpy(dst, src, (size_t)n * es); return; }
  if (es == 4) for (int64_t i = 0; i < n; i++) ((float *)dst)[i] = ((const float *)src)[i * sstride];
  else for (int64_t i = 0; i < n; i++) ((double *)dst)[i] = ((const double *)src)[i * sstride];
}
static inline void scatter_add_row(size_t es, char *dst, const char *src, int64_t n, int64_t dstride) {
  if (es == 4) for (int64_t i = 0; i < n; i++) ((float *)dst)[i * dstride] += ((const float *)src)[i];
  else for (int64_t i = 0; i < n; i++) ((double *)dst)[i * dstride] += ((const double *)src)[i];
}

/* For output column ow, input column iw = ow*s + off; the ow range reading inside [0, W). */
static void valid_range(int64_t Wo, int64_t W, int64_t s, int64_t off, int64_t *lo, int64_t *hi) {
  int64_t a = off >= 0 ? 0 : (-off + s - 1) / s;
  int64_t b = W - off <= 0 ? 0 : (W - off + s - 1) / s;   /* first ow with iw >= W */
  if (b > Wo) b = Wo;
  if (a > b) a = b;
  *lo = a; *hi = b;
}

/* col (Cg*kh*kw, Ho*Wo) <- the receptive fields of one image's group x (Cg, H, W) */
static void im2col(size_t es, const conv_geom *g, const char *x, char *col) {
  int64_t HW = g->Ho * g->Wo;
  for (int64_t c = 0; c < g->Cg; c++)
    for (int64_t i = 0; i < g->kh; i++)
      for (int64_t j = 0; j < g->kw; j++) {
        char *row = col + (size_t)(((c * g->kh + i) * g->kw + j) * HW) * es;
        int64_t off = j * g->dw - g->pw, lo, hi;
        valid_range(g->Wo, g->W, g->sw, off, &lo, &hi);
        for (int64_t oh = 0; oh < g->Ho; oh++) {
          char *dst = row + (size_t)(oh * g->Wo) * es;
          int64_t ih = oh * g->sh - g->ph + i * g->dh;
          if (ih < 0 || ih >= g->H) { memset(dst, 0, (size_t)g->Wo * es); continue; }
          const char *src = x + (size_t)((c * g->H + ih) * g->W) * es;
          if (lo > 0) memset(dst, 0, (size_t)lo * es);
          if (hi > lo) gather_row(es, dst + (size_t)lo * es, src + (size_t)(lo * g->sw + off) * es, hi - lo, g->sw);
          if (hi < g->Wo) memset(dst + (size_t)hi * es, 0, (size_t)(g->Wo - hi) * es);
        }
      }
}

/* x (Cg, H, W) += the column matrix folded back (adjoint of im2col) */
static void col2im(size_t es, const conv_geom *g, const char *col, char *x) {
  int64_t HW = g->Ho * g->Wo;
  for (int64_t c = 0; c < g->Cg; c++)
    for (int64_t i = 0; i < g->kh; i++)
      for (int64_t j = 0; j < g->kw; j++) {
        const char *row = col + (size_t)(((c * g->kh + i) * g->kw + j) * HW) * es;
        int64_t off = j * g->dw - g->pw, lo, hi;
        valid_range(g->Wo, g->W, g->sw, off, &lo, &hi);
        if (hi <= lo) continue;
        for (int64_t oh = 0; oh < g->Ho; oh++) {
          int64_t ih = oh * g->sh - g->ph + i * g->dh;
          if (ih < 0 || ih >= g->H) continue;
          char *dst = x + (size_t)((c * g->H + ih) * g->W + lo * g->sw + off) * es;
          scatter_add_row(es, dst, row + (size_t)(oh * g->Wo + lo) * es, hi - lo, g->sw);
        }
      }
}

/* Images are split across threads when there are enough of them; each thread
 * then calls BLAS from inside the parallel region, where OpenBLAS stays on
 * one thread. */
static int image_threads(int64_t N) {
  int nt = omp_get_max_threads();
  return (N >= nt && nt > 1) ? nt : 1;
}

static ad_status col_buffers(char **buf, size_t per_thread, int nt, const char *op) {
  *buf = malloc(per_thread * (size_t)nt + 64);
  if (!*buf) return AD_FAIL(AD_ENOMEM, "%s: out of memory for %zu bytes of im2col buffers", op, per_thread * (size_t)nt);
  return AD_OK;
}

static ad_status im2col_fwd(ad_tensor *y, const ad_tensor *x, const ad_tensor *w, const ad_tensor *b,
                            const conv_geom *g) {
  ad_dtype dt = x->dtype;
  size_t es = ad_dtype_size(dt);
  bool pw = is_pointwise(g);
  int64_t HW = g->Ho * g->Wo;
  int nt = image_threads(g->N);
  char *cols = NULL;
  if (!pw) AD_TRY(col_buffers(&cols, (size_t)(g->K * HW) * es, nt, "conv2d"));
  const char *xp = ad_data(x), *wp = ad_data(w), *bp = b ? ad_data(b) : NULL;
  char *yp = ad_data(y);
  #pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t n = 0; n < g->N; n++) {
    char *col = pw ? NULL : cols + (size_t)omp_get_thread_num() * (size_t)(g->K * HW) * es;
    for (int64_t gr = 0; gr < g->G; gr++) {
      const char *xg = xp + (size_t)((n * g->C + gr * g->Cg) * g->H * g->W) * es;
      char *yg = yp + (size_t)((n * g->O + gr * g->Og) * HW) * es;
      if (bp)    /* start from the bias, GEMM accumulates onto it */
        for (int64_t o = 0; o < g->Og; o++) {
          int64_t oc = gr * g->Og + o;
          if (dt == AD_F32) { float v = ((const float *)bp)[oc]; float *r = (float *)yg + o * HW; for (int64_t i = 0; i < HW; i++) r[i] = v; }
          else { double v = ((const double *)bp)[oc]; double *r = (double *)yg + o * HW; for (int64_t i = 0; i < HW; i++) r[i] = v; }
        }
      const char *src = xg;
      if (!pw) { im2col(es, g, xg, col); src = col; }
      gemm_dt(dt, false, false, g->Og, HW, g->K, wp + (size_t)(gr * g->Og * g->K) * es, g->K, src, HW,
              bp ? 1.0 : 0.0, yg, HW);
    }
  }
  free(cols);
  return AD_OK;
}

static ad_status im2col_bwd_data(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *w, const conv_geom *g) {
  ad_dtype dt = dy->dtype;
  size_t es = ad_dtype_size(dt);
  bool pw = is_pointwise(g);
  int64_t HW = g->Ho * g->Wo;
  int nt = image_threads(g->N);
  char *cols = NULL;
  if (!pw) AD_TRY(col_buffers(&cols, (size_t)(g->K * HW) * es, nt, "conv2d backward"));
  const char *dyp = ad_data(dy), *wp = ad_data(w);
  char *dxp = ad_data(dx);
  #pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t n = 0; n < g->N; n++) {
    char *col = pw ? NULL : cols + (size_t)omp_get_thread_num() * (size_t)(g->K * HW) * es;
    for (int64_t gr = 0; gr < g->G; gr++) {
      char *dxg = dxp + (size_t)((n * g->C + gr * g->Cg) * g->H * g->W) * es;
      const char *dyg = dyp + (size_t)((n * g->O + gr * g->Og) * HW) * es;
      const char *wg = wp + (size_t)(gr * g->Og * g->K) * es;
      /* dcol (K, HW) = w_g^T (K, Og) . dy_g (Og, HW) */
      if (pw) { gemm_dt(dt, true, false, g->K, HW, g->Og, wg, g->K, dyg, HW, 0.0, dxg, HW); continue; }
      gemm_dt(dt, true, false, g->K, HW, g->Og, wg, g->K, dyg, HW, 0.0, col, HW);
      memset(dxg, 0, (size_t)(g->Cg * g->H * g->W) * es);
      col2im(es, g, col, dxg);
    }
  }
  free(cols);
  return AD_OK;
}

static void bias_grad(ad_tensor *db, const ad_tensor *dy, const conv_geom *g) {
  int64_t HW = g->Ho * g->Wo;
  #pragma omp parallel for if (g->N * g->O * HW > 65536)
  for (int64_t o = 0; o < g->O; o++) {
    double s = 0;   /* f64 accumulation keeps f32 bias grads stable over large batches */
    for (int64_t n = 0; n < g->N; n++) {
      int64_t base = (n * g->O + o) * HW;
      if (dy->dtype == AD_F32) { const float *p = (const float *)ad_data(dy) + base; for (int64_t i = 0; i < HW; i++) s += p[i]; }
      else { const double *p = (const double *)ad_data(dy) + base; for (int64_t i = 0; i < HW; i++) s += p[i]; }
    }
    if (db->dtype == AD_F32) ((float *)ad_data(db))[o] = (float)s;
    else ((double *)ad_data(db))[o] = s;
  }
}

static ad_status im2col_bwd_weight(ad_tensor *dw, ad_tensor *db, const ad_tensor *x, const ad_tensor *dy,
                                   const conv_geom *g) {
  ad_dtype dt = x->dtype;
  size_t es = ad_dtype_size(dt);
  bool pw = is_pointwise(g);
  int64_t HW = g->Ho * g->Wo, wn = g->O * g->K;
  int nt = image_threads(g->N);
  /* per thread: a column buffer, and (with several threads) a private dw */
  size_t col_bytes = pw ? 0 : (size_t)(g->K * HW) * es;
  size_t acc_bytes = nt > 1 ? (size_t)wn * es : 0;
  size_t per = (col_bytes + acc_bytes + 63) & ~(size_t)63;
  char *bufs = NULL;
  if (per) AD_TRY(col_buffers(&bufs, per, nt, "conv2d backward"));
  const char *xp = ad_data(x), *dyp = ad_data(dy);
  char *dwp = ad_data(dw);
  #pragma omp parallel num_threads(nt) if (nt > 1)
  {
    int t = omp_get_thread_num();
    char *col = bufs ? bufs + (size_t)t * per : NULL;
    char *acc = nt > 1 ? col + col_bytes : dwp;
    int64_t n0 = g->N * t / nt, n1 = g->N * (t + 1) / nt;
    if (n1 == n0) memset(acc, 0, (size_t)wn * es);
    for (int64_t n = n0; n < n1; n++)
      for (int64_t gr = 0; gr < g->G; gr++) {
        const char *xg = xp + (size_t)((n * g->C + gr * g->Cg) * g->H * g->W) * es;
        const char *dyg = dyp + (size_t)((n * g->O + gr * g->Og) * HW) * es;
        const char *src = xg;
        if (!pw) { im2col(es, g, xg, col); src = col; }
        /* dw_g (Og, K) += dy_g (Og, HW) . col^T (HW, K) */
        gemm_dt(dt, false, true, g->Og, g->K, HW, dyg, HW, src, HW, n == n0 ? 0.0 : 1.0,
                acc + (size_t)(gr * g->Og * g->K) * es, g->K);
      }
  }
  if (nt > 1) {
    #pragma omp parallel for if (wn > 16384)
    for (int64_t i = 0; i < wn; i++) {
      double s = 0;
      for (int t = 0; t < nt; t++) {
        const char *acc = bufs + (size_t)t * per + col_bytes;
        s += dt == AD_F32 ? ((const float *)acc)[i] : ((const double *)acc)[i];
      }
      if (dt == AD_F32) ((float *)dwp)[i] = (float)s; else ((double *)dwp)[i] = s;
    }
  }
  free(bufs);
  if (db) bias_grad(db, dy, g);
  return AD_OK;
}

/* ---- oneDNN ------------------------------------------------------------------- */
#ifdef AD_HAVE_DNNL

enum { K_FWD = 0, K_BWD_DATA, K_BWD_WEIGHT };
#define CACHE_SIZE 64

typedef struct {
  int kind;
  int64_t N, C, H, W, O, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, G;
  int bias;
} conv_key;

/* One cached primitive: its three reorderable arguments (two inputs, then the
 * output), each with the caller's plain descriptor, the primitive's preferred
 * one and the reorder between them (NULL when they agree). Bias is always plain. */
typedef struct {
  bool used, declined;   /* declined: oneDNN cannot do this key; remembered so we ask once */
  conv_key key;
  uint64_t stamp;
  dnnl_primitive_desc_t hint, pd;
  dnnl_primitive_t prim;
  int arg[3];
  dnnl_memory_desc_t user_md[3], prim_md[3];
  dnnl_primitive_t reorder[3];
} conv_entry;

static pthread_mutex_t dnnl_lock = PTHREAD_MUTEX_INITIALIZER;
static dnnl_engine_t dnnl_eng;
static dnnl_stream_t dnnl_strm;
static bool dnnl_ready, dnnl_broken;
static conv_entry cache[CACHE_SIZE];
static uint64_t cache_clock;

/* Buffers for the blocked-layout copies of the three arguments, kept between
 * calls (fresh multi-megabyte allocations each call cost page faults worth
 * 10-20% of a convolution). Calls are serialised by dnnl_lock, so one set
 * serves every shape; buffers above SCRATCH_KEEP are freed after the call. */
#define SCRATCH_KEEP ((size_t)64 << 20)
static void *scratch[3];
static size_t scratch_size[3];

static void *scratch_get(int i, size_t n) {
  if (scratch_size[i] >= n) return scratch[i];
  free(scratch[i]);
  scratch_size[i] = 0;
  scratch[i] = aligned_alloc(64, (n + 63) & ~(size_t)63);
  if (scratch[i]) scratch_size[i] = n;
  return scratch[i];
}
static void scratch_trim(void) {
  for (int i = 0; i < 3; i++)
    if (scratch_size[i] > SCRATCH_KEEP) { free(scratch[i]); scratch[i] = NULL; scratch_size[i] = 0; }
}

static void entry_clear(conv_entry *e) {
  for (int i = 0; i < 3; i++) if (e->reorder[i]) dnnl_primitive_destroy(e->reorder[i]);
  if (e->prim) dnnl_primitive_destroy(e->prim);
  if (e->pd) dnnl_primitive_desc_destroy(e->pd);
  if (e->hint) dnnl_primitive_desc_destroy(e->hint);
  memset(e, 0, sizeof *e);
}

static bool dnnl_init_locked(void) {
  if (dnnl_ready) return true;
  if (dnnl_broken) return false;
  if (dnnl_engine_create(&dnnl_eng, dnnl_cpu, 0) != dnnl_success ||
      dnnl_stream_create(&dnnl_strm, dnnl_eng, dnnl_stream_default_flags) != dnnl_success) {
    dnnl_broken = true;
    return false;
  }
  dnnl_ready = true;
  return true;
}

static dnnl_status_t md_plain(dnnl_memory_desc_t *md, int nd, const int64_t *dims, dnnl_format_tag_t tag) {
  dnnl_dims_t d;
  for (int i = 0; i < nd; i++) d[i] = dims[i];
  return dnnl_memory_desc_init_by_tag(md, nd, d, dnnl_f32, tag);
}

/* Reorder from -> to, or NULL when the layouts already agree. */
static dnnl_status_t make_reorder(dnnl_primitive_t *r, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to) {
  *r = NULL;
  if (dnnl_memory_desc_equal(from, to)) return dnnl_success;
  dnnl_primitive_desc_t rpd;
  dnnl_status_t s = dnnl_reorder_primitive_desc_create(&rpd, from, dnnl_eng, to, dnnl_eng, NULL);
  if (s != dnnl_success) return s;
  s = dnnl_primitive_create(r, rpd);
  dnnl_primitive_desc_destroy(rpd);
  return s;
}

#define DN(call) do { if ((s = (call)) != dnnl_success) goto fail; } while (0)

/* Builds the primitive for key into e; false when oneDNN declines it. */
static bool entry_build(conv_entry *e, const conv_key *k) {
  dnnl_status_t s;
  memset(e, 0, sizeof *e);
  int64_t xd[4] = {k->N, k->C, k->H, k->W}, yd[4] = {k->N, k->O, k->Ho, k->Wo};
  int64_t wd[5] = {k->G, k->O / k->G, k->C / k->G, k->kh, k->kw};
  int64_t bd[1] = {k->O};
  int wnd = k->G > 1 ? 5 : 4;
  const int64_t *wdims = k->G > 1 ? wd : wd + 1;
  dnnl_memory_desc_t x_user, w_user, y_user, x_any, w_any, y_any, b_md;
  DN(md_plain(&x_user, 4, xd, dnnl_nchw));
  DN(md_plain(&y_user, 4, yd, dnnl_nchw));
  DN(md_plain(&w_user, wnd, wdims, k->G > 1 ? dnnl_goihw : dnnl_oihw));
  DN(md_plain(&x_any, 4, xd, dnnl_format_tag_any));
  DN(md_plain(&y_any, 4, yd, dnnl_format_tag_any));
  DN(md_plain(&w_any, wnd, wdims, dnnl_format_tag_any));
  DN(md_plain(&b_md, 1, bd, dnnl_x));
  dnnl_dims_t strides = {k->sh, k->sw}, dil = {k->dh - 1, k->dw - 1}, pl = {k->ph, k->pw};
  /* symmetric padding: oneDNN's (H + pl + pr - extent) / stride + 1 is then
   * PyTorch's floor-mode output size */
  dnnl_dims_t pr = {k->ph, k->pw};
  const dnnl_memory_desc_t *bias = (k->kind == K_FWD || k->kind == K_BWD_WEIGHT) && k->bias ? &b_md : NULL;
  dnnl_convolution_desc_t fd, cd;
  DN(dnnl_dilated_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct, &x_any,
                                                &w_any, k->kind == K_FWD ? bias : NULL, &y_any, strides, dil, pl, pr));
  DN(dnnl_primitive_desc_create(&e->hint, &fd, NULL, dnnl_eng, NULL));
  dnnl_query_t q[3];
  const dnnl_memory_desc_t *user[3];
  if (k->kind == K_FWD) {
    e->pd = e->hint; e->hint = NULL;
    e->arg[0] = DNNL_ARG_SRC; e->arg[1] = DNNL_ARG_WEIGHTS; e->arg[2] = DNNL_ARG_DST;
    q[0] = dnnl_query_src_md; q[1] = dnnl_query_weights_md; q[2] = dnnl_query_dst_md;
    user[0] = &x_user; user[1] = &w_user; user[2] = &y_user;
  } else if (k->kind == K_BWD_DATA) {
    DN(dnnl_dilated_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &x_any, &w_any, &y_any,
                                                        strides, dil, pl, pr));
    DN(dnnl_primitive_desc_create(&e->pd, &cd, NULL, dnnl_eng, e->hint));
    e->arg[0] = DNNL_ARG_DIFF_DST; e->arg[1] = DNNL_ARG_WEIGHTS; e->arg[2] = DNNL_ARG_DIFF_SRC;
    q[0] = dnnl_query_diff_dst_md; q[1] = dnnl_query_weights_md; q[2] = dnnl_query_diff_src_md;
    user[0] = &y_user; user[1] = &w_user; user[2] = &x_user;
  } else {
    DN(dnnl_dilated_convolution_backward_weights_desc_init(&cd, dnnl_convolution_direct, &x_any, &w_any, bias,
                                                           &y_any, strides, dil, pl, pr));
    DN(dnnl_primitive_desc_create(&e->pd, &cd, NULL, dnnl_eng, e->hint));
    e->arg[0] = DNNL_ARG_SRC; e->arg[1] = DNNL_ARG_DIFF_DST; e->arg[2] = DNNL_ARG_DIFF_WEIGHTS;
    q[0] = dnnl_query_src_md; q[1] = dnnl_query_diff_dst_md; q[2] = dnnl_query_diff_weights_md;
    user[0] = &x_user; user[1] = &y_user; user[2] = &w_user;
  }
  for (int i = 0; i < 3; i++) {
    const dnnl_memory_desc_t *pm = dnnl_primitive_desc_query_md(e->pd, q[i], 0);
    if (!pm) { s = dnnl_runtime_error; goto fail; }
    e->user_md[i] = *user[i];
    e->prim_md[i] = *pm;
    if (i < 2) DN(make_reorder(&e->reorder[i], &e->user_md[i], &e->prim_md[i]));
    else DN(make_reorder(&e->reorder[i], &e->prim_md[i], &e->user_md[i]));
  }
  DN(dnnl_primitive_create(&e->prim, e->pd));
  e->key = *k;
  e->used = true;
  return true;
fail:
  entry_clear(e);
  return false;
}

/* The cached entry for k (built on a miss, evicting the least recently used);
 * entry->declined when oneDNN cannot do this convolution. Caller holds dnnl_lock. */
static conv_entry *cache_get(const conv_key *k) {
  conv_entry *lru = &cache[0];
  for (int i = 0; i < CACHE_SIZE; i++) {
    conv_entry *e = &cache[i];
    if (e->used && memcmp(&e->key, k, sizeof *k) == 0) { e->stamp = ++cache_clock; return e; }
    if (!e->used) { if (lru->used) lru = e; }
    else if (lru->used && e->stamp < lru->stamp) lru = e;
  }
  if (lru->used) entry_clear(lru);
  if (!entry_build(lru, k)) { lru->used = true; lru->declined = true; lru->key = *k; }
  lru->stamp = ++cache_clock;
  return lru;
}

/* Runs the cached primitive on plain buffers p[0], p[1] (inputs) and p[2]
 * (output), with an optional plain bias buffer (bias in forward, bias
 * gradient in backward-weight). 1: done, 0: oneDNN declined (use im2col),
 * -1: failed (error set). */
static int dnnl_run(const conv_key *k, void *const p[3], void *bias) {
  int rc = 0;
  pthread_mutex_lock(&dnnl_lock);
  if (!dnnl_init_locked()) goto out;
  conv_entry *e = cache_get(k);
  if (e->declined) goto out;
  dnnl_memory_t user[3] = {0}, prim[3] = {0}, bmem = NULL;
  dnnl_status_t s = dnnl_success;
  for (int i = 0; i < 3 && s == dnnl_success; i++) {
    s = dnnl_memory_create(&user[i], &e->user_md[i], dnnl_eng, p[i]);
    if (s == dnnl_success && e->reorder[i]) {
      void *buf = scratch_get(i, dnnl_memory_desc_get_size(&e->prim_md[i]));
      s = buf ? dnnl_memory_create(&prim[i], &e->prim_md[i], dnnl_eng, buf) : dnnl_out_of_memory;
    } else if (s == dnnl_success) {
      s = dnnl_memory_create(&prim[i], &e->prim_md[i], dnnl_eng, p[i]);
    }
  }
  if (s == dnnl_success && bias) {
    dnnl_memory_desc_t bmd;
    int64_t bd[1] = {k->O};
    s = md_plain(&bmd, 1, bd, dnnl_x);
    if (s == dnnl_success) s = dnnl_memory_create(&bmem, &bmd, dnnl_eng, bias);
  }
  for (int i = 0; i < 2 && s == dnnl_success; i++)
    if (e->reorder[i]) {
      dnnl_exec_arg_t ra[2] = {{DNNL_ARG_FROM, user[i]}, {DNNL_ARG_TO, prim[i]}};
      s = dnnl_primitive_execute(e->reorder[i], dnnl_strm, 2, ra);
    }
  if (s == dnnl_success) {
    dnnl_exec_arg_t args[4] = {{e->arg[0], prim[0]}, {e->arg[1], prim[1]}, {e->arg[2], prim[2]}, {0, NULL}};
    int na = 3;
    if (bmem) { args[3].arg = k->kind == K_FWD ? DNNL_ARG_BIAS : DNNL_ARG_DIFF_BIAS; args[3].memory = bmem; na = 4; }
    s = dnnl_primitive_execute(e->prim, dnnl_strm, na, args);
  }
  if (s == dnnl_success && e->reorder[2]) {
    dnnl_exec_arg_t ra[2] = {{DNNL_ARG_FROM, prim[2]}, {DNNL_ARG_TO, user[2]}};
    s = dnnl_primitive_execute(e->reorder[2], dnnl_strm, 2, ra);
  }
  if (s == dnnl_success) s = dnnl_stream_wait(dnnl_strm);
  for (int i = 0; i < 3; i++) {
    if (prim[i]) dnnl_memory_destroy(prim[i]);
    if (user[i]) dnnl_memory_destroy(user[i]);
  }
  if (bmem) dnnl_memory_destroy(bmem);
  scratch_trim();
  if (s == dnnl_success) rc = 1;
  else { AD_FAIL(AD_ENOMEM, "conv2d: oneDNN failed: %s", dnnl_status2str(s)); rc = -1; }
out:
  pthread_mutex_unlock(&dnnl_lock);
  return rc;
}

static conv_key key_of(int kind, const conv_geom *g, bool bias) {
  conv_key k;
  memset(&k, 0, sizeof k);   /* keys are compared with memcmp: padding must be zero */
  k.kind = kind;
  k.N = g->N; k.C = g->C; k.H = g->H; k.W = g->W; k.O = g->O; k.kh = g->kh; k.kw = g->kw;
  k.Ho = g->Ho; k.Wo = g->Wo; k.sh = g->sh; k.sw = g->sw; k.ph = g->ph; k.pw = g->pw;
  k.dh = g->dh; k.dw = g->dw; k.G = g->G; k.bias = bias;
  return k;
}
#endif /* AD_HAVE_DNNL */

static bool want_dnnl(ad_dtype dt) {
#ifdef AD_HAVE_DNNL
  if (dt != AD_F32) return false;
  const char *env = getenv("ADVDIFF_CONV");
  return !(env && strcmp(env, "im2col") == 0);
#else
  (void)dt;
  return false;
#endif
}

static ad_status check_dtype(const ad_tensor *t, const char *op) {
  if (t->dtype != AD_F32 && t->dtype != AD_F64)
    return AD_FAIL(AD_EDTYPE, "%s: the CPU kernel computes in f32 or f64, got %s", op, ad_dtype_name(t->dtype));
  return AD_OK;
}

static ad_status cpu_conv2d_fwd(ad_tensor *y, const ad_tensor *x, const ad_tensor *w, const ad_tensor *b,
                                const ad_conv2d_args *a) {
  AD_TRY(check_dtype(x, "conv2d"));
  conv_geom g = make_geom(x, w, y, a);
  if (ad_numel(y) == 0) return AD_OK;
  if (g.K == 0) {   /* no input channels: the output is the bias alone */
    ad_status st = ad_backend_of(y)->fill(y, 0.0);
    if (st != AD_OK || !b) return st;
    for (int64_t n = 0; n < g.N; n++)
      for (int64_t o = 0; o < g.O; o++)
        for (int64_t i = 0; i < g.Ho * g.Wo; i++) ad_set_flat(y, (n * g.O + o) * g.Ho * g.Wo + i, ad_get_flat(b, o));
    return AD_OK;
  }
#ifdef AD_HAVE_DNNL
  if (want_dnnl(x->dtype)) {
    conv_key k = key_of(K_FWD, &g, b != NULL);
    void *p[3] = {ad_data(x), ad_data(w), ad_data(y)};
    int rc = dnnl_run(&k, p, b ? ad_data(b) : NULL);
    if (rc != 0) return rc > 0 ? AD_OK : AD_ENOMEM;
  }
#endif
  return im2col_fwd(y, x, w, b, &g);
}

static ad_status cpu_conv2d_bwd_data(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *w,
                                     const ad_conv2d_args *a) {
  AD_TRY(check_dtype(dy, "conv2d backward"));
  conv_geom g = make_geom(dx, w, dy, a);
  if (ad_numel(dx) == 0) return AD_OK;
  if (ad_numel(dy) == 0 || g.Og == 0) return ad_backend_of(dx)->fill(dx, 0.0);
#ifdef AD_HAVE_DNNL
  if (want_dnnl(dy->dtype)) {
    conv_key k = key_of(K_BWD_DATA, &g, false);
    void *p[3] = {ad_data(dy), ad_data(w), ad_data(dx)};
    int rc = dnnl_run(&k, p, NULL);
    if (rc != 0) return rc > 0 ? AD_OK : AD_ENOMEM;
  }
#endif
  return im2col_bwd_data(dx, dy, w, &g);
}

static ad_status cpu_conv2d_bwd_weight(ad_tensor *dw, ad_tensor *db, const ad_tensor *x, const ad_tensor *dy,
                                       const ad_conv2d_args *a) {
  AD_TRY(check_dtype(x, "conv2d backward"));
  conv_geom g = make_geom(x, dw, dy, a);
  if (ad_numel(dy) == 0 || g.K == 0) {   /* nothing flowed: zero gradients */
    if (ad_numel(dw)) AD_TRY(ad_backend_of(dw)->fill(dw, 0.0));
    if (db && ad_numel(db)) AD_TRY(ad_backend_of(db)->fill(db, 0.0));
    if (db && ad_numel(dy) && g.K == 0) bias_grad(db, dy, &g);
    return AD_OK;
  }
#ifdef AD_HAVE_DNNL
  if (want_dnnl(x->dtype)) {
    conv_key k = key_of(K_BWD_WEIGHT, &g, db != NULL);
    void *p[3] = {ad_data(x), ad_data(dy), ad_data(dw)};
    int rc = dnnl_run(&k, p, db ? ad_data(db) : NULL);
    if (rc != 0) return rc > 0 ? AD_OK : AD_ENOMEM;
  }
#endif
  return im2col_bwd_weight(dw, db, x, dy, &g);
}

/* cpu_pool.c and cpu_resample.c fill the rest of the family's table. */
ad_status ad_cpu_max_pool2d_fwd(ad_tensor *y, ad_tensor *indices, const ad_tensor *x, const ad_pool2d_args *a);
ad_status ad_cpu_max_pool2d_bwd(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *indices);
ad_status ad_cpu_avg_pool2d_fwd(ad_tensor *y, const ad_tensor *x, const ad_pool2d_args *a);
ad_status ad_cpu_avg_pool2d_bwd(ad_tensor *dx, const ad_tensor *dy, const ad_pool2d_args *a);
ad_status ad_cpu_adaptive_avg_pool2d_fwd(ad_tensor *y, const ad_tensor *x);
ad_status ad_cpu_adaptive_avg_pool2d_bwd(ad_tensor *dx, const ad_tensor *dy);
ad_status ad_cpu_upsample_nearest2d_fwd(ad_tensor *y, const ad_tensor *x);
ad_status ad_cpu_upsample_nearest2d_bwd(ad_tensor *dx, const ad_tensor *dy);
ad_status ad_cpu_upsample_bilinear2d_fwd(ad_tensor *y, const ad_tensor *x, bool align_corners);
ad_status ad_cpu_upsample_bilinear2d_bwd(ad_tensor *dx, const ad_tensor *dy, bool align_corners);
ad_status ad_cpu_pad_fwd(ad_tensor *y, const ad_tensor *x, const int64_t *before, int mode, double value);
ad_status ad_cpu_pad_bwd(ad_tensor *dx, const ad_tensor *dy, const int64_t *before, int mode);

const struct ad_conv_kernels ad_cpu_conv_kernels = {
  .conv2d_fwd = cpu_conv2d_fwd,
  .conv2d_bwd_data = cpu_conv2d_bwd_data,
  .conv2d_bwd_weight = cpu_conv2d_bwd_weight,
  .max_pool2d_fwd = ad_cpu_max_pool2d_fwd,
  .max_pool2d_bwd = ad_cpu_max_pool2d_bwd,
  .avg_pool2d_fwd = ad_cpu_avg_pool2d_fwd,
  .avg_pool2d_bwd = ad_cpu_avg_pool2d_bwd,
  .adaptive_avg_pool2d_fwd = ad_cpu_adaptive_avg_pool2d_fwd,
  .adaptive_avg_pool2d_bwd = ad_cpu_adaptive_avg_pool2d_bwd,
  .upsample_nearest2d_fwd = ad_cpu_upsample_nearest2d_fwd,
  .upsample_nearest2d_bwd = ad_cpu_upsample_nearest2d_bwd,
  .upsample_bilinear2d_fwd = ad_cpu_upsample_bilinear2d_fwd,
  .upsample_bilinear2d_bwd = ad_cpu_upsample_bilinear2d_bwd,
  .pad_fwd = ad_cpu_pad_fwd,
  .pad_bwd = ad_cpu_pad_bwd,
};
