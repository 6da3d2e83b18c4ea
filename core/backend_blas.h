/* backend_blas.h: the dense linear-algebra kernel family of a backend.
 *
 * One kernel: a strided-batch GEMM in row-major terms, which is all matmul,
 * bmm, linear and the attention and convolution fallbacks need. The front
 * ends in core/ops/matmul.c describe each operand as (start element, leading
 * dimension, transposed or not, batch stride) so that transposed and sliced
 * views reach BLAS without a copy; the kernel never looks at the tensors'
 * shapes or strides, only at their dtype, storage and offset. */
#ifndef AD_BACKEND_BLAS_H
#define AD_BACKEND_BLAS_H

#include <stdbool.h>
#include "tensor.h"

/* C_i = alpha * op(A_i) . op(B_i) + beta * C_i  for i in [0, batch)
 *   op(A_i) is m x k, op(B_i) is k x n, C_i is m x n, all row-major.
 *   trans_a: A_i is stored k x m (op(A) = A^T); likewise trans_b (B stored n x k).
 *   lda/ldb/ldc: element distance between consecutive stored rows (>= stored columns, >= 1).
 *   stride_*: element distance between A_i and A_{i+1}; 0 reuses one matrix (broadcast).
 *   A_0 starts at element 0 of tensor a (a->offset into its storage), etc.
 * With beta == 0, C is not read (NaNs in it do not propagate). k == 0 gives beta * C. */
typedef struct {
  int64_t batch, m, n, k;
  bool trans_a, trans_b;
  int64_t lda, ldb, ldc;
  int64_t stride_a, stride_b, stride_c;
  double alpha, beta;
} ad_gemm_args;

struct ad_blas_kernels {
  /* a, b, c: one dtype, f32 or f64 (f16 and bf16 are computed through f32 and rounded
   * once when stored). c must not overlap a or b. */
  ad_status (*gemm)(ad_tensor *c, const ad_tensor *a, const ad_tensor *b, const ad_gemm_args *g);
};

#endif
