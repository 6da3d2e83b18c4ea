/* test_elementwise.c: C-level checks of the elementwise and reduction
 * families that the Lua tests do not reach: the unrecorded in-place ops the
 * autograd engine and optimizers use (ad_add_, ad_mul_scalar_), the kernels
 * writing in place through strided views, each reduction strategy (flat run
 * of a dense permuted tensor, consecutive dims, several runs per pass, the
 * permute-and-copy path) against a naive loop, the engine reducing
 * broadcast gradients through ad_sum, and status codes and messages. */
#include <string.h>
#include "ad.h"
#include "backend_elementwise.h"
#include "minitest.h"

static ad_tensor *from_values(int ndim, const int64_t *shape, ad_dtype dt, double (*f)(int64_t)) {
  ad_tensor *t = NULL;
  if (ad_empty(&t, ndim, shape, dt, AD_CPU) != AD_OK) return NULL;
  for (int64_t i = 0; i < ad_numel(t); i++) ad_set_flat(t, i, f(i));
  return t;
}
static double wave(int64_t i) { return sin(0.37 * (double)i + 0.1) * 2.0; }
static double ramp(int64_t i) { return (double)i; }

static void test_inplace(void) {
  int64_t s23[2] = {2, 3}, s3[1] = {3};
  ad_tensor *dst = from_values(2, s23, AD_F32, ramp), *row = from_values(1, s3, AD_F64, ramp);
  MT_OK(ad_add_(dst, row)); /* f64 row broadcast into f32 rows */
  for (int64_t i = 0; i < 6; i++) MT_NEAR(ad_get_flat(dst, i), (double)i + (double)(i % 3), 0);
  MT_OK(ad_mul_scalar_(dst, -0.5));
  MT_NEAR(ad_get_flat(dst, 5), -0.5 * (5 + 2), 0);
  /* in place through a transposed view: dst^T += dst^T */
  ad_tensor *tr = NULL;
  MT_OK(ad_transpose(&tr, dst, 0, 1));
  double before = ad_get_flat(dst, 4);
  MT_OK(ad_add_(tr, tr));
  MT_NEAR(ad_get_flat(dst, 4), 2 * before, 0);
  /* a broadcast view cannot be a destination; a shape that does not fit is an error */
  ad_tensor *ex = NULL;
  int64_t s43[2] = {4, 3};
  MT_OK(ad_expand(&ex, row, 2, s43));
  MT_FAILS(ad_add_(ex, row), AD_EINVAL);
  int64_t s4[1] = {4};
  ad_tensor *bad = from_values(1, s4, AD_F32, ramp);
  MT_FAILS(ad_add_(dst, bad), AD_ESHAPE);
  MT_CHECK(strstr(ad_last_error(), "add_: cannot accumulate shape [4] into shape [2, 3]") != NULL);
  MT_FAILS(ad_add(&ex, dst, bad), AD_ESHAPE);
  MT_CHECK(strcmp(ad_last_error(), "add: shapes [2, 3] and [4] cannot be broadcast") == 0);
  ad_tensor *sc = NULL;
  MT_OK(ad_add_scaled(&sc, dst, dst, 2.0));
  MT_NEAR(ad_get_flat(sc, 1), 3 * ad_get_flat(dst, 1), 1e-6);
  MT_CHECK(strcmp(ad_unop_name(AD_UN_SILU), "silu") == 0 && strcmp(ad_binop_name(AD_BIN_LOGICAL_XOR), "logical_xor") == 0);
  ad_tensor_release(sc);
  ad_tensor_release(bad);
  ad_tensor_release(ex);
  ad_tensor_release(tr);
  ad_tensor_release(row);
  ad_tensor_release(dst);
}

/* sum of x over the dims in mask, at output position o (keepdim layout) */
static double naive_reduce(const ad_tensor *x, const bool *red, int64_t o, int what) {
  int nd = x->ndim;
  int64_t kshape[AD_MAX_DIMS], idx[AD_MAX_DIMS];
  for (int d = 0; d < nd; d++) kshape[d] = red[d] ? 1 : x->shape[d];
  int64_t rem = o;
  for (int d = nd - 1; d >= 0; d--) { idx[d] = rem % kshape[d]; rem /= kshape[d]; }
  double s = 0, s2 = 0, n = 0;
  for (int64_t i = 0; i < ad_numel(x); i++) {
    int64_t r = i, id[AD_MAX_DIMS];
    for (int d = nd - 1; d >= 0; d--) { id[d] = r % x->shape[d]; r /= x->shape[d]; }
    bool match = true;
    for (int d = 0; d < nd; d++) if (!red[d] && id[d] != idx[d]) match = false;
    if (!match) continue;
    double v = ad_get_flat(x, i);
    s += v;
    s2 += v * v;
    n += 1;
  }
  if (what == 0) return s;
  double m = s / n;
  return (s2 - n * m * m) / (n - 1); /* what == 1: unbiased var */
}

