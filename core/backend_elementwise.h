/* backend_elementwise.h: the kernels a device provides for the elementwise op
 * family (core/ops/elementwise.c). One generic kernel per arity, selected by
 * the ad_unop / ad_binop code, instead of one member per op: the op list in
 * ops.h is the single place that names the ops, and a backend gets every op
 * of a family at once.
 *
 * Layout contract shared by every member: all tensor arguments have the SAME
 * shape (the front end has already broadcast them: a broadcast operand is a
 * view with stride 0 on the expanded dims), any strides, and live on the
 * kernel's device. Outputs must not overlap themselves (no stride-0 dims); an
 * output may be the very same tensor as an input (in-place accumulate). NULL
 * marks an optional output that is not wanted.
 *
 * dtypes: inputs of one call share one dtype (the front end converts). The
 * output has that dtype too, except for the bool-valued ops (comparisons,
 * logical ops, isfinite, isnan, logical_not) whose output is AD_BOOL. f32 and
 * f64 are the fast paths; f16, bf16, i64, i32, u8 and bool compute through
 * double. */
#ifndef AD_BACKEND_ELEMENTWISE_H
#define AD_BACKEND_ELEMENTWISE_H

#include <stdbool.h>
#include "ops.h"
#include "tensor.h"

/* Does op produce AD_BOOL? (shared by the front end and the kernels) */
static inline bool ad_unop_is_bool(ad_unop op) {
  return op == AD_UN_ISFINITE || op == AD_UN_ISNAN || op == AD_UN_LOGICAL_NOT;
}
static inline bool ad_binop_is_bool(ad_binop op) { return op >= AD_BIN_EQ && op <= AD_BIN_LOGICAL_XOR; }

/* The unary backward kernel reads y = op(x) instead of x for these ops (the
 * derivative is cheapest in terms of the result): exp, expm1, sqrt, rsqrt,
 * tanh, sigmoid, reciprocal. */
static inline bool ad_unop_bwd_uses_y(ad_unop op) {
  return op == AD_UN_EXP || op == AD_UN_EXPM1 || op == AD_UN_SQRT || op == AD_UN_RSQRT ||
         op == AD_UN_TANH || op == AD_UN_SIGMOID || op == AD_UN_RECIPROCAL;
}

struct ad_elementwise_kernels {
  /* y = op(x) */
  ad_status (*unary)(ad_tensor *y, const ad_tensor *x, ad_unop op);
  /* dx = dy * op'(x), one pass. Reads y (= op(x)) when ad_unop_bwd_uses_y(op),
   * else x; the other may be NULL. Defined for the differentiable unary ops;
   * sign/floor/ceil/round give 0. */
  ad_status (*unary_bwd)(ad_tensor *dx, const ad_tensor *x, const ad_tensor *y, const ad_tensor *dy,
                         ad_unop op);
  /* y = a op b */
  ad_status (*binary)(ad_tensor *y, const ad_tensor *a, const ad_tensor *b, ad_binop op);
  /* da = dy * d(a op b)/da, db = dy * d(a op b)/db in one pass (either may be
   * NULL), for add, sub, mul, div, pow, maximum, minimum. maximum/minimum send
   * the gradient to the larger/smaller operand and split ties half and half. */
  ad_status (*binary_bwd)(ad_tensor *da, ad_tensor *db, const ad_tensor *a, const ad_tensor *b,
                          const ad_tensor *dy, ad_binop op);
  /* y = a op s (scalar_first: s op a); s is converted to a's dtype first. */
  ad_status (*binary_scalar)(ad_tensor *y, const ad_tensor *a, double s, ad_binop op, bool scalar_first);
  /* da for y = a op s (or s op a) */
  ad_status (*binary_scalar_bwd)(ad_tensor *da, const ad_tensor *a, double s, const ad_tensor *dy,
                                 ad_binop op, bool scalar_first);
  /* y = min(max(x, lo), hi) with the bounds that are present; NaN propagates */
  ad_status (*clamp)(ad_tensor *y, const ad_tensor *x, bool has_min, double min, bool has_max, double max);
  /* dx = dy where lo <= x <= hi, else 0 */
  ad_status (*clamp_bwd)(ad_tensor *dx, const ad_tensor *x, const ad_tensor *dy, bool has_min, double min,
                         bool has_max, double max);
  /* y = cond ? a : b; cond is AD_BOOL, a, b and y share a dtype */
  ad_status (*where)(ad_tensor *y, const ad_tensor *cond, const ad_tensor *a, const ad_tensor *b);
};

extern const struct ad_elementwise_kernels ad_cpu_elementwise_kernels;

#endif
