/* kernels.h: the extern "C" launchers of the CUDA backend's own kernels.
 *
 * This header is included by the plain-C glue in core/cuda/ and by the .cu
 * files here. The .cu files see only header-only parts of the core (status
 * codes, mathinl.h); tensor.h cannot be included from C++ (its refcounts are
 * C11 _Atomic), so launchers take raw device pointers, sizes and the dtype
 * codes below, whose values the glue checks against ad_dtype at compile time.
 *
 * Every launcher enqueues work on ctx->stream and returns the cudaError_t of
 * the launch (cudaGetLastError after each kernel, so bad launch
 * configurations are never lost); the glue turns it into an ad_status with
 * the op's name and, under AD_CUDA_SYNC=1, synchronises to pin asynchronous
 * faults on the op that caused them. Scratch memory comes from the caching
 * allocator through ctx->scratch_alloc / scratch_free; a launcher that cannot
 * get scratch returns cudaErrorMemoryAllocation.
 *
 * Naming: ad_launch_<op>_<fwd|bwd> launches the kernels that the glue's
 * ad_cuda_<op>_<fwd|bwd> (the backend-table entry, beside ad_cpu_<op>_<fwd|bwd>)
 * needs; device code is <op>_fwd_kernel etc. in the .cu file with the CPU
 * file's stem. */
#ifndef AD_KERNELS_CUDA_H
#define AD_KERNELS_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* dtype codes: the values of ad_dtype in core/tensor.h (checked by the glue) */
enum { ADK_F32 = 0, ADK_F64, ADK_F16, ADK_BF16, ADK_I64, ADK_I32, ADK_U8, ADK_BOOL, ADK_NDTYPES };

#define ADK_MAX_DIMS 8    /* AD_MAX_DIMS */
#define ADK_MAX_OPS 5     /* operands of one elementwise kernel */

typedef struct adk_ctx {
  cudaStream_t stream;
  int device;                                   /* CUDA ordinal */
  int num_sms;
  void *(*scratch_alloc)(size_t nbytes, int device);   /* NULL on failure */
  void (*scratch_free)(void *ptr, int device);
} adk_ctx;

#ifdef __CUDACC__
__host__ __device__
#endif
static inline size_t adk_dtype_size(int dt) {
  return dt == ADK_F64 || dt == ADK_I64 ? 8 : dt == ADK_F32 || dt == ADK_I32 ? 4 : dt == ADK_F16 || dt == ADK_BF16 ? 2 : 1;
}

/* A strided walk over up to ADK_MAX_OPS same-shape operands: operand k's element
 * at multi-index i is data[k] + sum_d i[d] * strides[k][d] elements. data[k] ==
 * NULL marks an absent optional operand (e.g. an unwanted gradient). */
typedef struct adk_iter {
  int ndim;
  int64_t shape[ADK_MAX_DIMS];
  int nops;
  void *data[ADK_MAX_OPS];
  int dtype[ADK_MAX_OPS];
  int64_t strides[ADK_MAX_OPS][ADK_MAX_DIMS];
} adk_iter;

/* ======================================================================= copy.cu */
/* op 0 = dst, op 1 = src: dst <- src converted (ad_store_elem semantics) */
cudaError_t ad_launch_copy(const adk_ctx *c, const adk_iter *it);
/* op 0 = dst: every element <- value converted to dst's dtype */
cudaError_t ad_launch_fill(const adk_ctx *c, const adk_iter *it, double value);
/* a contiguous buffer of n elements <- v (0, -inf, ...) */
cudaError_t ad_launch_fill_value(const adk_ctx *c, void *p, int dtype, int64_t n, double v);
/* contiguous dst of n elements: dst[i] = start + i*step */
cudaError_t ad_launch_iota(const adk_ctx *c, void *dst, int dtype, int64_t n, double start, double step);
/* contiguous (outer, src_dim, inner) -> (outer, n_idx, inner), idx i64 on the device */
cudaError_t ad_launch_index_select(const adk_ctx *c, void *dst, const void *src, size_t esize, int64_t outer,
                                   int64_t src_dim, int64_t inner, const int64_t *idx, int64_t n_idx);
