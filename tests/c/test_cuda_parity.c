/* test_cuda_parity.c: the CUDA backend against the CPU backend at the C level:
 * conversions and strided copies bit for bit, Philox streams bit for bit
 * across devices (uniform, normal, integers, the dropout mask), a table of
 * unary and binary ops on odd, broadcast and permuted shapes, and the caching
 * allocator (no cudaMalloc once a loop's sizes are cached, a clear
 * out-of-memory error, empty_cache). Exits 77 (ctest SKIP) without a CUDA
 * build or without a device. The full op-by-op forward/backward comparison
 * is tests/gpu/test_cuda_ops.lua. */
#include <stdio.h>
#include <string.h>
#include "ad.h"
#include "minitest.h"
#ifdef AD_HAVE_CUDA
#include "cuda/ad_cuda.h"
#endif

#ifndef AD_HAVE_CUDA
int main(void) {
  printf("test_cuda_parity: built without CUDA, skipped\n");
  return MT_SKIP;
}
#else

static const ad_device GPU = {AD_DEV_CUDA, 0};

static ad_tensor *randn_cpu(int ndim, const int64_t *shape, ad_dtype dt, uint64_t seed) {
  ad_generator g = {seed, 0};
  ad_tensor *t = NULL;
  if (ad_randn(&t, ndim, shape, dt, AD_CPU, &g) != AD_OK) return NULL;
  return t;
}

static ad_tensor *to(const ad_tensor *x, ad_device d) {
  ad_tensor *y = NULL;
  if (!x || ad_to_device(&y, x, d) != AD_OK) return NULL;
  return y;
}

/* max |a - b| / max(|b|, 1e-30), both moved to the CPU; prints where it is worst */
static double rel_err(const ad_tensor *a, const ad_tensor *b, const char *what) {
  ad_tensor *ac = to(a, AD_CPU), *bc = to(b, AD_CPU);
  if (!ac || !bc) { fprintf(stderr, "%s: could not move to the CPU: %s\n", what, ad_last_error()); return 1e30; }
  double worst = 0, scale = 0;
  int64_t at = 0, n = ad_numel(bc);
  for (int64_t i = 0; i < n; i++) {
    double v = fabs(ad_get_flat(bc, i));
    if (v > scale) scale = v;
  }
  for (int64_t i = 0; i < n; i++) {
    double x = ad_get_flat(ac, i), y = ad_get_flat(bc, i);
    double d = (x != x || y != y) ? ((x != x) == (y != y) ? 0 : 1e30) : fabs(x - y);
    if (d > worst) { worst = d; at = i; }
  }
  double r = worst / (scale > 1e-30 ? scale : 1e-30);
  if (r > 0) fprintf(stderr, "  %s: max diff %.3g at %lld (gpu %.9g, cpu %.9g)\n", what, worst, (long long)at,
                     ad_get_flat(ac, at), ad_get_flat(bc, at));
  ad_tensor_release(ac);
  ad_tensor_release(bc);
  return r;
}

static bool bits_equal(const ad_tensor *a, const ad_tensor *b) {
  ad_tensor *ac = to(a, AD_CPU), *bc = to(b, AD_CPU);
  bool eq = ac && bc && ac->dtype == bc->dtype && ad_numel(ac) == ad_numel(bc) && ad_is_contiguous(ac) &&
            ad_is_contiguous(bc) &&
            memcmp(ad_data(ac), ad_data(bc), (size_t)ad_numel(ac) * ad_dtype_size(ac->dtype)) == 0;
  ad_tensor_release(ac);
  ad_tensor_release(bc);
  return eq;
}

