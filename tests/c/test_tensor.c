/* test_tensor.c: storages, views, broadcasting, refcounts and the f16/bf16
 * conversions, through the C API. */
#include <string.h>
#include "ad.h"
#include "mathinl.h"
#include "minitest.h"

static void test_views(void) {
  ad_tensor *x = NULL, *p = NULL, *v = NULL, *c = NULL, *s = NULL, *n = NULL;
  int64_t shape[] = {2, 3, 4};
  MT_OK(ad_arange(&x, 0, 24, 1, AD_F32, AD_CPU));
  MT_OK(ad_reshape(&v, x, 3, shape));
  MT_CHECK(v->storage == x->storage);
  MT_CHECK(ad_is_contiguous(v));
  MT_OK(ad_permute(&p, v, (int[]){2, 0, 1}));
  MT_CHECK(p->shape[0] == 4 && p->shape[1] == 2 && p->shape[2] == 3);
  MT_CHECK(!ad_is_contiguous(p));
  MT_NEAR(ad_get_flat(p, 1), 4.0, 0);   /* p[0][0][1] = v[0][1][0] = 4 */
  MT_OK(ad_contiguous(&c, p));
  MT_CHECK(ad_is_contiguous(c) && c->storage != x->storage);
  MT_NEAR(ad_get_flat(c, 7), ad_get_flat(p, 7), 0);
  /* a permuted tensor cannot be viewed flat, but can be reshaped */
  MT_FAILS(ad_view(&s, p, 1, (int64_t[]){24}), AD_ESHAPE);
  MT_OK(ad_reshape(&s, p, 1, (int64_t[]){-1}));
  MT_CHECK(s->shape[0] == 24);
  MT_OK(ad_narrow(&n, v, 2, 1, 2));
  MT_CHECK(n->offset == 1 && n->shape[2] == 2);
  MT_NEAR(ad_get_flat(n, 2), 5.0, 0);
  /* refcounts: views keep the storage alive after the base is gone */
  long before = x->storage->refcount;
  ad_tensor_release(x);
  MT_CHECK(v->storage->refcount == before - 1);
  MT_NEAR(ad_get_flat(v, 23), 23.0, 0);
  ad_tensor_release(v); ad_tensor_release(p); ad_tensor_release(c);
  ad_tensor_release(s); ad_tensor_release(n);
  MT_CHECK(ad_memory_allocated(AD_DEV_CPU) == 0);
}

static void test_broadcast(void) {
  int n;
  int64_t out[AD_MAX_DIMS];
  MT_OK(ad_broadcast_shapes(&n, out, 3, (int64_t[]){2, 1, 4}, 2, (int64_t[]){3, 1}, "t"));
  MT_CHECK(n == 3 && out[0] == 2 && out[1] == 3 && out[2] == 4);
  MT_FAILS(ad_broadcast_shapes(&n, out, 1, (int64_t[]){3}, 1, (int64_t[]){4}, "add"), AD_ESHAPE);
  MT_CHECK(strstr(ad_last_error(), "add: shapes [3] and [4] cannot be broadcast") != NULL);
  ad_tensor *x = NULL, *e = NULL;
  MT_OK(ad_full(&x, 2, (int64_t[]){3, 1}, 1.0, AD_F32, AD_CPU));
  MT_OK(ad_expand(&e, x, 3, (int64_t[]){2, 3, 5}));
  MT_CHECK(e->strides[0] == 0 && e->strides[2] == 0 && e->strides[1] == 1);
  ad_tensor_release(x); ad_tensor_release(e);
}

static void test_half(void) {
  /* every f16 bit pattern survives f16 -> f32 -> f16 (NaNs stay NaN) */
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = ad_f16_to_f32((uint16_t)h);
    uint16_t back = ad_f32_to_f16(f);
    if (isnan(f)) { if ((back & 0x7c00) != 0x7c00 || !(back & 0x3ff)) bad++; }
    else if (back != h) bad++;
  }
  MT_CHECK(bad == 0);
  /* round to nearest even at the midpoint between 1 and 1+2^-10 */
  MT_CHECK(ad_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);
  MT_CHECK(ad_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);
  MT_CHECK(ad_f32_to_f16(65504.0f) == 0x7bff);
  MT_CHECK(ad_f32_to_f16(65520.0f) == 0x7c00);      /* rounds to inf */
  MT_CHECK(ad_f32_to_f16(-INFINITY) == 0xfc00);
  MT_CHECK(ad_f32_to_f16(0x1p-24f) == 0x0001);       /* smallest subnormal */
  MT_CHECK(ad_f32_to_f16(0x1p-25f) == 0x0000);       /* ties to even: zero */
  MT_CHECK(ad_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80);   /* tie to even */
  MT_CHECK(ad_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82);
  MT_CHECK(isnan(ad_bf16_to_f32(ad_f32_to_bf16(NAN))));
  MT_CHECK(ad_f32_to_bf16(INFINITY) == 0x7f80);
}

static void test_philox(void) {
  /* Known-answer test of Philox4x32-10 (Random123 kat_vectors: counter 0, key 0) */
  ad_philox_ctr r = ad_philox4x32_10(0, 0, 0);
  MT_CHECK(r.v[0] == 0x6627e8d5u && r.v[1] == 0xe169c58du && r.v[2] == 0xbc57ac4cu && r.v[3] == 0x9b00dbd8u);
  ad_tensor *a = NULL, *b = NULL;
  ad_generator g1 = {42, 0}, g2 = {42, 0};
  MT_OK(ad_randn(&a, 1, (int64_t[]){10001}, AD_F64, AD_CPU, &g1));
  MT_OK(ad_randn(&b, 1, (int64_t[]){10001}, AD_F64, AD_CPU, &g2));
  double s = 0, s2 = 0;
  for (int64_t i = 0; i < 10001; i++) {
    double v = ad_get_flat(a, i);
    MT_CHECK(v == ad_get_flat(b, i));
    /* the fill draws pairs; each element equals the per-element formula the CUDA kernels use */
    if (i < 257) MT_CHECK(v == ad_philox_normal(42, 0, (uint64_t)i));
    s += v; s2 += v * v;
  }
  MT_NEAR(s / 10001, 0.0, 0.05);
  MT_NEAR(s2 / 10001, 1.0, 0.05);
  MT_CHECK(g1.offset == 5001);
  ad_tensor_release(a); ad_tensor_release(b);
}

int main(void) {
  test_views();
  test_broadcast();
  test_half();
  test_philox();
  return mt_report("test_tensor");
}
