/* loader.c: the threaded image loader of loader.h.
 *
 * Layout of the work: a batch is produced whole by one worker (decode every
 * item, transform it, write it into a fresh (B, C, H, W) tensor) and parked
 * in slot s mod prefetch; the consumer takes slot `consumed` when it is
 * ready. A seek bumps `generation`, so batches still being made for the old
 * position are dropped when they are finished instead of being handed out.
 *
 * Image transforms follow PIL, which is what guided-diffusion's data pipeline
 * (center_crop_arr) uses: PIL's separable, antialiased resampling with its
 * box and bicubic (a = -0.5) filters, rounding to 8 bits after each pass.
 * The results match PIL's to within one grey level (PIL uses fixed-point
 * coefficients). */
#define _POSIX_C_SOURCE 200809L
#include "loader.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../formats.h"
#include "../ops.h"
#include "../mathinl.h"

#define MAX_WARNINGS 64
#define WARN_LEN 1100
#define PERM_CACHE 3
#define ERR_LEN 1000

/* ---- images in flight: u8, planar (C, H, W) ----------------------------- */
typedef struct { int c, h, w; uint8_t *px; } img;

static void img_free(img *m) { free(m->px); m->px = NULL; }

static int img_alloc(img *m, int c, int h, int w) {
  m->c = c; m->h = h; m->w = w;
  m->px = malloc((size_t)c * (size_t)h * (size_t)w + 1);
  return m->px != NULL;
}

/* ---- the loader ------------------------------------------------------------ */
typedef struct {
  int64_t seq;            /* stream position it holds, -1: empty */
  int64_t gen;
  ad_tensor *x, *y, *items;
  char *err;              /* error to report when taken (error_on_bad), or NULL */
} slot;

typedef struct { int64_t epoch; int64_t *perm; } perm_entry;

struct ad_loader {
  ad_loader_opts o;
  int64_t n;
  /* items */
  char **paths;           /* files, or NULL */
  ad_tensor *array;       /* u8 rows, or NULL */
  bool hwc;
  int64_t *rows;          /* array row of each item */
  int64_t *labels;        /* or NULL */
  int64_t bpe;
  /* state, under mu */
  pthread_mutex_t mu;
  pthread_cond_t ready, space;
  int64_t consumed, next, gen;
  bool stop;
  slot *slots;
  perm_entry cache[PERM_CACHE];
  uint8_t *bad;           /* per item: known bad */
  _Atomic int64_t n_bad;
  char warn[MAX_WARNINGS][WARN_LEN];
  int warn_head, warn_count;
  int64_t warn_dropped;
  pthread_t *threads;
  int n_threads;
};

static void push_warning(ad_loader *l, const char *msg) {
  /* caller holds mu */
  if (l->warn_count == MAX_WARNINGS) { l->warn_dropped++; return; }
  int i = (l->warn_head + l->warn_count) % MAX_WARNINGS;
  snprintf(l->warn[i], WARN_LEN, "%s", msg);
  l->warn_count++;
}

bool ad_loader_pop_warning(ad_loader *l, char *buf, size_t n) {
  bool got = false;
  pthread_mutex_lock(&l->mu);
  if (l->warn_count > 0) {
    snprintf(buf, n, "%s", l->warn[l->warn_head]);
    l->warn_head = (l->warn_head + 1) % MAX_WARNINGS;
    l->warn_count--;
    got = true;
  } else if (l->warn_dropped > 0) {
    snprintf(buf, n, "data loader: %lld more warnings were dropped", (long long)l->warn_dropped);
    l->warn_dropped = 0;
    got = true;
  }
  pthread_mutex_unlock(&l->mu);
  return got;
}

/* ---- order ----------------------------------------------------------------- */

void ad_data_permutation(int64_t *perm, int64_t n, uint64_t seed, int64_t e, bool shuffle) {
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  if (!shuffle) return;
  /* Fisher-Yates; draw i from Philox(seed, counter = (i, e:tag 1)) */
  for (int64_t i = n - 1; i > 0; i--) {
    ad_philox_ctr r = ad_philox4x32_10(seed, (uint64_t)i, ((uint64_t)e << 8) | 1u);
    uint64_t v = ((uint64_t)r.v[0] << 32) | r.v[1];
    int64_t j = (int64_t)(v % (uint64_t)(i + 1));
    int64_t t = perm[i]; perm[i] = perm[j]; perm[j] = t;
  }
}

static void compute_perm(const ad_loader *l, int64_t e, int64_t *perm) {
  ad_data_permutation(perm, l->n, l->o.seed, e, l->o.shuffle);
}

