/* cuda_conv.c: the CUDA instance of the convolution / pooling / resampling /
 * padding kernel table (backend_conv.h). conv2d is cuDNN's (cuda_dnn.c; the
 * members stay NULL in a build without cuDNN, so conv2d on CUDA is then an
 * AD_ENOTIMPL error naming the op); pooling, resampling and padding are the
 * launchers of kernels/cuda/{pool,resample}.cu. */
#include "cuda_internal.h"
#include "../backend_conv.h"

#ifdef AD_HAVE_CUDNN
ad_status ad_cuda_conv2d_fwd(ad_tensor *y, const ad_tensor *x, const ad_tensor *w, const ad_tensor *b,
                             const ad_conv2d_args *a);
ad_status ad_cuda_conv2d_bwd_data(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *w, const ad_conv2d_args *a);
ad_status ad_cuda_conv2d_bwd_weight(ad_tensor *dw, ad_tensor *db, const ad_tensor *x, const ad_tensor *dy,
                                    const ad_conv2d_args *a);
#endif

static ad_status need_float(const ad_tensor *t, const char *op) {
  if (t->dtype != AD_F32 && t->dtype != AD_F64)
    return AD_FAIL(AD_EDTYPE, "%s: the CUDA kernel computes in f32 or f64, got %s", op, ad_dtype_name(t->dtype));
  return AD_OK;
}

static ad_status ctx_of(adk_ctx *k, const ad_tensor *t) { return ad_cuda_kctx(k, NULL, ad_cuda_dev_of(t)); }

static adk_pool2d pool_args(const ad_pool2d_args *a) {
  adk_pool2d p;
  for (int i = 0; i < 2; i++) {
    p.kernel[i] = a->kernel[i];
    p.stride[i] = a->stride[i];
    p.padding[i] = a->padding[i];
    p.dilation[i] = a->dilation[i];
  }
  p.count_include_pad = a->count_include_pad;
  p.divisor_override = a->divisor_override;
  return p;
}

#define PLANES(t) ((t)->shape[0] * (t)->shape[1])

/* ---- pooling ---- */

ad_status ad_cuda_max_pool2d_fwd(ad_tensor *y, ad_tensor *indices, const ad_tensor *x, const ad_pool2d_args *a) {
  AD_TRY(need_float(x, "max_pool2d"));
  adk_ctx k;
  AD_TRY(ctx_of(&k, x));
  adk_pool2d p = pool_args(a);
  return ad_cuda_check(ad_launch_max_pool2d_fwd(&k, ad_data(y), ad_data(indices), ad_data(x), x->dtype, PLANES(x),
                                                x->shape[2], x->shape[3], y->shape[2], y->shape[3], &p),
                       "max_pool2d");
}

ad_status ad_cuda_max_pool2d_bwd(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *indices) {
  AD_TRY(need_float(dx, "max_pool2d backward"));
  adk_ctx k;
  AD_TRY(ctx_of(&k, dx));
  return ad_cuda_check(ad_launch_max_pool2d_bwd(&k, ad_data(dx), ad_data(dy), ad_data(indices), dx->dtype, PLANES(dx),
                                                dx->shape[2] * dx->shape[3], dy->shape[2] * dy->shape[3]),
                       "max_pool2d backward");
}

ad_status ad_cuda_avg_pool2d_fwd(ad_tensor *y, const ad_tensor *x, const ad_pool2d_args *a) {
  AD_TRY(need_float(x, "avg_pool2d"));
  adk_ctx k;
  AD_TRY(ctx_of(&k, x));
  adk_pool2d p = pool_args(a);
  return ad_cuda_check(ad_launch_avg_pool2d_fwd(&k, ad_data(y), ad_data(x), x->dtype, PLANES(x), x->shape[2],
                                                x->shape[3], y->shape[2], y->shape[3], &p),
                       "avg_pool2d");
}

ad_status ad_cuda_avg_pool2d_bwd(ad_tensor *dx, const ad_tensor *dy, const ad_pool2d_args *a) {
  AD_TRY(need_float(dx, "avg_pool2d backward"));
  adk_ctx k;
  AD_TRY(ctx_of(&k, dx));
  adk_pool2d p = pool_args(a);
  return ad_cuda_check(ad_launch_avg_pool2d_bwd(&k, ad_data(dx), ad_data(dy), dx->dtype, PLANES(dx), dx->shape[2],
                                                dx->shape[3], dy->shape[2], dy->shape[3], &p),
                       "avg_pool2d backward");
}

ad_status ad_cuda_adaptive_avg_pool2d_fwd(ad_tensor *y, const ad_tensor *x) {
  AD_TRY(need_float(x, "adaptive_avg_pool2d"));
  adk_ctx k;
  AD_TRY(ctx_of(&k, x));
  return ad_cuda_check(ad_launch_adaptive_avg_pool2d_fwd(&k, ad_data(y), ad_data(x), x->dtype, PLANES(x), x->shape[2],
                                                         x->shape[3], y->shape[2], y->shape[3]),
                       "adaptive_avg_pool2d");
}

