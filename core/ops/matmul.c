/* matmul.c: matmul (torch.matmul semantics), bmm and linear, with their
 * backward rules, on top of the backend's strided-batch GEMM.
 *
 * Operands reach the GEMM as they are whenever BLAS can read them: a matrix
 * whose rows or columns are unit-stride is passed with a leading dimension and
 * a transpose flag, and batch dimensions that collapse to one stride (0 when
 * broadcast) become the GEMM's batch stride. Anything else is copied once.
 * A batched (B..., m, k) @ (k, n) folds into one (B*m, k) @ (k, n) product,
 * which is what linear layers and their weight gradients hit. */
#include <string.h>
#include "../ad.h"
#include "../backend_blas.h"
#include "../autocast.h"

/* ---- operand description -------------------------------------------------- */

/* How BLAS reads one matrix of an operand: (rows x cols) with element (i, j)
 * at i*ld + j (trans false) or j*ld + i (trans true). */
typedef struct { bool trans; int64_t ld; } mat_layout;

static bool matrix_layout(int64_t rows, int64_t cols, int64_t srow, int64_t scol, mat_layout *L) {
  if (rows <= 1 && cols <= 1) { L->trans = false; L->ld = 1; return true; }
  if (cols == 1 || scol == 1) {          /* row-major */
    int64_t ld = rows == 1 ? cols : srow;
    if (ld >= (cols > 1 ? cols : 1)) { L->trans = false; L->ld = ld; return true; }
  }
  if (rows == 1 || srow == 1) {          /* column-major: BLAS sees the transpose */
    int64_t ld = cols == 1 ? rows : scol;
    if (ld >= (rows > 1 ? rows : 1)) { L->trans = true; L->ld = ld; return true; }
  }
  return false;
}

/* The single stride that walks t's batch dims (its dims before the last two,
 * aligned right against bshape) in row-major order of bshape; dims of size 1
 * in t are broadcast (stride 0). False when no single stride does. */
static bool batch_stride(const ad_tensor *t, int nb, const int64_t *bshape, int64_t *stride) {
  int tb = t->ndim - 2, lead = nb - tb;
  int64_t s = 0, span = 1;      /* span: elements of bshape inner to the current dim */
  bool have = false;
  for (int d = nb - 1; d >= 0; d--) {
    if (bshape[d] == 1) continue;
    int td = d - lead;
    int64_t sd = (td < 0 || t->shape[td] == 1) ? 0 : t->strides[td];
    if (!have) { s = sd; have = true; }
    else if (sd != s * span) return false;
    span *= bshape[d];
  }
  *stride = s;
  return true;
}

/* A tensor over x's storage with its own shape and strides (no autograd). */
static ad_status alias(ad_tensor **out, const ad_tensor *x, int ndim, const int64_t *shape,
                       const int64_t *strides) {
  return ad_tensor_from_storage(out, x->storage, x->offset, ndim, shape, strides, x->dtype);
}

/* x as >= 2-D: a 1-D (k) becomes (1, k) when it is a left operand, (k, 1) when right. */
static ad_status as_matrix(ad_tensor **out, const ad_tensor *x, bool left) {
  if (x->ndim >= 2) { ad_tensor_retain((ad_tensor *)x); *out = (ad_tensor *)x; return AD_OK; }
  int64_t k = x->shape[0], s = x->strides[0];
  if (left) return alias(out, x, 2, (int64_t[]){1, k}, (int64_t[]){k * s, s});
  return alias(out, x, 2, (int64_t[]){k, 1}, (int64_t[]){s, 1});
}

static ad_status need_gemm(const ad_backend **bk_out, const ad_tensor *t, const char *op) {
  const ad_backend *bk = ad_backend_of(t);
  if (!bk) return AD_EDEVICE;
  AD_NEED_KERNEL(bk->blas ? bk->blas->gemm : NULL, op, bk);
  *bk_out = bk;
  return AD_OK;
}

