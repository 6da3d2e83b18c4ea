/* fuzz_common.h: the body shared by the per-format libFuzzer harnesses: load
 * the input as one format, then touch the first and last byte of every
 * tensor the loader produced (so an unchecked extent shows up as an
 * AddressSanitizer report) and free everything. */
#ifndef AD_FUZZ_COMMON_H
#define AD_FUZZ_COMMON_H
#define AD_FORMATS_INTERNAL
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "formats.h"

static volatile uint8_t fuzz_sink;

static void fuzz_touch_tensor(const ad_tensor *t) {
  int64_t n = ad_numel(t), last = t->offset;
  if (n == 0) return;
  for (int i = 0; i < t->ndim; i++) last += (t->shape[i] - 1) * t->strides[i];
  size_t es = ad_dtype_size(t->dtype);
  const uint8_t *base = t->storage->data;
  fuzz_sink ^= base[t->offset * (int64_t)es];
  fuzz_sink ^= base[last * (int64_t)es + (int64_t)es - 1];
}

static void fuzz_walk(const ad_value *v, int depth) {
  if (depth > 200) return;
  switch (v->kind) {
  case AD_V_TENSOR: fuzz_touch_tensor(v->u.tensor); break;
  case AD_V_LIST: case AD_V_TUPLE:
    for (size_t i = 0; i < v->u.seq.n; i++) fuzz_walk(v->u.seq.items[i], depth + 1);
    break;
  case AD_V_DICT:
    for (size_t i = 0; i < v->u.dict.n; i++) fuzz_walk(v->u.dict.vals[i], depth + 1);
    break;
  case AD_V_STR: case AD_V_BYTES:
    if (v->u.str.len) fuzz_sink ^= (uint8_t)v->u.str.ptr[v->u.str.len - 1];
    break;
  default: break;
  }
}

static int fuzz_load(const uint8_t *data, size_t size, ad_format f) {
  ad_load_opts o = {0};
  o.format = f;
  o.verify_crc = size & 1;   /* both paths */
  ad_doc *doc = NULL;
  if (ad_load_memory(&doc, data, size, "fuzz", &o) == AD_OK) {
    /* the bindings refuse cyclic or too deep trees before walking them */
    if (ad_value_check_tree(ad_doc_root(doc), 100) == AD_OK) fuzz_walk(ad_doc_root(doc), 0);
    ad_doc_free(doc);
  }
  return 0;
}

#endif
