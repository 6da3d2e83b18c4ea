/* ops.h: the op front ends. Each checks its arguments, computes the output
 * shape, dispatches to the backend of its inputs' device, and records an
 * autograd node. Outputs first, then inputs, then attributes. On success *out
 * holds a new reference; on failure nothing is written. Dimensions are
 * 0-based and already normalised (the Lua bindings turn 1-based/negative dims
 * into these). */
#ifndef AD_OPS_H
#define AD_OPS_H

#include "tensor.h"

/* ========================= shape and memory (shape.c, copy.c) ============ */
ad_status ad_contiguous(ad_tensor **out, const ad_tensor *x);   /* retains x if already contiguous */
ad_status ad_clone(ad_tensor **out, const ad_tensor *x);        /* always a copy, differentiable */
ad_status ad_to_dtype(ad_tensor **out, const ad_tensor *x, ad_dtype dt); /* retains x if same dtype */
ad_status ad_to_device(ad_tensor **out, const ad_tensor *x, ad_device dev);
/* dst <- src (broadcast src to dst's shape, convert dtype); in place, not recorded */
ad_status ad_copy_(ad_tensor *dst, const ad_tensor *src);
ad_status ad_fill_(ad_tensor *dst, double value);               /* in place, not recorded */

/* shape may contain one -1. view fails when strides do not allow it; reshape copies then. */
ad_status ad_view(ad_tensor **out, const ad_tensor *x, int ndim, const int64_t *shape);
ad_status ad_reshape(ad_tensor **out, const ad_tensor *x, int ndim, const int64_t *shape);
ad_status ad_permute(ad_tensor **out, const ad_tensor *x, const int *perm);
ad_status ad_transpose(ad_tensor **out, const ad_tensor *x, int d0, int d1);
ad_status ad_narrow(ad_tensor **out, const ad_tensor *x, int dim, int64_t start, int64_t length);
/* slice with step > 0; start/stop already clamped to [0, size] */
ad_status ad_slice(ad_tensor **out, const ad_tensor *x, int dim, int64_t start, int64_t stop, int64_t step);
ad_status ad_select(ad_tensor **out, const ad_tensor *x, int dim, int64_t index); /* drops dim */
ad_status ad_expand(ad_tensor **out, const ad_tensor *x, int ndim, const int64_t *shape); /* -1 keeps */
ad_status ad_squeeze(ad_tensor **out, const ad_tensor *x, int dim);   /* dim < 0: all size-1 dims */
ad_status ad_unsqueeze(ad_tensor **out, const ad_tensor *x, int dim); /* dim in [0, ndim] */
ad_status ad_flatten(ad_tensor **out, const ad_tensor *x, int start_dim, int end_dim);
/* outs: n views; caller provides the array of *n_chunks slots (at most x->shape[dim]) */
ad_status ad_chunk(ad_tensor **outs, int *n_out, const ad_tensor *x, int chunks, int dim);
ad_status ad_split(ad_tensor **outs, int *n_out, const ad_tensor *x, int64_t split_size, int dim);
ad_status ad_split_sizes(ad_tensor **outs, const ad_tensor *x, int n, const int64_t *sizes, int dim);
ad_status ad_cat(ad_tensor **out, ad_tensor *const *xs, int n, int dim);
ad_status ad_stack(ad_tensor **out, ad_tensor *const *xs, int n, int dim);
/* index_select along dim with an i64 index vector (differentiable in x) */
ad_status ad_index_select(ad_tensor **out, const ad_tensor *x, int dim, const ad_tensor *index);

/* ========================= creation and random (creation.c, random.c) ==== */
ad_status ad_arange(ad_tensor **out, double start, double end, double step, ad_dtype dt, ad_device dev);
ad_status ad_linspace(ad_tensor **out, double start, double end, int64_t steps, ad_dtype dt, ad_device dev);
ad_status ad_eye(ad_tensor **out, int64_t n, int64_t m, ad_dtype dt, ad_device dev);

/* Philox generator: (seed, offset). Every draw of n numbers advances offset. */
typedef struct { uint64_t seed; uint64_t offset; } ad_generator;
ad_generator *ad_default_generator(void);            /* process-wide, CPU and CUDA share it */
void ad_manual_seed(uint64_t seed);
ad_status ad_rand(ad_tensor **out, int ndim, const int64_t *shape, ad_dtype dt, ad_device dev, ad_generator *g);
ad_status ad_randn(ad_tensor **out, int ndim, const int64_t *shape, ad_dtype dt, ad_device dev, ad_generator *g);
/* uniform integers in [low, high) */
ad_status ad_randint(ad_tensor **out, int64_t low, int64_t high, int ndim, const int64_t *shape,
                     ad_dtype dt, ad_device dev, ad_generator *g);
ad_status ad_randperm(ad_tensor **out, int64_t n, ad_dtype dt, ad_device dev, ad_generator *g);
/* in place fills (not recorded) */
ad_status ad_uniform_(ad_tensor *t, double lo, double hi, ad_generator *g);
ad_status ad_normal_(ad_tensor *t, double mean, double std, ad_generator *g);