static ad_status check_operands(const char *op, const ad_tensor *a, const ad_tensor *b) {
  if (!ad_dtype_is_float(a->dtype) || !ad_dtype_is_float(b->dtype))
    return AD_FAIL(AD_EDTYPE, "%s: floating-point tensors expected, got %s and %s", op,
                   ad_dtype_name(a->dtype), ad_dtype_name(b->dtype));
  if (a->dtype != b->dtype)
    return AD_FAIL(AD_EDTYPE, "%s: both operands must have the same dtype, got %s and %s", op,
                   ad_dtype_name(a->dtype), ad_dtype_name(b->dtype));
  if (!ad_device_eq(a->storage->device, b->storage->device)) {
    char da[32], db[32];
    return AD_FAIL(AD_EDEVICE, "%s: operands are on different devices (%s and %s)", op,
                   ad_device_str(a->storage->device, da, sizeof da), ad_device_str(b->storage->device, db, sizeof db));
  }
  return AD_OK;
}

/* Prepares one >= 2-D operand: a BLAS-readable tensor (x itself, or a copy
 * expanded to the full batch) plus its layout and batch stride. */
static ad_status prepare_operand(ad_tensor **use, mat_layout *L, int64_t *bstride, const ad_tensor *x,
                                 int nb, const int64_t *bshape) {
  int nd = x->ndim;
  int64_t r = x->shape[nd - 2], c = x->shape[nd - 1];
  if (matrix_layout(r, c, x->strides[nd - 2], x->strides[nd - 1], L) && batch_stride(x, nb, bshape, bstride)) {
    ad_tensor_retain((ad_tensor *)x);
    *use = (ad_tensor *)x;
    return AD_OK;
  }
  /* copy: expanded to the full batch when its batch dims do not collapse */
  int64_t full[AD_MAX_DIMS];
  memcpy(full, bshape, (size_t)nb * sizeof *full);
  full[nb] = r;
  full[nb + 1] = c;
  ad_tensor *e = NULL, *cc = NULL;
  ad_status st;
  bool prev = ad_set_grad_enabled(false);
  st = ad_expand(&e, x, nb + 2, full);
  if (st == AD_OK) st = ad_contiguous(&cc, e);
  ad_set_grad_enabled(prev);
  ad_tensor_release(e);
  if (st != AD_OK) return st;
  matrix_layout(r, c, c, 1, L);
  *bstride = r * c;
  *use = cc;
  return AD_OK;
}

/* out (contiguous, batch x m x n elements) <- a2 @ b2, both >= 2-D, batch dims
 * already broadcast-checked into bshape (nb dims). */
static ad_status matmul_into(ad_tensor *out, const ad_tensor *a2, const ad_tensor *b2, int nb,
                             const int64_t *bshape, const char *op) {
  const ad_backend *bk = NULL;
  AD_TRY(need_gemm(&bk, a2, op));
  int64_t m = a2->shape[a2->ndim - 2], k = a2->shape[a2->ndim - 1], n = b2->shape[b2->ndim - 1];
  int64_t batch = 1;
  for (int d = 0; d < nb; d++) batch *= bshape[d];
  if (batch == 0 || m == 0 || n == 0) return AD_OK;
  ad_tensor *ua = NULL, *ub = NULL;
  mat_layout la = {false, 1}, lb = {false, 1};
  int64_t sa = 0, sb = 0;
  ad_status st;
  AD_TRY_GOTO(st, prepare_operand(&ua, &la, &sa, a2, nb, bshape), done);
  AD_TRY_GOTO(st, prepare_operand(&ub, &lb, &sb, b2, nb, bshape), done);
  ad_gemm_args g = {.batch = batch, .m = m, .n = n, .k = k, .trans_a = la.trans, .trans_b = lb.trans,
                    .lda = la.ld, .ldb = lb.ld, .ldc = n, .stride_a = sa, .stride_b = sb,
                    .stride_c = m * n, .alpha = 1.0, .beta = 0.0};
  /* (B, m, k) @ (k, n): one tall product when a's rows run on through its batch */
  if (batch > 1 && sb == 0 && !la.trans && (m == 1 ? sa >= (k > 1 ? k : 1) : sa == m * la.ld)) {
    g.lda = m == 1 ? sa : la.ld;
    g.m = batch * m;
    g.batch = 1;
  }
  st = bk->blas->gemm(out, ua, ub, &g);
done:
  ad_tensor_release(ua);
  ad_tensor_release(ub);
  return st;
}