/* dst (outer, dst_dim, inner) += src (outer, n_idx, inner) at rows idx, in j order per column */
cudaError_t ad_launch_index_add(const adk_ctx *c, void *dst, const void *src, int dtype, int64_t outer,
                                int64_t dst_dim, int64_t inner, const int64_t *idx, int64_t n_idx);
/* rows of a row-major (m x n, ld) matrix, batch of them stride apart: C <- beta * C (beta 0 writes zeros) */
cudaError_t ad_launch_scale_matrix(const adk_ctx *c, void *cmat, int dtype, int64_t batch, int64_t stride,
                                   int64_t m, int64_t n, int64_t ld, double beta);
/* any index out of [0, limit): *bad = first such value (host), *found = 1; i64 or i32 indices */
cudaError_t ad_launch_check_indices(const adk_ctx *c, const void *idx, bool i64, int64_t n, int64_t limit,
                                    int *found, int64_t *bad);

/* ======================================================================= random.cu */
/* contiguous dst: kind 0 uniform [a, b), 1 normal(a, b), 2 integers [a, b); element i from
 * Philox (seed, offset, i) exactly as ad_cpu_random_fill */
cudaError_t ad_launch_random_fill(const adk_ctx *c, void *dst, int dtype, int64_t n, int kind, double a,
                                  double b, uint64_t seed, uint64_t offset);

/* ======================================================================= elementwise.cu */
/* the op codes are ad_unop / ad_binop values from ops.h */
cudaError_t ad_launch_unary(const adk_ctx *c, const adk_iter *it, int op);              /* y, x */
cudaError_t ad_launch_unary_bwd(const adk_ctx *c, const adk_iter *it, int op);          /* dx, v, dy */
cudaError_t ad_launch_binary(const adk_ctx *c, const adk_iter *it, int op);             /* y, a, b */
cudaError_t ad_launch_binary_bwd(const adk_ctx *c, const adk_iter *it, int op);         /* da, db, a, b, dy */
cudaError_t ad_launch_binary_scalar(const adk_ctx *c, const adk_iter *it, int op, double s, bool scalar_first);
cudaError_t ad_launch_binary_scalar_bwd(const adk_ctx *c, const adk_iter *it, int op, double s,
                                        bool scalar_first);                              /* da, a, dy */
cudaError_t ad_launch_clamp(const adk_ctx *c, const adk_iter *it, double lo, double hi);     /* y, x */
cudaError_t ad_launch_clamp_bwd(const adk_ctx *c, const adk_iter *it, double lo, double hi); /* dx, x, dy */
cudaError_t ad_launch_where(const adk_ctx *c, const adk_iter *it);                      /* y, cond, a, b */

/* ======================================================================= reduce.cu */
/* x (outer, r, inner) contiguous f32/f64 -> y (outer, inner); op = ad_redop */
cudaError_t ad_launch_reduce(const adk_ctx *c, void *y, const void *x, int dtype, int64_t outer, int64_t r,
                             int64_t inner, int op, double param);
/* bool all (is_all) / any */
cudaError_t ad_launch_reduce_bool(const adk_ctx *c, uint8_t *y, const uint8_t *x, int64_t outer, int64_t r,
                                  int64_t inner, bool is_all);
cudaError_t ad_launch_arg_reduce(const adk_ctx *c, void *values, int64_t *indices, const void *x, int dtype,
                                 int64_t outer, int64_t r, int64_t inner, bool is_max);
cudaError_t ad_launch_arg_reduce_bwd(const adk_ctx *c, void *dx, const void *dy, const int64_t *indices,
                                     size_t esize, int64_t outer, int64_t r, int64_t inner);
cudaError_t ad_launch_cumsum(const adk_ctx *c, void *y, const void *x, int dtype, int64_t outer, int64_t r,
                             int64_t inner, bool reverse);

/* ======================================================================= norm.cu (f32/f64 data, f64 stats) */
cudaError_t ad_launch_group_norm_fwd(const adk_ctx *c, void *y, double *mean, double *rstd, const void *x,
                                     const void *w, const void *b, int dtype, int64_t N, int64_t C, int64_t S,
                                     int64_t G, double eps);
cudaError_t ad_launch_group_norm_bwd(const adk_ctx *c, void *dx, void *dw, void *db, const void *dy,
                                     const void *x, const double *mean, const double *rstd, const void *w,
                                     int dtype, int64_t N, int64_t C, int64_t S, int64_t G);
