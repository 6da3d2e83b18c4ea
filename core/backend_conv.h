/* backend_conv.h: the convolution / pooling / resampling / padding kernel
 * family of a backend.
 *
 * The front ends in core/ops/{conv,pool,resample}.c check arguments, compute
 * output sizes, make every input contiguous, turn f16/bf16 into f32 (these
 * kernels compute in f32 or f64, except the pure data movers marked "any
 * dtype") and allocate every output; kernels only fill them. Image tensors
 * are NCHW: (N, C, H, W), contiguous. An output tensor is fully overwritten
 * (gradient kernels zero what they do not scatter into). */
#ifndef AD_BACKEND_CONV_H
#define AD_BACKEND_CONV_H

#include <stdbool.h>
#include "tensor.h"
#include "ops.h"

struct ad_conv_kernels {
  /* ---- conv2d ----
   * x (N, C, H, W)  w (O, C/groups, kh, kw)  b (O) or NULL  y (N, O, Ho, Wo), one dtype. */
  ad_status (*conv2d_fwd)(ad_tensor *y, const ad_tensor *x, const ad_tensor *w, const ad_tensor *b,
                          const ad_conv2d_args *a);
  /* dx (N, C, H, W) from dy (N, O, Ho, Wo) and w */
  ad_status (*conv2d_bwd_data)(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *w,
                               const ad_conv2d_args *a);
  /* dw (O, C/groups, kh, kw) and db (O) or NULL from x and dy */
  ad_status (*conv2d_bwd_weight)(ad_tensor *dw, ad_tensor *db, const ad_tensor *x, const ad_tensor *dy,
                                 const ad_conv2d_args *a);

  /* ---- pooling; sizes of y come from the front end (PyTorch's output-size rule) ----
   * max: indices (N, C, Ho, Wo) i64 hold the flat position h*W + w of each max in its
   * input plane (PyTorch's convention); NaN wins over numbers. */
  ad_status (*max_pool2d_fwd)(ad_tensor *y, ad_tensor *indices, const ad_tensor *x, const ad_pool2d_args *a);
  ad_status (*max_pool2d_bwd)(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *indices);
  ad_status (*avg_pool2d_fwd)(ad_tensor *y, const ad_tensor *x, const ad_pool2d_args *a);
  ad_status (*avg_pool2d_bwd)(ad_tensor *dx, const ad_tensor *dy, const ad_pool2d_args *a);
  /* windows [floor(i*H/Ho), ceil((i+1)*H/Ho)) */
  ad_status (*adaptive_avg_pool2d_fwd)(ad_tensor *y, const ad_tensor *x);
  ad_status (*adaptive_avg_pool2d_bwd)(ad_tensor *dx, const ad_tensor *dy);

  /* ---- resampling: output size from y / dy ----
   * nearest: src = min(floor(dst * (float)in/out), in - 1); forward any dtype. */
  ad_status (*upsample_nearest2d_fwd)(ad_tensor *y, const ad_tensor *x);
  ad_status (*upsample_nearest2d_bwd)(ad_tensor *dx, const ad_tensor *dy);
  /* bilinear with PyTorch's source-index formula (index math in the data's precision) */
  ad_status (*upsample_bilinear2d_fwd)(ad_tensor *y, const ad_tensor *x, bool align_corners);
  ad_status (*upsample_bilinear2d_bwd)(ad_tensor *dx, const ad_tensor *dy, bool align_corners);

  /* ---- pad: y and x of one ndim; before[d] elements are added in front of dim d
   * (negative crops, constant mode only) and y->shape[d] - x->shape[d] - before[d] after it.
   * mode 0 constant (value), 1 reflect (no edge repeat), 2 replicate.
   * Forward any dtype; backward (dx overwritten, dy like y) f32/f64. */
  ad_status (*pad_fwd)(ad_tensor *y, const ad_tensor *x, const int64_t *before, int mode, double value);
  ad_status (*pad_bwd)(ad_tensor *dx, const ad_tensor *dy, const int64_t *before, int mode);
};

#endif