/* ---- conversions and copies ---- */
static void test_copies(void) {
  int64_t shape[3] = {7, 33, 5};
  ad_tensor *x = randn_cpu(3, shape, AD_F64, 11);
  MT_OK(ad_mul_scalar_(x, 300.0));   /* values that overflow f16 and wrap u8 */
  ad_tensor *xg = to(x, GPU);
  for (int dt = 0; dt < AD_NDTYPES; dt++) {
    ad_tensor *c = NULL, *g = NULL;
    MT_OK(ad_to_dtype(&c, x, (ad_dtype)dt));
    MT_OK(ad_to_dtype(&g, xg, (ad_dtype)dt));
    MT_CHECK(bits_equal(g, c));
    if (!bits_equal(g, c)) fprintf(stderr, "  f64 -> %s differs\n", ad_dtype_name((ad_dtype)dt));
    /* and back to f32 from every dtype */
    ad_tensor *c2 = NULL, *g2 = NULL;
    MT_OK(ad_to_dtype(&c2, c, AD_F32));
    MT_OK(ad_to_dtype(&g2, g, AD_F32));
    MT_CHECK(bits_equal(g2, c2));
    ad_tensor_release(c); ad_tensor_release(g); ad_tensor_release(c2); ad_tensor_release(g2);
  }
  /* a permuted (strided) view made contiguous on each device */
  ad_tensor *pc = NULL, *pg = NULL, *cc = NULL, *cg = NULL;
  MT_OK(ad_permute(&pc, x, (int[]){2, 0, 1}));
  MT_OK(ad_permute(&pg, xg, (int[]){2, 0, 1}));
  MT_OK(ad_contiguous(&cc, pc));
  MT_OK(ad_contiguous(&cg, pg));
  MT_CHECK(bits_equal(cg, cc));
  /* fill through a strided view, and a large copy through the pinned staging path */
  ad_tensor *big = NULL, *bigg = NULL, *back = NULL;
  int64_t n = (int64_t)3 << 20;
  ad_generator gen = {5, 0};
  MT_OK(ad_rand(&big, 1, &n, AD_F32, AD_CPU, &gen));
  bigg = to(big, GPU);
  back = to(bigg, AD_CPU);
  MT_CHECK(back && memcmp(ad_data(back), ad_data(big), (size_t)n * 4) == 0);
  ad_tensor *slg = NULL, *slc = NULL;   /* every other row of dim 1: a strided view of x itself */
  MT_OK(ad_slice(&slg, xg, 1, 1, 7, 2));
  MT_OK(ad_slice(&slc, x, 1, 1, 7, 2));
  MT_OK(ad_fill_(slg, -2.5));
  MT_OK(ad_fill_(slc, -2.5));
  MT_CHECK(rel_err(xg, x, "strided fill") == 0);
  ad_tensor_release(slg);
  ad_tensor_release(slc);
  ad_tensor_release(big); ad_tensor_release(bigg); ad_tensor_release(back);
  ad_tensor_release(pc); ad_tensor_release(pg); ad_tensor_release(cc); ad_tensor_release(cg);
  ad_tensor_release(x); ad_tensor_release(xg);
}

/* ---- Philox across devices ---- */
static void test_random(void) {
  int64_t shape[2] = {257, 129};   /* odd count: the last Philox block is half used */
  for (int dt = AD_F32; dt <= AD_F64; dt++) {
    ad_generator gc = {1234, 77}, gg = {1234, 77};
    ad_tensor *uc = NULL, *ug = NULL, *nc = NULL, *ng = NULL;
    MT_OK(ad_rand(&uc, 2, shape, (ad_dtype)dt, AD_CPU, &gc));
    MT_OK(ad_rand(&ug, 2, shape, (ad_dtype)dt, GPU, &gg));
    MT_CHECK(bits_equal(ug, uc));
    MT_CHECK(gc.offset == gg.offset);
    MT_OK(ad_randn(&nc, 2, shape, (ad_dtype)dt, AD_CPU, &gc));
    MT_OK(ad_randn(&ng, 2, shape, (ad_dtype)dt, GPU, &gg));
    /* normals go through log/sin/cos: f32 bit-identical, f64 within a few ulp */
    if (dt == AD_F32) MT_CHECK(bits_equal(ng, nc));
    else MT_CHECK(rel_err(ng, nc, "randn f64") < 1e-14);
    ad_tensor_release(uc); ad_tensor_release(ug); ad_tensor_release(nc); ad_tensor_release(ng);
  }
  ad_generator gc = {99, 3}, gg = {99, 3};
  ad_tensor *ic = NULL, *ig = NULL;
  MT_OK(ad_randint(&ic, -50, 1000, 2, shape, AD_I64, AD_CPU, &gc));
  MT_OK(ad_randint(&ig, -50, 1000, 2, shape, AD_I64, GPU, &gg));
  MT_CHECK(bits_equal(ig, ic));
  /* dropout: the same mask for the same generator state */
  ad_tensor *x = randn_cpu(2, shape, AD_F32, 4), *xg = to(x, GPU), *yc = NULL, *yg = NULL;
  ad_generator dc = {7, 1000}, dg = {7, 1000};
  MT_OK(ad_dropout(&yc, x, 0.3, true, &dc));
  MT_OK(ad_dropout(&yg, xg, 0.3, true, &dg));
  MT_CHECK(bits_equal(yg, yc));
  ad_tensor_release(ic); ad_tensor_release(ig); ad_tensor_release(x); ad_tensor_release(xg);
  ad_tensor_release(yc); ad_tensor_release(yg);
}

