/* cpu_base.c: the CPU backend's basic kernels: strided copy with dtype
 * conversion, fill, Philox random fills, iota, index_select / index_add. */
#include <string.h>
#include "../backend.h"
#include "../mathinl.h"
#include "cpu_iter.h"

ad_status ad_cpu_to_host(void *host, const void *p, size_t n, int dev) { memcpy(host, p, n); return AD_OK; }
ad_status ad_cpu_from_host(void *p, const void *host, size_t n, int dev) { memcpy(p, host, n); return AD_OK; }

ad_status ad_cpu_copy(ad_tensor *dst, const ad_tensor *src) {
  int64_t n = ad_numel(dst);
  if (n == 0) return AD_OK;
  size_t es = ad_dtype_size(dst->dtype);
  char *d = ad_data(dst);
  const char *s = ad_data(src);
  if (dst->dtype == src->dtype && ad_is_contiguous(dst) && ad_is_contiguous(src)) {
    if ((size_t)n * es >= (1u << 22)) {
      int64_t chunk = 1 << 20;
      #pragma omp parallel for
      for (int64_t c = 0; c < (n + chunk - 1) / chunk; c++) {
        int64_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        memcpy(d + lo * es, s + lo * es, (size_t)(hi - lo) * es);
      }
    } else {
      memcpy(d, s, (size_t)n * es);
    }
    return AD_OK;
  }
  int64_t rows, inner, dstr, sstr;
  ad_rows_inner(dst, &rows, &inner, &dstr);
  sstr = src->ndim ? src->strides[src->ndim - 1] : 1;
  ad_dtype dt = dst->dtype, st = src->dtype;
  #pragma omp parallel for if (n > AD_OMP_MIN)
  for (int64_t r = 0; r < rows; r++) {
    int64_t od = ad_row_offset(dst->ndim, dst->shape, dst->strides, r);
    int64_t os = ad_row_offset(src->ndim, src->shape, src->strides, r);
    if (dt == st && dt == AD_F32) {
      float *pd = (float *)d + od; const float *ps = (const float *)s + os;
      for (int64_t i = 0; i < inner; i++) pd[i * dstr] = ps[i * sstr];
    } else if (dt == st && es == 8) {
      int64_t *pd = (int64_t *)d + od; const int64_t *ps = (const int64_t *)s + os;
      for (int64_t i = 0; i < inner; i++) pd[i * dstr] = ps[i * sstr];
    } else if (dt == st && es == 2) {
      uint16_t *pd = (uint16_t *)d + od; const uint16_t *ps = (const uint16_t *)s + os;
      for (int64_t i = 0; i < inner; i++) pd[i * dstr] = ps[i * sstr];
    } else if (dt == st && es == 1 && dt != AD_BOOL) {
      uint8_t *pd = (uint8_t *)d + od; const uint8_t *ps = (const uint8_t *)s + os;
      for (int64_t i = 0; i < inner; i++) pd[i * dstr] = ps[i * sstr];
    } else if (dt == AD_F32 && st == AD_F64) {
      float *pd = (float *)d + od; const double *ps = (const double *)s + os;
      for (int64_t i = 0; i < inner; i++) pd[i * dstr] = (float)ps[i * sstr];
    } else if (dt == AD_F64 && st == AD_F32) {
      double *pd = (double *)d + od; const float *ps = (const float *)s + os;
      for (int64_t i = 0; i < inner; i++) pd[i * dstr] = ps[i * sstr];
    } else if (dt == AD_BF16 && st == AD_F32) {
      uint16_t *pd = (uint16_t *)d + od; const float *ps = (const float *)s + os;
      for (int64_t i = 0; i < inner; i++) pd[i * dstr] = ad_f32_to_bf16(ps[i * sstr]);
    } else if (dt == AD_F16 && st == AD_F32) {
      uint16_t *pd = (uint16_t *)d + od; const float *ps = (const float *)s + os;
      for (int64_t i = 0; i < inner; i++) pd[i * dstr] = ad_f32_to_f16(ps[i * sstr]);
    } else if (dt == AD_F32 && st == AD_F16) {
      float *pd = (float *)d + od; const uint16_t *ps = (const uint16_t *)s + os;
      for (int64_t i = 0; i < inner; i++) pd[i * dstr] = ad_f16_to_f32(ps[i * sstr]);
    } else if (dt == AD_F32 && st == AD_BF16) {
      float *pd = (float *)d + od; const uint16_t *ps = (const uint16_t *)s + os;
      for (int64_t i = 0; i < inner; i++) pd[i * dstr] = ad_bf16_to_f32(ps[i * sstr]);
    } else if ((dt == AD_F16 || dt == AD_BF16) && st == AD_F64) {
      /* f64 -> f16 in one rounding step would need a double path; via f32
       * rounds twice, which can differ in the last f16 bit. Do it exactly:
       * round to f32 with round-to-odd, then to f16. */
      uint16_t *pd = (uint16_t *)d + od; const double *ps = (const double *)s + os;
      for (int64_t i = 0; i < inner; i++) {
        double v = ps[i * sstr];
        float f = (float)v;
        if ((double)f != v && f == f && !isinf(f)) {          /* inexact: force the sticky bit */
          uint32_t u = ad_f32_bits(f);
          if (((double)f > v) == (f > 0)) u -= 1;              /* truncate toward zero */
          u |= 1u;                                            /* round to odd */
          f = ad_bits_f32(u);
        }
        pd[i * dstr] = dt == AD_F16 ? ad_f32_to_f16(f) : ad_f32_to_bf16(f);
      }
    } else {
      for (int64_t i = 0; i < inner; i++)
        ad_store_elem(d, dt, od + i * dstr, ad_load_elem(s, st, os + i * sstr));
    }
  }
  return AD_OK;
}

