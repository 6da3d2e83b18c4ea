/* conv.c: conv2d and conv1d front ends and the conv2d backward rule.
 *
 * conv2d checks shapes with PyTorch's rules, computes in f32/f64 (f16 and
 * bf16 go through recorded f32 conversions), and records one node whose
 * backward calls the backend's backward-data and backward-weight kernels
 * (bias gradient included). conv1d is conv2d over a height-1 image, composed
 * with recorded views so that its gradient needs no rule of its own. An
 * unbatched (C, H, W) input is treated as a batch of one, likewise. */
#include <string.h>
#include "../ad.h"
#include "../backend_conv.h"
#include "../autocast.h"

static ad_status conv2d_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin);
static const ad_opdef CONV2D = {"conv2d", conv2d_backward};

static const struct ad_conv_kernels *conv_kernels(const ad_tensor *t, const ad_backend **bk_out) {
  const ad_backend *bk = ad_backend_of(t);
  *bk_out = bk;
  return bk ? bk->conv : NULL;
}

/* Runs f(out, x, w, b, a) with f16/bf16 tensors converted to f32 and the
 * result converted back; the conversions are recorded, so gradients flow. */
static ad_status via_f32(ad_tensor **out, const ad_tensor *x, const ad_tensor *w, const ad_tensor *b,
                         const ad_conv2d_args *a) {
  ad_tensor *xf = NULL, *wf = NULL, *bf = NULL, *yf = NULL;
  ad_status st;
  AD_TRY_GOTO(st, ad_to_dtype(&xf, x, AD_F32), done);
  AD_TRY_GOTO(st, ad_to_dtype(&wf, w, AD_F32), done);
  if (b) AD_TRY_GOTO(st, ad_to_dtype(&bf, b, AD_F32), done);
  AD_TRY_GOTO(st, ad_conv2d(&yf, xf, wf, bf, a), done);
  st = ad_to_dtype(out, yf, x->dtype);
done:
  ad_tensor_release(xf); ad_tensor_release(wf); ad_tensor_release(bf); ad_tensor_release(yf);
  return st;
}

