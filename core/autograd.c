/* autograd.c: node recording and the backward engine.
 *
 * Saved tensors are stored as detached aliases (same storage, no grad_fn):
 * a node that saved its own output would otherwise hold a reference cycle
 * (output -> grad_fn -> saved output). Consumers are always created after
 * their inputs, so sorting the reachable nodes by creation sequence,
 * newest first, is a topological order for backward. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "autograd.h"
#include "backend.h"
#include "ops.h"

static _Thread_local int grad_disabled;   /* 0: enabled (default) */
static _Atomic uint64_t node_seq;

bool ad_grad_enabled(void) { return !grad_disabled; }
bool ad_set_grad_enabled(bool on) {
  bool prev = !grad_disabled;
  grad_disabled = !on;
  return prev;
}

bool ad_is_leaf(const ad_tensor *t) { return t->grad_fn == NULL; }

bool ad_needs_record(ad_tensor *const *inputs, int n_in) {
  if (grad_disabled) return false;
  for (int i = 0; i < n_in; i++)
    if (inputs[i] && inputs[i]->requires_grad) return true;
  return false;
}

ad_status ad_set_requires_grad(ad_tensor *t, bool on) {
  if (!ad_is_leaf(t))
    return AD_FAIL(AD_EINVAL, "requires_grad can only be changed on leaf tensors (this one was computed by %s); use detach()",
                   t->grad_fn->op->name);
  if (on && !ad_dtype_is_float(t->dtype))
    return AD_FAIL(AD_EDTYPE, "only floating-point tensors can require gradients, got %s", ad_dtype_name(t->dtype));
  t->requires_grad = on;
  return AD_OK;
}

ad_status ad_detach(ad_tensor **out, const ad_tensor *t) {
  return ad_tensor_from_storage(out, t->storage, t->offset, t->ndim, t->shape, t->strides, t->dtype);
}

ad_status ad_zero_grad(ad_tensor *t, bool set_to_none) {
  if (!t->grad) return AD_OK;
  if (set_to_none) { ad_tensor_release(t->grad); t->grad = NULL; return AD_OK; }
  return ad_fill_(t->grad, 0.0);
}

void ad_node_retain(ad_node *n) { if (n) atomic_fetch_add(&n->refcount, 1); }

static void node_release_saved(ad_node *n) {
  for (int i = 0; i < n->n_saved; i++) { ad_tensor_release(n->saved[i]); n->saved[i] = NULL; }
}

void ad_node_release(ad_node *n) {
  if (!n || atomic_fetch_sub(&n->refcount, 1) != 1) return;
  for (int i = 0; i < n->n_inputs; i++) {
    ad_node_release(n->edges[i].node);
    ad_tensor_release(n->edges[i].leaf);
  }
  node_release_saved(n);
  for (int k = 0; k < n->n_outputs; k++) ad_tensor_release(n->grad_acc[k]);
  if (n->attrs) { if (n->attrs_free) n->attrs_free(n->attrs); else free(n->attrs); }
  free(n->edges);
  free(n->needs_grad);
  free(n->saved);
  free(n);
}

