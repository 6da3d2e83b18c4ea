/* softmax.c: softmax and log_softmax along one dim, and their backward rule.
 *
 * The input is made contiguous and viewed as (outer, L, inner) with L the
 * softmax dim; the output is saved for backward (both gradients are
 * functions of the output alone). f16/bf16 run in f32 and convert back,
 * except under autocast, where softmax and log_softmax are f32-policy ops
 * and return the f32 result (see autocast.h). */
#include "../ad.h"
#include "../autocast.h"
#include "../backend_nn.h"

typedef struct { int64_t outer, L, inner; bool log; } sm_attrs;

static ad_status softmax_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const sm_attrs *a = node->attrs;
  ad_tensor *y = node->saved[0], *dy = NULL, *dx = NULL;
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  ad_status st;
  AD_TRY(ad_nn_table(&nn, &bk, y));
  AD_NEED_KERNEL(nn->softmax_bwd, a->log ? "log_softmax backward" : "softmax backward", bk);
  AD_TRY(ad_contiguous(&dy, gout[0]));
  AD_TRY_GOTO(st, ad_empty_like(&dx, y), fail);
  AD_TRY_GOTO(st, nn->softmax_bwd(dx, dy, y, a->outer, a->L, a->inner, a->log), fail);
  ad_tensor_release(dy);
  gin[0] = dx;
  return AD_OK;
fail:
  ad_tensor_release(dy);
  ad_tensor_release(dx);
  return st;
}
static const ad_opdef SOFTMAX = {"softmax", softmax_backward};
static const ad_opdef LOG_SOFTMAX = {"log_softmax", softmax_backward};

static ad_status softmax_impl(ad_tensor **out, const ad_tensor *x, int dim, bool log) {
  const char *op = log ? "log_softmax" : "softmax";
  if (ad_autocast_applies_f32(&x, 1)) {   /* autocast (issue 3): runs in f32 */
    ad_tensor *c[1];
    ad_status st = ad_autocast_cast_f32(c, &x, 1);
    if (st == AD_OK) st = softmax_impl(out, c[0], dim, log);
    ad_autocast_release(c, 1);
    return st;
  }
  AD_TRY(ad_nn_check_float(op, "input", x));
  /* a 0-d tensor has one implicit dim of size 1 (PyTorch accepts dim 0 / -1) */
  const int nd = x->ndim ? x->ndim : 1;
  if (dim < 0 || dim >= nd)
    return AD_FAIL(AD_EINVAL, "%s: dimension %d out of range for a %d-D tensor", op, dim + 1, x->ndim);

  ad_status st;
  if (ad_nn_is_half(x->dtype)) {
    ad_tensor *xf = NULL, *y = NULL;
    AD_TRY(ad_to_dtype(&xf, x, AD_F32));
    st = softmax_impl(&y, xf, dim, log);
    ad_tensor_release(xf);
    if (st != AD_OK) return st;
    return ad_nn_back_to(out, y, x->dtype);
  }

  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ad_nn_table(&nn, &bk, x));
  AD_NEED_KERNEL(nn->softmax_fwd, op, bk);
  sm_attrs a = {1, x->ndim ? x->shape[dim] : 1, 1, log};
  for (int d = 0; d < dim; d++) a.outer *= x->shape[d];
  for (int d = dim + 1; d < x->ndim; d++) a.inner *= x->shape[d];
  ad_tensor *xc = NULL, *y = NULL;
  AD_TRY(ad_contiguous(&xc, x));
  AD_TRY_GOTO(st, ad_empty(&y, x->ndim, x->shape, x->dtype, x->storage->device), fail);
  if (ad_numel(y) > 0) AD_TRY_GOTO(st, nn->softmax_fwd(y, xc, a.outer, a.L, a.inner, log), fail);
  AD_TRY_GOTO(st, ad_record(log ? &LOG_SOFTMAX : &SOFTMAX, &y, 1, &xc, 1, &y, 1, &a, sizeof a), fail);
  ad_tensor_release(xc);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(xc);
  ad_tensor_release(y);
  return st;
}

ad_status ad_softmax(ad_tensor **out, const ad_tensor *x, int dim) { return softmax_impl(out, x, dim, false); }
ad_status ad_log_softmax(ad_tensor **out, const ad_tensor *x, int dim) { return softmax_impl(out, x, dim, true); }
