/* attention.c: scaled_dot_product_attention, one fused op with a fused
 * backward (see cpu_attention.c for the algorithm).
 *
 * q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) -> (..., Lq, Dv). The batch
 * dims broadcast (a k/v shared across heads works); broadcasting is done with
 * recorded expand + contiguous, so their gradients are summed back by those
 * ops. The mask broadcasts to (..., Lq, Lk) as a stride-0 view that the
 * kernel reads in place, so a (Lq, Lk) mask is never copied per head. A bool
 * mask marks the keys to attend to; a float mask is added to the scores and
 * is differentiable. is_causal keeps key j <= query i (PyTorch's top-left
 * aligned tril) and may be combined with a mask. f16/bf16 attention runs in
 * the half type where the backend says it can (attention_half: CUDA, with
 * f32 scores and tensor-core products, as PyTorch's autocast einsum does);
 * elsewhere it is computed in f32 and rounded back. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "../ad.h"
#include "../backend_nn.h"
#include "../autocast.h"

typedef struct { double scale; bool causal; } attn_attrs;

static ad_status attention_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const attn_attrs *a = node->attrs;
  ad_tensor *q = node->saved[0], *k = node->saved[1], *v = node->saved[2], *mask = node->saved[3];
  ad_tensor *lse = node->saved[4];
  ad_tensor *dout = NULL, *dq = NULL, *dk = NULL, *dv = NULL, *dm = NULL;
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  ad_status st;
  AD_TRY(ad_nn_table(&nn, &bk, q));
  AD_NEED_KERNEL(nn->attention_bwd, "scaled_dot_product_attention backward", bk);
  AD_TRY(ad_contiguous(&dout, gout[0]));
  if (node->needs_grad[0]) AD_TRY_GOTO(st, ad_empty_like(&dq, q), fail);
  if (node->needs_grad[1]) AD_TRY_GOTO(st, ad_empty_like(&dk, k), fail);
  if (node->needs_grad[2]) AD_TRY_GOTO(st, ad_empty_like(&dv, v), fail);
  if (node->needs_grad[3] && mask)
    AD_TRY_GOTO(st, ad_empty(&dm, mask->ndim, mask->shape, mask->dtype, q->storage->device), fail);
  AD_TRY_GOTO(st, nn->attention_bwd(dq, dk, dv, dm, dout, q, k, v, mask, lse, a->scale, a->causal), fail);
  ad_tensor_release(dout);
  gin[0] = dq;
  gin[1] = dk;
  gin[2] = dv;
  gin[3] = dm;
  return AD_OK;
fail:
  ad_tensor_release(dout);
  ad_tensor_release(dq);
  ad_tensor_release(dk);
  ad_tensor_release(dv);
  ad_tensor_release(dm);
  return st;
}
/* ADVDIFF_ATTN_HALF=0: half attention in f32 on every backend (for comparisons) */
static bool half_attention_off(void) {
  static int off = -1;
  if (off < 0) {
    const char *e = getenv("ADVDIFF_ATTN_HALF");
    off = e && strcmp(e, "0") == 0;
  }
  return off != 0;
}

static const ad_opdef ATTENTION = {"scaled_dot_product_attention", attention_backward};

/* t expanded to (batch..., rows, cols) and made contiguous (recorded) */
static ad_status expand_batch(ad_tensor **out, const ad_tensor *t, int nb, const int64_t *bshape) {
  int64_t shape[AD_MAX_DIMS];
  memcpy(shape, bshape, (size_t)nb * sizeof *shape);
  shape[nb] = t->shape[t->ndim - 2];
  shape[nb + 1] = t->shape[t->ndim - 1];
  if (ad_shape_eq(t->ndim, t->shape, nb + 2, shape)) return ad_contiguous(out, t);
  ad_tensor *e = NULL;
  AD_TRY(ad_expand(&e, t, nb + 2, shape));
  ad_status st = ad_contiguous(out, e);
  ad_tensor_release(e);
  return st;
}

