/* cpu_pool.c: CPU max/avg/adaptive-average 2-D pooling, forward and backward.
 *
 * Tensors are contiguous NCHW and f32 or f64; every (n, c) plane is
 * independent, so planes are spread over OpenMP threads. Window bounds follow
 * PyTorch's CPU kernels exactly (padding windows, ceil_mode, the divisor
 * rules, the adaptive start/end formula), and sums accumulate in double as
 * PyTorch's acc_type does on the CPU. */
#include <math.h>
#include <string.h>
#include "../backend.h"
#include "../backend_conv.h"
#include "cpu_iter.h"

static inline double get(const void *p, int64_t i, bool f64) {
  return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
static inline void put(void *p, int64_t i, double v, bool f64) {
  if (f64) ((double *)p)[i] = v; else ((float *)p)[i] = (float)v;
}
static inline void add(void *p, int64_t i, double v, bool f64) {
  if (f64) ((double *)p)[i] += v; else ((float *)p)[i] += (float)v;
}

static ad_status check_float(const ad_tensor *t, const char *op) {
  if (t->dtype != AD_F32 && t->dtype != AD_F64)
    return AD_FAIL(AD_EDTYPE, "%s: the CPU kernel computes in f32 or f64, got %s", op, ad_dtype_name(t->dtype));
  return AD_OK;
}

static int64_t stride_or_kernel(int s, int k) { return s > 0 ? s : k; }
static int64_t dilation_or_one(int d) { return d > 0 ? d : 1; }

/* ---- max pooling ---------------------------------------------------------------- */

ad_status ad_cpu_max_pool2d_fwd(ad_tensor *y, ad_tensor *indices, const ad_tensor *x, const ad_pool2d_args *a) {
  AD_TRY(check_float(x, "max_pool2d"));
  bool f64 = x->dtype == AD_F64;
  int64_t P = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t Ho = y->shape[2], Wo = y->shape[3];
  int64_t kh = a->kernel[0], kw = a->kernel[1];
  int64_t sh = stride_or_kernel(a->stride[0], a->kernel[0]), sw = stride_or_kernel(a->stride[1], a->kernel[1]);
  int64_t ph = a->padding[0], pw = a->padding[1];
  int64_t dh = dilation_or_one(a->dilation[0]), dw = dilation_or_one(a->dilation[1]);
  const void *xp = ad_data(x);
  void *yp = ad_data(y);
  int64_t *ip = ad_data(indices);
  #pragma omp parallel for if (P * Ho * Wo * kh * kw > AD_OMP_MIN)
  for (int64_t p = 0; p < P; p++) {
    int64_t xb = p * H * W, yb = p * Ho * Wo;
    for (int64_t oh = 0; oh < Ho; oh++) {
      int64_t h0 = oh * sh - ph, h1 = h0 + (kh - 1) * dh + 1;
      if (h1 > H) h1 = H;
      while (h0 < 0) h0 += dh;
      for (int64_t ow = 0; ow < Wo; ow++) {
        int64_t w0 = ow * sw - pw, w1 = w0 + (kw - 1) * dw + 1;
        if (w1 > W) w1 = W;
        while (w0 < 0) w0 += dw;
        int64_t best_i = h0 * W + w0;
        double best = -INFINITY;
        for (int64_t ih = h0; ih < h1; ih += dh)
          for (int64_t iw = w0; iw < w1; iw += dw) {
            double v = get(xp, xb + ih * W + iw, f64);
            if (v > best || isnan(v)) { best = v; best_i = ih * W + iw; }   /* NaN wins (the last one) */
          }
        put(yp, yb + oh * Wo + ow, best, f64);
        ip[yb + oh * Wo + ow] = best_i;
      }
    }
  }
  return AD_OK;
}

ad_status ad_cpu_max_pool2d_bwd(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *indices) {
  AD_TRY(check_float(dx, "max_pool2d backward"));
  bool f64 = dx->dtype == AD_F64;
  int64_t P = dx->shape[0] * dx->shape[1], HW = dx->shape[2] * dx->shape[3];
  int64_t OHW = dy->shape[2] * dy->shape[3];
  void *gx = ad_data(dx);
  const void *gy = ad_data(dy);
  const int64_t *ip = ad_data(indices);
  memset(gx, 0, (size_t)(P * HW) * ad_dtype_size(dx->dtype));
  #pragma omp parallel for if (P * OHW > AD_OMP_MIN)
  for (int64_t p = 0; p < P; p++)
    for (int64_t o = 0; o < OHW; o++) {
      int64_t i = ip[p * OHW + o];
      if (i >= 0 && i < HW) add(gx, p * HW + i, get(gy, p * OHW + o, f64), f64);
    }
  return AD_OK;
}

/* ---- average pooling ------------------------------------------------------------ */

/* The window of output (oh, ow) clipped to the input, and its divisor; false
 * when the window lies entirely in the padding (the output is then 0). */
typedef struct { int64_t h0, h1, w0, w1; double div; } avg_window;

static bool avg_win(const ad_pool2d_args *a, int64_t H, int64_t W, int64_t oh, int64_t ow, avg_window *r) {
  int64_t kh = a->kernel[0], kw = a->kernel[1];
  int64_t sh = stride_or_kernel(a->stride[0], a->kernel[0]), sw = stride_or_kernel(a->stride[1], a->kernel[1]);
  int64_t ph = a->padding[0], pw = a->padding[1];
  int64_t h0 = oh * sh - ph, w0 = ow * sw - pw;
  int64_t h1 = h0 + kh, w1 = w0 + kw;
  if (h1 > H + ph) h1 = H + ph;
  if (w1 > W + pw) w1 = W + pw;
  int64_t pool_size = (h1 - h0) * (w1 - w0);
  if (h0 < 0) h0 = 0;
  if (w0 < 0) w0 = 0;
  if (h1 > H) h1 = H;
  if (w1 > W) w1 = W;
  if (h0 >= h1 || w0 >= w1) return false;
  r->h0 = h0; r->h1 = h1; r->w0 = w0; r->w1 = w1;
  if (a->divisor_override) r->div = a->divisor_override;
  else if (a->count_include_pad) r->div = (double)pool_size;
  else r->div = (double)((h1 - h0) * (w1 - w0));
  return true;
}

ad_status ad_cpu_avg_pool2d_fwd(ad_tensor *y, const ad_tensor *x, const ad_pool2d_args *a) {
  AD_TRY(check_float(x, "avg_pool2d"));
  bool f64 = x->dtype == AD_F64;
  int64_t P = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t Ho = y->shape[2], Wo = y->shape[3];
  const void *xp = ad_data(x);
  void *yp = ad_data(y);
  #pragma omp parallel for if (P * Ho * Wo * a->kernel[0] * a->kernel[1] > AD_OMP_MIN)
  for (int64_t p = 0; p < P; p++)
    for (int64_t oh = 0; oh < Ho; oh++)
      for (int64_t ow = 0; ow < Wo; ow++) {
        avg_window r;
        double s = 0;
        if (avg_win(a, H, W, oh, ow, &r)) {
          for (int64_t ih = r.h0; ih < r.h1; ih++)
            for (int64_t iw = r.w0; iw < r.w1; iw++) s += get(xp, (p * H + ih) * W + iw, f64);
          s /= r.div;
        }
        put(yp, (p * Ho + oh) * Wo + ow, s, f64);
      }
  return AD_OK;
}

ad_status ad_cpu_avg_pool2d_bwd(ad_tensor *dx, const ad_tensor *dy, const ad_pool2d_args *a) {
  AD_TRY(check_float(dx, "avg_pool2d backward"));
  bool f64 = dx->dtype == AD_F64;
  int64_t P = dx->shape[0] * dx->shape[1], H = dx->shape[2], W = dx->shape[3];
  int64_t Ho = dy->shape[2], Wo = dy->shape[3];
  void *gx = ad_data(dx);
  const void *gy = ad_data(dy);
  memset(gx, 0, (size_t)(P * H * W) * ad_dtype_size(dx->dtype));
  #pragma omp parallel for if (P * Ho * Wo * a->kernel[0] * a->kernel[1] > AD_OMP_MIN)
  for (int64_t p = 0; p < P; p++)
    for (int64_t oh = 0; oh < Ho; oh++)
      for (int64_t ow = 0; ow < Wo; ow++) {
        avg_window r;
        if (!avg_win(a, H, W, oh, ow, &r)) continue;
        double g = get(gy, (p * Ho + oh) * Wo + ow, f64) / r.div;
        for (int64_t ih = r.h0; ih < r.h1; ih++)
          for (int64_t iw = r.w0; iw < r.w1; iw++) add(gx, (p * H + ih) * W + iw, g, f64);
      }
  return AD_OK;
}

/* ---- adaptive average pooling --------------------------------------------------- */

static inline int64_t start_index(int64_t o, int64_t out, int64_t in) { return (o * in) / out; }
static inline int64_t end_index(int64_t o, int64_t out, int64_t in) { return ((o + 1) * in + out - 1) / out; }

ad_status ad_cpu_adaptive_avg_pool2d_fwd(ad_tensor *y, const ad_tensor *x) {
  AD_TRY(check_float(x, "adaptive_avg_pool2d"));
  bool f64 = x->dtype == AD_F64;
  int64_t P = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t Ho = y->shape[2], Wo = y->shape[3];
  const void *xp = ad_data(x);
  void *yp = ad_data(y);
  #pragma omp parallel for if (P * H * W > AD_OMP_MIN)
  for (int64_t p = 0; p < P; p++)
    for (int64_t oh = 0; oh < Ho; oh++) {
      int64_t h0 = start_index(oh, Ho, H), h1 = end_index(oh, Ho, H);
      for (int64_t ow = 0; ow < Wo; ow++) {
        int64_t w0 = start_index(ow, Wo, W), w1 = end_index(ow, Wo, W);
        double s = 0;
        for (int64_t ih = h0; ih < h1; ih++)
          for (int64_t iw = w0; iw < w1; iw++) s += get(xp, (p * H + ih) * W + iw, f64);
        put(yp, (p * Ho + oh) * Wo + ow, s / (double)((h1 - h0) * (w1 - w0)), f64);
      }
    }
  return AD_OK;
}

ad_status ad_cpu_adaptive_avg_pool2d_bwd(ad_tensor *dx, const ad_tensor *dy) {
  AD_TRY(check_float(dx, "adaptive_avg_pool2d backward"));
  bool f64 = dx->dtype == AD_F64;
  int64_t P = dx->shape[0] * dx->shape[1], H = dx->shape[2], W = dx->shape[3];
  int64_t Ho = dy->shape[2], Wo = dy->shape[3];
  void *gx = ad_data(dx);
  const void *gy = ad_data(dy);
  memset(gx, 0, (size_t)(P * H * W) * ad_dtype_size(dx->dtype));
  #pragma omp parallel for if (P * H * W > AD_OMP_MIN)
  for (int64_t p = 0; p < P; p++)
    for (int64_t oh = 0; oh < Ho; oh++) {
      int64_t h0 = start_index(oh, Ho, H), h1 = end_index(oh, Ho, H);
      for (int64_t ow = 0; ow < Wo; ow++) {
        int64_t w0 = start_index(ow, Wo, W), w1 = end_index(ow, Wo, W);
        double g = get(gy, (p * Ho + oh) * Wo + ow, f64) / (double)((h1 - h0) * (w1 - w0));
        for (int64_t ih = h0; ih < h1; ih++)
          for (int64_t iw = w0; iw < w1; iw++) add(gx, (p * H + ih) * W + iw, g, f64);
      }
    }
  return AD_OK;
}
