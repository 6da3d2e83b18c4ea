/* cuda_reduce.c: the CUDA instance of the reduction kernel table
 * (backend_reduce.h): checks the (outer, r, inner) contract and hands raw
 * pointers to kernels/cuda/reduce.cu. */
#include "cuda_internal.h"
#include "../backend_reduce.h"

static ad_status cuda_reduce(ad_tensor *y, const ad_tensor *x, int64_t outer, int64_t r, int64_t inner, ad_redop op,
                             double param) {
  if (outer * r * inner > 0 && (!ad_is_contiguous(x) || !ad_is_contiguous(y)))
    return AD_FAIL(AD_EINVAL, "reduce: cuda kernel needs contiguous tensors");
  adk_ctx k;
  AD_TRY(ad_cuda_kctx(&k, NULL, ad_cuda_dev_of(y)));
  if (op == AD_RED_ALL || op == AD_RED_ANY) {
    if (x->dtype != AD_BOOL || y->dtype != AD_BOOL)
      return AD_FAIL(AD_EDTYPE, "all/any: cuda kernel needs bool tensors");
    return ad_cuda_check(ad_launch_reduce_bool(&k, ad_data(y), ad_data(x), outer, r, inner, op == AD_RED_ALL),
                         op == AD_RED_ALL ? "all" : "any");
  }
  if ((x->dtype != AD_F32 && x->dtype != AD_F64) || y->dtype != x->dtype)
    return AD_FAIL(AD_EDTYPE, "reduce: cuda kernel got %s -> %s (f32 or f64 expected)", ad_dtype_name(x->dtype),
                   ad_dtype_name(y->dtype));
  return ad_cuda_check(ad_launch_reduce(&k, ad_data(y), ad_data(x), x->dtype, outer, r, inner, (int)op, param),
                       "reduce");
}

static ad_status cuda_arg_reduce(ad_tensor *values, ad_tensor *indices, const ad_tensor *x, int64_t outer, int64_t r,
                                 int64_t inner, bool is_max) {
  if (r < 1) return AD_FAIL(AD_EINVAL, "%s: cannot reduce an empty dimension", is_max ? "max" : "min");
  if ((x->dtype != AD_F32 && x->dtype != AD_F64) || (values && values->dtype != x->dtype) || indices->dtype != AD_I64)
    return AD_FAIL(AD_EDTYPE, "%s: cuda kernel got %s (f32 or f64 expected)", is_max ? "max" : "min",
                   ad_dtype_name(x->dtype));
  adk_ctx k;
  AD_TRY(ad_cuda_kctx(&k, NULL, ad_cuda_dev_of(x)));
  return ad_cuda_check(ad_launch_arg_reduce(&k, values ? ad_data(values) : NULL, ad_data(indices), ad_data(x),
                                            x->dtype, outer, r, inner, is_max),
                       is_max ? "max" : "min");
}

static ad_status cuda_arg_reduce_bwd(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *indices, int64_t outer,
                                     int64_t r, int64_t inner) {
  if (dx->dtype != dy->dtype || indices->dtype != AD_I64 ||
      (ad_numel(dx) > 0 && (!ad_is_contiguous(dy) || !ad_is_contiguous(dx))))
    return AD_FAIL(AD_EINVAL, "max/min backward: cuda kernel got mismatched tensors");
  adk_ctx k;
  AD_TRY(ad_cuda_kctx(&k, NULL, ad_cuda_dev_of(dx)));
  return ad_cuda_check(ad_launch_arg_reduce_bwd(&k, ad_data(dx), ad_data(dy), ad_data(indices),
                                                ad_dtype_size(dx->dtype), outer, r, inner),
                       "max/min backward");
}

static ad_status cuda_cumsum(ad_tensor *y, const ad_tensor *x, int64_t outer, int64_t r, int64_t inner, bool reverse) {
  if ((x->dtype != AD_F32 && x->dtype != AD_F64) || y->dtype != x->dtype ||
      (ad_numel(x) > 0 && (!ad_is_contiguous(x) || !ad_is_contiguous(y))))
    return AD_FAIL(AD_EDTYPE, "cumsum: cuda kernel got %s (contiguous f32 or f64 expected)", ad_dtype_name(x->dtype));
  adk_ctx k;
  AD_TRY(ad_cuda_kctx(&k, NULL, ad_cuda_dev_of(x)));
  return ad_cuda_check(ad_launch_cumsum(&k, ad_data(y), ad_data(x), x->dtype, outer, r, inner, reverse), "cumsum");
}

const struct ad_reduce_kernels ad_cuda_reduce_kernels = {
  .reduce = cuda_reduce,
  .arg_reduce = cuda_arg_reduce,
  .arg_reduce_bwd = cuda_arg_reduce_bwd,
  .cumsum = cuda_cumsum,
};
