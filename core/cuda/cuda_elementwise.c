/* cuda_elementwise.c: the CUDA instance of the elementwise kernel table
 * (backend_elementwise.h). Every entry lays its operands out as one strided
 * walk (kernels.h's adk_iter, stride 0 for broadcast operands) and hands it to
 * the one generic elementwise path of kernels/cuda/elementwise.cu, with the
 * op code; the dtype rules checked here are the CPU kernels'. */
#include <math.h>
#include "cuda_internal.h"
#include "../backend_elementwise.h"

static ad_status run_ctx(adk_ctx *k, const ad_tensor *t) { return ad_cuda_kctx(k, NULL, ad_cuda_dev_of(t)); }

static ad_status cuda_unary(ad_tensor *y, const ad_tensor *x, ad_unop op) {
  const bool is_bool = ad_unop_is_bool(op);
  if ((is_bool && y->dtype != AD_BOOL) || (!is_bool && y->dtype != x->dtype))
    return AD_FAIL(AD_EDTYPE, "%s: cuda kernel got %s -> %s", ad_unop_name(op), ad_dtype_name(x->dtype),
                   ad_dtype_name(y->dtype));
  adk_ctx k;
  AD_TRY(run_ctx(&k, y));
  adk_iter it;
  ad_cuda_iter_init(&it, y);
  ad_cuda_iter_add(&it, y);
  ad_cuda_iter_add(&it, x);
  return ad_cuda_check(ad_launch_unary(&k, &it, (int)op), ad_unop_name(op));
}

static ad_status cuda_unary_bwd(ad_tensor *dx, const ad_tensor *x, const ad_tensor *y, const ad_tensor *dy,
                                ad_unop op) {
  const ad_tensor *v = ad_unop_bwd_uses_y(op) ? y : x;
  if (!v) return AD_FAIL(AD_EINVAL, "%s backward: the cuda kernel needs %s", ad_unop_name(op),
                         ad_unop_bwd_uses_y(op) ? "the forward result" : "the input");
  if (dx->dtype != v->dtype || dy->dtype != v->dtype)
    return AD_FAIL(AD_EDTYPE, "%s backward: dtypes differ", ad_unop_name(op));
  adk_ctx k;
  AD_TRY(run_ctx(&k, dx));
  adk_iter it;
  ad_cuda_iter_init(&it, dx);
  ad_cuda_iter_add(&it, dx);
  ad_cuda_iter_add(&it, v);
  ad_cuda_iter_add(&it, dy);
  return ad_cuda_check(ad_launch_unary_bwd(&k, &it, (int)op), ad_unop_name(op));
}

static ad_status bin_check(const ad_tensor *y, ad_dtype in, ad_binop op) {
  ad_dtype want = ad_binop_is_bool(op) ? AD_BOOL : in;
  if (y->dtype != want)
    return AD_FAIL(AD_EDTYPE, "%s: cuda kernel got %s inputs and a %s output", ad_binop_name(op), ad_dtype_name(in),
                   ad_dtype_name(y->dtype));
  return AD_OK;
}

static ad_status cuda_binary(ad_tensor *y, const ad_tensor *a, const ad_tensor *b, ad_binop op) {
  if (a->dtype != b->dtype)
    return AD_FAIL(AD_EDTYPE, "%s: cuda kernel got %s and %s", ad_binop_name(op), ad_dtype_name(a->dtype),
                   ad_dtype_name(b->dtype));
  AD_TRY(bin_check(y, a->dtype, op));
  adk_ctx k;
  AD_TRY(run_ctx(&k, y));
  adk_iter it;
  ad_cuda_iter_init(&it, y);
  ad_cuda_iter_add(&it, y);
  ad_cuda_iter_add(&it, a);
  ad_cuda_iter_add(&it, b);
  return ad_cuda_check(ad_launch_binary(&k, &it, (int)op), ad_binop_name(op));
}

static ad_status binb_check(const ad_tensor *da, const ad_tensor *db, ad_dtype dt, const ad_tensor *dy, ad_binop op) {
  if (op > AD_BIN_MINIMUM) return AD_FAIL(AD_EINVAL, "%s: not differentiable", ad_binop_name(op));
  if ((da && da->dtype != dt) || (db && db->dtype != dt) || dy->dtype != dt)
    return AD_FAIL(AD_EDTYPE, "%s backward: dtypes differ", ad_binop_name(op));
  return AD_OK;
}