static ad_status record(const ad_opdef *op, ad_tensor *const *outputs, int n_out,
                        ad_tensor *const *inputs, int n_in, ad_tensor *const *saved, int n_saved,
                        void *attrs, void (*attrs_free)(void *), bool *took_attrs) {
  *took_attrs = false;
  if (!ad_needs_record(inputs, n_in)) return AD_OK;
  if (!op->backward) {
    for (int i = 0; i < n_in; i++)
      if (inputs[i] && inputs[i]->requires_grad)
        return AD_FAIL(AD_ENOTIMPL, "%s: is not differentiable, but input %d requires grad (detach it, or use no_grad)",
                       op->name, i + 1);
  }
  if (n_out > AD_MAX_NODE_OUTPUTS) return AD_FAIL(AD_EINVAL, "%s: too many outputs (%d)", op->name, n_out);
  ad_node *n = calloc(1, sizeof *n);
  if (!n) return AD_FAIL(AD_ENOMEM, "out of memory recording %s", op->name);
  atomic_init(&n->refcount, 0);
  n->op = op;
  n->n_inputs = n_in;
  n->edges = calloc((size_t)(n_in ? n_in : 1), sizeof *n->edges);
  n->needs_grad = calloc((size_t)(n_in ? n_in : 1), sizeof *n->needs_grad);
  n->saved = calloc((size_t)(n_saved ? n_saved : 1), sizeof *n->saved);
  if (!n->edges || !n->needs_grad || !n->saved) goto oom;
  for (int i = 0; i < n_in; i++) {
    ad_tensor *x = inputs[i];
    ad_edge *e = &n->edges[i];
    if (!x) continue;
    e->ndim = x->ndim;
    memcpy(e->shape, x->shape, sizeof e->shape);
    e->dtype = x->dtype;
    if (x->grad_fn) {
      e->node = x->grad_fn;
      ad_node_retain(e->node);
      e->output_nr = x->output_nr;
      n->needs_grad[i] = true;
    } else if (x->requires_grad) {
      e->leaf = x;
      ad_tensor_retain(x);
      n->needs_grad[i] = true;
    }
  }
  n->n_saved = n_saved;
  for (int i = 0; i < n_saved; i++) {
    if (!saved[i]) continue;
    if (ad_detach(&n->saved[i], saved[i]) != AD_OK) goto oom;
  }
  n->n_outputs = n_out;
  for (int k = 0; k < n_out; k++) {
    ad_tensor *y = outputs[k];
    n->out_ndim[k] = y->ndim;
    memcpy(n->out_shape[k], y->shape, sizeof n->out_shape[k]);
    n->out_dtype[k] = y->dtype;
    n->out_device[k] = y->storage->device;
  }
  n->attrs = attrs;
  n->attrs_free = attrs_free;
  *took_attrs = true;
  n->seq = atomic_fetch_add(&node_seq, 1);
  for (int k = 0; k < n_out; k++) {
    ad_tensor *y = outputs[k];
    if (!ad_dtype_is_float(y->dtype)) continue;    /* integer outputs (indices) carry no grad */
    ad_node_release(y->grad_fn);
    y->grad_fn = n;
    ad_node_retain(n);
    y->output_nr = k;
    y->requires_grad = true;
  }
  if (atomic_load(&n->refcount) == 0) { atomic_init(&n->refcount, 1); ad_node_release(n); }
  return AD_OK;
oom:
  n->attrs = NULL;
  atomic_init(&n->refcount, 1);
  ad_node_release(n);
  return AD_FAIL(AD_ENOMEM, "out of memory recording %s", op->name);
}

ad_status ad_record(const ad_opdef *op, ad_tensor *const *outputs, int n_out,
                    ad_tensor *const *inputs, int n_in, ad_tensor *const *saved, int n_saved,
                    const void *attrs, size_t attrs_size) {
  if (!ad_needs_record(inputs, n_in)) return AD_OK;
  void *copy = NULL;
  if (attrs && attrs_size) {
    copy = malloc(attrs_size);
    if (!copy) return AD_FAIL(AD_ENOMEM, "out of memory recording %s", op->name);
    memcpy(copy, attrs, attrs_size);
  }
  bool took;
  ad_status st = record(op, outputs, n_out, inputs, n_in, saved, n_saved, copy, NULL, &took);
  if (!took) free(copy);
  return st;
}

ad_status ad_record_owned(const ad_opdef *op, ad_tensor *const *outputs, int n_out,
                          ad_tensor *const *inputs, int n_in, ad_tensor *const *saved, int n_saved,
                          void *attrs, void (*attrs_free)(void *)) {
  bool took;
  ad_status st = record(op, outputs, n_out, inputs, n_in, saved, n_saved, attrs, attrs_free, &took);
  if (!took && attrs && attrs_free) attrs_free(attrs);
  return st;
}

/* ---- backward ---- */

ad_status ad_sum_to_shape(ad_tensor **out, ad_tensor *g, int ndim, const int64_t *shape) {
  if (ad_shape_eq(g->ndim, g->shape, ndim, shape)) { ad_tensor_retain(g); *out = g; return AD_OK; }
  int lead = g->ndim - ndim;
  if (lead < 0) {
    char a[128], b[128];
    return AD_FAIL(AD_ESHAPE, "backward: gradient of shape %s cannot be reduced to input shape %s",
                   ad_shape_str(g->ndim, g->shape, a, sizeof a), ad_shape_str(ndim, shape, b, sizeof b));
  }
  int dims[AD_MAX_DIMS], nd = 0;
  for (int d = 0; d < g->ndim; d++) {
    if (d < lead) dims[nd++] = d;
    else if (shape[d - lead] == 1 && g->shape[d] != 1) dims[nd++] = d;
    else if (shape[d - lead] != g->shape[d]) {
      char a[128], b[128];
      return AD_FAIL(AD_ESHAPE, "backward: gradient of shape %s does not match input shape %s",
                     ad_shape_str(g->ndim, g->shape, a, sizeof a), ad_shape_str(ndim, shape, b, sizeof b));
    }
  }
  ad_tensor *s = NULL;
  if (nd == 0) { s = g; ad_tensor_retain(s); }
  else AD_TRY(ad_sum(&s, g, nd, dims, true));
  ad_status st = ad_reshape(out, s, ndim, shape);
  ad_tensor_release(s);
  return st;
}