ad_status ad_cuda_adaptive_avg_pool2d_bwd(ad_tensor *dx, const ad_tensor *dy) {
  AD_TRY(need_float(dx, "adaptive_avg_pool2d backward"));
  adk_ctx k;
  AD_TRY(ctx_of(&k, dx));
  return ad_cuda_check(ad_launch_adaptive_avg_pool2d_bwd(&k, ad_data(dx), ad_data(dy), dx->dtype, PLANES(dx),
                                                         dx->shape[2], dx->shape[3], dy->shape[2], dy->shape[3]),
                       "adaptive_avg_pool2d backward");
}

/* ---- resampling ---- */

ad_status ad_cuda_upsample_nearest2d_fwd(ad_tensor *y, const ad_tensor *x) {
  adk_ctx k;
  AD_TRY(ctx_of(&k, x));
  return ad_cuda_check(ad_launch_upsample_nearest2d_fwd(&k, ad_data(y), ad_data(x), ad_dtype_size(x->dtype),
                                                        PLANES(x), x->shape[2], x->shape[3], y->shape[2], y->shape[3]),
                       "upsample_nearest2d");
}

ad_status ad_cuda_upsample_nearest2d_bwd(ad_tensor *dx, const ad_tensor *dy) {
  AD_TRY(need_float(dx, "upsample_nearest2d backward"));
  adk_ctx k;
  AD_TRY(ctx_of(&k, dx));
  return ad_cuda_check(ad_launch_upsample_nearest2d_bwd(&k, ad_data(dx), ad_data(dy), dx->dtype, PLANES(dx),
                                                        dx->shape[2], dx->shape[3], dy->shape[2], dy->shape[3]),
                       "upsample_nearest2d backward");
}

ad_status ad_cuda_upsample_bilinear2d_fwd(ad_tensor *y, const ad_tensor *x, bool align_corners) {
  AD_TRY(need_float(x, "upsample_bilinear2d"));
  adk_ctx k;
  AD_TRY(ctx_of(&k, x));
  return ad_cuda_check(ad_launch_upsample_bilinear2d_fwd(&k, ad_data(y), ad_data(x), x->dtype, PLANES(x), x->shape[2],
                                                         x->shape[3], y->shape[2], y->shape[3], align_corners),
                       "upsample_bilinear2d");
}

ad_status ad_cuda_upsample_bilinear2d_bwd(ad_tensor *dx, const ad_tensor *dy, bool align_corners) {
  AD_TRY(need_float(dx, "upsample_bilinear2d backward"));
  adk_ctx k;
  AD_TRY(ctx_of(&k, dx));
  return ad_cuda_check(ad_launch_upsample_bilinear2d_bwd(&k, ad_data(dx), ad_data(dy), dx->dtype, PLANES(dx),
                                                         dx->shape[2], dx->shape[3], dy->shape[2], dy->shape[3],
                                                         align_corners),
                       "upsample_bilinear2d backward");
}

/* ---- padding ---- */

ad_status ad_cuda_pad_fwd(ad_tensor *y, const ad_tensor *x, const int64_t *before, int mode, double value) {
  adk_ctx k;
  AD_TRY(ctx_of(&k, x));
  return ad_cuda_check(ad_launch_pad_fwd(&k, ad_data(y), ad_data(x), y->dtype, y->ndim, y->shape, x->shape, before, mode,
                                         value),
                       "pad");
}

ad_status ad_cuda_pad_bwd(ad_tensor *dx, const ad_tensor *dy, const int64_t *before, int mode) {
  AD_TRY(need_float(dx, "pad backward"));
  adk_ctx k;
  AD_TRY(ctx_of(&k, dx));
  return ad_cuda_check(ad_launch_pad_bwd(&k, ad_data(dx), ad_data(dy), dx->dtype, dy->ndim, dy->shape, dx->shape,
                                         before, mode),
                       "pad backward");
}

const struct ad_conv_kernels ad_cuda_conv_kernels = {
#ifdef AD_HAVE_CUDNN
  .conv2d_fwd = ad_cuda_conv2d_fwd,
  .conv2d_bwd_data = ad_cuda_conv2d_bwd_data,
  .conv2d_bwd_weight = ad_cuda_conv2d_bwd_weight,
#endif
  .max_pool2d_fwd = ad_cuda_max_pool2d_fwd,
  .max_pool2d_bwd = ad_cuda_max_pool2d_bwd,
  .avg_pool2d_fwd = ad_cuda_avg_pool2d_fwd,
  .avg_pool2d_bwd = ad_cuda_avg_pool2d_bwd,
  .adaptive_avg_pool2d_fwd = ad_cuda_adaptive_avg_pool2d_fwd,
  .adaptive_avg_pool2d_bwd = ad_cuda_adaptive_avg_pool2d_bwd,
  .upsample_nearest2d_fwd = ad_cuda_upsample_nearest2d_fwd,
  .upsample_nearest2d_bwd = ad_cuda_upsample_nearest2d_bwd,
  .upsample_bilinear2d_fwd = ad_cuda_upsample_bilinear2d_fwd,
  .upsample_bilinear2d_bwd = ad_cuda_upsample_bilinear2d_bwd,
  .pad_fwd = ad_cuda_pad_fwd,
  .pad_bwd = ad_cuda_pad_bwd,
};
