/* resample.c: upsample_nearest2d, upsample_bilinear2d and pad front ends
 * with their backward rules.
 *
 * Upsampling takes (N, C, H, W) or unbatched (C, H, W) and an output size;
 * kernels see 4-D contiguous aliases. Nearest forward and pad forward move
 * elements of any dtype; bilinear computes in f32/f64 (f16/bf16 through
 * recorded f32 conversions). Gradients of f16/bf16 tensors are computed in
 * f32; the engine converts them back to the input's dtype. */
#include <string.h>
#include "../ad.h"
#include "../backend_conv.h"

static const struct ad_conv_kernels *kernels_of(const ad_tensor *t, const ad_backend **bk) {
  *bk = ad_backend_of(t);
  return *bk ? (*bk)->conv : NULL;
}

static ad_status as4d(ad_tensor **out, const ad_tensor *t) {
  if (t->ndim == 4) { ad_tensor_retain((ad_tensor *)t); *out = (ad_tensor *)t; return AD_OK; }
  int64_t sh[4] = {1, t->shape[0], t->shape[1], t->shape[2]}, st[4];
  ad_contiguous_strides(4, sh, st);
  return ad_tensor_from_storage(out, t->storage, t->offset, 4, sh, st, t->dtype);
}

static ad_status contiguous_nograd(ad_tensor **out, const ad_tensor *x) {
  bool prev = ad_set_grad_enabled(false);
  ad_status st = ad_contiguous(out, x);
  ad_set_grad_enabled(prev);
  return st;
}

/* The incoming gradient, contiguous, in the dtype the gradient kernels use. */
static ad_status grad_in_compute_dtype(ad_tensor **out, ad_tensor *g) {
  if (g->dtype == AD_F16 || g->dtype == AD_BF16) {
    ad_tensor *f = NULL;
    AD_TRY(ad_to_dtype(&f, g, AD_F32));
    ad_status st = ad_contiguous(out, f);
    ad_tensor_release(f);
    return st;
  }
  return ad_contiguous(out, g);
}

static ad_status check_upsample(const char *op, const ad_tensor *x, int64_t oh, int64_t ow) {
  char s[128];
  if (x->ndim != 4 && x->ndim != 3)
    return AD_FAIL(AD_ESHAPE, "%s: input must be 4-D (N, C, H, W) or 3-D (C, H, W), got %d-D %s", op, x->ndim,
                   ad_shape_str(x->ndim, x->shape, s, sizeof s));
  if (oh < 1 || ow < 1)
    return AD_FAIL(AD_EINVAL, "%s: output size must be positive, got %lldx%lld", op, (long long)oh, (long long)ow);
  if (x->shape[x->ndim - 2] < 1 || x->shape[x->ndim - 1] < 1)
    return AD_FAIL(AD_ESHAPE, "%s: input spatial size %s is empty", op, ad_shape_str(x->ndim, x->shape, s, sizeof s));
  return AD_OK;
}

/* ---- upsampling ------------------------------------------------------------------ */

typedef struct { bool bilinear, align_corners; } up_attrs;

static ad_status upsample_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const up_attrs *a = node->attrs;
  const ad_backend *bk;
  const struct ad_conv_kernels *k = kernels_of(gout[0], &bk);
  if (!bk) return AD_EDEVICE;
  if (a->bilinear) AD_NEED_KERNEL(k ? k->upsample_bilinear2d_bwd : NULL, "upsample_bilinear2d backward", bk);
  else AD_NEED_KERNEL(k ? k->upsample_nearest2d_bwd : NULL, "upsample_nearest2d backward", bk);
  ad_tensor *dy = NULL, *dx = NULL, *dy4 = NULL, *dx4 = NULL;
  ad_status st;
  AD_TRY_GOTO(st, grad_in_compute_dtype(&dy, gout[0]), done);
  AD_TRY_GOTO(st, ad_empty(&dx, node->edges[0].ndim, node->edges[0].shape, dy->dtype, dy->storage->device), done);
  AD_TRY_GOTO(st, as4d(&dy4, dy), done);
  AD_TRY_GOTO(st, as4d(&dx4, dx), done);
  if (a->bilinear) st = k->upsample_bilinear2d_bwd(dx4, dy4, a->align_corners);
  else st = k->upsample_nearest2d_bwd(dx4, dy4);
  if (st != AD_OK) goto done;
  gin[0] = dx;
  dx = NULL;
