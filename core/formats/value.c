/* value.c: the value tree that loaders produce and savers consume, and the
 * arena (ad_doc) that owns it. Every value of a doc sits on one list, so a
 * doc frees shared and even cyclic graphs (a pickle can build both) without
 * reference counting. */
#define _POSIX_C_SOURCE 200809L
#define AD_FORMATS_INTERNAL
#include <stdlib.h>
#include <string.h>
#include "formats.h"

struct ad_doc {
  ad_value *first;
  ad_value *root;
  ad_value *metadata;
  ad_format format;
};

ad_doc *ad_doc_new(void) {
  ad_doc *d = calloc(1, sizeof *d);
  if (!d) AD_FAIL(AD_ENOMEM, "out of memory allocating a document");
  return d;
}

void ad_doc_free(ad_doc *d) {
  if (!d) return;
  ad_value *v = d->first;
  while (v) {
    ad_value *next = v->next_alloc;
    switch (v->kind) {
    case AD_V_STR: case AD_V_BYTES: free(v->u.str.ptr); break;
    case AD_V_LIST: case AD_V_TUPLE: free(v->u.seq.items); break;
    case AD_V_DICT: free(v->u.dict.keys); free(v->u.dict.vals); break;
    case AD_V_TENSOR: ad_tensor_release(v->u.tensor); break;
    default: break;
    }
    if (v->priv) {
      if (v->priv_free) v->priv_free(v->priv);
      else free(v->priv);
    }
    free(v);
    v = next;
  }
  free(d);
}

ad_value *ad_doc_root(const ad_doc *d) { return d->root; }
void ad_doc_set_root(ad_doc *d, ad_value *v) { d->root = v; }
ad_format ad_doc_format(const ad_doc *d) { return d->format; }
void fmt_doc_set_format(ad_doc *d, ad_format f) { d->format = f; }
ad_value *ad_doc_metadata(const ad_doc *d) { return d->metadata; }
void ad_doc_set_metadata(ad_doc *d, ad_value *v) { d->metadata = v; }
ad_value *fmt_doc_first(const ad_doc *d) { return d->first; }

ad_value *fmt_value_new(ad_doc *d, ad_value_kind k) {
  ad_value *v = calloc(1, sizeof *v);
  if (!v) { AD_FAIL(AD_ENOMEM, "out of memory allocating a value"); return NULL; }
  v->kind = k;
  v->next_alloc = d->first;
  d->first = v;
  return v;
}

void *fmt_doc_alloc_priv(ad_doc *d, ad_value *v, size_t size) {
  (void)d;
  v->priv = calloc(1, size);
  if (!v->priv) AD_FAIL(AD_ENOMEM, "out of memory");
  return v->priv;
}

ad_value *ad_value_none(ad_doc *d) { return fmt_value_new(d, AD_V_NONE); }
ad_value *ad_value_bool(ad_doc *d, bool b) {
  ad_value *v = fmt_value_new(d, AD_V_BOOL);
  if (v) v->u.b = b;
  return v;
}
ad_value *ad_value_int(ad_doc *d, int64_t i) {
  ad_value *v = fmt_value_new(d, AD_V_INT);
  if (v) v->u.i = i;
  return v;
}
ad_value *ad_value_float(ad_doc *d, double f) {
  ad_value *v = fmt_value_new(d, AD_V_FLOAT);
  if (v) v->u.f = f;
  return v;
}
static ad_value *strlike(ad_doc *d, ad_value_kind k, const void *s, size_t len) {
  if (len > SIZE_MAX - 1) { AD_FAIL(AD_ENOMEM, "string too long"); return NULL; }
  char *p = malloc(len + 1);
  if (!p) { AD_FAIL(AD_ENOMEM, "out of memory copying a %zu-byte string", len); return NULL; }
  if (len) memcpy(p, s, len);
  p[len] = 0;
  ad_value *v = fmt_value_new(d, k);
  if (!v) { free(p); return NULL; }
  v->u.str.ptr = p;
  v->u.str.len = len;
  return v;
}
ad_value *ad_value_str(ad_doc *d, const char *s, size_t len) { return strlike(d, AD_V_STR, s, len); }
ad_value *ad_value_bytes(ad_doc *d, const void *s, size_t len) { return strlike(d, AD_V_BYTES, s, len); }
ad_value *ad_value_list(ad_doc *d) { return fmt_value_new(d, AD_V_LIST); }
ad_value *ad_value_tuple(ad_doc *d) { return fmt_value_new(d, AD_V_TUPLE); }
ad_value *ad_value_dict(ad_doc *d) { return fmt_value_new(d, AD_V_DICT); }
ad_value *ad_value_tensor(ad_doc *d, ad_tensor *t) {
  ad_value *v = fmt_value_new(d, AD_V_TENSOR);
  if (v) { ad_tensor_retain(t); v->u.tensor = t; }
  return v;
}

static bool grow(void ***a, size_t *cap, size_t need) {
  if (need <= *cap) return true;
  size_t nc = *cap ? *cap * 2 : 8;
  while (nc < need) nc *= 2;
  void **p = realloc(*a, nc * sizeof *p);
  if (!p) return false;
  *a = p;
  *cap = nc;
  return true;
}

