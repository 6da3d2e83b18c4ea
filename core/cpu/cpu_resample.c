/* cpu_resample.c: CPU nearest and bilinear 2-D upsampling and N-d padding,
 * forward and backward.
 *
 * Source indices follow PyTorch's CPU kernels to the bit: nearest uses
 * floorf(dst * (float)in/out) with its identity and 2x shortcuts; bilinear
 * uses area_pixel_compute_source_index in the data's precision (the FID
 * InceptionV3 resizes 64 -> 299 with it, so a last-ulp difference in an index
 * would move a whole sample). Data movers (nearest forward, pad forward) work
 * for every dtype by element size; gradients are f32/f64. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "../backend.h"
#include "../backend_conv.h"
#include "../mathinl.h"
#include "cpu_iter.h"

static inline double get(const void *p, int64_t i, bool f64) {
  return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
static inline void add(void *p, int64_t i, double v, bool f64) {
  if (f64) ((double *)p)[i] += v; else ((float *)p)[i] += (float)v;
}

static ad_status check_float(const ad_tensor *t, const char *op) {
  if (t->dtype != AD_F32 && t->dtype != AD_F64)
    return AD_FAIL(AD_EDTYPE, "%s: the CPU kernel computes in f32 or f64, got %s", op, ad_dtype_name(t->dtype));
  return AD_OK;
}

/* dst[i] = src[idx[i]] for elements of es bytes */
static inline void gather(size_t es, char *dst, const char *src, const int64_t *idx, int64_t n) {
  switch (es) {
  case 1: for (int64_t i = 0; i < n; i++) dst[i] = src[idx[i]]; break;
  case 2: for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = ((const uint16_t *)src)[idx[i]]; break;
  case 4: for (int64_t i = 0; i < n; i++) ((uint32_t *)dst)[i] = ((const uint32_t *)src)[idx[i]]; break;
  default: for (int64_t i = 0; i < n; i++) ((uint64_t *)dst)[i] = ((const uint64_t *)src)[idx[i]]; break;
  }
}

/* ---- nearest ------------------------------------------------------------------ */

static int64_t nearest_src(int64_t dst, int64_t in, int64_t out) {
  if (out == in) return dst;
  if (out == 2 * in) return dst >> 1;
  float scale = (float)in / (float)out;
  int64_t s = (int64_t)floorf((float)dst * scale);
  return s < in - 1 ? s : in - 1;
}

static ad_status index_table(int64_t **t, int64_t in, int64_t out, const char *op) {
  *t = malloc((size_t)(out > 0 ? out : 1) * sizeof **t);
  if (!*t) return AD_FAIL(AD_ENOMEM, "%s: out of memory", op);
  for (int64_t i = 0; i < out; i++) (*t)[i] = nearest_src(i, in, out);
  return AD_OK;
}

ad_status ad_cpu_upsample_nearest2d_fwd(ad_tensor *y, const ad_tensor *x) {
  int64_t P = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t Ho = y->shape[2], Wo = y->shape[3];
  if (ad_numel(y) == 0) return AD_OK;
  size_t es = ad_dtype_size(x->dtype);
  int64_t *hi = NULL, *wi = NULL;
  ad_status st;
  AD_TRY_GOTO(st, index_table(&hi, H, Ho, "upsample_nearest2d"), done);
  AD_TRY_GOTO(st, index_table(&wi, W, Wo, "upsample_nearest2d"), done);
  const char *xp = ad_data(x);
  char *yp = ad_data(y);
  #pragma omp parallel for if (P * Ho * Wo > AD_OMP_MIN)
  for (int64_t r = 0; r < P * Ho; r++) {
    int64_t p = r / Ho, oh = r % Ho;
    gather(es, yp + (size_t)(r * Wo) * es, xp + (size_t)((p * H + hi[oh]) * W) * es, wi, Wo);
  }
done:
  free(hi);
  free(wi);
  return st;
}

ad_status ad_cpu_upsample_nearest2d_bwd(ad_tensor *dx, const ad_tensor *dy) {
  AD_TRY(check_float(dx, "upsample_nearest2d backward"));
  bool f64 = dx->dtype == AD_F64;
  int64_t P = dx->shape[0] * dx->shape[1], H = dx->shape[2], W = dx->shape[3];
  int64_t Ho = dy->shape[2], Wo = dy->shape[3];
  memset(ad_data(dx), 0, (size_t)ad_numel(dx) * ad_dtype_size(dx->dtype));
  int64_t *hi = NULL, *wi = NULL;
  ad_status st;
  AD_TRY_GOTO(st, index_table(&hi, H, Ho, "upsample_nearest2d"), done);
  AD_TRY_GOTO(st, index_table(&wi, W, Wo, "upsample_nearest2d"), done);
  void *gx = ad_data(dx);
  const void *gy = ad_data(dy);
  #pragma omp parallel for if (P * Ho * Wo > AD_OMP_MIN)
  for (int64_t p = 0; p < P; p++)
    for (int64_t oh = 0; oh < Ho; oh++)
      for (int64_t ow = 0; ow < Wo; ow++)
        add(gx, (p * H + hi[oh]) * W + wi[ow], get(gy, (p * Ho + oh) * Wo + ow, f64), f64);
done:
  free(hi);
  free(wi);
  return st;
}

