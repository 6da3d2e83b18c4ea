/* l_nn.c: Lua bindings of the nn op family: normalisation, softmax,
 * attention, embedding, dropout and losses. Names and argument order follow
 * torch.nn.functional; keyword arguments go in a trailing options table.
 *
 *   ad.group_norm(x, num_groups, [w], [b], {eps=1e-5})
 *   ad.batch_norm(x, running_mean, running_var, [w], [b], {training=false, momentum=0.1, eps=1e-5})
 *   ad.layer_norm(x, normalized_shape, [w], [b], {eps=1e-5})     normalized_shape: n or {n1, n2, ...}
 *   ad.softmax(x, dim), ad.log_softmax(x, dim), x:softmax(dim), x:log_softmax(dim)
 *   ad.scaled_dot_product_attention(q, k, v, [mask], {mask=, scale=, is_causal=false})
 *   ad.embedding(indices, weight)      F.embedding's order: the indices come FIRST. Index
 *                                       values are 0-based (class labels index rows directly).
 *   ad.dropout(x, {p=0.5, training=true, generator=})
 *   ad.mse_loss(input, target, {reduction="mean"}), ad.l1_loss(...)
 *   ad.binary_cross_entropy_with_logits(logits, target, {weight=, pos_weight=, reduction=})
 *   ad.cross_entropy(logits, target, {weight=, ignore_index=-100, label_smoothing=0, reduction=})
 *   ad.nll_loss(logp, target, {weight=, ignore_index=-100, reduction=})
 *
 * Optional tensors may be nil or left out when the options table follows
 * directly (ad.group_norm(x, 32, {eps=1e-6})). */
#include <string.h>
#include "lutil.h"

/* index of the options table: the first plain table at or after `first`, 0 if none */
static int find_opts(lua_State *L, int first) {
  int top = lua_gettop(L);
  for (int i = first; i <= top; i++)
    if (l_isopts(L, i)) return i;
  return 0;
}

/* optional tensor at arg, unless the options table already came */
static ad_tensor *opt_tensor_before(lua_State *L, int arg, int opts) {
  if (opts && arg >= opts) return NULL;
  return l_opttensor(L, arg);
}

static ad_reduction check_reduction(lua_State *L, int opts, const char *fn) {
  const char *s = l_optstr(L, opts, "reduction", "mean");
  if (strcmp(s, "mean") == 0) return AD_REDUCE_MEAN;
  if (strcmp(s, "sum") == 0) return AD_REDUCE_SUM;
  if (strcmp(s, "none") == 0) return AD_REDUCE_NONE;
  luaL_error(L, "%s: reduction must be 'none', 'mean' or 'sum', got '%s'", fn, s);
  return AD_REDUCE_MEAN;
}

/* ======================================================================= normalisation */

static int l_group_norm(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  lua_Integer g = luaL_checkinteger(L, 2);
  int opts = find_opts(L, 3);
  ad_tensor *w = opt_tensor_before(L, 3, opts), *b = opt_tensor_before(L, 4, opts);
  double eps = l_optnum(L, opts, "eps", 1e-5);
  if (g <= 0 || g > 0x7fffffff) return luaL_argerror(L, 2, "num_groups must be a positive integer");
  ad_tensor **box = l_newbox(L);
  if (ad_group_norm(box, x, (int)g, w, b, eps) != AD_OK) return l_error(L);
  return 1;
}

static int l_batch_norm(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int opts = find_opts(L, 2);
  ad_tensor *rm = opt_tensor_before(L, 2, opts), *rv = opt_tensor_before(L, 3, opts);
  ad_tensor *w = opt_tensor_before(L, 4, opts), *b = opt_tensor_before(L, 5, opts);
  int training = l_optbool(L, opts, "training", 0);
  double momentum = l_optnum(L, opts, "momentum", 0.1);
  double eps = l_optnum(L, opts, "eps", 1e-5);
  ad_tensor **box = l_newbox(L);
  if (ad_batch_norm(box, x, rm, rv, w, b, training, momentum, eps) != AD_OK) return l_error(L);
  return 1;
}