/* ---- matmul / bmm ------------------------------------------------------------ */

static ad_status matmul_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin);
static const ad_opdef MATMUL = {"matmul", matmul_backward};
static const ad_opdef BMM = {"bmm", matmul_backward};

/* Shared by matmul and bmm: computes a @ b into a new tensor, without recording. */
static ad_status matmul_compute(ad_tensor **out, const ad_tensor *a, const ad_tensor *b, const char *op) {
  char sa[128], sb[128];
  AD_TRY(check_operands(op, a, b));
  if (a->ndim == 0 || b->ndim == 0)
    return AD_FAIL(AD_ESHAPE, "%s: both arguments need at least 1 dimension, got %d-D and %d-D", op, a->ndim, b->ndim);
  ad_tensor *a2 = NULL, *b2 = NULL, *y = NULL;
  ad_status st;
  AD_TRY_GOTO(st, as_matrix(&a2, a, true), fail);
  AD_TRY_GOTO(st, as_matrix(&b2, b, false), fail);
  if (a2->shape[a2->ndim - 1] != b2->shape[b2->ndim - 2]) {
    st = AD_FAIL(AD_ESHAPE, "%s: shapes %s and %s cannot be multiplied", op,
                 ad_shape_str(a->ndim, a->shape, sa, sizeof sa), ad_shape_str(b->ndim, b->shape, sb, sizeof sb));
    goto fail;
  }
  int nb = 0;
  int64_t bshape[AD_MAX_DIMS];
  AD_TRY_GOTO(st, ad_broadcast_shapes(&nb, bshape, a2->ndim - 2, a2->shape, b2->ndim - 2, b2->shape, op), fail);
  if (nb + 2 > AD_MAX_DIMS) { st = AD_FAIL(AD_ESHAPE, "%s: too many dimensions", op); goto fail; }
  int64_t oshape[AD_MAX_DIMS];
  int on = nb;
  memcpy(oshape, bshape, (size_t)nb * sizeof *oshape);
  if (a->ndim >= 2) oshape[on++] = a2->shape[a2->ndim - 2];
  if (b->ndim >= 2) oshape[on++] = b2->shape[b2->ndim - 1];
  AD_TRY_GOTO(st, ad_empty(&y, on, oshape, a->dtype, a->storage->device), fail);
  AD_TRY_GOTO(st, matmul_into(y, a2, b2, nb, bshape, op), fail);
  ad_tensor_release(a2);
  ad_tensor_release(b2);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(a2);
  ad_tensor_release(b2);
  ad_tensor_release(y);
  return st;
}

static ad_status record_product(ad_tensor **out, ad_tensor *y, const ad_opdef *op, const ad_tensor *a,
                                const ad_tensor *b) {
  ad_tensor *ins[2] = {(ad_tensor *)a, (ad_tensor *)b};
  ad_status st = ad_record(op, &y, 1, ins, 2, ins, 2, NULL, 0);
  if (st != AD_OK) { ad_tensor_release(y); return st; }
  *out = y;
  return AD_OK;
}

ad_status ad_matmul(ad_tensor **out, const ad_tensor *a, const ad_tensor *b) {
  if (ad_autocast_applies((const ad_tensor *[]){a, b}, 2)) {   /* autocast (issue 3): run in its dtype */
    ad_tensor *c[2];
    ad_status st = ad_autocast_cast(c, (const ad_tensor *[]){a, b}, 2);
    if (st == AD_OK) st = ad_matmul(out, c[0], c[1]);
    ad_autocast_release(c, 2);
    return st;
  }
  ad_tensor *y = NULL;
  AD_TRY(matmul_compute(&y, a, b, "matmul"));
  return record_product(out, y, &MATMUL, a, b);
}