cudaError_t ad_launch_batch_norm_fwd(const adk_ctx *c, void *y, double *save_mean, double *save_rstd,
                                     const void *x, const void *w, const void *b, void *running_mean,
                                     void *running_var, int dtype, int64_t N, int64_t C, int64_t S, bool training,
                                     double momentum, double eps);
cudaError_t ad_launch_batch_norm_bwd(const adk_ctx *c, void *dx, void *dw, void *db, const void *dy,
                                     const void *x, const double *mean, const double *rstd, const void *w,
                                     int dtype, int64_t N, int64_t C, int64_t S, bool training);
cudaError_t ad_launch_layer_norm_fwd(const adk_ctx *c, void *y, double *mean, double *rstd, const void *x,
                                     const void *w, const void *b, int dtype, int64_t M, int64_t D, double eps);
cudaError_t ad_launch_layer_norm_bwd(const adk_ctx *c, void *dx, void *dw, void *db, const void *dy,
                                     const void *x, const double *mean, const double *rstd, const void *w,
                                     int dtype, int64_t M, int64_t D);

/* ======================================================================= softmax.cu */
cudaError_t ad_launch_softmax_fwd(const adk_ctx *c, void *y, const void *x, int dtype, int64_t outer, int64_t L,
                                  int64_t inner, bool log);
cudaError_t ad_launch_softmax_bwd(const adk_ctx *c, void *dx, const void *dy, const void *y, int dtype,
                                  int64_t outer, int64_t L, int64_t inner, bool log);

/* ======================================================================= attention.cu
 * The score-matrix kernels of the fused attention; the products run through
 * cuBLAS in core/cuda/cuda_attention.c. S holds nb slices (Lq, Lk) of the
 * scaled scores Q K^T starting at slice b0; the mask (optional) is read through
 * its strides: mstrides[0..nbatch) for the batch dims (bshape), then the row
 * and column strides. */
typedef struct adk_attn_mask {
  const void *data;            /* NULL: no mask */
  int dtype;                   /* ADK_BOOL or the score dtype */
  int nbatch;
  int64_t bshape[ADK_MAX_DIMS];
  int64_t mstrides[ADK_MAX_DIMS];
} adk_attn_mask;
/* P <- softmax(S + mask) (causal and masked entries 0); lse (B*Lq) for rows b0...
 * hdtype < 0: P has S's dtype and may be S itself; hdtype ADK_F16/ADK_BF16: S and
 * lse are f32 and P is a half copy (f16/bf16 attention: scores in f32, the
 * products on tensor cores). */
cudaError_t ad_launch_attention_softmax(const adk_ctx *c, const void *S, void *P, int hdtype, void *lse, int dtype,
                                        int64_t b0, int64_t nb, int64_t Lq, int64_t Lk, const adk_attn_mask *m,
                                        bool causal);
/* P = exp(S + mask - lse), the probabilities recomputed in backward: into S in
 * place when keep, into Ph (hdtype, or NULL) as a half copy */
cudaError_t ad_launch_attention_probs(const adk_ctx *c, void *S, void *Ph, int hdtype, bool keep, const void *lse,
                                      int dtype, int64_t b0, int64_t nb, int64_t Lq, int64_t Lk,
                                      const adk_attn_mask *m, bool causal);
/* dS = P (dP - rowsum(P dP)) over nb*Lq rows: P read from Pm, or recomputed from
 * the scores in Pm when lse is given (rows b0.., the mask and causal as in
 * softmax); dS into dP in place when keep, into dSh (hdtype, or NULL) as a
 * half copy */
cudaError_t ad_launch_attention_dscores(const adk_ctx *c, const void *Pm, const void *lse, int64_t b0, int64_t Lq,
                                        const adk_attn_mask *m, bool causal, void *dP, bool keep, void *dSh,
                                        int hdtype, int dtype, int64_t nb, int64_t Lk);

/* ======================================================================= loss.cu */
/* pointwise: kind = ad_pointwise_loss, r = ad_reduction; weight/pos_weight may be NULL */
cudaError_t ad_launch_pointwise_loss_fwd(const adk_ctx *c, void *out, const void *input, const void *target,
                                         const void *weight, const void *pos_weight, int dtype, int64_t n,
                                         int kind, int r);