/* ---- op tables (Sketch 4 of STYLE.md) ---- */
static const struct { ad_unop op; double tol; } UNARY[] = {
  {AD_UN_NEG, 0}, {AD_UN_EXP, 1e-6}, {AD_UN_LOG1P, 1e-6}, {AD_UN_EXPM1, 1e-6}, {AD_UN_ABS, 0},
  {AD_UN_SIGN, 0}, {AD_UN_SIN, 1e-6}, {AD_UN_COS, 1e-6}, {AD_UN_TANH, 1e-6}, {AD_UN_SIGMOID, 1e-6},
  {AD_UN_RELU, 0}, {AD_UN_SILU, 1e-6}, {AD_UN_GELU, 1e-6}, {AD_UN_SOFTPLUS, 1e-6}, {AD_UN_SQUARE, 1e-7},
  {AD_UN_FLOOR, 0}, {AD_UN_CEIL, 0}, {AD_UN_ROUND, 0}, {AD_UN_ISFINITE, 0}, {AD_UN_LOGICAL_NOT, 0},
};
static const struct { ad_binop op; double tol; } BINARY[] = {
  {AD_BIN_ADD, 1e-7}, {AD_BIN_SUB, 1e-7}, {AD_BIN_MUL, 1e-7}, {AD_BIN_DIV, 1e-6}, {AD_BIN_MAXIMUM, 0},
  {AD_BIN_MINIMUM, 0}, {AD_BIN_EQ, 0}, {AD_BIN_LT, 0}, {AD_BIN_GE, 0}, {AD_BIN_LOGICAL_XOR, 0},
};

static void test_ops(void) {
  int64_t s3[3] = {7, 33, 5}, s1[3] = {7, 1, 5};
  ad_tensor *a = randn_cpu(3, s3, AD_F32, 21), *b = randn_cpu(3, s1, AD_F32, 22);   /* b broadcasts */
  ad_tensor *ag = to(a, GPU), *bg = to(b, GPU), *pa = NULL, *pag = NULL;
  MT_OK(ad_transpose(&pa, a, 0, 2));     /* a non-contiguous operand */
  MT_OK(ad_transpose(&pag, ag, 0, 2));
  char what[64];
  for (size_t k = 0; k < MT_COUNTOF(UNARY); k++) {
    for (int v = 0; v < 2; v++) {
      ad_tensor *yc = NULL, *yg = NULL;
      MT_OK(ad_unary(&yc, v ? pa : a, UNARY[k].op));
      MT_OK(ad_unary(&yg, v ? pag : ag, UNARY[k].op));
      snprintf(what, sizeof what, "%s%s", ad_unop_name(UNARY[k].op), v ? " (transposed)" : "");
      double e = rel_err(yg, yc, what);
      MT_CHECK(e <= UNARY[k].tol);
      ad_tensor_release(yc); ad_tensor_release(yg);
    }
  }
  for (size_t k = 0; k < MT_COUNTOF(BINARY); k++) {
    ad_tensor *yc = NULL, *yg = NULL;
    MT_OK(ad_binary(&yc, a, b, BINARY[k].op));
    MT_OK(ad_binary(&yg, ag, bg, BINARY[k].op));
    snprintf(what, sizeof what, "%s (broadcast)", ad_binop_name(BINARY[k].op));
    MT_CHECK(rel_err(yg, yc, what) <= BINARY[k].tol);
    ad_tensor_release(yc); ad_tensor_release(yg);
  }
  /* reductions: all dims, the middle dim, a dim of the transposed view */
  ad_tensor *rc = NULL, *rg = NULL;
  MT_OK(ad_sum(&rc, a, 0, NULL, false));
  MT_OK(ad_sum(&rg, ag, 0, NULL, false));
  MT_CHECK(rel_err(rg, rc, "sum all") < 1e-6);
  ad_tensor_release(rc); ad_tensor_release(rg);
  MT_OK(ad_var(&rc, pa, 1, (int[]){1}, 1, true));
  MT_OK(ad_var(&rg, pag, 1, (int[]){1}, 1, true));
  MT_CHECK(rel_err(rg, rc, "var dim 1 of a transposed view") < 1e-5);
  ad_tensor_release(rc); ad_tensor_release(rg);
  MT_OK(ad_logsumexp(&rc, a, 1, (int[]){2}, false));
  MT_OK(ad_logsumexp(&rg, ag, 1, (int[]){2}, false));
  MT_CHECK(rel_err(rg, rc, "logsumexp") < 1e-6);
  ad_tensor_release(rc); ad_tensor_release(rg);
  ad_tensor *ic = NULL, *igp = NULL, *vc = NULL, *vg = NULL;
  MT_OK(ad_max_dim(&vc, &ic, a, 1, false));
  MT_OK(ad_max_dim(&vg, &igp, ag, 1, false));
  MT_CHECK(bits_equal(igp, ic) && bits_equal(vg, vc));
  ad_tensor_release(ic); ad_tensor_release(igp); ad_tensor_release(vc); ad_tensor_release(vg);
  ad_tensor_release(a); ad_tensor_release(b); ad_tensor_release(ag); ad_tensor_release(bg);
  ad_tensor_release(pa); ad_tensor_release(pag);
}