/* ---- bilinear ----------------------------------------------------------------- */

/* One output coordinate's two sources and weights. */
typedef struct { int64_t i0, i1; double l0, l1; } lin_w;

/* PyTorch's compute_source_index_and_lambda for f32 data: the scale is an f32
 * (area_pixel_compute_scale<float>), the weights are f32, but the source index
 * itself is not rounded to f32 before its fraction becomes the weight. That is
 * what Debian's torch 1.13 computes (measured: rounding the index moves the
 * 64 -> 299 weights by up to 2e-6, keeping it leaves at most 1 ulp in the
 * outputs, from the order of the final multiply-adds). */
static void lin_weights_f32(lin_w *t, int64_t in, int64_t out, bool ac) {
  float scale = ac ? (out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f) : (float)in / (float)out;
  for (int64_t o = 0; o < out; o++) {
    if (out == in) { t[o] = (lin_w){o, o, 1.0, 0.0}; continue; }
    double real = ac ? (double)scale * (double)o : (double)scale * ((double)o + 0.5) - 0.5;
    if (!ac && real < 0) real = 0;   /* negative source coordinates clamp to 0 */
    int64_t i0 = (int64_t)real;
    float l1 = (float)fmin(fmax(real - (double)i0, 0.0), 1.0);
    t[o] = (lin_w){i0, i0 + (i0 < in - 1 ? 1 : 0), (double)(1.0f - l1), (double)l1};
  }
}
static void lin_weights_f64(lin_w *t, int64_t in, int64_t out, bool ac) {
  double scale = ac ? (out > 1 ? (double)(in - 1) / (double)(out - 1) : 0.0) : (double)in / (double)out;
  for (int64_t o = 0; o < out; o++) {
    if (out == in) { t[o] = (lin_w){o, o, 1.0, 0.0}; continue; }
    double real = ac ? scale * (double)o : scale * ((double)o + 0.5) - 0.5;
    if (!ac && real < 0) real = 0;
    int64_t i0 = (int64_t)real;
    double l1 = fmin(fmax(real - (double)i0, 0.0), 1.0);
    t[o] = (lin_w){i0, i0 + (i0 < in - 1 ? 1 : 0), 1.0 - l1, l1};
  }
}

static ad_status lin_tables(lin_w **th, lin_w **tw, const ad_tensor *small, const ad_tensor *big, bool ac) {
  int64_t H = small->shape[2], W = small->shape[3], Ho = big->shape[2], Wo = big->shape[3];
  *th = malloc((size_t)(Ho + Wo + 1) * sizeof **th);
  if (!*th) return AD_FAIL(AD_ENOMEM, "upsample_bilinear2d: out of memory");
  *tw = *th + Ho;
  if (small->dtype == AD_F64) { lin_weights_f64(*th, H, Ho, ac); lin_weights_f64(*tw, W, Wo, ac); }
  else { lin_weights_f32(*th, H, Ho, ac); lin_weights_f32(*tw, W, Wo, ac); }
  return AD_OK;
}

ad_status ad_cpu_upsample_bilinear2d_fwd(ad_tensor *y, const ad_tensor *x, bool align_corners) {
  AD_TRY(check_float(x, "upsample_bilinear2d"));
  bool f64 = x->dtype == AD_F64;
  int64_t P = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t Ho = y->shape[2], Wo = y->shape[3];
  if (ad_numel(y) == 0) return AD_OK;
  lin_w *th, *tw;
  AD_TRY(lin_tables(&th, &tw, x, y, align_corners));
  const void *xp = ad_data(x);
  void *yp = ad_data(y);
  #pragma omp parallel for if (P * Ho * Wo > AD_OMP_MIN)
  for (int64_t r = 0; r < P * Ho; r++) {
    int64_t p = r / Ho, oh = r % Ho;
    const lin_w h = th[oh];
    int64_t r0 = (p * H + h.i0) * W, r1 = (p * H + h.i1) * W;
    if (f64) {
      const double *s = xp;
      double *d = (double *)yp + r * Wo;
      for (int64_t ow = 0; ow < Wo; ow++) {
        const lin_w w = tw[ow];
        d[ow] = (s[r0 + w.i0] * w.l0 + s[r0 + w.i1] * w.l1) * h.l0 + (s[r1 + w.i0] * w.l0 + s[r1 + w.i1] * w.l1) * h.l1;
      }
    } else {   /* float arithmetic in PyTorch's order (height outer, width inner) */
      const float *s = xp;
      float *d = (float *)yp + r * Wo;
      float h0 = (float)h.l0, h1 = (float)h.l1;
      for (int64_t ow = 0; ow < Wo; ow++) {
        const lin_w w = tw[ow];
        float w0 = (float)w.l0, w1 = (float)w.l1;
        float a = s[r0 + w.i0] * w0;
        a += s[r0 + w.i1] * w1;
        float b = s[r1 + w.i0] * w0;
        b += s[r1 + w.i1] * w1;
        float o = a * h0;
        o += b * h1;
        d[ow] = o;
      }
    }
  }
  free(th);
  return AD_OK;
}