ad_status ad_loader_epoch_order(const ad_loader *l, int64_t e, int64_t *perm) {
  if (e < 0) return AD_FAIL(AD_EINVAL, "data loader: epoch must be >= 0, got %lld", (long long)e);
  compute_perm(l, e, perm);
  return AD_OK;
}

/* the cached permutation of epoch e (caller holds mu); NULL on OOM */
static const int64_t *get_perm(ad_loader *l, int64_t e) {
  int victim = 0;
  for (int k = 0; k < PERM_CACHE; k++) {
    if (l->cache[k].perm && l->cache[k].epoch == e) return l->cache[k].perm;
    if (!l->cache[k].perm) victim = k;
    else if (l->cache[victim].perm && l->cache[k].epoch < l->cache[victim].epoch) victim = k;
  }
  if (!l->cache[victim].perm) {
    l->cache[victim].perm = malloc((size_t)l->n * sizeof(int64_t));
    if (!l->cache[victim].perm) return NULL;
  }
  compute_perm(l, e, l->cache[victim].perm);
  l->cache[victim].epoch = e;
  return l->cache[victim].perm;
}

bool ad_data_flip(uint64_t seed, int64_t e, int64_t item) {
  ad_philox_ctr r = ad_philox4x32_10(seed, (uint64_t)item, ((uint64_t)e << 8) | 2u);
  return r.v[0] & 1u;
}
static bool flip_of(const ad_loader *l, int64_t e, int64_t item) { return ad_data_flip(l->o.seed, e, item); }

/* ---- decoding -------------------------------------------------------------- */

static ad_status read_file(uint8_t **data, size_t *len, const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return AD_FAIL(AD_EIO, "cannot open '%s': %s", path, strerror(errno));
  uint8_t *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n == cap) {
      size_t nc = cap ? cap * 2 : 1 << 16;
      uint8_t *nb = realloc(buf, nc);
      if (!nb) { free(buf); fclose(f); return AD_FAIL(AD_ENOMEM, "out of memory reading '%s'", path); }
      buf = nb; cap = nc;
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    n += r;
    if (r == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) { free(buf); return AD_FAIL(AD_EIO, "cannot read '%s'", path); }
  *data = buf;
  *len = n;
  return AD_OK;
}

/* luma as PIL's convert("L"): (299 R + 587 G + 114 B) / 1000, rounded */
static void to_gray(img *dst, const img *src) {
  size_t hw = (size_t)src->h * src->w;
  for (size_t i = 0; i < hw; i++) {
    unsigned r = src->px[i], g = src->px[hw + i], b = src->px[2 * hw + i];
    dst->px[i] = (uint8_t)((r * 299 + g * 587 + b * 114 + 500) / 1000);
  }
}

/* item -> planar u8 image with the wanted channel count */
static ad_status load_item(const ad_loader *l, int64_t item, img *out) {
  int want_c = l->o.channels;
  if (l->paths) {
    uint8_t *data = NULL;
    size_t len = 0;
    AD_TRY(read_file(&data, &len, l->paths[item]));
    ad_tensor *t = NULL;
    ad_status st = ad_image_load_memory(&t, data, len, want_c ? want_c : 3, AD_U8, l->paths[item]);
    free(data);
    if (st != AD_OK) return st;
    if (!img_alloc(out, (int)t->shape[0], (int)t->shape[1], (int)t->shape[2])) {
      ad_tensor_release(t);
      return AD_FAIL(AD_ENOMEM, "out of memory decoding '%s'", l->paths[item]);
    }
    memcpy(out->px, ad_data(t), (size_t)ad_numel(t));
    ad_tensor_release(t);
    return AD_OK;
  }
  const ad_tensor *a = l->array;
  int64_t row = l->rows[item];
  int c, h, w;
  if (a->ndim == 3) { c = 1; h = (int)a->shape[1]; w = (int)a->shape[2]; }
  else if (l->hwc) { h = (int)a->shape[1]; w = (int)a->shape[2]; c = (int)a->shape[3]; }
  else { c = (int)a->shape[1]; h = (int)a->shape[2]; w = (int)a->shape[3]; }
  size_t hw = (size_t)h * w;
  const uint8_t *src = (const uint8_t *)ad_data(a) + (size_t)row * hw * c;
  img m;
  if (!img_alloc(&m, c, h, w)) return AD_FAIL(AD_ENOMEM, "out of memory copying image %lld", (long long)row);
  if (l->hwc && c > 1) {
    for (int k = 0; k < c; k++)
      for (size_t i = 0; i < hw; i++) m.px[k * hw + i] = src[i * c + k];
  } else {
    memcpy(m.px, src, hw * c);
  }
  if (!want_c || want_c == c) { *out = m; return AD_OK; }
  img r;
  if (!img_alloc(&r, want_c, h, w)) { img_free(&m); return AD_FAIL(AD_ENOMEM, "out of memory converting image"); }
  if (want_c == 3 && c == 1) {
    for (int k = 0; k < 3; k++) memcpy(r.px + k * hw, m.px, hw);
  } else if (want_c == 1 && c >= 3) {
    to_gray(&r, &m);
  } else if (want_c == 3 && c == 4) {
    memcpy(r.px, m.px, 3 * hw);   /* RGBA -> RGB drops alpha, as PIL's convert("RGB") */
  } else {
    img_free(&m); img_free(&r);
    return AD_FAIL(AD_EINVAL, "cannot convert a %d-channel image to %d channels", c, want_c);
  }
  img_free(&m);
  *out = r;
  return AD_OK;
}

