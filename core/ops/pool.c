/* pool.c: max_pool2d, avg_pool2d and adaptive_avg_pool2d front ends with
 * their backward rules.
 *
 * Inputs are (N, C, H, W) or unbatched (C, H, W); kernels always see 4-D
 * contiguous aliases. Output sizes follow PyTorch's pooling_output_shape
 * (floor or ceil mode, with the rule that the last window must start inside
 * the input or its left padding). In ad_pool2d_args a stride of 0 means "the
 * kernel size" (PyTorch's stride=None) and a dilation of 0 means 1, so a
 * zero-initialised struct with a kernel is a valid default. f16/bf16 inputs
 * are pooled through recorded f32 conversions. */
#include <string.h>
#include "../ad.h"
#include "../backend_conv.h"

/* ---- shared helpers ------------------------------------------------------------ */

static const struct ad_conv_kernels *kernels_of(const ad_tensor *t, const ad_backend **bk) {
  *bk = ad_backend_of(t);
  return *bk ? (*bk)->conv : NULL;
}

/* A contiguous (C, H, W) or (N, C, H, W) tensor seen as (N, C, H, W). */
static ad_status as4d(ad_tensor **out, const ad_tensor *t) {
  if (t->ndim == 4) { ad_tensor_retain((ad_tensor *)t); *out = (ad_tensor *)t; return AD_OK; }
  int64_t sh[4] = {1, t->shape[0], t->shape[1], t->shape[2]}, st[4];
  ad_contiguous_strides(4, sh, st);
  return ad_tensor_from_storage(out, t->storage, t->offset, 4, sh, st, t->dtype);
}

static ad_status check_image(const char *op, const ad_tensor *x) {
  char s[128];
  if (x->ndim != 4 && x->ndim != 3)
    return AD_FAIL(AD_ESHAPE, "%s: input must be 4-D (N, C, H, W) or 3-D (C, H, W), got %d-D %s", op, x->ndim,
                   ad_shape_str(x->ndim, x->shape, s, sizeof s));
  if (!ad_dtype_is_float(x->dtype))
    return AD_FAIL(AD_EDTYPE, "%s: floating-point input expected, got %s", op, ad_dtype_name(x->dtype));
  return AD_OK;
}

/* x's shape with the last two dims replaced */
static void out_shape(const ad_tensor *x, int64_t oh, int64_t ow, int64_t *shape) {
  memcpy(shape, x->shape, (size_t)x->ndim * sizeof *shape);
  shape[x->ndim - 2] = oh;
  shape[x->ndim - 1] = ow;
}

static int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* PyTorch's pooling_output_shape */
static int64_t pool_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil) {
  int64_t o = floor_div(in + 2 * p - d * (k - 1) - 1 + (ceil ? s - 1 : 0), s) + 1;
  if (ceil && (o - 1) * s >= in + p) o--;
  return o;
}