ad_status ad_bmm(ad_tensor **out, const ad_tensor *a, const ad_tensor *b) {
  char sa[128], sb[128];
  if (ad_autocast_applies((const ad_tensor *[]){a, b}, 2)) {   /* autocast (issue 3): run in its dtype */
    ad_tensor *c[2];
    ad_status st = ad_autocast_cast(c, (const ad_tensor *[]){a, b}, 2);
    if (st == AD_OK) st = ad_bmm(out, c[0], c[1]);
    ad_autocast_release(c, 2);
    return st;
  }
  if (a->ndim != 3 || b->ndim != 3)
    return AD_FAIL(AD_ESHAPE, "bmm: expected 3-D tensors (B, n, k) and (B, k, m), got %s and %s",
                   ad_shape_str(a->ndim, a->shape, sa, sizeof sa), ad_shape_str(b->ndim, b->shape, sb, sizeof sb));
  if (a->shape[0] != b->shape[0])
    return AD_FAIL(AD_ESHAPE, "bmm: batch sizes differ: %s and %s",
                   ad_shape_str(a->ndim, a->shape, sa, sizeof sa), ad_shape_str(b->ndim, b->shape, sb, sizeof sb));
  ad_tensor *y = NULL;
  AD_TRY(matmul_compute(&y, a, b, "bmm"));
  return record_product(out, y, &BMM, a, b);
}

/* x with one size-1 dim inserted at position d counted from the end (1 or 2). */
static ad_status unsqueeze_from_end(ad_tensor **out, const ad_tensor *x, int from_end) {
  return ad_unsqueeze(out, x, x->ndim + 1 - from_end);
}

/* a: (..., m, k) or (k); b: (..., k, n) or (k); g like the output.
 * grad_a = g @ b^T, grad_b = a^T @ g, in >= 2-D form; the engine sums the
 * broadcast batch dims. A 2-D b under a batched a folds the batch into rows. */
static ad_status matmul_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const ad_tensor *a = node->saved[0], *b = node->saved[1];
  ad_tensor *a2 = NULL, *b2 = NULL, *g2 = NULL, *g1 = NULL, *t = NULL, *r = NULL, *f1 = NULL, *f2 = NULL;
  ad_status st;
  AD_TRY_GOTO(st, as_matrix(&a2, a, true), done);
  AD_TRY_GOTO(st, as_matrix(&b2, b, false), done);
  /* g in >= 2-D form: re-insert the dims a 1-D operand dropped */
  if (a->ndim == 1) AD_TRY_GOTO(st, unsqueeze_from_end(&g1, gout[0], b->ndim == 1 ? 1 : 2), done);
  else { ad_tensor_retain(gout[0]); g1 = gout[0]; }
  if (b->ndim == 1) AD_TRY_GOTO(st, unsqueeze_from_end(&g2, g1, 1), done);
  else { ad_tensor_retain(g1); g2 = g1; }

  if (node->needs_grad[0]) {
    AD_TRY_GOTO(st, ad_transpose(&t, b2, b2->ndim - 2, b2->ndim - 1), done);
    AD_TRY_GOTO(st, ad_matmul(&r, g2, t), done);
    ad_tensor_release(t); t = NULL;
    if (a->ndim == 1) {           /* (..., 1, k) -> (..., k) */
      AD_TRY_GOTO(st, ad_squeeze(&t, r, r->ndim - 2), done);
      ad_tensor_release(r); r = t; t = NULL;
    }
    gin[0] = r; r = NULL;
  }
  if (node->needs_grad[1]) {
    int64_t k = a2->shape[a2->ndim - 1], n = g2->shape[g2->ndim - 1];
    if (b2->ndim == 2 && a2->ndim > 2) {
      AD_TRY_GOTO(st, ad_reshape(&f1, a2, 2, (int64_t[]){-1, k}), done);
      AD_TRY_GOTO(st, ad_reshape(&f2, g2, 2, (int64_t[]){-1, n}), done);
      AD_TRY_GOTO(st, ad_transpose(&t, f1, 0, 1), done);
      AD_TRY_GOTO(st, ad_matmul(&r, t, f2), done);
    } else {
      AD_TRY_GOTO(st, ad_transpose(&t, a2, a2->ndim - 2, a2->ndim - 1), done);
      AD_TRY_GOTO(st, ad_matmul(&r, t, g2), done);
    }
    ad_tensor_release(t); t = NULL;
    if (b->ndim == 1) {           /* (..., k, 1) -> (..., k) */
      AD_TRY_GOTO(st, ad_squeeze(&t, r, r->ndim - 1), done);
      ad_tensor_release(r); r = t; t = NULL;
    }
    gin[1] = r; r = NULL;
  }
