/* embedding.c: embedding lookup (a row gather with a scatter-add backward)
 * and dropout (a Philox keep-mask drawn from an ad_generator).
 *
 * embedding takes 0-based index VALUES, as PyTorch does: ADM's class labels
 * index label_emb directly. An index outside [0, V) is an error naming it.
 *
 * dropout draws element i's uniform from the generator's stream at
 * (seed, offset): the same numbers random_fill kind 0 (ad_rand) would give,
 * and advances offset by the Philox blocks used, ceil(n / 2), so the next
 * draw is independent and a re-seeded generator reproduces the mask. */
#include <math.h>
#include "../ad.h"
#include "../backend_nn.h"

/* ======================================================================= embedding */

static ad_status embedding_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  ad_tensor *idx = node->saved[0], *dy = NULL, *dyc = NULL, *dw = NULL;
  const ad_edge *e = &node->edges[0];  /* the weight: (V, D) */
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  ad_status st;
  AD_TRY(ad_nn_table(&nn, &bk, idx));
  AD_NEED_KERNEL(nn->embedding_bwd, "embedding backward", bk);
  /* rows are summed in f32/f64; the engine converts the result to the weight's dtype */
  ad_dtype acc = gout[0]->dtype == AD_F64 ? AD_F64 : AD_F32;
  AD_TRY(ad_to_dtype(&dy, gout[0], acc));
  AD_TRY_GOTO(st, ad_contiguous(&dyc, dy), fail);
  AD_TRY_GOTO(st, ad_zeros(&dw, 2, e->shape, acc, idx->storage->device), fail);
  AD_TRY_GOTO(st, nn->embedding_bwd(dw, dyc, idx), fail);
  ad_tensor_release(dy);
  ad_tensor_release(dyc);
  gin[0] = dw;
  return AD_OK;
fail:
  ad_tensor_release(dy);
  ad_tensor_release(dyc);
  ad_tensor_release(dw);
  return st;
}
static const ad_opdef EMBEDDING = {"embedding", embedding_backward};

ad_status ad_embedding(ad_tensor **out, const ad_tensor *weight, const ad_tensor *indices) {
  static const char *op = "embedding";
  char s[128];
  if (weight->ndim != 2)
    return AD_FAIL(AD_ESHAPE, "%s: weight must be 2-D (num_embeddings, embedding_dim), got %s", op,
                   ad_shape_str(weight->ndim, weight->shape, s, sizeof s));
  if (indices->dtype != AD_I64 && indices->dtype != AD_I32)
    return AD_FAIL(AD_EDTYPE, "%s: indices must be an integer tensor (i64 or i32), got %s", op,
                   ad_dtype_name(indices->dtype));
  AD_TRY(ad_nn_check_device(op, "indices", weight, indices));
  if (indices->ndim + 1 > AD_MAX_DIMS) return AD_FAIL(AD_ESHAPE, "%s: indices have too many dims", op);
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ad_nn_table(&nn, &bk, weight));
  AD_NEED_KERNEL(nn->embedding_fwd, op, bk);
  int64_t oshape[AD_MAX_DIMS];
  for (int d = 0; d < indices->ndim; d++) oshape[d] = indices->shape[d];
  oshape[indices->ndim] = weight->shape[1];
  ad_tensor *wc = NULL, *ic = NULL, *y = NULL;
  ad_status st;
  AD_TRY_GOTO(st, ad_contiguous(&wc, weight), fail);
  AD_TRY_GOTO(st, ad_contiguous(&ic, indices), fail);
  AD_TRY_GOTO(st, ad_empty(&y, indices->ndim + 1, oshape, weight->dtype, weight->storage->device), fail);
  AD_TRY_GOTO(st, nn->embedding_fwd(y, wc, ic), fail);
  AD_TRY_GOTO(st, ad_record(&EMBEDDING, &y, 1, &wc, 1, &ic, 1, NULL, 0), fail);
  ad_tensor_release(wc);
  ad_tensor_release(ic);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(wc);
  ad_tensor_release(ic);
  ad_tensor_release(y);
  return st;
}

/* ======================================================================= dropout */

static ad_status dropout_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  return ad_mul(&gin[0], gout[0], node->saved[0]);  /* mask holds 0 or 1/(1-p) */
}
static const ad_opdef DROPOUT = {"dropout", dropout_backward};

ad_status ad_dropout(ad_tensor **out, const ad_tensor *x, double p, bool training, ad_generator *g) {
  static const char *op = "dropout";
  if (!(p >= 0.0 && p <= 1.0)) return AD_FAIL(AD_EINVAL, "%s: p must be in [0, 1], got %g", op, p);
  AD_TRY(ad_nn_check_float(op, "input", x));
  if (!training || p == 0.0) {
    ad_tensor_retain((ad_tensor *)x);
    *out = (ad_tensor *)x;
    return AD_OK;
  }
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ad_nn_table(&nn, &bk, x));
  AD_NEED_KERNEL(nn->dropout_fwd, op, bk);
  if (!g) g = ad_default_generator();
  ad_tensor *xc = NULL, *y = NULL, *mask = NULL;
  ad_status st;
  AD_TRY_GOTO(st, ad_contiguous(&xc, x), fail);
  AD_TRY_GOTO(st, ad_empty_like(&y, xc), fail);
  AD_TRY_GOTO(st, ad_empty_like(&mask, xc), fail);
  {
    const uint64_t n = (uint64_t)ad_numel(xc), seed = g->seed, offset = g->offset;
    /* p == 1 drops everything without looking at random numbers: nothing is consumed */
    if (p < 1.0) g->offset += (n + 1) / 2;
    AD_TRY_GOTO(st, nn->dropout_fwd(y, mask, xc, p, seed, offset), fail);
  }
  AD_TRY_GOTO(st, ad_record(&DROPOUT, &y, 1, &xc, 1, &mask, 1, NULL, 0), fail);
  ad_tensor_release(xc);
  ad_tensor_release(mask);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(xc);
  ad_tensor_release(y);
  ad_tensor_release(mask);
  return st;
}
