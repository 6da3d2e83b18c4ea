/* autograd.h: the dynamic tape.
 *
 * Every differentiable op's front end calls ad_record() after computing its
 * outputs. When grad mode is on and some input requires grad, a node is made:
 * it holds the op's backward rule, references to the saved tensors, an
 * optional attrs blob, and one edge per input (the input's grad_fn, or the
 * input itself when it is a leaf that requires grad). Outputs get grad_fn set.
 *
 * ad_backward() walks the graph from a root in reverse topological order,
 * calling each node's backward with the gradients of its outputs. Backward
 * rules run with grad mode off and are written with core ops, so they work on
 * every device. A rule returns gradients shaped like the forward's inputs or
 * broadcastable to them: the engine sums broadcast dimensions away centrally.
 *
 * Gradients ACCUMULATE into leaf .grad (+=, as in PyTorch); optimizers'
 * zero_grad clears them. */
#ifndef AD_AUTOGRAD_H
#define AD_AUTOGRAD_H

#include "tensor.h"

#define AD_MAX_NODE_OUTPUTS 16

typedef struct ad_node ad_node;

/* grads_out[k]: gradient for output k (NULL if no gradient flowed there).
 * grads_in[i]: set by the rule; NULL when input i needs no gradient. The
 * engine owns (releases) what the rule writes into grads_in. */
typedef ad_status (*ad_backward_fn)(ad_node *node, ad_tensor *const *grads_out, ad_tensor **grads_in);

typedef struct ad_opdef {
  const char *name;
  ad_backward_fn backward;
} ad_opdef;

typedef struct ad_edge {
  ad_node *node;         /* input's grad_fn (owned ref), or NULL */
  ad_tensor *leaf;       /* leaf requiring grad (owned ref), or NULL */
  int output_nr;         /* which output of node */
  int ndim;              /* input's shape: the engine reduces broadcast grads to it */
  int64_t shape[AD_MAX_DIMS];
  ad_dtype dtype;
} ad_edge;

struct ad_node {
  _Atomic long refcount;
  const ad_opdef *op;
  int n_inputs;
  ad_edge *edges;        /* n_inputs */
  bool *needs_grad;      /* n_inputs: does input i need a gradient */
  int n_saved;
  ad_tensor **saved;     /* owned refs, may contain NULL */
  int n_outputs;
  int out_ndim[AD_MAX_NODE_OUTPUTS];
  int64_t out_shape[AD_MAX_NODE_OUTPUTS][AD_MAX_DIMS];
  ad_dtype out_dtype[AD_MAX_NODE_OUTPUTS];
  ad_device out_device[AD_MAX_NODE_OUTPUTS];
  void *attrs;           /* op-specific copy (owned, free()d) */
  /* for ops defined outside the core (Lua functions): called on release */
  void (*attrs_free)(void *attrs);
  uint64_t seq;          /* creation order: later nodes run first in backward */
  /* backward bookkeeping */
  ad_tensor *grad_acc[AD_MAX_NODE_OUTPUTS];
  int pending;
  bool released_saved;   /* after backward without retain_graph */
};

/* ---- grad mode (thread-local) ---- */
bool ad_grad_enabled(void);
bool ad_set_grad_enabled(bool on);   /* returns the previous mode */

/* Records a node for outputs[0..n_out) computed from inputs[0..n_in).
 * saved: tensors the backward needs (references are taken). attrs: copied
 * (attrs_size bytes) if not NULL. A no-op when grad mode is off or no input
 * requires grad. An op without backward passes op->backward == NULL: then an
 * input requiring grad is an AD_ENOTIMPL error naming the op. */
ad_status ad_record(const ad_opdef *op, ad_tensor *const *outputs, int n_out,
                    ad_tensor *const *inputs, int n_in,
                    ad_tensor *const *saved, int n_saved,
                    const void *attrs, size_t attrs_size);
/* Same, but takes ownership of an already allocated attrs with its destructor
 * (used by the bindings for Lua-defined functions). */
ad_status ad_record_owned(const ad_opdef *op, ad_tensor *const *outputs, int n_out,
                          ad_tensor *const *inputs, int n_in,
                          ad_tensor *const *saved, int n_saved,
                          void *attrs, void (*attrs_free)(void *));
/* Would ad_record record for these inputs? (lets ops skip saving work) */
bool ad_needs_record(ad_tensor *const *inputs, int n_in);

void ad_node_retain(ad_node *n);
void ad_node_release(ad_node *n);

/* Runs backward from roots[i] with gradients grads[i] (NULL: ones, allowed
 * only for one-element roots). retain_graph keeps saved tensors for another
 * backward. */
ad_status ad_backward(ad_tensor *const *roots, ad_tensor *const *grads, int n, bool retain_graph);

/* ---- tensor autograd helpers ---- */
ad_status ad_set_requires_grad(ad_tensor *t, bool on);  /* only on leaves; floats only */
bool ad_is_leaf(const ad_tensor *t);
/* A new tensor sharing storage, with no grad_fn and requires_grad false. */
ad_status ad_detach(ad_tensor **out, const ad_tensor *t);
/* Sets t->grad to NULL (set_to_none) or zero-fills it. */
ad_status ad_zero_grad(ad_tensor *t, bool set_to_none);

/* Sums g over the dimensions that were broadcast to reach g's shape from
 * (ndim, shape). Returns a new reference (g itself retained when no-op). */
ad_status ad_sum_to_shape(ad_tensor **out, ad_tensor *g, int ndim, const int64_t *shape);

#endif