/* ---- PIL-style resampling -------------------------------------------------- */

static double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }
static double bicubic_filter(double x) {
  const double a = -0.5;
  x = fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

typedef struct { int ksize; int *bounds; double *k; } coeffs;

static int make_coeffs(coeffs *c, int in, int out, double (*filter)(double), double support0) {
  double scale = (double)in / out, filterscale = scale < 1.0 ? 1.0 : scale;
  double support = support0 * filterscale;
  c->ksize = (int)ceil(support) * 2 + 1;
  c->bounds = malloc(sizeof(int) * 2 * (size_t)out);
  c->k = malloc(sizeof(double) * (size_t)out * c->ksize);
  if (!c->bounds || !c->k) { free(c->bounds); free(c->k); return 0; }
  double ss = 1.0 / filterscale;
  for (int xx = 0; xx < out; xx++) {
    double center = (xx + 0.5) * scale;
    int xmin = (int)(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + support + 0.5);
    if (xmax > in) xmax = in;
    xmax -= xmin;
    double *k = c->k + (size_t)xx * c->ksize, ww = 0;
    for (int x = 0; x < xmax; x++) { double w = filter((x + xmin - center + 0.5) * ss); k[x] = w; ww += w; }
    for (int x = 0; x < xmax; x++) if (ww != 0) k[x] /= ww;
    for (int x = xmax; x < c->ksize; x++) k[x] = 0;
    c->bounds[2 * xx] = xmin;
    c->bounds[2 * xx + 1] = xmax;
  }
  return 1;
}

static inline uint8_t clip8(double v) {
  v = floor(v + 0.5);
  return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* src (c, h, w) -> dst (c, oh, ow): horizontal pass, then vertical, 8-bit between */
static ad_status resample(img *dst, const img *src, int oh, int ow, double (*filter)(double), double support) {
  if (oh < 1 || ow < 1) return AD_FAIL(AD_EINVAL, "resize: output size %d x %d is empty", oh, ow);
  img tmp = {0}, out = {0};
  coeffs ch = {0}, cv = {0};
  ad_status st = AD_OK;
  if (!img_alloc(&tmp, src->c, src->h, ow) || !img_alloc(&out, src->c, oh, ow) ||
      !make_coeffs(&ch, src->w, ow, filter, support) || !make_coeffs(&cv, src->h, oh, filter, support)) {
    st = AD_FAIL(AD_ENOMEM, "resize: out of memory");
    goto done;
  }
  for (int k = 0; k < src->c; k++) {
    const uint8_t *s = src->px + (size_t)k * src->h * src->w;
    uint8_t *t = tmp.px + (size_t)k * src->h * ow;
    for (int y = 0; y < src->h; y++)
      for (int x = 0; x < ow; x++) {
        int xmin = ch.bounds[2 * x], xn = ch.bounds[2 * x + 1];
        const double *kk = ch.k + (size_t)x * ch.ksize;
        double v = 0;
        for (int j = 0; j < xn; j++) v += s[(size_t)y * src->w + xmin + j] * kk[j];
        t[(size_t)y * ow + x] = clip8(v);
      }
    uint8_t *o = out.px + (size_t)k * oh * ow;
    for (int y = 0; y < oh; y++) {
      int ymin = cv.bounds[2 * y], yn = cv.bounds[2 * y + 1];
      const double *kk = cv.k + (size_t)y * cv.ksize;
      for (int x = 0; x < ow; x++) {
        double v = 0;
        for (int j = 0; j < yn; j++) v += t[(size_t)(ymin + j) * ow + x] * kk[j];
        o[(size_t)y * ow + x] = clip8(v);
      }
    }
  }
  *dst = out;
  out.px = NULL;
done:
  img_free(&tmp);
  img_free(&out);
  free(ch.bounds); free(ch.k); free(cv.bounds); free(cv.k);
  return st;
}

static ad_status crop(img *dst, const img *src, int y0, int x0, int h, int w) {
  if (!img_alloc(dst, src->c, h, w)) return AD_FAIL(AD_ENOMEM, "crop: out of memory");
  for (int k = 0; k < src->c; k++)
    for (int y = 0; y < h; y++)
      memcpy(dst->px + ((size_t)k * h + y) * w, src->px + ((size_t)k * src->h + y0 + y) * src->w + x0, (size_t)w);
  return AD_OK;
}

/* replaces *m by its transform (resize/crop to the output size) */
static ad_status transform(const ad_loader *l, img *m, const char *what) {
  const int H = l->o.height, W = l->o.width;
  if (H == 0 || W == 0) return AD_OK;
  img r = {0};
  switch (l->o.resize) {
  case AD_RESIZE_NONE:
    if (m->h != H || m->w != W)
      return AD_FAIL(AD_ESHAPE, "%s is %d x %d, expected %d x %d (give resize='center' to resize it)", what,
                     m->h, m->w, H, W);
    return AD_OK;
  case AD_RESIZE_CROP:
    if (m->h < H || m->w < W)
      return AD_FAIL(AD_ESHAPE, "%s is %d x %d, smaller than the crop %d x %d", what, m->h, m->w, H, W);
    AD_TRY(crop(&r, m, (m->h - H) / 2, (m->w - W) / 2, H, W));
    break;
  case AD_RESIZE_STRETCH:
    if (m->h == H && m->w == W) return AD_OK;
    AD_TRY(resample(&r, m, H, W, bicubic_filter, 2.0));
    break;
  case AD_RESIZE_CENTER: {
    /* guided-diffusion's center_crop_arr, generalised to H != W */
    while (m->h >= 2 * H && m->w >= 2 * W) {
      AD_TRY(resample(&r, m, m->h / 2, m->w / 2, box_filter, 0.5));
      img_free(m); *m = r; r.px = NULL;
    }
    double scale = fmax((double)H / m->h, (double)W / m->w);
    int nh = (int)nearbyint(m->h * scale), nw = (int)nearbyint(m->w * scale);
    if (nh < H) nh = H;
    if (nw < W) nw = W;
    if (nh != m->h || nw != m->w) {
      AD_TRY(resample(&r, m, nh, nw, bicubic_filter, 2.0));
      img_free(m); *m = r; r.px = NULL;
    }
    if (m->h == H && m->w == W) return AD_OK;
    AD_TRY(crop(&r, m, (m->h - H) / 2, (m->w - W) / 2, H, W));
    break;
  }
  default:
    return AD_FAIL(AD_EINVAL, "unknown resize mode %d", (int)l->o.resize);
  }
  img_free(m);
  *m = r;
  return AD_OK;
}

/* ---- making a batch --------------------------------------------------------- */

typedef struct {
  ad_tensor *x, *y, *items;
  char *err;
} batch;

static void describe_item(const ad_loader *l, int64_t item, char *buf, size_t n) {
  if (l->paths) snprintf(buf, n, "'%s'", l->paths[item]);
  else snprintf(buf, n, "image %lld (row %lld)", (long long)item, (long long)l->rows[item]);
}

/* (caller does not hold mu) */
static void mark_bad(ad_loader *l, int64_t item, const char *msg) {
  pthread_mutex_lock(&l->mu);
  if (!l->bad[item]) {
    l->bad[item] = 1;
    atomic_fetch_add(&l->n_bad, 1);
    char w[WARN_LEN];
    snprintf(w, sizeof w, "data loader: skipping bad image: %s", msg);
    if (!l->o.error_on_bad) push_warning(l, w);
  }
  pthread_mutex_unlock(&l->mu);
}

static ad_status make_batch(ad_loader *l, int64_t epoch, const int64_t *ids, int64_t cnt, batch *b) {
  img *ims = calloc((size_t)cnt, sizeof *ims);
  int64_t *good = malloc((size_t)cnt * sizeof *good);
  ad_status st = AD_OK;
  int64_t ng = 0;
  if (!ims || !good) { free(ims); free(good); return AD_FAIL(AD_ENOMEM, "data loader: out of memory"); }
  int C = -1, Hh = -1, Ww = -1;
  for (int64_t k = 0; k < cnt; k++) {
    int64_t it = ids[k];
    char what[300];
    describe_item(l, it, what, sizeof what);
    pthread_mutex_lock(&l->mu);
    bool known_bad = l->bad[it];
    pthread_mutex_unlock(&l->mu);
    if (known_bad && !l->o.error_on_bad) continue;
    ad_status s = load_item(l, it, &ims[k]);
    if (s == AD_OK) {
      s = transform(l, &ims[k], what);
      if (s != AD_OK) img_free(&ims[k]);
    }
    if (s == AD_OK && C >= 0 && (ims[k].c != C || ims[k].h != Hh || ims[k].w != Ww)) {
      s = AD_FAIL(AD_ESHAPE, "%s is %d x %d, other images of the batch %d x %d (give an output size to resize)",
                  what, ims[k].h, ims[k].w, Hh, Ww);
      img_free(&ims[k]);
    }
    if (s != AD_OK) {
      char msg[ERR_LEN];
      snprintf(msg, sizeof msg, "%s", ad_last_error());
      mark_bad(l, it, msg);
      if (l->o.error_on_bad) {
        b->err = strdup(msg);
        if (!b->err) st = AD_FAIL(AD_ENOMEM, "data loader: out of memory");
        goto done;
      }
      continue;
    }
    if (C < 0) { C = ims[k].c; Hh = ims[k].h; Ww = ims[k].w; }
    good[ng++] = k;
  }
  if (ng == 0) goto done;   /* nothing usable: the consumer skips this batch */
  {
    const int p = l->o.pad, OH = Hh + 2 * p, OW = Ww + 2 * p;
    int64_t shape[4] = {ng, C, OH, OW};
    ad_dtype dt = l->o.out == AD_LOADER_OUT_U8 ? AD_U8 : AD_F32;
    AD_TRY_GOTO(st, ad_empty(&b->x, 4, shape, dt, AD_CPU), done);
    AD_TRY_GOTO(st, ad_empty(&b->items, 1, shape, AD_I64, AD_CPU), done);
    if (l->labels) AD_TRY_GOTO(st, ad_empty(&b->y, 1, shape, AD_I64, AD_CPU), done);
    const size_t plane = (size_t)OH * OW, per = plane * C;
    float lut[256];
    for (int v = 0; v < 256; v++)
      lut[v] = l->o.out == AD_LOADER_OUT_SYM ? (float)(v / 127.5 - 1.0) : (float)(v / 255.0);
    const double pv = l->o.pad_value;
    const float padf = l->o.out == AD_LOADER_OUT_SYM ? (float)(pv / 127.5 - 1.0) : (float)(pv / 255.0);
    const uint8_t padu = (uint8_t)(pv < 0 ? 0 : pv > 255 ? 255 : pv + 0.5);
    for (int64_t g = 0; g < ng; g++) {
      const img *m = &ims[good[g]];
      int64_t it = ids[good[g]];
      bool flip = l->o.hflip && flip_of(l, epoch, it);
      ((int64_t *)ad_data(b->items))[g] = it;
      if (b->y) ((int64_t *)ad_data(b->y))[g] = l->labels[it];
      for (int k = 0; k < C; k++)
        for (int y = 0; y < OH; y++)
          for (int x = 0; x < OW; x++) {
            int sy = y - p, sx = x - p;
            bool inside = sy >= 0 && sy < Hh && sx >= 0 && sx < Ww;
            size_t o = (size_t)g * per + (size_t)k * plane + (size_t)y * OW + x;
            uint8_t v = 0;
            if (inside) v = m->px[((size_t)k * Hh + sy) * Ww + (flip ? Ww - 1 - sx : sx)];
            if (dt == AD_U8) ((uint8_t *)ad_data(b->x))[o] = inside ? v : padu;
            else ((float *)ad_data(b->x))[o] = inside ? lut[v] : padf;
          }
    }
  }
done:
  for (int64_t k = 0; k < cnt; k++) img_free(&ims[k]);
  free(ims);
  free(good);
  if (st != AD_OK) {
    ad_tensor_release(b->x); ad_tensor_release(b->y); ad_tensor_release(b->items);
    b->x = b->y = b->items = NULL;
  }
  return st;
}

/* items of stream position s into ids (caller holds mu); count, or -1 on OOM */
static int64_t batch_items(ad_loader *l, int64_t s, int64_t *ids, int64_t *epoch) {
  int64_t e = s / l->bpe, b = s % l->bpe;
  const int64_t *perm = get_perm(l, e);
  if (!perm) return -1;
  int64_t lo = b * l->o.batch_size, hi = lo + l->o.batch_size;
  if (hi > l->n) hi = l->n;
  memcpy(ids, perm + lo, (size_t)(hi - lo) * sizeof *ids);
  *epoch = e;
  return hi - lo;
}

static void slot_clear(slot *sl) {
  ad_tensor_release(sl->x); ad_tensor_release(sl->y); ad_tensor_release(sl->items);
  free(sl->err);
  sl->x = sl->y = sl->items = NULL;
  sl->err = NULL;
  sl->seq = -1;
}

/* produce position s into a batch; called without mu */
static ad_status produce(ad_loader *l, int64_t s, batch *b, int64_t *ids) {
  int64_t epoch, cnt;
  pthread_mutex_lock(&l->mu);
  cnt = batch_items(l, s, ids, &epoch);
  pthread_mutex_unlock(&l->mu);
  if (cnt < 0) return AD_FAIL(AD_ENOMEM, "data loader: out of memory for the epoch order");
  memset(b, 0, sizeof *b);
  return make_batch(l, epoch, ids, cnt, b);
}

static void *worker(void *arg) {
  ad_loader *l = arg;
  int64_t *ids = malloc((size_t)l->o.batch_size * sizeof *ids);
  pthread_mutex_lock(&l->mu);
  for (;;) {
    while (!l->stop && l->next >= l->consumed + l->o.prefetch) pthread_cond_wait(&l->space, &l->mu);
    if (l->stop) break;
    int64_t s = l->next++, gen = l->gen;
    pthread_mutex_unlock(&l->mu);
    batch b;
    ad_status st = ids ? produce(l, s, &b, ids) : AD_FAIL(AD_ENOMEM, "data loader: out of memory");
    if (st != AD_OK) {
      memset(&b, 0, sizeof b);
      b.err = strdup(ad_last_error());
    }
    pthread_mutex_lock(&l->mu);
    if (gen == l->gen && !l->stop) {
      slot *sl = &l->slots[s % l->o.prefetch];
      slot_clear(sl);
      sl->seq = s;
      sl->gen = gen;
      sl->x = b.x; sl->y = b.y; sl->items = b.items; sl->err = b.err;
      pthread_cond_broadcast(&l->ready);
    } else {
      ad_tensor_release(b.x); ad_tensor_release(b.y); ad_tensor_release(b.items);
      free(b.err);
    }
  }
  pthread_mutex_unlock(&l->mu);
  free(ids);
  return NULL;
}

/* ---- construction --------------------------------------------------------- */

static ad_status check_opts(const ad_loader_opts *o, int64_t n) {
  if (o->batch_size < 1) return AD_FAIL(AD_EINVAL, "data loader: batch_size must be >= 1, got %lld", (long long)o->batch_size);
  if (n < 1) return AD_FAIL(AD_EINVAL, "data loader: the dataset is empty");
  if (o->drop_last && n < o->batch_size)
    return AD_FAIL(AD_EINVAL, "data loader: %lld items make no full batch of %lld (drop_last)", (long long)n,
                   (long long)o->batch_size);
  if (o->num_workers < 0 || o->num_workers > 64) return AD_FAIL(AD_EINVAL, "data loader: num_workers must be in 0..64, got %d", o->num_workers);
  if (o->prefetch < 1 || o->prefetch > 1024) return AD_FAIL(AD_EINVAL, "data loader: prefetch must be in 1..1024, got %d", o->prefetch);
  if (o->channels != 0 && o->channels != 1 && o->channels != 3)
    return AD_FAIL(AD_EINVAL, "data loader: channels must be 1 or 3, got %d", o->channels);
  if (o->height < 0 || o->width < 0 || o->height > 16384 || o->width > 16384 || (o->height == 0) != (o->width == 0))
    return AD_FAIL(AD_EINVAL, "data loader: invalid output size %d x %d", o->height, o->width);
  if (o->pad < 0 || o->pad > 4096) return AD_FAIL(AD_EINVAL, "data loader: pad must be in 0..4096, got %d", o->pad);
  if ((int)o->resize < 0 || (int)o->resize > AD_RESIZE_STRETCH) return AD_FAIL(AD_EINVAL, "data loader: unknown resize mode");
  if ((int)o->out < 0 || (int)o->out > AD_LOADER_OUT_U8) return AD_FAIL(AD_EINVAL, "data loader: unknown output kind");
  return AD_OK;
}

static ad_status loader_init(ad_loader *l, const ad_loader_opts *o, int64_t n, const int64_t *labels) {
  l->o = *o;
  l->n = n;
  l->bpe = o->drop_last ? n / o->batch_size : (n + o->batch_size - 1) / o->batch_size;
  pthread_mutex_init(&l->mu, NULL);
  pthread_cond_init(&l->ready, NULL);
  pthread_cond_init(&l->space, NULL);
  atomic_init(&l->n_bad, 0);
  l->slots = calloc((size_t)o->prefetch, sizeof *l->slots);
  l->bad = calloc((size_t)n, 1);
  if (labels) l->labels = malloc((size_t)n * sizeof(int64_t));
  if (!l->slots || !l->bad || (labels && !l->labels)) return AD_FAIL(AD_ENOMEM, "data loader: out of memory");
  for (int i = 0; i < o->prefetch; i++) l->slots[i].seq = -1;
  if (labels) memcpy(l->labels, labels, (size_t)n * sizeof(int64_t));
  return AD_OK;
}

static ad_status start_workers(ad_loader *l) {
  if (l->o.num_workers == 0) return AD_OK;
  l->threads = calloc((size_t)l->o.num_workers, sizeof *l->threads);
  if (!l->threads) return AD_FAIL(AD_ENOMEM, "data loader: out of memory");
  for (int i = 0; i < l->o.num_workers; i++) {
    int e = pthread_create(&l->threads[i], NULL, worker, l);
    if (e) return AD_FAIL(AD_EINVAL, "data loader: cannot start a worker thread: %s", strerror(e));
    l->n_threads++;
  }
  return AD_OK;
}

void ad_loader_free(ad_loader *l) {
  if (!l) return;
  pthread_mutex_lock(&l->mu);
  l->stop = true;
  pthread_cond_broadcast(&l->space);
  pthread_cond_broadcast(&l->ready);
  pthread_mutex_unlock(&l->mu);
  for (int i = 0; i < l->n_threads; i++) pthread_join(l->threads[i], NULL);
  free(l->threads);
  if (l->slots) for (int i = 0; i < l->o.prefetch; i++) slot_clear(&l->slots[i]);
  free(l->slots);
  for (int k = 0; k < PERM_CACHE; k++) free(l->cache[k].perm);
  if (l->paths) for (int64_t i = 0; i < l->n; i++) free(l->paths[i]);
  free(l->paths);
  ad_tensor_release(l->array);
  free(l->rows);
  free(l->labels);
  free(l->bad);
  pthread_mutex_destroy(&l->mu);
  pthread_cond_destroy(&l->ready);
  pthread_cond_destroy(&l->space);
  free(l);
}

ad_status ad_loader_new_files(ad_loader **out, const char *const *paths, const int64_t *labels, int64_t n,
                              const ad_loader_opts *o) {
  AD_TRY(check_opts(o, n));
  ad_loader *l = calloc(1, sizeof *l);
  if (!l) return AD_FAIL(AD_ENOMEM, "data loader: out of memory");
  ad_status st;
  AD_TRY_GOTO(st, loader_init(l, o, n, labels), fail);
  l->paths = calloc((size_t)n, sizeof *l->paths);
  if (!l->paths) { st = AD_FAIL(AD_ENOMEM, "data loader: out of memory"); goto fail; }
  for (int64_t i = 0; i < n; i++) {
    if (!paths[i]) { st = AD_FAIL(AD_EINVAL, "data loader: path %lld is missing", (long long)i + 1); goto fail; }
    if (!(l->paths[i] = strdup(paths[i]))) { st = AD_FAIL(AD_ENOMEM, "data loader: out of memory"); goto fail; }
  }
  AD_TRY_GOTO(st, start_workers(l), fail);
  *out = l;
  return AD_OK;
fail:
  ad_loader_free(l);
  return st;
}

ad_status ad_loader_new_array(ad_loader **out, ad_tensor *images, bool hwc, const int64_t *rows,
                              const int64_t *labels, int64_t n, const ad_loader_opts *o) {
  char sb[96];
  if (images->dtype != AD_U8)
    return AD_FAIL(AD_EDTYPE, "data loader: the image array must be u8, got %s", ad_dtype_name(images->dtype));
  if (images->ndim != 3 && images->ndim != 4)
    return AD_FAIL(AD_ESHAPE, "data loader: the image array must be (N, H, W, C), (N, C, H, W) or (N, H, W), got %s",
                   ad_shape_str(images->ndim, images->shape, sb, sizeof sb));
  if (images->storage->device.type != AD_DEV_CPU)
    return AD_FAIL(AD_EDEVICE, "data loader: the image array must be on the CPU");
  int c = images->ndim == 3 ? 1 : (int)(hwc ? images->shape[3] : images->shape[1]);
  if (c != 1 && c != 3 && c != 4)
    return AD_FAIL(AD_ESHAPE, "data loader: images must have 1, 3 or 4 channels, the array %s has %d (%s layout)",
                   ad_shape_str(images->ndim, images->shape, sb, sizeof sb), c, hwc ? "NHWC" : "NCHW");
  const int64_t N = images->shape[0];
  if (!rows && n != N) return AD_FAIL(AD_EINVAL, "data loader: %lld items but the array has %lld rows", (long long)n, (long long)N);
  for (int64_t i = 0; rows && i < n; i++)
    if (rows[i] < 0 || rows[i] >= N)
      return AD_FAIL(AD_EINVAL, "data loader: row %lld of item %lld is outside the array's %lld rows",
                     (long long)rows[i], (long long)i + 1, (long long)N);
  AD_TRY(check_opts(o, n));
  ad_tensor *arr = NULL;
  AD_TRY(ad_contiguous(&arr, images));
  ad_loader *l = calloc(1, sizeof *l);
  if (!l) { ad_tensor_release(arr); return AD_FAIL(AD_ENOMEM, "data loader: out of memory"); }
  l->array = arr;
  l->hwc = hwc;
  ad_status st;
  AD_TRY_GOTO(st, loader_init(l, o, n, labels), fail);
  l->rows = malloc((size_t)n * sizeof *l->rows);
  if (!l->rows) { st = AD_FAIL(AD_ENOMEM, "data loader: out of memory"); goto fail; }
  for (int64_t i = 0; i < n; i++) l->rows[i] = rows ? rows[i] : i;
  AD_TRY_GOTO(st, start_workers(l), fail);
  *out = l;
  return AD_OK;
fail:
  ad_loader_free(l);
  return st;
}

/* ---- consuming --------------------------------------------------------------- */

ad_status ad_loader_next(ad_loader *l, ad_tensor **x, ad_tensor **y, ad_tensor **items, int64_t *pos) {
  for (;;) {
    batch b = {0};
    int64_t s;
    pthread_mutex_lock(&l->mu);
    s = l->consumed;
    if (l->n_threads == 0) {
      l->next = s + 1;
      pthread_mutex_unlock(&l->mu);
      int64_t *ids = malloc((size_t)l->o.batch_size * sizeof *ids);
      ad_status st = ids ? produce(l, s, &b, ids) : AD_FAIL(AD_ENOMEM, "data loader: out of memory");
      free(ids);
      pthread_mutex_lock(&l->mu);
      l->consumed = s + 1;
      pthread_mutex_unlock(&l->mu);
      if (st != AD_OK) return st;
    } else {
      slot *sl = &l->slots[s % l->o.prefetch];
      while (!(sl->seq == s && sl->gen == l->gen)) pthread_cond_wait(&l->ready, &l->mu);
      b.x = sl->x; b.y = sl->y; b.items = sl->items; b.err = sl->err;
      sl->x = sl->y = sl->items = NULL;
      sl->err = NULL;
      sl->seq = -1;
      l->consumed = s + 1;
      pthread_cond_broadcast(&l->space);
      pthread_mutex_unlock(&l->mu);
    }
    if (b.err) {
      ad_status st = AD_FAIL(AD_EFORMAT, "data loader: %s", b.err);
      free(b.err);
      ad_tensor_release(b.x); ad_tensor_release(b.y); ad_tensor_release(b.items);
      return st;
    }
    if (!b.x) continue;   /* every item of the batch was bad */
    *x = b.x;
    if (y) *y = b.y; else ad_tensor_release(b.y);
    if (items) *items = b.items; else ad_tensor_release(b.items);
    if (pos) *pos = s;
    return AD_OK;
  }
}

ad_status ad_loader_seek(ad_loader *l, int64_t s) {
  if (s < 0) return AD_FAIL(AD_EINVAL, "data loader: position must be >= 0, got %lld", (long long)s);
  pthread_mutex_lock(&l->mu);
  l->gen++;
  for (int i = 0; i < l->o.prefetch; i++) slot_clear(&l->slots[i]);
  l->consumed = l->next = s;
  pthread_cond_broadcast(&l->space);
  pthread_mutex_unlock(&l->mu);
  return AD_OK;
}

int64_t ad_loader_position(const ad_loader *l) {
  pthread_mutex_lock((pthread_mutex_t *)&l->mu);
  int64_t s = l->consumed;
  pthread_mutex_unlock((pthread_mutex_t *)&l->mu);
  return s;
}
int64_t ad_loader_batches_per_epoch(const ad_loader *l) { return l->bpe; }
int64_t ad_loader_num_items(const ad_loader *l) { return l->n; }
int64_t ad_loader_bad_items(const ad_loader *l) { return atomic_load(&((ad_loader *)l)->n_bad); }

/* ---- durability ---------------------------------------------------------------- */

ad_status ad_fsync_path(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return AD_FAIL(AD_EIO, "fsync '%s': cannot open: %s", path, strerror(errno));
  int r = fsync(fd);
  int e = errno;
  close(fd);
  /* some file systems refuse fsync on directories (EINVAL): nothing more can be done there */
  if (r != 0 && e != EINVAL) return AD_FAIL(AD_EIO, "fsync '%s': %s", path, strerror(e));
  return AD_OK;
}