cudaError_t ad_launch_pointwise_loss_bwd(const adk_ctx *c, void *dinput, void *dtarget, void *dweight,
                                         void *dpos_weight, const void *dy, const void *input,
                                         const void *target, const void *weight, const void *pos_weight,
                                         int dtype, int64_t n, int kind, int r);
/* targets: *bad_found / *bad_value for the first target neither ignore_index nor in [0, C);
 * *denom = sum of w_t (or count) over the rest. Synchronises (the results go to the host). */
cudaError_t ad_launch_check_targets(const adk_ctx *c, const void *target, bool i64, int64_t n, const void *weight,
                                    int wdtype, int64_t C, int64_t ignore_index, int *bad_found,
                                    int64_t *bad_value, double *denom);
cudaError_t ad_launch_cross_entropy_fwd(const adk_ctx *c, void *out, void *lse, const void *logits,
                                        const void *target, bool i64, const void *weight, int dtype, int64_t N,
                                        int64_t C, int64_t S, int64_t ignore_index, double eps, int r,
                                        double denom);
cudaError_t ad_launch_cross_entropy_bwd(const adk_ctx *c, void *dlogits, const void *dy, const void *logits,
                                        const void *lse, const void *target, bool i64, const void *weight,
                                        int dtype, int64_t N, int64_t C, int64_t S, int64_t ignore_index,
                                        double eps, int r, double denom);
cudaError_t ad_launch_nll_loss_fwd(const adk_ctx *c, void *out, const void *logp, const void *target, bool i64,
                                   const void *weight, int dtype, int64_t N, int64_t C, int64_t S,
                                   int64_t ignore_index, int r, double denom);
cudaError_t ad_launch_nll_loss_bwd(const adk_ctx *c, void *dlogp, const void *dy, const void *target, bool i64,
                                   const void *weight, int dtype, int64_t N, int64_t C, int64_t S,
                                   int64_t ignore_index, int r, double denom);

/* ======================================================================= nn.cu: embedding, dropout */
cudaError_t ad_launch_embedding_fwd(const adk_ctx *c, void *out, const void *weight, size_t row_bytes,
                                    const void *indices, bool i64, int64_t n);
cudaError_t ad_launch_embedding_bwd(const adk_ctx *c, void *dweight, const void *dout, int dtype,
                                    const void *indices, bool i64, int64_t n, int64_t D);
/* y, mask, x contiguous of one float dtype; keep element i when Philox uniform (seed, offset, i) < 1 - p */
cudaError_t ad_launch_dropout_fwd(const adk_ctx *c, void *y, void *mask, const void *x, int dtype, int64_t n,
                                  double p, uint64_t seed, uint64_t offset);

/* ======================================================================= conv.cu
 * around the cuDNN convolutions: y (N, O, S) += b[o]; db[o] = sum over n, s of dy.
 * f32, f64, f16, bf16. */
cudaError_t ad_launch_conv_bias_add(const adk_ctx *c, void *y, const void *b, int dtype, int64_t N, int64_t O,
                                    int64_t S);
cudaError_t ad_launch_conv_bias_grad(const adk_ctx *c, void *db, const void *dy, int dtype, int64_t N, int64_t O,
                                     int64_t S);

/* ======================================================================= pool.cu (NCHW, f32/f64) */
typedef struct adk_pool2d {
  int kernel[2], stride[2], padding[2], dilation[2];
  bool count_include_pad;
  int divisor_override;
} adk_pool2d;
cudaError_t ad_launch_max_pool2d_fwd(const adk_ctx *c, void *y, int64_t *indices, const void *x, int dtype,
                                     int64_t P, int64_t H, int64_t W, int64_t Ho, int64_t Wo, const adk_pool2d *a);
cudaError_t ad_launch_max_pool2d_bwd(const adk_ctx *c, void *dx, const void *dy, const int64_t *indices,
                                     int dtype, int64_t P, int64_t HW, int64_t OHW);
cudaError_t ad_launch_avg_pool2d_fwd(const adk_ctx *c, void *y, const void *x, int dtype, int64_t P, int64_t H,
                                     int64_t W, int64_t Ho, int64_t Wo, const adk_pool2d *a);