/* ========================= elementwise (elementwise.c) =================== */
typedef enum {
  AD_UN_NEG, AD_UN_EXP, AD_UN_LOG, AD_UN_LOG1P, AD_UN_EXPM1, AD_UN_SQRT, AD_UN_RSQRT,
  AD_UN_ABS, AD_UN_SIGN, AD_UN_SIN, AD_UN_COS, AD_UN_TANH, AD_UN_SIGMOID, AD_UN_RELU,
  AD_UN_SILU, AD_UN_GELU, AD_UN_SOFTPLUS, AD_UN_SQUARE, AD_UN_RECIPROCAL,
  AD_UN_FLOOR, AD_UN_CEIL, AD_UN_ROUND,
  AD_UN_ISFINITE, AD_UN_ISNAN, AD_UN_LOGICAL_NOT,  /* bool results, not differentiable */
  AD_UN_COUNT
} ad_unop;
typedef enum {
  AD_BIN_ADD, AD_BIN_SUB, AD_BIN_MUL, AD_BIN_DIV, AD_BIN_POW, AD_BIN_MAXIMUM, AD_BIN_MINIMUM,
  AD_BIN_EQ, AD_BIN_NE, AD_BIN_LT, AD_BIN_LE, AD_BIN_GT, AD_BIN_GE,       /* bool results */
  AD_BIN_LOGICAL_AND, AD_BIN_LOGICAL_OR, AD_BIN_LOGICAL_XOR,              /* bool results */
  AD_BIN_COUNT
} ad_binop;
const char *ad_unop_name(ad_unop op);
const char *ad_binop_name(ad_binop op);
ad_status ad_unary(ad_tensor **out, const ad_tensor *x, ad_unop op);
/* a and b broadcast (NumPy rules); dtypes promote */
ad_status ad_binary(ad_tensor **out, const ad_tensor *a, const ad_tensor *b, ad_binop op);
/* tensor op scalar (scalar_first: scalar op tensor); the scalar takes the tensor's dtype
 * (an integer tensor with a non-integral scalar promotes to f32) */
ad_status ad_binary_scalar(ad_tensor **out, const ad_tensor *a, double s, ad_binop op, bool scalar_first);
ad_status ad_add(ad_tensor **out, const ad_tensor *a, const ad_tensor *b);
ad_status ad_sub(ad_tensor **out, const ad_tensor *a, const ad_tensor *b);
ad_status ad_mul(ad_tensor **out, const ad_tensor *a, const ad_tensor *b);
ad_status ad_div(ad_tensor **out, const ad_tensor *a, const ad_tensor *b);
ad_status ad_neg(ad_tensor **out, const ad_tensor *x);
ad_status ad_add_scaled(ad_tensor **out, const ad_tensor *a, const ad_tensor *b, double alpha); /* a + alpha*b */
/* has_min/has_max select which bound applies */
ad_status ad_clamp(ad_tensor **out, const ad_tensor *x, bool has_min, double min, bool has_max, double max);
ad_status ad_where(ad_tensor **out, const ad_tensor *cond, const ad_tensor *a, const ad_tensor *b);
/* in-place accumulate dst += src (src broadcast to dst), not recorded: used by the engine */
ad_status ad_add_(ad_tensor *dst, const ad_tensor *src);
ad_status ad_mul_scalar_(ad_tensor *dst, double s);                 /* not recorded */

/* ========================= reductions (reduce.c) ========================= */
/* dims: n_dims entries; n_dims == 0 reduces over all dims */
ad_status ad_sum(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim);
ad_status ad_mean(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim);
/* correction: 1 unbiased, 0 population */
ad_status ad_var(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, int correction, bool keepdim);
ad_status ad_std(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, int correction, bool keepdim);
ad_status ad_prod(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim);
/* max/min over one dim with indices (i64); indices may be NULL when not wanted */
ad_status ad_max_dim(ad_tensor **values, ad_tensor **indices, const ad_tensor *x, int dim, bool keepdim);
ad_status ad_min_dim(ad_tensor **values, ad_tensor **indices, const ad_tensor *x, int dim, bool keepdim);
ad_status ad_max_all(ad_tensor **out, const ad_tensor *x);  /* 0-d */
ad_status ad_min_all(ad_tensor **out, const ad_tensor *x);
ad_status ad_argmax(ad_tensor **out, const ad_tensor *x, int dim, bool keepdim); /* dim < 0: flat */
ad_status ad_argmin(ad_tensor **out, const ad_tensor *x, int dim, bool keepdim);
/* p-norm (p = 2 default; p = inf as INFINITY) */
ad_status ad_norm(ad_tensor **out, const ad_tensor *x, double p, int n_dims, const int *dims, bool keepdim);
ad_status ad_logsumexp(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim);
ad_status ad_all(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim);
ad_status ad_any(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim);
ad_status ad_cumsum(ad_tensor **out, const ad_tensor *x, int dim);

/* ========================= linear algebra (matmul.c) ===================== */
ad_status ad_matmul(ad_tensor **out, const ad_tensor *a, const ad_tensor *b); /* torch.matmul semantics */
ad_status ad_bmm(ad_tensor **out, const ad_tensor *a, const ad_tensor *b);    /* (B,n,k)@(B,k,m) */
ad_status ad_linear(ad_tensor **out, const ad_tensor *x, const ad_tensor *w, const ad_tensor *b); /* b may be NULL */