done:
  ad_tensor_release(dy); ad_tensor_release(dx); ad_tensor_release(dy4); ad_tensor_release(dx4);
  return st;
}
static const ad_opdef UPSAMPLE_NEAREST2D = {"upsample_nearest2d", upsample_backward};
static const ad_opdef UPSAMPLE_BILINEAR2D = {"upsample_bilinear2d", upsample_backward};

static ad_status upsample(ad_tensor **out, const ad_tensor *x, int64_t oh, int64_t ow, up_attrs a) {
  const char *op = a.bilinear ? "upsample_bilinear2d" : "upsample_nearest2d";
  const ad_backend *bk;
  const struct ad_conv_kernels *k = kernels_of(x, &bk);
  if (!bk) return AD_EDEVICE;
  if (a.bilinear) AD_NEED_KERNEL(k ? k->upsample_bilinear2d_fwd : NULL, op, bk);
  else AD_NEED_KERNEL(k ? k->upsample_nearest2d_fwd : NULL, op, bk);
  int64_t shape[AD_MAX_DIMS];
  memcpy(shape, x->shape, (size_t)x->ndim * sizeof *shape);
  shape[x->ndim - 2] = oh;
  shape[x->ndim - 1] = ow;
  ad_tensor *xc = NULL, *y = NULL, *x4 = NULL, *y4 = NULL;
  ad_status st;
  AD_TRY_GOTO(st, contiguous_nograd(&xc, x), fail);
  AD_TRY_GOTO(st, ad_empty(&y, x->ndim, shape, x->dtype, x->storage->device), fail);
  AD_TRY_GOTO(st, as4d(&x4, xc), fail);
  AD_TRY_GOTO(st, as4d(&y4, y), fail);
  if (a.bilinear) st = k->upsample_bilinear2d_fwd(y4, x4, a.align_corners);
  else st = k->upsample_nearest2d_fwd(y4, x4);
  if (st != AD_OK) goto fail;
  AD_TRY_GOTO(st, ad_record(a.bilinear ? &UPSAMPLE_BILINEAR2D : &UPSAMPLE_NEAREST2D, &y, 1,
                            (ad_tensor *const *)&x, 1, NULL, 0, &a, sizeof a), fail);
  ad_tensor_release(xc); ad_tensor_release(x4); ad_tensor_release(y4);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(xc); ad_tensor_release(x4); ad_tensor_release(y4); ad_tensor_release(y);
  return st;
}

ad_status ad_upsample_nearest2d(ad_tensor **out, const ad_tensor *x, int64_t oh, int64_t ow) {
  AD_TRY(check_upsample("upsample_nearest2d", x, oh, ow));
  return upsample(out, x, oh, ow, (up_attrs){false, false});
}

ad_status ad_upsample_bilinear2d(ad_tensor **out, const ad_tensor *x, int64_t oh, int64_t ow, bool align_corners) {
  AD_TRY(check_upsample("upsample_bilinear2d", x, oh, ow));
  if (!ad_dtype_is_float(x->dtype))
    return AD_FAIL(AD_EDTYPE, "upsample_bilinear2d: floating-point input expected, got %s", ad_dtype_name(x->dtype));
  if (x->dtype == AD_F16 || x->dtype == AD_BF16) {
    ad_tensor *xf = NULL, *yf = NULL;
    ad_status st = ad_to_dtype(&xf, x, AD_F32);
    if (st == AD_OK) st = ad_upsample_bilinear2d(&yf, xf, oh, ow, align_corners);
    if (st == AD_OK) st = ad_to_dtype(out, yf, x->dtype);
    ad_tensor_release(xf);
    ad_tensor_release(yf);
    return st;
  }
  return upsample(out, x, oh, ow, (up_attrs){true, align_corners});
}

/* ---- pad -------------------------------------------------------------------------- */

typedef struct { int64_t before[AD_MAX_DIMS]; int mode; } pad_attrs;