ad_status ad_value_append(ad_value *seq, ad_value *item) {
  if (seq->kind != AD_V_LIST && seq->kind != AD_V_TUPLE)
    return AD_FAIL(AD_EINVAL, "append to a %s", ad_value_kind_name(seq->kind));
  if (!grow((void ***)&seq->u.seq.items, &seq->u.seq.cap, seq->u.seq.n + 1))
    return AD_FAIL(AD_ENOMEM, "out of memory growing a list");
  seq->u.seq.items[seq->u.seq.n++] = item;
  return AD_OK;
}

ad_status ad_value_dict_set(ad_value *dict, ad_value *key, ad_value *val) {
  if (dict->kind != AD_V_DICT) return AD_FAIL(AD_EINVAL, "set item on a %s", ad_value_kind_name(dict->kind));
  size_t n = dict->u.dict.n, cap = dict->u.dict.cap;
  if (n + 1 > cap) {
    size_t c1 = cap, c2 = cap;
    if (!grow((void ***)&dict->u.dict.keys, &c1, n + 1) || !grow((void ***)&dict->u.dict.vals, &c2, n + 1))
      return AD_FAIL(AD_ENOMEM, "out of memory growing a dict");
    /* both arrays now hold at least min(c1, c2) slots */
    dict->u.dict.cap = c1 < c2 ? c1 : c2;
  }
  dict->u.dict.keys[n] = key;
  dict->u.dict.vals[n] = val;
  dict->u.dict.n = n + 1;
  return AD_OK;
}

ad_value *ad_value_dict_get(const ad_value *dict, const char *key) {
  if (!dict || dict->kind != AD_V_DICT) return NULL;
  size_t kl = strlen(key);
  for (size_t i = dict->u.dict.n; i-- > 0;) {
    const ad_value *k = dict->u.dict.keys[i];
    if (k->kind == AD_V_STR && k->u.str.len == kl && memcmp(k->u.str.ptr, key, kl) == 0)
      return dict->u.dict.vals[i];
  }
  return NULL;
}

const char *ad_value_kind_name(ad_value_kind k) {
  switch (k) {
  case AD_V_NONE: return "none";
  case AD_V_BOOL: return "bool";
  case AD_V_INT: return "int";
  case AD_V_FLOAT: return "float";
  case AD_V_STR: return "str";
  case AD_V_BYTES: return "bytes";
  case AD_V_LIST: return "list";
  case AD_V_TUPLE: return "tuple";
  case AD_V_DICT: return "dict";
  case AD_V_TENSOR: return "tensor";
  case AD_V_GLOBAL: return "global";
  case AD_V_STORAGE: return "storage";
  case AD_V_TSPEC: return "tensor";
  }
  return "?";
}

/* Depth-first with per-node state in mark: 0 new, 1 on the current path,
 * 2+d finished with height d. A node on the current path met again is a
 * cycle; finished nodes are not walked twice, so shared sub-trees cost once. */
static ad_status check_rec(ad_value *v, int depth, int max_depth, uint32_t *height) {
  if (v->mark == 1) return AD_FAIL(AD_EFORMAT, "the value graph has a cycle");
  if (v->mark >= 2) { *height = v->mark - 2; return AD_OK; }
  if (depth > max_depth) return AD_FAIL(AD_EFORMAT, "values nested deeper than %d levels", max_depth);
  uint32_t h = 0, ch;
  v->mark = 1;
  if (v->kind == AD_V_LIST || v->kind == AD_V_TUPLE) {
    for (size_t i = 0; i < v->u.seq.n; i++) {
      AD_TRY(check_rec(v->u.seq.items[i], depth + 1, max_depth, &ch));
      if (ch + 1 > h) h = ch + 1;
    }
  } else if (v->kind == AD_V_DICT) {
    for (size_t i = 0; i < v->u.dict.n; i++) {
      AD_TRY(check_rec(v->u.dict.keys[i], depth + 1, max_depth, &ch));
      if (ch + 1 > h) h = ch + 1;
      AD_TRY(check_rec(v->u.dict.vals[i], depth + 1, max_depth, &ch));
      if (ch + 1 > h) h = ch + 1;
    }
  }
  if (depth + (int)h > max_depth + 1) return AD_FAIL(AD_EFORMAT, "values nested deeper than %d levels", max_depth);
  v->mark = 2 + h;
  *height = h;
  return AD_OK;
}

static void clear_marks(ad_value *v) {
  if (v->mark == 0) return;
  v->mark = 0;
  if (v->kind == AD_V_LIST || v->kind == AD_V_TUPLE) {
    for (size_t i = 0; i < v->u.seq.n; i++) clear_marks(v->u.seq.items[i]);
  } else if (v->kind == AD_V_DICT) {
    for (size_t i = 0; i < v->u.dict.n; i++) { clear_marks(v->u.dict.keys[i]); clear_marks(v->u.dict.vals[i]); }
  }
}

ad_status ad_value_check_tree(const ad_value *root, int max_depth) {
  uint32_t h;
  ad_value *r = (ad_value *)root;
  ad_status st = check_rec(r, 0, max_depth, &h);
  /* marks of visited nodes are non-zero; the walk that set them was bounded
   * by max_depth, and clear_marks stops at unmarked nodes, so it is too */
  clear_marks(r);
  return st;
}