/* ---- the caching allocator ---- */
static void test_allocator(void) {
  ad_cuda_memory_stats s0, s1, s2;
  const int64_t sizes[] = {1, 511, 4096, 100000, (int64_t)3 << 20, (int64_t)12 << 20, (int64_t)40 << 20};
  for (int iter = 0; iter < 4; iter++) {
    ad_tensor *ts[MT_COUNTOF(sizes)] = {0};
    for (size_t k = 0; k < MT_COUNTOF(sizes); k++) MT_OK(ad_empty(&ts[k], 1, &sizes[k], AD_U8, GPU));
    if (iter == 0) MT_OK(ad_cuda_memory_stats_get(&s0, 0));
    for (size_t k = 0; k < MT_COUNTOF(sizes); k++) ad_tensor_release(ts[k]);
  }
  MT_OK(ad_cuda_memory_stats_get(&s1, 0));
  MT_CHECK(s1.num_cuda_malloc == s0.num_cuda_malloc);   /* iterations 2..4 came from the cache */
  MT_CHECK(s1.reserved >= s1.allocated && s1.peak_allocated >= s0.allocated);
  /* an impossible request: AD_ENOMEM naming the request, allocated and reserved */
  ad_tensor *huge = NULL;
  int64_t n = (int64_t)1 << 50;
  MT_FAILS(ad_empty(&huge, 1, &n, AD_U8, GPU), AD_ENOMEM);
  MT_CHECK(strstr(ad_last_error(), "CUDA out of memory: tried to allocate") != NULL);
  MT_CHECK(strstr(ad_last_error(), "reserved") != NULL);
  /* the device still works, and empty_cache returns the free segments */
  ad_tensor *ok = NULL;
  MT_OK(ad_zeros(&ok, 1, &sizes[3], AD_F32, GPU));
  ad_tensor_release(ok);
  MT_OK(ad_cuda_empty_cache());
  MT_OK(ad_cuda_memory_stats_get(&s2, 0));
  MT_CHECK(s2.reserved <= s1.reserved);
  printf("allocator: %lld cudaMalloc, %lld cudaFree, %lld allocations (%lld from the cache), reserved %lld bytes\n",
         (long long)s2.num_cuda_malloc, (long long)s2.num_cuda_free, (long long)s2.num_alloc,
         (long long)s2.num_cache_hits, (long long)s2.reserved);
}

int main(void) {
  if (!ad_cuda_available()) {
    printf("test_cuda_parity: no CUDA device (%s), skipped\n", ad_cuda_unavailable_reason());
    return MT_SKIP;
  }
  char name[384];
  if (ad_cuda_device_name(0, name, sizeof name) == AD_OK) printf("device: %s\n", name);
  test_copies();
  test_random();
  test_ops();
  test_allocator();
  return mt_report("test_cuda_parity");
}
#endif