done:
  ad_tensor_release(a2); ad_tensor_release(b2); ad_tensor_release(g1); ad_tensor_release(g2);
  ad_tensor_release(t); ad_tensor_release(r); ad_tensor_release(f1); ad_tensor_release(f2);
  return st;
}

/* ---- linear: y = x @ w^T + b ---------------------------------------------- */

static ad_status linear_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin);
static const ad_opdef LINEAR = {"linear", linear_backward};

ad_status ad_linear(ad_tensor **out, const ad_tensor *x, const ad_tensor *w, const ad_tensor *b) {
  char sx[128], sw[128];
  if (ad_autocast_applies((const ad_tensor *[]){x, w, b}, 3)) {   /* autocast (issue 3): run in its dtype */
    ad_tensor *c[3];
    ad_status st = ad_autocast_cast(c, (const ad_tensor *[]){x, w, b}, 3);
    if (st == AD_OK) st = ad_linear(out, c[0], c[1], c[2]);
    ad_autocast_release(c, 3);
    return st;
  }
  AD_TRY(check_operands("linear", x, w));
  if (w->ndim != 2)
    return AD_FAIL(AD_ESHAPE, "linear: weight must be 2-D (out_features, in_features), got %d-D %s", w->ndim,
                   ad_shape_str(w->ndim, w->shape, sw, sizeof sw));
  int64_t of = w->shape[0], inf = w->shape[1];
  if (x->ndim == 0 || x->shape[x->ndim - 1] != inf)
    return AD_FAIL(AD_ESHAPE, "linear: input %s does not end in in_features = %lld (weight %s)",
                   ad_shape_str(x->ndim, x->shape, sx, sizeof sx), (long long)inf,
                   ad_shape_str(w->ndim, w->shape, sw, sizeof sw));
  if (b) {
    if (b->dtype != x->dtype)
      return AD_FAIL(AD_EDTYPE, "linear: bias dtype %s differs from input dtype %s", ad_dtype_name(b->dtype),
                     ad_dtype_name(x->dtype));
    if (!ad_device_eq(b->storage->device, x->storage->device))
      return AD_FAIL(AD_EDEVICE, "linear: bias is on another device than the input");
    if (!(b->ndim == 1 && b->shape[0] == of) && !(b->ndim == 0 && of == 1))
      return AD_FAIL(AD_ESHAPE, "linear: bias must be 1-D of size out_features = %lld, got %s", (long long)of,
                     ad_shape_str(b->ndim, b->shape, sx, sizeof sx));
  }
  const ad_backend *bk = NULL;
  AD_TRY(need_gemm(&bk, x, "linear"));
  int64_t oshape[AD_MAX_DIMS];
  memcpy(oshape, x->shape, sizeof oshape);
  oshape[x->ndim - 1] = of;
  int64_t M = 1;
  for (int d = 0; d < x->ndim - 1; d++) M *= x->shape[d];

  ad_tensor *xc = NULL, *y = NULL;
  ad_status st;
  /* x as an (M, in) matrix: its leading dims must collapse into one row stride */
  mat_layout lx = {false, 1}, lw = {false, 1};
  int64_t rs = 0;
  bool ok = x->ndim == 1;
  if (x->ndim == 1) rs = inf * x->strides[0];
  else {
    int64_t s = 0, span = 1;
    bool have = false;
    ok = true;
    for (int d = x->ndim - 2; d >= 0 && ok; d--) {
      if (x->shape[d] == 1) continue;
      if (!have) { s = x->strides[d]; have = true; }
      else if (x->strides[d] != s * span) ok = false;
      span *= x->shape[d];
    }
    rs = have ? s : inf;
  }
  ok = ok && matrix_layout(M, inf, rs, x->strides[x->ndim - 1], &lx);
  if (ok) { ad_tensor_retain((ad_tensor *)x); xc = (ad_tensor *)x; }
  else {
    bool prev = ad_set_grad_enabled(false);
    st = ad_contiguous(&xc, x);
    ad_set_grad_enabled(prev);
    if (st != AD_OK) return st;
    matrix_layout(M, inf, inf, 1, &lx);
  }
  ad_tensor *wc = NULL;
  if (matrix_layout(of, inf, w->strides[0], w->strides[1], &lw)) { ad_tensor_retain((ad_tensor *)w); wc = (ad_tensor *)w; }
  else {
    bool prev = ad_set_grad_enabled(false);
    st = ad_contiguous(&wc, w);
    ad_set_grad_enabled(prev);
    if (st != AD_OK) goto fail;
    matrix_layout(of, inf, inf, 1, &lw);
  }
  AD_TRY_GOTO(st, ad_empty(&y, x->ndim, oshape, x->dtype, x->storage->device), fail);
  if (b) {
    bool prev = ad_set_grad_enabled(false);
    st = ad_copy_(y, b);          /* broadcast the bias into every row; GEMM adds on top */
    ad_set_grad_enabled(prev);
    if (st != AD_OK) goto fail;
  }
  if (M > 0 && of > 0) {
    ad_gemm_args g = {.batch = 1, .m = M, .n = of, .k = inf, .trans_a = lx.trans, .trans_b = !lw.trans,
                      .lda = lx.ld, .ldb = lw.ld, .ldc = of, .stride_a = 0, .stride_b = 0, .stride_c = 0,
                      .alpha = 1.0, .beta = b ? 1.0 : 0.0};
    AD_TRY_GOTO(st, bk->blas->gemm(y, xc, wc, &g), fail);
  }
  ad_tensor *ins[3] = {(ad_tensor *)x, (ad_tensor *)w, (ad_tensor *)b};
  ad_tensor *saved[2] = {(ad_tensor *)x, (ad_tensor *)w};
  AD_TRY_GOTO(st, ad_record(&LINEAR, &y, 1, ins, b ? 3 : 2, saved, 2, NULL, 0), fail);
  ad_tensor_release(xc);
  ad_tensor_release(wc);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(xc);
  ad_tensor_release(wc);
  ad_tensor_release(y);
  return st;
}