ad_status ad_cpu_fill(ad_tensor *dst, double value) {
  int64_t n = ad_numel(dst);
  if (n == 0) return AD_OK;
  char *d = ad_data(dst);
  if (ad_is_contiguous(dst)) {
    if (dst->dtype == AD_F32) {
      float v = (float)value, *p = (float *)d;
      #pragma omp parallel for if (n > AD_OMP_MIN)
      for (int64_t i = 0; i < n; i++) p[i] = v;
      return AD_OK;
    }
    if (value == 0.0) { memset(d, 0, (size_t)n * ad_dtype_size(dst->dtype)); return AD_OK; }
    unsigned char one[8];
    size_t es = ad_dtype_size(dst->dtype);
    ad_store_elem(one, dst->dtype, 0, value);
    for (int64_t i = 0; i < n; i++) memcpy(d + i * es, one, es);
    return AD_OK;
  }
  int64_t rows, inner, str;
  ad_rows_inner(dst, &rows, &inner, &str);
  for (int64_t r = 0; r < rows; r++) {
    int64_t o = ad_row_offset(dst->ndim, dst->shape, dst->strides, r);
    for (int64_t i = 0; i < inner; i++) ad_store_elem(d, dst->dtype, o + i * str, value);
  }
  return AD_OK;
}

static void store_random(char *d, ad_dtype dt, int64_t i, double v) {
  if (dt == AD_F32) ((float *)d)[i] = (float)v;
  else if (dt == AD_F64) ((double *)d)[i] = v;
  else ad_store_elem(d, dt, i, v);
}

/* Element i comes from Philox block offset + i/2, so pairs are drawn
 * together and the result does not depend on the thread split. */