static ad_status cuda_binary_bwd(ad_tensor *da, ad_tensor *db, const ad_tensor *a, const ad_tensor *b,
                                 const ad_tensor *dy, ad_binop op) {
  if (!da && !db) return AD_OK;
  if (a->dtype != b->dtype) return AD_FAIL(AD_EDTYPE, "%s backward: dtypes differ", ad_binop_name(op));
  AD_TRY(binb_check(da, db, a->dtype, dy, op));
  adk_ctx k;
  AD_TRY(run_ctx(&k, dy));
  adk_iter it;
  ad_cuda_iter_init(&it, dy);
  ad_cuda_iter_add(&it, da);
  ad_cuda_iter_add(&it, db);
  ad_cuda_iter_add(&it, a);
  ad_cuda_iter_add(&it, b);
  ad_cuda_iter_add(&it, dy);
  return ad_cuda_check(ad_launch_binary_bwd(&k, &it, (int)op), ad_binop_name(op));
}

static ad_status cuda_binary_scalar(ad_tensor *y, const ad_tensor *a, double s, ad_binop op, bool scalar_first) {
  AD_TRY(bin_check(y, a->dtype, op));
  adk_ctx k;
  AD_TRY(run_ctx(&k, y));
  adk_iter it;
  ad_cuda_iter_init(&it, y);
  ad_cuda_iter_add(&it, y);
  ad_cuda_iter_add(&it, a);
  return ad_cuda_check(ad_launch_binary_scalar(&k, &it, (int)op, s, scalar_first), ad_binop_name(op));
}

static ad_status cuda_binary_scalar_bwd(ad_tensor *da, const ad_tensor *a, double s, const ad_tensor *dy,
                                        ad_binop op, bool scalar_first) {
  AD_TRY(binb_check(da, NULL, a->dtype, dy, op));
  adk_ctx k;
  AD_TRY(run_ctx(&k, da));
  adk_iter it;
  ad_cuda_iter_init(&it, da);
  ad_cuda_iter_add(&it, da);
  ad_cuda_iter_add(&it, a);
  ad_cuda_iter_add(&it, dy);
  return ad_cuda_check(ad_launch_binary_scalar_bwd(&k, &it, (int)op, s, scalar_first), ad_binop_name(op));
}

static ad_status cuda_clamp(ad_tensor *y, const ad_tensor *x, bool has_min, double min, bool has_max, double max) {
  if (y->dtype != x->dtype)
    return AD_FAIL(AD_EDTYPE, "clamp: cuda kernel got %s -> %s", ad_dtype_name(x->dtype), ad_dtype_name(y->dtype));
  adk_ctx k;
  AD_TRY(run_ctx(&k, y));
  adk_iter it;
  ad_cuda_iter_init(&it, y);
  ad_cuda_iter_add(&it, y);
  ad_cuda_iter_add(&it, x);
  return ad_cuda_check(ad_launch_clamp(&k, &it, has_min ? min : -INFINITY, has_max ? max : INFINITY), "clamp");
}

static ad_status cuda_clamp_bwd(ad_tensor *dx, const ad_tensor *x, const ad_tensor *dy, bool has_min, double min,
                                bool has_max, double max) {
  if (dx->dtype != x->dtype || dy->dtype != x->dtype) return AD_FAIL(AD_EDTYPE, "clamp backward: dtypes differ");
  adk_ctx k;
  AD_TRY(run_ctx(&k, dx));
  adk_iter it;
  ad_cuda_iter_init(&it, dx);
  ad_cuda_iter_add(&it, dx);
  ad_cuda_iter_add(&it, x);
  ad_cuda_iter_add(&it, dy);
  return ad_cuda_check(ad_launch_clamp_bwd(&k, &it, has_min ? min : -INFINITY, has_max ? max : INFINITY),
                       "clamp backward");
}

static ad_status cuda_where(ad_tensor *y, const ad_tensor *cond, const ad_tensor *a, const ad_tensor *b) {
  if (cond->dtype != AD_BOOL)
    return AD_FAIL(AD_EDTYPE, "where: condition must be bool, got %s", ad_dtype_name(cond->dtype));
  if (a->dtype != y->dtype || b->dtype != y->dtype) return AD_FAIL(AD_EDTYPE, "where: dtypes differ");
  adk_ctx k;
  AD_TRY(run_ctx(&k, y));
  adk_iter it;
  ad_cuda_iter_init(&it, y);
  ad_cuda_iter_add(&it, y);
  ad_cuda_iter_add(&it, cond);
  ad_cuda_iter_add(&it, a);
  ad_cuda_iter_add(&it, b);
  return ad_cuda_check(ad_launch_where(&k, &it), "where");
}

const struct ad_elementwise_kernels ad_cuda_elementwise_kernels = {
  .unary = cuda_unary,
  .unary_bwd = cuda_unary_bwd,
  .binary = cuda_binary,
  .binary_bwd = cuda_binary_bwd,
  .binary_scalar = cuda_binary_scalar,
  .binary_scalar_bwd = cuda_binary_scalar_bwd,
  .clamp = cuda_clamp,
  .clamp_bwd = cuda_clamp_bwd,
  .where = cuda_where,
};