/* x (N, C, H, W) or (C, H, W)  w (O, C/groups, kh, kw)  b (O) or NULL */
ad_status ad_conv2d(ad_tensor **out, const ad_tensor *x, const ad_tensor *w, const ad_tensor *b,
                    const ad_conv2d_args *a) {
  char s1[128];
  if (!a) return AD_FAIL(AD_EINVAL, "conv2d: missing arguments");
  if (ad_autocast_applies((const ad_tensor *[]){x, w, b}, 3)) {   /* autocast (issue 3): run in its dtype */
    ad_tensor *c[3];
    ad_status st = ad_autocast_cast(c, (const ad_tensor *[]){x, w, b}, 3);
    if (st == AD_OK) st = ad_conv2d(out, c[0], c[1], c[2], a);
    ad_autocast_release(c, 3);
    return st;
  }
  if (a->groups < 1) return AD_FAIL(AD_EINVAL, "conv2d: groups must be >= 1, got %d", a->groups);
  for (int i = 0; i < 2; i++) {
    if (a->stride[i] < 1) return AD_FAIL(AD_EINVAL, "conv2d: stride must be >= 1, got %d", a->stride[i]);
    if (a->padding[i] < 0) return AD_FAIL(AD_EINVAL, "conv2d: padding must be >= 0, got %d", a->padding[i]);
    if (a->dilation[i] < 1) return AD_FAIL(AD_EINVAL, "conv2d: dilation must be >= 1, got %d", a->dilation[i]);
  }
  if (w->ndim != 4)
    return AD_FAIL(AD_ESHAPE, "conv2d: weight must be 4-D (out, in/groups, kh, kw), got %d-D %s", w->ndim,
                   ad_shape_str(w->ndim, w->shape, s1, sizeof s1));
  if (x->ndim != 4 && x->ndim != 3)
    return AD_FAIL(AD_ESHAPE, "conv2d: input must be 4-D (N, C, H, W) or 3-D (C, H, W), got %d-D %s", x->ndim,
                   ad_shape_str(x->ndim, x->shape, s1, sizeof s1));
  if (!ad_dtype_is_float(x->dtype) || x->dtype != w->dtype || (b && b->dtype != x->dtype))
    return AD_FAIL(AD_EDTYPE, "conv2d: input, weight and bias must share one floating-point dtype, got %s, %s%s%s",
                   ad_dtype_name(x->dtype), ad_dtype_name(w->dtype), b ? ", " : "", b ? ad_dtype_name(b->dtype) : "");
  if (!ad_device_eq(x->storage->device, w->storage->device) || (b && !ad_device_eq(x->storage->device, b->storage->device)))
    return AD_FAIL(AD_EDEVICE, "conv2d: input, weight and bias must be on one device");
  if (x->ndim == 3) {   /* unbatched: through a recorded batch-of-one view */
    ad_tensor *x4 = NULL, *y4 = NULL;
    ad_status st = ad_unsqueeze(&x4, x, 0);
    if (st == AD_OK) st = ad_conv2d(&y4, x4, w, b, a);
    if (st == AD_OK) st = ad_squeeze(out, y4, 0);
    ad_tensor_release(x4);
    ad_tensor_release(y4);
    return st;
  }
  int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t O = w->shape[0], kh = w->shape[2], kw = w->shape[3];
  if (w->shape[1] * a->groups != C)
    return AD_FAIL(AD_ESHAPE, "conv2d: input has %lld channels but weight expects %lld (groups=%d)", (long long)C,
                   (long long)(w->shape[1] * a->groups), a->groups);
  if (O % a->groups != 0)
    return AD_FAIL(AD_ESHAPE, "conv2d: out channels %lld not divisible by groups=%d", (long long)O, a->groups);
  if (b && !(b->ndim == 1 && b->shape[0] == O))
    return AD_FAIL(AD_ESHAPE, "conv2d: bias must be 1-D of size %lld (out channels), got %s", (long long)O,
                   ad_shape_str(b->ndim, b->shape, s1, sizeof s1));
  int64_t eh = (int64_t)a->dilation[0] * (kh - 1) + 1, ew = (int64_t)a->dilation[1] * (kw - 1) + 1;
  int64_t ph = H + 2 * (int64_t)a->padding[0], pw = W + 2 * (int64_t)a->padding[1];
  if (ph < eh || pw < ew)
    return AD_FAIL(AD_ESHAPE, "conv2d: padded input %lldx%lld is smaller than the (dilated) kernel %lldx%lld",
                   (long long)ph, (long long)pw, (long long)eh, (long long)ew);
  int64_t Ho = (ph - eh) / a->stride[0] + 1, Wo = (pw - ew) / a->stride[1] + 1;
  /* half precision: CUDA (cuDNN) computes it natively; the CPU kernels go through f32 (issue 3) */
  if ((x->dtype == AD_F16 || x->dtype == AD_BF16) && x->storage->device.type != AD_DEV_CUDA)
    return via_f32(out, x, w, b, a);

  const ad_backend *bk;
  const struct ad_conv_kernels *k = conv_kernels(x, &bk);
  if (!bk) return AD_EDEVICE;
  AD_NEED_KERNEL(k ? k->conv2d_fwd : NULL, "conv2d", bk);
  ad_tensor *xc = NULL, *wc = NULL, *bc = NULL, *y = NULL;
  ad_status st;
  bool prev = ad_set_grad_enabled(false);
  st = ad_contiguous(&xc, x);
  if (st == AD_OK) st = ad_contiguous(&wc, w);
  if (st == AD_OK && b) st = ad_contiguous(&bc, b);
  ad_set_grad_enabled(prev);
  if (st != AD_OK) goto fail;
  AD_TRY_GOTO(st, ad_empty(&y, 4, (int64_t[]){N, O, Ho, Wo}, x->dtype, x->storage->device), fail);
  AD_TRY_GOTO(st, k->conv2d_fwd(y, xc, wc, bc, a), fail);
  ad_tensor *ins[3] = {(ad_tensor *)x, (ad_tensor *)w, (ad_tensor *)b};
  ad_tensor *saved[2] = {xc, wc};
  AD_TRY_GOTO(st, ad_record(&CONV2D, &y, 1, ins, b ? 3 : 2, saved, 2, a, sizeof *a), fail);
  ad_tensor_release(xc); ad_tensor_release(wc); ad_tensor_release(bc);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(xc); ad_tensor_release(wc); ad_tensor_release(bc); ad_tensor_release(y);
  return st;
}