ad_status ad_scaled_dot_product_attention(ad_tensor **out, const ad_tensor *q, const ad_tensor *k,
                                          const ad_tensor *v, const ad_tensor *mask, double scale, bool is_causal) {
  static const char *op = "scaled_dot_product_attention";
  char s1[128], s2[128], s3[128];
  if (ad_autocast_applies((const ad_tensor *[]){q, k, v, mask}, 4)) {   /* autocast (issue 3): run in its dtype */
    ad_tensor *c[4];
    ad_status st = ad_autocast_cast(c, (const ad_tensor *[]){q, k, v, mask}, 4);
    if (st == AD_OK) st = ad_scaled_dot_product_attention(out, c[0], c[1], c[2], c[3], scale, is_causal);
    ad_autocast_release(c, 4);
    return st;
  }
  AD_TRY(ad_nn_check_float(op, "query", q));
  AD_TRY(ad_nn_check_float(op, "key", k));
  AD_TRY(ad_nn_check_float(op, "value", v));
  AD_TRY(ad_nn_check_device(op, "key", q, k));
  AD_TRY(ad_nn_check_device(op, "value", q, v));
  AD_TRY(ad_nn_check_device(op, "mask", q, mask));
  if (q->ndim < 2 || k->ndim < 2 || v->ndim < 2)
    return AD_FAIL(AD_ESHAPE, "%s: query, key and value must be at least 2-D (..., L, D), got %s, %s, %s", op,
                   ad_shape_str(q->ndim, q->shape, s1, sizeof s1), ad_shape_str(k->ndim, k->shape, s2, sizeof s2),
                   ad_shape_str(v->ndim, v->shape, s3, sizeof s3));
  if (q->dtype != k->dtype || q->dtype != v->dtype)
    return AD_FAIL(AD_EDTYPE, "%s: query, key and value must have the same dtype, got %s, %s, %s", op,
                   ad_dtype_name(q->dtype), ad_dtype_name(k->dtype), ad_dtype_name(v->dtype));
  const int64_t Lq = q->shape[q->ndim - 2], D = q->shape[q->ndim - 1];
  const int64_t Lk = k->shape[k->ndim - 2];
  if (k->shape[k->ndim - 1] != D || v->shape[v->ndim - 2] != Lk)
    return AD_FAIL(AD_ESHAPE, "%s: expected query (..., Lq, D), key (..., Lk, D), value (..., Lk, Dv), got %s, %s, %s",
                   op, ad_shape_str(q->ndim, q->shape, s1, sizeof s1), ad_shape_str(k->ndim, k->shape, s2, sizeof s2),
                   ad_shape_str(v->ndim, v->shape, s3, sizeof s3));
  int nb = 0, nb2 = 0;
  int64_t bshape[AD_MAX_DIMS], b2[AD_MAX_DIMS];
  AD_TRY(ad_broadcast_shapes(&nb2, b2, q->ndim - 2, q->shape, k->ndim - 2, k->shape, op));
  AD_TRY(ad_broadcast_shapes(&nb, bshape, nb2, b2, v->ndim - 2, v->shape, op));
  if (nb + 2 > AD_MAX_DIMS) return AD_FAIL(AD_ESHAPE, "%s: too many batch dims", op);
  int64_t sshape[AD_MAX_DIMS];  /* (batch..., Lq, Lk) */
  memcpy(sshape, bshape, (size_t)nb * sizeof *sshape);
  sshape[nb] = Lq;
  sshape[nb + 1] = Lk;
  if (mask) {
    if (mask->dtype != AD_BOOL && !ad_dtype_is_float(mask->dtype))
      return AD_FAIL(AD_EDTYPE, "%s: mask must be bool (true = attend) or floating point (added to the scores), got %s",
                     op, ad_dtype_name(mask->dtype));
    int nm = 0;
    int64_t ms[AD_MAX_DIMS];
    if (mask->ndim > nb + 2 || ad_broadcast_shapes(&nm, ms, mask->ndim, mask->shape, nb + 2, sshape, op) != AD_OK ||
        !ad_shape_eq(nm, ms, nb + 2, sshape))
      return AD_FAIL(AD_ESHAPE, "%s: mask of shape %s does not broadcast to the score shape %s", op,
                     ad_shape_str(mask->ndim, mask->shape, s1, sizeof s1), ad_shape_str(nb + 2, sshape, s2, sizeof s2));
  }
  if (scale <= 0) scale = D > 0 ? 1.0 / sqrt((double)D) : 1.0;

  ad_status st;
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ad_nn_table(&nn, &bk, q));
  if (ad_nn_is_half(q->dtype) && (!nn->attention_half || half_attention_off())) {
    ad_tensor *qf = NULL, *kf = NULL, *vf = NULL, *mf = NULL, *y = NULL;
    AD_TRY_GOTO(st, ad_to_dtype(&qf, q, AD_F32), half_done);
    AD_TRY_GOTO(st, ad_to_dtype(&kf, k, AD_F32), half_done);
    AD_TRY_GOTO(st, ad_to_dtype(&vf, v, AD_F32), half_done);
    if (mask) AD_TRY_GOTO(st, ad_to_dtype(&mf, mask, mask->dtype == AD_BOOL ? AD_BOOL : AD_F32), half_done);
    AD_TRY_GOTO(st, ad_scaled_dot_product_attention(&y, qf, kf, vf, mf, scale, is_causal), half_done);
    st = ad_nn_back_to(out, y, q->dtype);
  half_done:
    ad_tensor_release(qf);
    ad_tensor_release(kf);
    ad_tensor_release(vf);
    ad_tensor_release(mf);
    return st;
  }

  AD_NEED_KERNEL(nn->attention_fwd, op, bk);
  const ad_dtype dt = q->dtype;
  const ad_dtype sdt = ad_nn_is_half(dt) ? AD_F32 : dt;   /* scores, lse, a float mask */
  ad_tensor *qc = NULL, *kc = NULL, *vc = NULL, *mc = NULL, *me = NULL, *y = NULL, *lse = NULL;
  AD_TRY_GOTO(st, expand_batch(&qc, q, nb, bshape), fail);
  AD_TRY_GOTO(st, expand_batch(&kc, k, nb, bshape), fail);
  AD_TRY_GOTO(st, expand_batch(&vc, v, nb, bshape), fail);
  if (mask) {
    AD_TRY_GOTO(st, ad_to_dtype(&mc, mask, mask->dtype == AD_BOOL ? AD_BOOL : sdt), fail);
    if (ad_shape_eq(mc->ndim, mc->shape, nb + 2, sshape)) { me = mc; ad_tensor_retain(me); }
    else AD_TRY_GOTO(st, ad_expand(&me, mc, nb + 2, sshape), fail);
  }
  {
    int64_t oshape[AD_MAX_DIMS];
    memcpy(oshape, bshape, (size_t)nb * sizeof *oshape);
    oshape[nb] = Lq;
    oshape[nb + 1] = v->shape[v->ndim - 1];
    AD_TRY_GOTO(st, ad_empty(&y, nb + 2, oshape, dt, q->storage->device), fail);
    AD_TRY_GOTO(st, ad_empty(&lse, nb + 1, oshape, sdt, q->storage->device), fail);
  }
  if (ad_numel(y) > 0 || ad_numel(lse) > 0)
    AD_TRY_GOTO(st, nn->attention_fwd(y, lse, qc, kc, vc, me, scale, is_causal), fail);
  {
    attn_attrs a = {scale, is_causal};
    /* a bool mask is not an input (it has no gradient), but backward reads it */
    ad_tensor *ins[4] = {qc, kc, vc, me && me->dtype != AD_BOOL ? me : NULL};
    ad_tensor *sv[5] = {qc, kc, vc, me, lse};
    AD_TRY_GOTO(st, ad_record(&ATTENTION, &y, 1, ins, 4, sv, 5, &a, sizeof a), fail);
  }
  ad_tensor_release(qc);
  ad_tensor_release(kc);
  ad_tensor_release(vc);
  ad_tensor_release(mc);
  ad_tensor_release(me);
  ad_tensor_release(lse);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(qc);
  ad_tensor_release(kc);
  ad_tensor_release(vc);
  ad_tensor_release(mc);
  ad_tensor_release(me);
  ad_tensor_release(y);
  ad_tensor_release(lse);
  return st;
}