ad_status ad_cpu_upsample_bilinear2d_bwd(ad_tensor *dx, const ad_tensor *dy, bool align_corners) {
  AD_TRY(check_float(dx, "upsample_bilinear2d backward"));
  bool f64 = dx->dtype == AD_F64;
  int64_t P = dx->shape[0] * dx->shape[1], H = dx->shape[2], W = dx->shape[3];
  int64_t Ho = dy->shape[2], Wo = dy->shape[3];
  memset(ad_data(dx), 0, (size_t)ad_numel(dx) * ad_dtype_size(dx->dtype));
  if (ad_numel(dy) == 0) return AD_OK;
  lin_w *th, *tw;
  AD_TRY(lin_tables(&th, &tw, dx, dy, align_corners));
  void *gx = ad_data(dx);
  const void *gy = ad_data(dy);
  #pragma omp parallel for if (P * Ho * Wo > AD_OMP_MIN)
  for (int64_t p = 0; p < P; p++)
    for (int64_t oh = 0; oh < Ho; oh++) {
      const lin_w h = th[oh];
      int64_t r0 = (p * H + h.i0) * W, r1 = (p * H + h.i1) * W;
      for (int64_t ow = 0; ow < Wo; ow++) {
        const lin_w w = tw[ow];
        double g = get(gy, (p * Ho + oh) * Wo + ow, f64);
        add(gx, r0 + w.i0, g * h.l0 * w.l0, f64);
        add(gx, r0 + w.i1, g * h.l0 * w.l1, f64);
        add(gx, r1 + w.i0, g * h.l1 * w.l0, f64);
        add(gx, r1 + w.i1, g * h.l1 * w.l1, f64);
      }
    }
  free(th);
  return AD_OK;
}

/* ---- pad ------------------------------------------------------------------------- */

/* Source index of padded position i (i - before already applied) in a dim of
 * size n, or -1 for the constant fill. */
static inline int64_t pad_src(int64_t i, int64_t n, int mode) {
  if (i >= 0 && i < n) return i;
  if (mode == 0 || n == 0) return -1;
  if (mode == 1) {                    /* reflect: ... 2 1 | 0 1 2 | 1 0 ... (pad < n) */
    if (i < 0) i = -i;
    if (i >= n) i = 2 * (n - 1) - i;
    return i;
  }
  return i < 0 ? 0 : n - 1;           /* replicate */
}

/* The value in the tensor's dtype, as raw bytes. */
static void value_bytes(ad_dtype dt, double v, unsigned char out[8]) {
  memset(out, 0, 8);
  switch (dt) {
  case AD_F32: { float f = (float)v; memcpy(out, &f, 4); break; }
  case AD_F64: memcpy(out, &v, 8); break;
  case AD_F16: { uint16_t h = ad_f32_to_f16((float)v); memcpy(out, &h, 2); break; }
  case AD_BF16: { uint16_t h = ad_f32_to_bf16((float)v); memcpy(out, &h, 2); break; }
  case AD_I64: { int64_t i = (int64_t)v; memcpy(out, &i, 8); break; }
  case AD_I32: { int32_t i = (int32_t)v; memcpy(out, &i, 4); break; }
  case AD_U8: out[0] = (unsigned char)(int64_t)v; break;
  case AD_BOOL: out[0] = v != 0; break;
  default: break;
  }
}

/* Offset (elements) in x of the row that feeds y's row r, or -1 when some
 * outer index falls in constant padding. Rows index all dims but the last. */