static ad_status conv2d_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const ad_tensor *x = node->saved[0], *w = node->saved[1];
  const ad_conv2d_args *a = node->attrs;
  bool need_x = node->needs_grad[0], need_w = node->needs_grad[1];
  bool need_b = node->n_inputs > 2 && node->needs_grad[2];
  const ad_backend *bk;
  const struct ad_conv_kernels *k = conv_kernels(x, &bk);
  if (!bk) return AD_EDEVICE;
  if (need_x) AD_NEED_KERNEL(k ? k->conv2d_bwd_data : NULL, "conv2d backward", bk);
  if (need_w || need_b) AD_NEED_KERNEL(k ? k->conv2d_bwd_weight : NULL, "conv2d backward", bk);
  ad_tensor *dy = NULL, *dx = NULL, *dw = NULL, *db = NULL;
  ad_status st;
  AD_TRY_GOTO(st, ad_contiguous(&dy, gout[0]), fail);
  if (need_x) {
    AD_TRY_GOTO(st, ad_empty_like(&dx, x), fail);
    AD_TRY_GOTO(st, k->conv2d_bwd_data(dx, dy, w, a), fail);
  }
  if (need_b) AD_TRY_GOTO(st, ad_empty(&db, 1, &w->shape[0], dy->dtype, dy->storage->device), fail);
  if (need_w) {
    AD_TRY_GOTO(st, ad_empty_like(&dw, w), fail);
    AD_TRY_GOTO(st, k->conv2d_bwd_weight(dw, db, x, dy, a), fail);
  } else if (need_b) {
    AD_TRY_GOTO(st, ad_sum(&gin[2], dy, 3, (int[]){0, 2, 3}, false), fail);
    ad_tensor_release(db);
    db = NULL;
  }
  gin[0] = dx;
  gin[1] = dw;
  if (db) gin[2] = db;
  ad_tensor_release(dy);
  return AD_OK;
fail:
  ad_tensor_release(dy); ad_tensor_release(dx); ad_tensor_release(dw); ad_tensor_release(db);
  return st;
}

/* x (N, C, L) or (C, L)  w (O, C/groups, K)  b (O) or NULL: conv2d on (N, C, 1, L) */
ad_status ad_conv1d(ad_tensor **out, const ad_tensor *x, const ad_tensor *w, const ad_tensor *b,
                    int stride, int padding, int dilation, int groups) {
  char s1[128];
  if (w->ndim != 3)
    return AD_FAIL(AD_ESHAPE, "conv1d: weight must be 3-D (out, in/groups, k), got %d-D %s", w->ndim,
                   ad_shape_str(w->ndim, w->shape, s1, sizeof s1));
  if (x->ndim != 3 && x->ndim != 2)
    return AD_FAIL(AD_ESHAPE, "conv1d: input must be 3-D (N, C, L) or 2-D (C, L), got %d-D %s", x->ndim,
                   ad_shape_str(x->ndim, x->shape, s1, sizeof s1));
  if (groups >= 1 && w->shape[1] * groups != x->shape[x->ndim - 2])
    return AD_FAIL(AD_ESHAPE, "conv1d: input has %lld channels but weight expects %lld (groups=%d)",
                   (long long)x->shape[x->ndim - 2], (long long)(w->shape[1] * groups), groups);
  if (stride < 1 || padding < 0 || dilation < 1 || groups < 1)
    return AD_FAIL(AD_EINVAL, "conv1d: need stride >= 1, padding >= 0, dilation >= 1, groups >= 1; got %d, %d, %d, %d",
                   stride, padding, dilation, groups);
  int64_t L = x->shape[x->ndim - 1], ext = (int64_t)dilation * (w->shape[2] - 1) + 1;
  if (L + 2 * (int64_t)padding < ext)
    return AD_FAIL(AD_ESHAPE, "conv1d: padded input length %lld is smaller than the (dilated) kernel %lld",
                   (long long)(L + 2 * (int64_t)padding), (long long)ext);
  ad_conv2d_args a = {.stride = {1, stride}, .padding = {0, padding}, .dilation = {1, dilation}, .groups = groups};
  ad_tensor *x4 = NULL, *w4 = NULL, *y4 = NULL;
  ad_status st;
  AD_TRY_GOTO(st, ad_unsqueeze(&x4, x, x->ndim - 1), done);
  AD_TRY_GOTO(st, ad_unsqueeze(&w4, w, 2), done);
  AD_TRY_GOTO(st, ad_conv2d(&y4, x4, w4, b, &a), done);
  st = ad_squeeze(out, y4, y4->ndim - 2);
done:
  ad_tensor_release(x4); ad_tensor_release(w4); ad_tensor_release(y4);
  if (st != AD_OK && strstr(ad_last_error(), "conv2d:")) ad_fail_context(st, "conv1d");
  return st;
}