static void check_reduce(const ad_tensor *x, int n_dims, const int *dims) {
  bool red[AD_MAX_DIMS] = {false};
  for (int i = 0; i < n_dims; i++) red[dims[i]] = true;
  if (n_dims == 0) for (int d = 0; d < x->ndim; d++) red[d] = true;
  ad_tensor *s = NULL, *v = NULL;
  MT_OK(ad_sum(&s, x, n_dims, dims, true));
  MT_OK(ad_var(&v, x, n_dims, dims, 1, true));
  if (!s || !v) return;
  for (int64_t o = 0; o < ad_numel(s); o++) {
    MT_NEAR(ad_get_flat(s, o), naive_reduce(x, red, o, 0), 1e-9);
    MT_NEAR(ad_get_flat(v, o), naive_reduce(x, red, o, 1), 1e-9);
  }
  ad_tensor_release(s);
  ad_tensor_release(v);
}

static void test_reduce_strategies(void) {
  int64_t shape[4] = {3, 4, 5, 6};
  ad_tensor *x = from_values(4, shape, AD_F64, wave), *p = NULL;
  int all[1] = {0}, d13[2] = {1, 3}, d02[2] = {0, 2}, d12[2] = {1, 2}, d023[3] = {0, 2, 3}, d3[1] = {3};
  check_reduce(x, 0, all);       /* flat run */
  check_reduce(x, 2, d12);       /* consecutive */
  check_reduce(x, 1, d3);        /* inner == 1 */
  check_reduce(x, 2, d13);       /* two runs: per pass (sum), permuted copy (var) */
  check_reduce(x, 2, d02);
  check_reduce(x, 3, d023);
  int perm[4] = {2, 0, 3, 1};
  MT_OK(ad_permute(&p, x, perm)); /* dense but not contiguous */
  check_reduce(p, 0, all);
  check_reduce(p, 2, d13);
  check_reduce(p, 1, d3);
  ad_tensor *y = NULL;
  int bad[1] = {4}, dup[2] = {1, 1};
  MT_FAILS(ad_sum(&y, x, 1, bad, false), AD_EINVAL);
  MT_CHECK(strcmp(ad_last_error(), "sum: dim 4 out of range for a 4-D tensor") == 0);
  MT_FAILS(ad_mean(&y, x, 2, dup, false), AD_EINVAL);
  MT_CHECK(strcmp(ad_last_error(), "mean: dim 1 appears more than once") == 0);
  /* max along a dim without indices */
  MT_OK(ad_max_dim(&y, NULL, x, 2, false));
  MT_CHECK(y && y->ndim == 3 && y->shape[2] == 6);
  ad_tensor_release(y);
  ad_tensor_release(p);
  ad_tensor_release(x);
}

/* the engine reduces the gradient of a broadcast operand with ad_sum */
static void test_broadcast_grad(void) {
  int64_t sa[3] = {3, 1, 4}, sb[2] = {5, 1};
  ad_tensor *a = from_values(3, sa, AD_F64, wave), *b = from_values(2, sb, AD_F64, ramp);
  ad_tensor *y = NULL, *l = NULL;
  MT_OK(ad_set_requires_grad(a, true));
  MT_OK(ad_set_requires_grad(b, true));
  MT_OK(ad_mul(&y, a, b));
  MT_OK(ad_sum(&l, y, 0, NULL, false));
  MT_OK(ad_backward(&l, NULL, 1, false));
  MT_CHECK(a->grad && b->grad);
  if (a->grad && b->grad) {
    MT_CHECK(a->grad->ndim == 3 && a->grad->shape[1] == 1 && b->grad->ndim == 2 && b->grad->shape[0] == 5);
    for (int64_t i = 0; i < 12; i++) MT_NEAR(ad_get_flat(a->grad, i), 0 + 1 + 2 + 3 + 4, 1e-12); /* sum of b */
    double sa_ = 0;
    for (int64_t i = 0; i < 12; i++) sa_ += ad_get_flat(a, i);
    for (int64_t j = 0; j < 5; j++) MT_NEAR(ad_get_flat(b->grad, j), sa_, 1e-12);
  }
  ad_tensor_release(l);
  ad_tensor_release(y);
  ad_tensor_release(a);
  ad_tensor_release(b);
}

int main(void) {
  test_inplace();
  test_reduce_strategies();
  test_broadcast_grad();
  return mt_report("test_elementwise");
}