static int cmp_seq_desc(const void *a, const void *b) {
  uint64_t x = (*(ad_node *const *)a)->seq, y = (*(ad_node *const *)b)->seq;
  return x < y ? 1 : x > y ? -1 : 0;
}

typedef struct { ad_node **v; int n, cap; } node_vec;
static int vec_push(node_vec *v, ad_node *n) {
  if (v->n == v->cap) {
    int cap = v->cap ? v->cap * 2 : 64;
    ad_node **nv = realloc(v->v, (size_t)cap * sizeof *nv);
    if (!nv) return -1;
    v->v = nv; v->cap = cap;
  }
  v->v[v->n++] = n;
  return 0;
}

/* Accumulate g (a reference we own) into a slot: first grad is kept, later
 * ones are added out of place (a rule may hand back an alias of its input). */
static ad_status acc_slot(ad_tensor **slot, ad_tensor *g) {
  if (!*slot) { *slot = g; return AD_OK; }
  ad_tensor *sum = NULL;
  ad_status st = ad_add(&sum, *slot, g);
  ad_tensor_release(g);
  if (st != AD_OK) return st;
  ad_tensor_release(*slot);
  *slot = sum;
  return AD_OK;
}

/* Leaves get an exclusive contiguous .grad so that in-place optimizer
 * updates and later accumulation never write through an alias. */
static ad_status acc_leaf(ad_tensor *leaf, ad_tensor *g) {
  ad_status st = AD_OK;
  if (!leaf->grad) {
    if (ad_is_contiguous(g) && atomic_load(&g->refcount) == 1 && g->storage->refcount == 1 &&
        ad_numel(g) * (int64_t)ad_dtype_size(g->dtype) == (int64_t)g->storage->nbytes) {
      leaf->grad = g;
      return AD_OK;
    }
    ad_tensor *c = NULL;
    st = ad_empty_like(&c, leaf);
    if (st == AD_OK) st = ad_copy_(c, g);
    if (st == AD_OK) leaf->grad = c; else ad_tensor_release(c);
  } else {
    st = ad_add_(leaf->grad, g);
  }
  ad_tensor_release(g);
  return st;
}

/* Bring a rule's gradient to the input's shape and dtype (consumes g). */
static ad_status fit_grad(ad_tensor **out, ad_tensor *g, const ad_edge *e) {
  ad_tensor *r = NULL, *c = NULL;
  ad_status st = ad_sum_to_shape(&r, g, e->ndim, e->shape);
  ad_tensor_release(g);
  if (st != AD_OK) return st;
  if (r->dtype != e->dtype && ad_dtype_is_float(e->dtype)) {
    st = ad_to_dtype(&c, r, e->dtype);
    ad_tensor_release(r);
    if (st != AD_OK) return st;
    r = c;
  }
  *out = r;
  return AD_OK;
}