/* ========================= convolution, pooling, resampling (conv.c, pool.c, resample.c) */
typedef struct { int stride[2], padding[2], dilation[2]; int groups; } ad_conv2d_args;
ad_status ad_conv2d(ad_tensor **out, const ad_tensor *x, const ad_tensor *w, const ad_tensor *b,
                    const ad_conv2d_args *a);
/* conv1d as used by ADM's attention qkv/proj (kernel 1): x (N,C,L), w (O,C/g,K) */
ad_status ad_conv1d(ad_tensor **out, const ad_tensor *x, const ad_tensor *w, const ad_tensor *b,
                    int stride, int padding, int dilation, int groups);
typedef struct { int kernel[2], stride[2], padding[2], dilation[2]; bool ceil_mode, count_include_pad;
                 int divisor_override; /* 0: none */ } ad_pool2d_args;
ad_status ad_max_pool2d(ad_tensor **out, ad_tensor **indices, const ad_tensor *x, const ad_pool2d_args *a);
ad_status ad_avg_pool2d(ad_tensor **out, const ad_tensor *x, const ad_pool2d_args *a);
ad_status ad_adaptive_avg_pool2d(ad_tensor **out, const ad_tensor *x, int64_t oh, int64_t ow);
/* mode: "nearest" or "bilinear"; output size given */
ad_status ad_upsample_nearest2d(ad_tensor **out, const ad_tensor *x, int64_t oh, int64_t ow);
ad_status ad_upsample_bilinear2d(ad_tensor **out, const ad_tensor *x, int64_t oh, int64_t ow, bool align_corners);
/* pad: pads[2*i], pads[2*i+1] = (before, after) for the LAST dims, PyTorch's F.pad order
 * (last dim first). mode: 0 constant, 1 reflect, 2 replicate */
ad_status ad_pad(ad_tensor **out, const ad_tensor *x, int n_pads, const int64_t *pads, int mode, double value);

/* ========================= normalisation, softmax, attention (norm.c, softmax.c, attention.c) */
ad_status ad_group_norm(ad_tensor **out, const ad_tensor *x, int num_groups, const ad_tensor *w,
                        const ad_tensor *b, double eps);
/* training: batch stats, updates running_mean/var in place (if given) with momentum,
 * running_var with the unbiased variance. eval: uses running stats. */
ad_status ad_batch_norm(ad_tensor **out, const ad_tensor *x, ad_tensor *running_mean, ad_tensor *running_var,
                        const ad_tensor *w, const ad_tensor *b, bool training, double momentum, double eps);
ad_status ad_layer_norm(ad_tensor **out, const ad_tensor *x, int n_norm_dims, const ad_tensor *w,
                        const ad_tensor *b, double eps);
ad_status ad_softmax(ad_tensor **out, const ad_tensor *x, int dim);
ad_status ad_log_softmax(ad_tensor **out, const ad_tensor *x, int dim);
/* q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv); scale <= 0 means 1/sqrt(D); mask may be NULL
 * (additive float or bool keep-mask broadcast to (..., Lq, Lk)) */
ad_status ad_scaled_dot_product_attention(ad_tensor **out, const ad_tensor *q, const ad_tensor *k,
                                          const ad_tensor *v, const ad_tensor *mask, double scale, bool is_causal);
ad_status ad_embedding(ad_tensor **out, const ad_tensor *weight, const ad_tensor *indices);
ad_status ad_dropout(ad_tensor **out, const ad_tensor *x, double p, bool training, ad_generator *g);

/* ========================= losses (loss.c) =============================== */
typedef enum { AD_REDUCE_NONE = 0, AD_REDUCE_MEAN, AD_REDUCE_SUM } ad_reduction;
ad_status ad_mse_loss(ad_tensor **out, const ad_tensor *input, const ad_tensor *target, ad_reduction r);
ad_status ad_l1_loss(ad_tensor **out, const ad_tensor *input, const ad_tensor *target, ad_reduction r);
/* weight, pos_weight may be NULL */
ad_status ad_binary_cross_entropy_with_logits(ad_tensor **out, const ad_tensor *logits, const ad_tensor *target,
                                              const ad_tensor *weight, const ad_tensor *pos_weight, ad_reduction r);
/* logits (N, C) or (N, C, d...), target i64 class indices (N) or (N, d...); 0-based classes;
 * a target equal to ignore_index is skipped (PyTorch's default is -100), any other target
 * outside [0, C) is an error; label_smoothing in [0,1); class weights get no gradient */
ad_status ad_cross_entropy(ad_tensor **out, const ad_tensor *logits, const ad_tensor *target,
                           const ad_tensor *weight, int64_t ignore_index, double label_smoothing, ad_reduction r);
ad_status ad_nll_loss(ad_tensor **out, const ad_tensor *logp, const ad_tensor *target,
                      const ad_tensor *weight, int64_t ignore_index, ad_reduction r);

#endif