/* Validates a and resolves its defaults into r; computes the output size. */
static ad_status pool_geometry(const char *op, const ad_tensor *x, const ad_pool2d_args *a, bool is_max,
                               ad_pool2d_args *r, int64_t *oh, int64_t *ow) {
  if (!a) return AD_FAIL(AD_EINVAL, "%s: missing arguments", op);
  *r = *a;
  for (int i = 0; i < 2; i++) {
    if (a->kernel[i] < 1) return AD_FAIL(AD_EINVAL, "%s: kernel size must be >= 1, got %d", op, a->kernel[i]);
    if (a->stride[i] < 0) return AD_FAIL(AD_EINVAL, "%s: stride must be >= 1, got %d", op, a->stride[i]);
    if (a->padding[i] < 0) return AD_FAIL(AD_EINVAL, "%s: padding must be >= 0, got %d", op, a->padding[i]);
    if (a->dilation[i] < 0) return AD_FAIL(AD_EINVAL, "%s: dilation must be >= 1, got %d", op, a->dilation[i]);
    if (r->stride[i] == 0) r->stride[i] = a->kernel[i];
    if (r->dilation[i] == 0) r->dilation[i] = 1;
    if (!is_max && r->dilation[i] != 1) return AD_FAIL(AD_EINVAL, "%s: dilation is not supported", op);
    if (a->padding[i] > a->kernel[i] / 2)
      return AD_FAIL(AD_EINVAL, "%s: padding should be at most half of the kernel size, got padding %d for kernel %d",
                     op, a->padding[i], a->kernel[i]);
  }
  int64_t H = x->shape[x->ndim - 2], W = x->shape[x->ndim - 1];
  *oh = pool_out(H, r->kernel[0], r->stride[0], r->padding[0], r->dilation[0], r->ceil_mode);
  *ow = pool_out(W, r->kernel[1], r->stride[1], r->padding[1], r->dilation[1], r->ceil_mode);
  if (*oh < 1 || *ow < 1)
    return AD_FAIL(AD_ESHAPE, "%s: input %lldx%lld is too small for kernel %dx%d (output would be %lldx%lld)", op,
                   (long long)H, (long long)W, r->kernel[0], r->kernel[1], (long long)*oh, (long long)*ow);
  return AD_OK;
}

static ad_status contiguous_nograd(ad_tensor **out, const ad_tensor *x) {
  bool prev = ad_set_grad_enabled(false);
  ad_status st = ad_contiguous(out, x);
  ad_set_grad_enabled(prev);
  return st;
}

/* ---- max_pool2d ----------------------------------------------------------------- */

static ad_status max_pool2d_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const ad_tensor *idx = node->saved[0];
  const ad_backend *bk;
  const struct ad_conv_kernels *k = kernels_of(idx, &bk);
  if (!bk) return AD_EDEVICE;
  AD_NEED_KERNEL(k ? k->max_pool2d_bwd : NULL, "max_pool2d backward", bk);
  ad_tensor *dy = NULL, *dx = NULL, *dy4 = NULL, *dx4 = NULL, *i4 = NULL;
  ad_status st;
  AD_TRY_GOTO(st, ad_contiguous(&dy, gout[0]), done);
  AD_TRY_GOTO(st, ad_empty(&dx, node->edges[0].ndim, node->edges[0].shape, dy->dtype, dy->storage->device), done);
  AD_TRY_GOTO(st, as4d(&dy4, dy), done);
  AD_TRY_GOTO(st, as4d(&dx4, dx), done);
  AD_TRY_GOTO(st, as4d(&i4, idx), done);
  AD_TRY_GOTO(st, k->max_pool2d_bwd(dx4, dy4, i4), done);
  gin[0] = dx;
  dx = NULL;
done:
  ad_tensor_release(dy); ad_tensor_release(dx); ad_tensor_release(dy4); ad_tensor_release(dx4);
  ad_tensor_release(i4);
  return st;
}
static const ad_opdef MAX_POOL2D = {"max_pool2d", max_pool2d_backward};