static int l_layer_norm(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int64_t ns[AD_MAX_DIMS];
  int k = 0;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    ns[k++] = luaL_checkinteger(L, 2);
  } else if (lua_type(L, 2) == LUA_TTABLE) {
    lua_Integer len = luaL_len(L, 2);
    if (len < 1 || len > AD_MAX_DIMS) return luaL_argerror(L, 2, "normalized_shape must list 1 to 8 sizes");
    for (lua_Integer i = 1; i <= len; i++) {
      lua_geti(L, 2, i);
      int isnum;
      lua_Integer v = lua_tointegerx(L, -1, &isnum);
      lua_pop(L, 1);
      if (!isnum) return luaL_argerror(L, 2, "normalized_shape must contain integers");
      ns[k++] = v;
    }
  } else {
    return luaL_typeerror(L, 2, "number or table (normalized_shape)");
  }
  bool match = k <= x->ndim;
  for (int i = 0; match && i < k; i++) match = ns[i] == x->shape[x->ndim - k + i];
  if (!match) {
    char a[128], s[128];
    return luaL_error(L, "layer_norm: normalized_shape %s does not match the last dims of input %s",
                      ad_shape_str(k, ns, a, sizeof a), ad_shape_str(x->ndim, x->shape, s, sizeof s));
  }
  int opts = find_opts(L, 3);
  ad_tensor *w = opt_tensor_before(L, 3, opts), *b = opt_tensor_before(L, 4, opts);
  double eps = l_optnum(L, opts, "eps", 1e-5);
  ad_tensor **box = l_newbox(L);
  if (ad_layer_norm(box, x, k, w, b, eps) != AD_OK) return l_error(L);
  return 1;
}

/* ======================================================================= softmax */

static int softmax_common(lua_State *L, bool log) {
  ad_tensor *x = l_checktensor(L, 1);
  if (lua_isnoneornil(L, 2))
    return luaL_error(L, "%s: dim is required (e.g. %s(x, -1) for the last dim)", log ? "log_softmax" : "softmax",
                      log ? "log_softmax" : "softmax");
  int dim = l_checkdim(L, 2, x->ndim ? x->ndim : 1);
  ad_tensor **box = l_newbox(L);
  if ((log ? ad_log_softmax(box, x, dim) : ad_softmax(box, x, dim)) != AD_OK) return l_error(L);
  return 1;
}
static int l_softmax(lua_State *L) { return softmax_common(L, false); }
static int l_log_softmax(lua_State *L) { return softmax_common(L, true); }

/* ======================================================================= attention */

static int l_sdpa(lua_State *L) {
  ad_tensor *q = l_checktensor(L, 1), *k = l_checktensor(L, 2), *v = l_checktensor(L, 3);
  int opts = find_opts(L, 4);
  ad_tensor *mask = opt_tensor_before(L, 4, opts);
  ad_tensor *omask = l_opttensorfield(L, opts, "mask");
  if (!omask) omask = l_opttensorfield(L, opts, "attn_mask");
  if (mask && omask) return luaL_error(L, "scaled_dot_product_attention: mask given twice (argument 4 and option 'mask')");
  if (!mask) mask = omask;
  double scale = l_optnum(L, opts, "scale", 0.0);
  int causal = l_optbool(L, opts, "is_causal", 0);
  ad_tensor **box = l_newbox(L);
  if (ad_scaled_dot_product_attention(box, q, k, v, mask, scale, causal) != AD_OK) return l_error(L);
  return 1;
}

/* ======================================================================= embedding, dropout */

static int l_embedding(lua_State *L) {
  ad_tensor *idx = l_checktensor(L, 1), *w = l_checktensor(L, 2);
  if (ad_dtype_is_float(idx->dtype) && !ad_dtype_is_float(w->dtype))
    return luaL_error(L, "embedding: arguments are (indices, weight) as in F.embedding; got a %s tensor first and a "
                      "%s tensor second", ad_dtype_name(idx->dtype), ad_dtype_name(w->dtype));
  ad_tensor **box = l_newbox(L);
  if (ad_embedding(box, w, idx) != AD_OK) return l_error(L);
  return 1;
}