cudaError_t ad_launch_avg_pool2d_bwd(const adk_ctx *c, void *dx, const void *dy, int dtype, int64_t P, int64_t H,
                                     int64_t W, int64_t Ho, int64_t Wo, const adk_pool2d *a);
cudaError_t ad_launch_adaptive_avg_pool2d_fwd(const adk_ctx *c, void *y, const void *x, int dtype, int64_t P,
                                              int64_t H, int64_t W, int64_t Ho, int64_t Wo);
cudaError_t ad_launch_adaptive_avg_pool2d_bwd(const adk_ctx *c, void *dx, const void *dy, int dtype, int64_t P,
                                              int64_t H, int64_t W, int64_t Ho, int64_t Wo);

/* ======================================================================= resample.cu */
/* nearest forward moves elements of esize bytes (any dtype) */
cudaError_t ad_launch_upsample_nearest2d_fwd(const adk_ctx *c, void *y, const void *x, size_t esize, int64_t P,
                                             int64_t H, int64_t W, int64_t Ho, int64_t Wo);
cudaError_t ad_launch_upsample_nearest2d_bwd(const adk_ctx *c, void *dx, const void *dy, int dtype, int64_t P,
                                             int64_t H, int64_t W, int64_t Ho, int64_t Wo);
cudaError_t ad_launch_upsample_bilinear2d_fwd(const adk_ctx *c, void *y, const void *x, int dtype, int64_t P,
                                              int64_t H, int64_t W, int64_t Ho, int64_t Wo, bool align_corners);
cudaError_t ad_launch_upsample_bilinear2d_bwd(const adk_ctx *c, void *dx, const void *dy, int dtype, int64_t P,
                                              int64_t H, int64_t W, int64_t Ho, int64_t Wo, bool align_corners);
/* pad: y and x contiguous of ndim dims (shapes given), before[d] per dim; mode 0 constant,
 * 1 reflect, 2 replicate. Forward any dtype; backward f32/f64 (dx zeroed here). */
cudaError_t ad_launch_pad_fwd(const adk_ctx *c, void *y, const void *x, int dtype, int ndim,
                              const int64_t *yshape, const int64_t *xshape, const int64_t *before, int mode,
                              double value);
cudaError_t ad_launch_pad_bwd(const adk_ctx *c, void *dx, const void *dy, int dtype, int ndim,
                              const int64_t *yshape, const int64_t *xshape, const int64_t *before, int mode);

/* ======================================================================= optim.cu
 * Multi-tensor updates: a batch of up to ADK_MT_MAX tensors travels in the
 * kernel parameters (CUDA 12.1+ allows 32 KiB of them). Each tensor is cut
 * into chunks of ADK_MT_CHUNK elements; chunk0[i] is tensor i's first chunk,
 * chunk0[n] the total. a/b/c/d: the lists of each update (params, grads,
 * exp_avg, exp_avg_sq for Adam; params, grads, momentum for SGD; ema, src for
 * EMA; the tensors for sq_norm and scale), dtype_a/dtype_b their dtypes. */
#define ADK_MT_MAX 192
#define ADK_MT_CHUNK 65536
typedef struct adk_mt_batch {
  int n;
  void *a[ADK_MT_MAX];
  const void *b[ADK_MT_MAX];
  void *c[ADK_MT_MAX];
  void *d[ADK_MT_MAX];
  int64_t numel[ADK_MT_MAX];
  int64_t chunk0[ADK_MT_MAX + 1];
  signed char dtype_a[ADK_MT_MAX], dtype_b[ADK_MT_MAX];
} adk_mt_batch;

typedef struct adk_adam_args {
  double lr, beta1, beta2, eps, weight_decay;
  double bias_correction1, bias_correction2;  /* 1 - beta^step */
  double grad_scale;                          /* gradients are divided by this (1: none) */
  bool decoupled, maximize;
} adk_adam_args;
typedef struct adk_sgd_args {
  double lr, momentum, dampening, weight_decay, grad_scale;
  bool nesterov, maximize, first;
} adk_sgd_args;