ad_status ad_backward(ad_tensor *const *roots, ad_tensor *const *grads, int n, bool retain_graph) {
  ad_status st = AD_OK;
  node_vec all = {0}, stack = {0};
  bool prev_mode = ad_set_grad_enabled(false);

  /* seed gradients */
  for (int i = 0; i < n && st == AD_OK; i++) {
    ad_tensor *r = roots[i];
    if (!r->requires_grad) {
      st = AD_FAIL(AD_EINVAL, "backward: tensor %d does not require grad and has no grad_fn", i + 1);
      break;
    }
    ad_tensor *g = NULL;
    if (grads && grads[i]) {
      if (!ad_shape_eq(grads[i]->ndim, grads[i]->shape, r->ndim, r->shape)) {
        char a[128], b[128];
        st = AD_FAIL(AD_ESHAPE, "backward: gradient has shape %s but the tensor has shape %s",
                     ad_shape_str(grads[i]->ndim, grads[i]->shape, a, sizeof a), ad_shape_str(r->ndim, r->shape, b, sizeof b));
        break;
      }
      g = grads[i];
      ad_tensor_retain(g);
    } else {
      if (ad_numel(r) != 1) {
        char a[128];
        st = AD_FAIL(AD_EINVAL, "backward: grad can be implicitly created only for one-element tensors; this one has shape %s (pass a gradient)",
                     ad_shape_str(r->ndim, r->shape, a, sizeof a));
        break;
      }
      st = ad_full(&g, r->ndim, r->shape, 1.0, r->dtype, r->storage->device);
      if (st != AD_OK) break;
    }
    if (!r->grad_fn) { st = acc_leaf(r, g); continue; }
    if (r->grad_fn->released_saved) {
      ad_tensor_release(g);
      st = AD_FAIL(AD_EINVAL, "backward: trying to backward through the graph a second time; pass retain_graph=true the first time");
      break;
    }
    st = acc_slot(&r->grad_fn->grad_acc[r->output_nr], g);
    if (st == AD_OK && r->grad_fn->pending == 0) {
      r->grad_fn->pending = 1;             /* mark visited */
      if (vec_push(&stack, r->grad_fn) || vec_push(&all, r->grad_fn)) st = AD_FAIL(AD_ENOMEM, "backward: out of memory");
    }
  }
  /* collect reachable nodes */
  while (st == AD_OK && stack.n > 0) {
    ad_node *nd = stack.v[--stack.n];
    for (int i = 0; i < nd->n_inputs; i++) {
      ad_node *m = nd->edges[i].node;
      if (m && m->pending == 0) {
        m->pending = 1;
        if (vec_push(&stack, m) || vec_push(&all, m)) { st = AD_FAIL(AD_ENOMEM, "backward: out of memory"); break; }
      }
    }
  }
  if (st == AD_OK) qsort(all.v, (size_t)all.n, sizeof *all.v, cmp_seq_desc);

  for (int k = 0; k < all.n && st == AD_OK; k++) {
    ad_node *nd = all.v[k];
    bool any = false;
    for (int o = 0; o < nd->n_outputs; o++) any |= nd->grad_acc[o] != NULL;
    if (!any) continue;
    if (nd->released_saved) {
      st = AD_FAIL(AD_EINVAL, "backward: trying to backward through the graph a second time (through %s); pass retain_graph=true the first time",
                   nd->op->name);
      break;
    }
    /* a missing output gradient is zeros, so rules never see NULL for outputs they read */
    for (int o = 0; o < nd->n_outputs && st == AD_OK; o++)
      if (!nd->grad_acc[o])
        st = ad_zeros(&nd->grad_acc[o], nd->out_ndim[o], nd->out_shape[o], nd->out_dtype[o], nd->out_device[o]);
    if (st != AD_OK) break;
    ad_tensor *gin_stack[8];
    ad_tensor **gin = nd->n_inputs <= 8 ? gin_stack : calloc((size_t)nd->n_inputs, sizeof *gin);
    if (!gin) { st = AD_FAIL(AD_ENOMEM, "backward: out of memory"); break; }
    for (int i = 0; i < nd->n_inputs; i++) gin[i] = NULL;
    st = nd->op->backward(nd, nd->grad_acc, gin);
    if (st != AD_OK) ad_fail_context(st, "backward of %s", nd->op->name);
    for (int i = 0; i < nd->n_inputs; i++) {
      ad_tensor *g = gin[i];
      if (!g) continue;
      ad_edge *e = &nd->edges[i];
      if (st != AD_OK || !nd->needs_grad[i]) { ad_tensor_release(g); continue; }
      ad_tensor *fitted = NULL;
      st = fit_grad(&fitted, g, e);
      if (st != AD_OK) { ad_fail_context(st, "backward of %s", nd->op->name); continue; }
      if (e->node) st = acc_slot(&e->node->grad_acc[e->output_nr], fitted);
      else st = acc_leaf(e->leaf, fitted);
    }
    if (gin != gin_stack) free(gin);
    for (int o = 0; o < nd->n_outputs; o++) { ad_tensor_release(nd->grad_acc[o]); nd->grad_acc[o] = NULL; }
    if (!retain_graph && st == AD_OK && nd->n_saved > 0) { node_release_saved(nd); nd->released_saved = true; }
  }
  /* reset bookkeeping, also on failure */
  for (int k = 0; k < all.n; k++) {
    ad_node *nd = all.v[k];
    nd->pending = 0;
    for (int o = 0; o < nd->n_outputs; o++) { ad_tensor_release(nd->grad_acc[o]); nd->grad_acc[o] = NULL; }
  }
  for (int i = 0; i < n; i++)
    if (roots[i]->grad_fn && roots[i]->grad_fn->pending) roots[i]->grad_fn->pending = 0;
  free(all.v);
  free(stack.v);
  ad_set_grad_enabled(prev_mode);
  return st;
}