static int l_dropout(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int opts = find_opts(L, 2);
  double p = l_optnum(L, opts, "p", 0.5);
  int training = l_optbool(L, opts, "training", 1);
  ad_generator *g = l_optgenerator(L, opts, "generator");
  ad_tensor **box = l_newbox(L);
  if (ad_dropout(box, x, p, training, g) != AD_OK) return l_error(L);
  return 1;
}

/* ======================================================================= losses */

static int l_mse_loss(lua_State *L) {
  ad_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  int opts = find_opts(L, 3);
  ad_reduction r = check_reduction(L, opts, "mse_loss");
  ad_tensor **box = l_newbox(L);
  if (ad_mse_loss(box, a, b, r) != AD_OK) return l_error(L);
  return 1;
}

static int l_l1_loss(lua_State *L) {
  ad_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  int opts = find_opts(L, 3);
  ad_reduction r = check_reduction(L, opts, "l1_loss");
  ad_tensor **box = l_newbox(L);
  if (ad_l1_loss(box, a, b, r) != AD_OK) return l_error(L);
  return 1;
}

static int l_bce_with_logits(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1), *t = l_checktensor(L, 2);
  int opts = find_opts(L, 3);
  ad_tensor *w = l_opttensorfield(L, opts, "weight"), *pw = l_opttensorfield(L, opts, "pos_weight");
  ad_reduction r = check_reduction(L, opts, "binary_cross_entropy_with_logits");
  ad_tensor **box = l_newbox(L);
  if (ad_binary_cross_entropy_with_logits(box, x, t, w, pw, r) != AD_OK) return l_error(L);
  return 1;
}

static int l_cross_entropy(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1), *t = l_checktensor(L, 2);
  int opts = find_opts(L, 3);
  ad_tensor *w = l_opttensorfield(L, opts, "weight");
  lua_Integer ignore = l_optint(L, opts, "ignore_index", -100);
  double ls = l_optnum(L, opts, "label_smoothing", 0.0);
  ad_reduction r = check_reduction(L, opts, "cross_entropy");
  ad_tensor **box = l_newbox(L);
  if (ad_cross_entropy(box, x, t, w, ignore, ls, r) != AD_OK) return l_error(L);
  return 1;
}

static int l_nll_loss(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1), *t = l_checktensor(L, 2);
  int opts = find_opts(L, 3);
  ad_tensor *w = l_opttensorfield(L, opts, "weight");
  lua_Integer ignore = l_optint(L, opts, "ignore_index", -100);
  ad_reduction r = check_reduction(L, opts, "nll_loss");
  ad_tensor **box = l_newbox(L);
  if (ad_nll_loss(box, x, t, w, ignore, r) != AD_OK) return l_error(L);
  return 1;
}

void l_register_nn(lua_State *L, int mod, int methods) {
  static const luaL_Reg fns[] = {
    {"group_norm", l_group_norm},
    {"batch_norm", l_batch_norm},
    {"layer_norm", l_layer_norm},
    {"softmax", l_softmax},
    {"log_softmax", l_log_softmax},
    {"scaled_dot_product_attention", l_sdpa},
    {"embedding", l_embedding},
    {"dropout", l_dropout},
    {"mse_loss", l_mse_loss},
    {"l1_loss", l_l1_loss},
    {"binary_cross_entropy_with_logits", l_bce_with_logits},
    {"cross_entropy", l_cross_entropy},
    {"nll_loss", l_nll_loss},
    {NULL, NULL},
  };
  static const luaL_Reg meths[] = {
    {"softmax", l_softmax},
    {"log_softmax", l_log_softmax},
    {NULL, NULL},
  };
  l_setfuncs2(L, mod, methods, fns, meths);
}