/* every tensor of the batch has parameter dtype `dtype` (f32, f64, f16, bf16) */
cudaError_t ad_launch_adam_step(const adk_ctx *c, const adk_mt_batch *b, int dtype, const adk_adam_args *a);
cudaError_t ad_launch_sgd_step(const adk_ctx *c, const adk_mt_batch *b, int dtype, const adk_sgd_args *a);
cudaError_t ad_launch_ema_update(const adk_ctx *c, const adk_mt_batch *b, double decay);
/* part[chunk0[i] + k] <- sum of squares of chunk k of tensor i (double) */
cudaError_t ad_launch_sq_norm_chunks(const adk_ctx *c, double *part, const adk_mt_batch *b);
/* *out <- sum of part[0..n) in a fixed order (device pointers) */
cudaError_t ad_launch_sum_doubles(const adk_ctx *c, double *out, const double *part, int64_t n);
cudaError_t ad_launch_scale(const adk_ctx *c, const adk_mt_batch *b, double s);

/* ======================================================================= metrics.cu
 * The evaluation-metric family (core/cuda/cuda_metrics.c): features x (n, d) are
 * contiguous f32 or f64; everything derived from them is f64. Distances come
 * from f64 GEMM blocks G = Xc[i0 : i0+b] Y^T of centred rows (the glue runs
 * the DGEMM); the kernels here turn a block into decisions, and recompute in
 * f64 from the input rows, in the CPU's exact_dist order, every pair whose
 * error bound leaves the decision open. */
#define ADK_KNN_MAXK 32   /* largest k of the CUDA k-NN radii */
/* sum[t] += column sums of x (n, d), f64, in a fixed order */
cudaError_t ad_launch_metrics_column_sums(const adk_ctx *c, double *sum, const void *x, int dtype, int64_t n,
                                          int64_t d);
/* *row = first row of x holding a NaN or Inf, -1 if none. Synchronises. */
cudaError_t ad_launch_metrics_first_nonfinite(const adk_ctx *c, const void *x, int dtype, int64_t n, int64_t d,
                                              int64_t *row);
/* xc (n, d) f64 <- x - centre, n2[i] <- ||xc_i||^2 (n2 may be NULL) */
cudaError_t ad_launch_metrics_centre(const adk_ctx *c, double *xc, double *n2, const void *x, int dtype, int64_t n,
                                     int64_t d, const double *centre);
/* radii[i0 .. i0+b) <- the k-th smallest distance from row i to the other rows of
 * x (n, d) that do not share its id (ids may be NULL), from G (b, n) = Xc_block Xc^T,
 * n2 the squared norms of Xc and nmax their largest square root. A row with
 * fewer than k such rows gets NaN and lowers *short_row (device, initialised
 * to UINT64_MAX by the caller) to its index. 1 <= k <= ADK_KNN_MAXK. */
cudaError_t ad_launch_knn_radii_block(const adk_ctx *c, double *radii, const double *G, int64_t i0, int64_t b,
                                      const void *x, int dtype, int64_t n, int64_t d, const double *n2, double nmax,
                                      const int64_t *ids, int64_t k, unsigned long long *short_row);
/* For real rows i0 .. i0+b) against all m fake rows, G (b, m) = Rc_block Fc^T:
 *   rir[i] = #{j : d(i, j) <= rr[i]}, rif[i] = #{j : d(i, j) <= rf[j]} (rf, rif may be NULL),
 *   fir[j] += #{i in block : d(i, j) <= rr[i]} (fir zeroed by the caller).
 * rn2/fn2 the squared norms of the centred rows, fmax the largest fake norm. */
cudaError_t ad_launch_manifold_counts_block(const adk_ctx *c, int64_t *fir, int64_t *rir, int64_t *rif,
                                            const double *G, int64_t i0, int64_t b, int64_t m, const void *real,
                                            const void *fake, int dtype, int64_t d, const double *rn2,
                                            const double *fn2, double fmax, const double *rr, const double *rf);
/* o (n, m) holding -2 Ac Bc^T <- sqrt(max(o + na[i] + nb[j], 0)) */
cudaError_t ad_launch_cdist_finish(const adk_ctx *c, double *o, const double *na, const double *nb, int64_t n,
                                   int64_t m);
/* s (d, d): the upper triangle (j >= i) scaled by `scale`, mirrored into the lower */
cudaError_t ad_launch_cov_finish(const adk_ctx *c, double *s, int64_t d, double scale);

#ifdef __cplusplus
}
#endif

#endif
