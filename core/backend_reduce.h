/* backend_reduce.h: the kernels a device provides for the reduction family
 * (core/ops/reduce.c).
 *
 * Every kernel sees its input as a contiguous (outer, r, inner) block and
 * reduces (or scans) the middle axis: the front end arranges that, without a
 * copy when the reduced dims are consecutive in a contiguous tensor. Keeping
 * the kernels to this one layout keeps each backend small; the dim juggling
 * lives once, in the front end.
 *
 * dtypes: the value kernels take f32 or f64 (the front end converts f16, bf16
 * and integers), accumulate in double, and write the input's dtype. all/any
 * take and write AD_BOOL. Indices are i64, 0-based along the reduced axis. */
#ifndef AD_BACKEND_REDUCE_H
#define AD_BACKEND_REDUCE_H

#include <stdbool.h>
#include <stdint.h>
#include "tensor.h"

typedef enum {
  AD_RED_SUM,        /* r == 0 gives 0 */
  AD_RED_PROD,       /* r == 0 gives 1 */
  AD_RED_MAX,        /* NaN propagates; r >= 1 */
  AD_RED_MIN,
  AD_RED_NORM1,      /* sum |x| */
  AD_RED_NORM2,      /* sqrt(sum x^2) */
  AD_RED_NORMINF,    /* max |x| (r == 0 gives 0) */
  AD_RED_NORMNEGINF, /* min |x| */
  AD_RED_NORM0,      /* number of nonzeros */
  AD_RED_NORMP,      /* (sum |x|^p)^(1/p), p = param */
  AD_RED_LOGSUMEXP,  /* max + log(sum exp(x - max)); r == 0 gives -inf */
  AD_RED_VAR,        /* sum (x - mean)^2 / (r - param), two passes; param = correction */
  AD_RED_ALL,        /* bool in, bool out */
  AD_RED_ANY,
  AD_RED_COUNT
} ad_redop;

struct ad_reduce_kernels {
  /* x: (outer, r, inner) contiguous; y: (outer, inner) contiguous */
  ad_status (*reduce)(ad_tensor *y, const ad_tensor *x, int64_t outer, int64_t r, int64_t inner, ad_redop op,
                      double param);
  /* max (is_max) or min along r with the index of the first extremum (a NaN
   * wins, as in PyTorch). values (may be NULL): (outer, inner) of x's dtype;
   * indices: (outer, inner) i64. r >= 1. */
  ad_status (*arg_reduce)(ad_tensor *values, ad_tensor *indices, const ad_tensor *x, int64_t outer, int64_t r,
                          int64_t inner, bool is_max);
  /* dx: (outer, r, inner) contiguous, set to 0 except dx[o, idx[o, j], j] = dy[o, j];
   * dy and indices: (outer, inner) contiguous. */
  ad_status (*arg_reduce_bwd)(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *indices, int64_t outer,
                              int64_t r, int64_t inner);
  /* inclusive prefix sum along r (reverse: from the end); x, y (outer, r, inner) */
  ad_status (*cumsum)(ad_tensor *y, const ad_tensor *x, int64_t outer, int64_t r, int64_t inner, bool reverse);
};

extern const struct ad_reduce_kernels ad_cpu_reduce_kernels;

#endif
