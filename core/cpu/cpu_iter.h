/* cpu_iter.h: walking strided tensors on the CPU. A tensor is processed as
 * rows of its innermost dimension: row r's start offset is computed by
 * div/mod over the outer dims, then the inner loop strides. Rows split
 * cleanly across OpenMP threads. */
#ifndef AD_CPU_ITER_H
#define AD_CPU_ITER_H

#include "../tensor.h"

/* Element offset (relative to the tensor's own offset) of row r, where rows
 * are indexed over all dims but the last. */
static inline int64_t ad_row_offset(int ndim, const int64_t *shape, const int64_t *strides, int64_t r) {
  int64_t off = 0;
  for (int d = ndim - 2; d >= 0; d--) {
    int64_t sz = shape[d];
    off += (r % sz) * strides[d];
    r /= sz;
  }
  return off;
}

/* Shape viewed as (rows, inner): ndim 0 -> one row of one element. */
static inline void ad_rows_inner(const ad_tensor *t, int64_t *rows, int64_t *inner, int64_t *inner_stride) {
  if (t->ndim == 0) { *rows = 1; *inner = 1; *inner_stride = 1; return; }
  *inner = t->shape[t->ndim - 1];
  *inner_stride = t->strides[t->ndim - 1];
  int64_t r = 1;
  for (int d = 0; d < t->ndim - 1; d++) r *= t->shape[d];
  *rows = r;
}

#define AD_OMP_MIN 32768 /* elements below which threading costs more than it saves */

#endif