ad_status ad_max_pool2d(ad_tensor **out, ad_tensor **indices, const ad_tensor *x, const ad_pool2d_args *a) {
  AD_TRY(check_image("max_pool2d", x));
  ad_pool2d_args r;
  int64_t oh = 0, ow = 0;
  AD_TRY(pool_geometry("max_pool2d", x, a, true, &r, &oh, &ow));
  if (x->dtype == AD_F16 || x->dtype == AD_BF16) {
    ad_tensor *xf = NULL, *yf = NULL;
    ad_status st = ad_to_dtype(&xf, x, AD_F32);
    if (st == AD_OK) st = ad_max_pool2d(&yf, indices, xf, &r);
    if (st == AD_OK) {
      st = ad_to_dtype(out, yf, x->dtype);
      if (st != AD_OK && indices) { ad_tensor_release(*indices); *indices = NULL; }
    }
    ad_tensor_release(xf);
    ad_tensor_release(yf);
    return st;
  }
  const ad_backend *bk;
  const struct ad_conv_kernels *k = kernels_of(x, &bk);
  if (!bk) return AD_EDEVICE;
  AD_NEED_KERNEL(k ? k->max_pool2d_fwd : NULL, "max_pool2d", bk);
  int64_t shape[AD_MAX_DIMS];
  out_shape(x, oh, ow, shape);
  ad_tensor *xc = NULL, *y = NULL, *idx = NULL, *x4 = NULL, *y4 = NULL, *i4 = NULL;
  ad_status st;
  AD_TRY_GOTO(st, contiguous_nograd(&xc, x), fail);
  AD_TRY_GOTO(st, ad_empty(&y, x->ndim, shape, x->dtype, x->storage->device), fail);
  AD_TRY_GOTO(st, ad_empty(&idx, x->ndim, shape, AD_I64, x->storage->device), fail);
  AD_TRY_GOTO(st, as4d(&x4, xc), fail);
  AD_TRY_GOTO(st, as4d(&y4, y), fail);
  AD_TRY_GOTO(st, as4d(&i4, idx), fail);
  AD_TRY_GOTO(st, k->max_pool2d_fwd(y4, i4, x4, &r), fail);
  AD_TRY_GOTO(st, ad_record(&MAX_POOL2D, &y, 1, (ad_tensor *const *)&x, 1, &idx, 1, NULL, 0), fail);
  ad_tensor_release(xc); ad_tensor_release(x4); ad_tensor_release(y4); ad_tensor_release(i4);
  *out = y;
  if (indices) *indices = idx; else ad_tensor_release(idx);
  return AD_OK;
fail:
  ad_tensor_release(xc); ad_tensor_release(x4); ad_tensor_release(y4); ad_tensor_release(i4);
  ad_tensor_release(y); ad_tensor_release(idx);
  return st;
}

/* ---- avg_pool2d and adaptive_avg_pool2d ---------------------------------------- */

/* Both record the resolved args (adaptive: kernel[0] == 0 marks it). */
static ad_status avg_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const ad_pool2d_args *a = node->attrs;
  bool adaptive = a->kernel[0] == 0;
  const ad_backend *bk;
  const struct ad_conv_kernels *k = kernels_of(gout[0], &bk);
  if (!bk) return AD_EDEVICE;
  if (adaptive) AD_NEED_KERNEL(k ? k->adaptive_avg_pool2d_bwd : NULL, "adaptive_avg_pool2d backward", bk);
  else AD_NEED_KERNEL(k ? k->avg_pool2d_bwd : NULL, "avg_pool2d backward", bk);
  ad_tensor *dy = NULL, *dx = NULL, *dy4 = NULL, *dx4 = NULL;
  ad_status st;
  AD_TRY_GOTO(st, ad_contiguous(&dy, gout[0]), done);
  AD_TRY_GOTO(st, ad_empty(&dx, node->edges[0].ndim, node->edges[0].shape, dy->dtype, dy->storage->device), done);
  AD_TRY_GOTO(st, as4d(&dy4, dy), done);
  AD_TRY_GOTO(st, as4d(&dx4, dx), done);
  if (adaptive) st = k->adaptive_avg_pool2d_bwd(dx4, dy4);
  else st = k->avg_pool2d_bwd(dx4, dy4, a);
  if (st != AD_OK) goto done;
  gin[0] = dx;
  dx = NULL;
done:
  ad_tensor_release(dy); ad_tensor_release(dx); ad_tensor_release(dy4); ad_tensor_release(dx4);
  return st;
}
static const ad_opdef AVG_POOL2D = {"avg_pool2d", avg_backward};
static const ad_opdef ADAPTIVE_AVG_POOL2D = {"adaptive_avg_pool2d", avg_backward};