static int64_t pad_row_src(const ad_tensor *x, const ad_tensor *y, const int64_t *before, int mode, int64_t r) {
  int nd = y->ndim;
  int64_t off = 0, stride = x->shape[nd - 1];
  for (int d = nd - 2; d >= 0; d--) {
    int64_t i = r % y->shape[d];
    r /= y->shape[d];
    int64_t s = pad_src(i - before[d], x->shape[d], mode);
    if (s < 0) return -1;
    off += s * stride;
    stride *= x->shape[d];
  }
  return off;
}

ad_status ad_cpu_pad_fwd(ad_tensor *y, const ad_tensor *x, const int64_t *before, int mode, double value) {
  size_t es = ad_dtype_size(y->dtype);
  unsigned char vb[8];
  value_bytes(y->dtype, value, vb);
  if (y->ndim == 0) { memcpy(ad_data(y), ad_data(x), es); return AD_OK; }
  int nd = y->ndim;
  int64_t Wy = y->shape[nd - 1], Wx = x->shape[nd - 1];
  int64_t rows = Wy ? ad_numel(y) / Wy : 0;
  if (rows == 0) return AD_OK;
  int64_t *col = malloc((size_t)Wy * sizeof *col + 1);
  if (!col) return AD_FAIL(AD_ENOMEM, "pad: out of memory");
  for (int64_t j = 0; j < Wy; j++) col[j] = pad_src(j - before[nd - 1], Wx, mode);
  /* the run of columns copied straight from the source row */
  int64_t c0 = before[nd - 1] > 0 ? before[nd - 1] : 0;
  int64_t c1 = before[nd - 1] + Wx < Wy ? before[nd - 1] + Wx : Wy;
  const char *xp = ad_data(x);
  char *yp = ad_data(y);
  #pragma omp parallel for if (ad_numel(y) > AD_OMP_MIN)
  for (int64_t r = 0; r < rows; r++) {
    char *dst = yp + (size_t)(r * Wy) * es;
    int64_t src = pad_row_src(x, y, before, mode, r);
    if (src < 0) {
      for (int64_t j = 0; j < Wy; j++) memcpy(dst + (size_t)j * es, vb, es);
      continue;
    }
    const char *s = xp + (size_t)src * es;
    for (int64_t j = 0; j < c0 && j < Wy; j++) {
      if (col[j] < 0) memcpy(dst + (size_t)j * es, vb, es);
      else memcpy(dst + (size_t)j * es, s + (size_t)col[j] * es, es);
    }
    if (c1 > c0) memcpy(dst + (size_t)c0 * es, s + (size_t)(c0 - before[nd - 1]) * es, (size_t)(c1 - c0) * es);
    for (int64_t j = c1 > c0 ? c1 : c0; j < Wy; j++) {
      if (col[j] < 0) memcpy(dst + (size_t)j * es, vb, es);
      else memcpy(dst + (size_t)j * es, s + (size_t)col[j] * es, es);
    }
  }
  free(col);
  return AD_OK;
}

ad_status ad_cpu_pad_bwd(ad_tensor *dx, const ad_tensor *dy, const int64_t *before, int mode) {
  AD_TRY(check_float(dx, "pad backward"));
  bool f64 = dx->dtype == AD_F64;
  memset(ad_data(dx), 0, (size_t)ad_numel(dx) * ad_dtype_size(dx->dtype));
  if (dy->ndim == 0) { add(ad_data(dx), 0, get(ad_data(dy), 0, f64), f64); return AD_OK; }
  int nd = dy->ndim;
  int64_t Wy = dy->shape[nd - 1], Wx = dx->shape[nd - 1];
  int64_t rows = Wy ? ad_numel(dy) / Wy : 0;
  if (rows == 0 || ad_numel(dx) == 0) return AD_OK;
  /* Rows in one block of the leading unpadded dims scatter into a private
   * slice of dx; blocks go to threads, rows inside a block stay serial
   * (reflect and replicate send several rows to one source row). */
  int64_t blocks = 1;
  for (int d = 0; d < nd - 1 && before[d] == 0 && dy->shape[d] == dx->shape[d]; d++) blocks *= dy->shape[d];
  if (mode == 0) blocks = rows;      /* constant padding is one-to-one */
  int64_t per = rows / blocks;
  const void *gy = ad_data(dy);
  void *gx = ad_data(dx);
  #pragma omp parallel for if (ad_numel(dy) > AD_OMP_MIN && blocks > 1)
  for (int64_t b = 0; b < blocks; b++)
    for (int64_t r = b * per; r < (b + 1) * per; r++) {
      int64_t src = pad_row_src(dx, dy, before, mode, r);
      if (src < 0) continue;
      for (int64_t j = 0; j < Wy; j++) {
        int64_t c = pad_src(j - before[nd - 1], Wx, mode);
        if (c >= 0) add(gx, src + c, get(gy, r * Wy + j, f64), f64);
      }
    }
  return AD_OK;
}