/* dx = g @ w;  dw = g2^T @ x2 over all leading dims folded;  db = sum of g over rows */
static ad_status linear_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const ad_tensor *x = node->saved[0], *w = node->saved[1];
  ad_tensor *g = gout[0];
  int64_t of = w->shape[0], inf = w->shape[1];
  ad_tensor *g2 = NULL, *x2 = NULL, *t = NULL;
  ad_status st = AD_OK;
  if (node->needs_grad[0]) AD_TRY_GOTO(st, ad_matmul(&gin[0], g, w), done);
  if (node->needs_grad[1]) {
    AD_TRY_GOTO(st, ad_reshape(&g2, g, 2, (int64_t[]){-1, of}), done);
    AD_TRY_GOTO(st, ad_reshape(&x2, x, 2, (int64_t[]){-1, inf}), done);
    AD_TRY_GOTO(st, ad_transpose(&t, g2, 0, 1), done);
    AD_TRY_GOTO(st, ad_matmul(&gin[1], t, x2), done);
  }
  if (node->n_inputs > 2 && node->needs_grad[2]) {
    if (g->ndim == 1) { ad_tensor_retain(g); gin[2] = g; }
    else {
      int dims[AD_MAX_DIMS];
      for (int d = 0; d < g->ndim - 1; d++) dims[d] = d;
      AD_TRY_GOTO(st, ad_sum(&gin[2], g, g->ndim - 1, dims, false), done);
    }
  }
done:
  ad_tensor_release(g2);
  ad_tensor_release(x2);
  ad_tensor_release(t);
  return st;
}