ad_status ad_cpu_random_fill(ad_tensor *dst, int kind, double a, double b, uint64_t seed, uint64_t offset) {
  int64_t n = ad_numel(dst);
  char *d = ad_data(dst);
  ad_dtype dt = dst->dtype;
  int64_t pairs = (n + 1) / 2;
  if (kind == 2) {
    uint64_t range = (uint64_t)((int64_t)b - (int64_t)a);
    int64_t lo = (int64_t)a;
    #pragma omp parallel for if (n > 4096)
    for (int64_t i = 0; i < n; i++) {
      int64_t v = lo + (int64_t)(ad_philox_bits(seed, offset, (uint64_t)i) % range);
      if (dt == AD_I64) ((int64_t *)d)[i] = v;
      else ad_store_elem(d, dt, i, (double)v);
    }
    return AD_OK;
  }
  #pragma omp parallel for if (n > 4096)
  for (int64_t j = 0; j < pairs; j++) {
    double u, v;
    if (kind == 0) {
      ad_philox_uniform_pair(seed, offset, (uint64_t)j, &u, &v);
      u = a + (b - a) * u;
      v = a + (b - a) * v;
    } else {
      ad_philox_normal_pair(seed, offset, (uint64_t)j, &u, &v);
      u = a + b * u;
      v = a + b * v;
    }
    store_random(d, dt, 2 * j, u);
    if (2 * j + 1 < n) store_random(d, dt, 2 * j + 1, v);
  }
  return AD_OK;
}

ad_status ad_cpu_iota(ad_tensor *dst, double start, double step) {
  int64_t n = ad_numel(dst);
  char *d = ad_data(dst);
  if (dst->dtype == AD_I64 && start == (double)(int64_t)start && step == (double)(int64_t)step) {
    int64_t s = (int64_t)start, k = (int64_t)step;
    for (int64_t i = 0; i < n; i++) ((int64_t *)d)[i] = s + i * k;
    return AD_OK;
  }
  for (int64_t i = 0; i < n; i++) ad_store_elem(d, dst->dtype, i, start + (double)i * step);
  return AD_OK;
}

/* dst, src contiguous; index i64 contiguous, values checked by the front end */
ad_status ad_cpu_index_select(ad_tensor *dst, const ad_tensor *src, int dim, const ad_tensor *index) {
  int64_t outer = 1, inner = 1, n_idx = ad_numel(index), src_dim = src->shape[dim];
  for (int d = 0; d < dim; d++) outer *= src->shape[d];
  for (int d = dim + 1; d < src->ndim; d++) inner *= src->shape[d];
  size_t es = ad_dtype_size(src->dtype);
  const int64_t *idx = ad_data(index);
  char *o = ad_data(dst);
  const char *s = ad_data(src);
  #pragma omp parallel for collapse(2) if (outer * n_idx * inner > AD_OMP_MIN)
  for (int64_t a = 0; a < outer; a++)
    for (int64_t j = 0; j < n_idx; j++)
      memcpy(o + ((a * n_idx + j) * inner) * es, s + ((a * src_dim + idx[j]) * inner) * es, (size_t)inner * es);
  return AD_OK;
}

/* dst[.., index[j], ..] += src[.., j, ..]; serial over j so repeated indices accumulate */
ad_status ad_cpu_index_add(ad_tensor *dst, int dim, const ad_tensor *index, const ad_tensor *src) {
  int64_t outer = 1, inner = 1, n_idx = ad_numel(index), dst_dim = dst->shape[dim];
  for (int d = 0; d < dim; d++) outer *= dst->shape[d];
  for (int d = dim + 1; d < dst->ndim; d++) inner *= dst->shape[d];
  const int64_t *idx = ad_data(index);
  char *o = ad_data(dst);
  const char *s = ad_data(src);
  ad_dtype dt = dst->dtype;
  #pragma omp parallel for if (outer * n_idx * inner > AD_OMP_MIN && outer > 1)
  for (int64_t a = 0; a < outer; a++)
    for (int64_t j = 0; j < n_idx; j++) {
      int64_t od = (a * dst_dim + idx[j]) * inner, os = (a * n_idx + j) * inner;
      if (dt == AD_F32) for (int64_t i = 0; i < inner; i++) ((float *)o)[od + i] += ((const float *)s)[os + i];
      else if (dt == AD_F64) for (int64_t i = 0; i < inner; i++) ((double *)o)[od + i] += ((const double *)s)[os + i];
      else for (int64_t i = 0; i < inner; i++)
        ad_store_elem(o, dt, od + i, ad_load_elem(o, dt, od + i) + ad_load_elem(s, dt, os + i));
    }
  return AD_OK;
}