/* Shared forward: r NULL means adaptive to (oh, ow). */
static ad_status avg_forward(ad_tensor **out, const ad_tensor *x, const ad_pool2d_args *r, int64_t oh, int64_t ow) {
  const char *op = r ? "avg_pool2d" : "adaptive_avg_pool2d";
  const ad_backend *bk;
  const struct ad_conv_kernels *k = kernels_of(x, &bk);
  if (!bk) return AD_EDEVICE;
  if (r) AD_NEED_KERNEL(k ? k->avg_pool2d_fwd : NULL, op, bk);
  else AD_NEED_KERNEL(k ? k->adaptive_avg_pool2d_fwd : NULL, op, bk);
  int64_t shape[AD_MAX_DIMS];
  out_shape(x, oh, ow, shape);
  ad_pool2d_args attrs;
  memset(&attrs, 0, sizeof attrs);
  if (r) attrs = *r;
  ad_tensor *xc = NULL, *y = NULL, *x4 = NULL, *y4 = NULL;
  ad_status st;
  AD_TRY_GOTO(st, contiguous_nograd(&xc, x), fail);
  AD_TRY_GOTO(st, ad_empty(&y, x->ndim, shape, x->dtype, x->storage->device), fail);
  AD_TRY_GOTO(st, as4d(&x4, xc), fail);
  AD_TRY_GOTO(st, as4d(&y4, y), fail);
  if (r) st = k->avg_pool2d_fwd(y4, x4, r);
  else st = k->adaptive_avg_pool2d_fwd(y4, x4);
  if (st != AD_OK) goto fail;
  AD_TRY_GOTO(st, ad_record(r ? &AVG_POOL2D : &ADAPTIVE_AVG_POOL2D, &y, 1, (ad_tensor *const *)&x, 1, NULL, 0,
                            &attrs, sizeof attrs), fail);
  ad_tensor_release(xc); ad_tensor_release(x4); ad_tensor_release(y4);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(xc); ad_tensor_release(x4); ad_tensor_release(y4); ad_tensor_release(y);
  return st;
}

static ad_status avg_via_f32(ad_tensor **out, const ad_tensor *x, const ad_pool2d_args *r, int64_t oh, int64_t ow) {
  ad_tensor *xf = NULL, *yf = NULL;
  ad_status st = ad_to_dtype(&xf, x, AD_F32);
  if (st == AD_OK) st = r ? ad_avg_pool2d(&yf, xf, r) : ad_adaptive_avg_pool2d(&yf, xf, oh, ow);
  if (st == AD_OK) st = ad_to_dtype(out, yf, x->dtype);
  ad_tensor_release(xf);
  ad_tensor_release(yf);
  return st;
}

ad_status ad_avg_pool2d(ad_tensor **out, const ad_tensor *x, const ad_pool2d_args *a) {
  AD_TRY(check_image("avg_pool2d", x));
  ad_pool2d_args r;
  int64_t oh = 0, ow = 0;
  AD_TRY(pool_geometry("avg_pool2d", x, a, false, &r, &oh, &ow));
  if (x->dtype == AD_F16 || x->dtype == AD_BF16) return avg_via_f32(out, x, &r, oh, ow);
  return avg_forward(out, x, &r, oh, ow);
}

ad_status ad_adaptive_avg_pool2d(ad_tensor **out, const ad_tensor *x, int64_t oh, int64_t ow) {
  AD_TRY(check_image("adaptive_avg_pool2d", x));
  if (oh < 1 || ow < 1)
    return AD_FAIL(AD_EINVAL, "adaptive_avg_pool2d: output size must be positive, got %lldx%lld", (long long)oh,
                   (long long)ow);
  if (x->dtype == AD_F16 || x->dtype == AD_BF16) return avg_via_f32(out, x, NULL, oh, ow);
  int64_t H = x->shape[x->ndim - 2], W = x->shape[x->ndim - 1];
  if (H < 1 || W < 1)
    return AD_FAIL(AD_ESHAPE, "adaptive_avg_pool2d: input spatial size %lldx%lld is empty", (long long)H, (long long)W);
  return avg_forward(out, x, NULL, oh, ow);
}