static ad_status pad_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const pad_attrs *a = node->attrs;
  const ad_backend *bk;
  const struct ad_conv_kernels *k = kernels_of(gout[0], &bk);
  if (!bk) return AD_EDEVICE;
  AD_NEED_KERNEL(k ? k->pad_bwd : NULL, "pad backward", bk);
  ad_tensor *dy = NULL, *dx = NULL;
  ad_status st;
  AD_TRY_GOTO(st, grad_in_compute_dtype(&dy, gout[0]), done);
  AD_TRY_GOTO(st, ad_empty(&dx, node->edges[0].ndim, node->edges[0].shape, dy->dtype, dy->storage->device), done);
  AD_TRY_GOTO(st, k->pad_bwd(dx, dy, a->before, a->mode), done);
  gin[0] = dx;
  dx = NULL;
done:
  ad_tensor_release(dy);
  ad_tensor_release(dx);
  return st;
}
static const ad_opdef PAD = {"pad", pad_backward};

ad_status ad_pad(ad_tensor **out, const ad_tensor *x, int n_pads, const int64_t *pads, int mode, double value) {
  static const char *names[] = {"constant", "reflect", "replicate"};
  char s[128];
  if (mode < 0 || mode > 2) return AD_FAIL(AD_EINVAL, "pad: mode must be 0 (constant), 1 (reflect) or 2 (replicate), got %d", mode);
  if (n_pads < 0 || n_pads % 2 != 0)
    return AD_FAIL(AD_EINVAL, "pad: padding needs an even number of values (before, after per dim), got %d", n_pads);
  if (n_pads / 2 > x->ndim)
    return AD_FAIL(AD_EINVAL, "pad: %d values pad %d dims, but the input %s has only %d", n_pads, n_pads / 2,
                   ad_shape_str(x->ndim, x->shape, s, sizeof s), x->ndim);
  pad_attrs a;
  memset(&a, 0, sizeof a);
  a.mode = mode;
  int64_t shape[AD_MAX_DIMS];
  memcpy(shape, x->shape, (size_t)x->ndim * sizeof *shape);
  for (int i = 0; i < n_pads / 2; i++) {
    int d = x->ndim - 1 - i;
    int64_t lo = pads[2 * i], hi = pads[2 * i + 1], n = x->shape[d];
    if (mode != 0 && (lo < 0 || hi < 0))
      return AD_FAIL(AD_EINVAL, "pad: negative padding (%lld, %lld) needs mode constant, not %s", (long long)lo,
                     (long long)hi, names[mode]);
    if (mode == 1 && (lo >= n || hi >= n))
      return AD_FAIL(AD_EINVAL, "pad: reflect padding (%lld, %lld) must be smaller than the size %lld of dimension %d of input %s",
                     (long long)lo, (long long)hi, (long long)n, d + 1, ad_shape_str(x->ndim, x->shape, s, sizeof s));
    if (mode == 2 && n == 0 && (lo > 0 || hi > 0))
      return AD_FAIL(AD_EINVAL, "pad: cannot replicate-pad the empty dimension %d of input %s", d + 1,
                     ad_shape_str(x->ndim, x->shape, s, sizeof s));
    shape[d] = n + lo + hi;
    if (shape[d] < 0)
      return AD_FAIL(AD_EINVAL, "pad: padding (%lld, %lld) would give dimension %d of input %s the size %lld",
                     (long long)lo, (long long)hi, d + 1, ad_shape_str(x->ndim, x->shape, s, sizeof s), (long long)shape[d]);
    a.before[d] = lo;
  }
  const ad_backend *bk;
  const struct ad_conv_kernels *k = kernels_of(x, &bk);
  if (!bk) return AD_EDEVICE;
  AD_NEED_KERNEL(k ? k->pad_fwd : NULL, "pad", bk);
  ad_tensor *xc = NULL, *y = NULL;
  ad_status st;
  AD_TRY_GOTO(st, contiguous_nograd(&xc, x), fail);
  AD_TRY_GOTO(st, ad_empty(&y, x->ndim, shape, x->dtype, x->storage->device), fail);
  AD_TRY_GOTO(st, k->pad_fwd(y, xc, a.before, mode, value), fail);
  AD_TRY_GOTO(st, ad_record(&PAD, &y, 1, (ad_tensor *const *)&x, 1, NULL, 0, &a, sizeof a), fail);
  ad_tensor_release(xc);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(xc);
  ad_tensor_release(y);
  return st;
}
