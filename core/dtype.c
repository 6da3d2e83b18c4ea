/* dtype.c: dtype names, sizes and promotion; device names. */
#include <stdio.h>
#include <string.h>
#include "tensor.h"

static const struct { const char *name; size_t size; } DTYPES[AD_NDTYPES] = {
  [AD_F32] = {"f32", 4}, [AD_F64] = {"f64", 8}, [AD_F16] = {"f16", 2}, [AD_BF16] = {"bf16", 2},
  [AD_I64] = {"i64", 8}, [AD_I32] = {"i32", 4}, [AD_U8] = {"u8", 1},   [AD_BOOL] = {"bool", 1},
};

size_t ad_dtype_size(ad_dtype dt) { return (unsigned)dt < AD_NDTYPES ? DTYPES[dt].size : 0; }
const char *ad_dtype_name(ad_dtype dt) { return (unsigned)dt < AD_NDTYPES ? DTYPES[dt].name : "?"; }

ad_status ad_dtype_parse(ad_dtype *dt, const char *name) {
  static const struct { const char *alias; ad_dtype dt; } ALIASES[] = {
    {"float32", AD_F32}, {"float", AD_F32}, {"float64", AD_F64}, {"double", AD_F64},
    {"float16", AD_F16}, {"half", AD_F16}, {"bfloat16", AD_BF16}, {"int64", AD_I64},
    {"long", AD_I64}, {"int32", AD_I32}, {"int", AD_I32}, {"uint8", AD_U8}, {"byte", AD_U8},
  };
  for (int i = 0; i < AD_NDTYPES; i++)
    if (strcmp(name, DTYPES[i].name) == 0) { *dt = (ad_dtype)i; return AD_OK; }
  for (size_t i = 0; i < sizeof ALIASES / sizeof ALIASES[0]; i++)
    if (strcmp(name, ALIASES[i].alias) == 0) { *dt = ALIASES[i].dt; return AD_OK; }
  return AD_FAIL(AD_EDTYPE, "unknown dtype '%s' (expected f32, f64, f16, bf16, i64, i32, u8 or bool)", name);
}

bool ad_dtype_is_float(ad_dtype dt) { return dt == AD_F32 || dt == AD_F64 || dt == AD_F16 || dt == AD_BF16; }

/* rank in the promotion lattice: bool < u8 < i32 < i64 < f16/bf16 < f32 < f64 */
static int rank(ad_dtype dt) {
  switch (dt) {
  case AD_BOOL: return 0; case AD_U8: return 1; case AD_I32: return 2; case AD_I64: return 3;
  case AD_F16: case AD_BF16: return 4; case AD_F32: return 5; case AD_F64: return 6;
  default: return -1;
  }
}

ad_dtype ad_dtype_promote(ad_dtype a, ad_dtype b) {
  if (a == b) return a;
  if ((a == AD_F16 && b == AD_BF16) || (a == AD_BF16 && b == AD_F16)) return AD_F32;
  return rank(a) >= rank(b) ? a : b;
}

bool ad_device_eq(ad_device a, ad_device b) {
  return a.type == b.type && (a.type == AD_DEV_CPU || a.index == b.index);
}

const char *ad_device_str(ad_device d, char *buf, size_t n) {
  if (d.type == AD_DEV_CPU) snprintf(buf, n, "cpu");
  else snprintf(buf, n, "cuda:%d", d.index);
  return buf;
}
