/* fio.c: the plumbing every format shares: whole-file mappings that mapped
 * tensors keep alive, error messages that name the file, storages over file
 * bytes, growable buffers, and output files written through a temporary that
 * is renamed into place. */
#define _GNU_SOURCE   /* MAP_POPULATE */
#define AD_FORMATS_INTERNAL
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "autograd.h"
#include "backend.h"
#include "formats.h"
#include "ops.h"

ad_status fmt_fail(const char *name, ad_status code, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return AD_FAIL(code, "load '%s': %s", name ? name : "?", msg);
}

/* ---- mappings ---- */
ad_status fmt_map_file(fmt_mapping **out, const char *path, bool no_mmap, bool populate) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return AD_FAIL(AD_EIO, "load '%s': cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    int e = errno;
    close(fd);
    return AD_FAIL(AD_EIO, "load '%s': cannot stat: %s", path, strerror(e));
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    return AD_FAIL(AD_EIO, "load '%s': not a regular file", path);
  }
  if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX / 2) {
    close(fd);
    return AD_FAIL(AD_EIO, "load '%s': file too large", path);
  }
  size_t len = (size_t)sb.st_size;
  fmt_mapping *m = calloc(1, sizeof *m);
  if (!m) { close(fd); return AD_FAIL(AD_ENOMEM, "load '%s': out of memory", path); }
  atomic_init(&m->refcount, 1);
  m->len = len;
  if (len > 0 && !no_mmap) {
    /* private and writable: tensors mapped from the file may be updated in
     * place (an optimizer step) without touching the file */
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p != MAP_FAILED) {
      m->base = p;
      m->is_mmap = true;
      if (populate) {
        /* read faults map the page-cache pages as they are (MAP_POPULATE on
         * a writable private mapping would copy every page instead) */
        madvise(p, len, MADV_WILLNEED);
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < len; i += 4096) sink ^= ((const uint8_t *)p)[i];
        (void)sink;
      }
    }
  }
  if (len > 0 && !m->is_mmap) {
    /* anonymous memory faulted in at once is cheaper than faulting it page
     * by page under read() */
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) { close(fd); free(m); return AD_FAIL(AD_ENOMEM, "load '%s': out of memory reading %zu bytes", path, len); }
    m->base = p;
    m->is_mmap = true;
    size_t got = 0;
    while (got < len) {
      size_t want = len - got > (1u << 30) ? (1u << 30) : len - got;
      ssize_t r = pread(fd, (char *)m->base + got, want, (off_t)got);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        int e = errno;
        close(fd);
        munmap(m->base, len);
        free(m);
        return AD_FAIL(AD_EIO, "load '%s': read failed at byte %zu: %s", path, got, r < 0 ? strerror(e) : "file shrank");
      }
      got += (size_t)r;
    }
  }
  close(fd);
  *out = m;
  return AD_OK;
}

void fmt_mapping_retain(fmt_mapping *m) { if (m) atomic_fetch_add(&m->refcount, 1); }

void fmt_mapping_release(fmt_mapping *m) {
  if (!m || atomic_fetch_sub(&m->refcount, 1) != 1) return;
  if (m->base) munmap(m->base, m->len);
  free(m);
}

static void mapping_storage_release(void *ctx, void *data, size_t nbytes) {
  (void)data; (void)nbytes;
  fmt_mapping_release(ctx);
}

ad_status fmt_storage_from_src(ad_storage **out, const fmt_src *src, size_t off, size_t nbytes, size_t align) {
  const uint8_t *p = src->data + off;
  /* a view into the file's mapping (or its one read() buffer with mmap=false);
   * the storage keeps the whole mapping alive */
  if (src->map && (align == 0 || (uintptr_t)p % align == 0)) {
    ad_storage *s = ad_storage_wrap((void *)p, nbytes, AD_CPU, mapping_storage_release, src->map);
    if (!s) return fmt_fail(src->name, AD_ENOMEM, "out of memory");
    fmt_mapping_retain(src->map);
    *out = s;
    return AD_OK;
  }
  ad_storage *s;
  ad_status st = ad_storage_new(&s, nbytes, AD_CPU);
  if (st != AD_OK) return fmt_fail(src->name, st, "cannot allocate %zu bytes for tensor data", nbytes);
  if (nbytes) memcpy(s->data, p, nbytes);
  *out = s;
  return AD_OK;
}

bool fmt_shape_bytes(int ndim, const int64_t *shape, size_t esize, uint64_t *numel, uint64_t *nbytes) {
  /* the product of the non-zero sizes must fit too: contiguous strides are
   * computed from it even when another size is 0 */
  uint64_t n = 1, span = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || !fmt_mul_ok(n, (uint64_t)shape[i], &n)) return false;
    if (shape[i] > 0 && (!fmt_mul_ok(span, (uint64_t)shape[i], &span) || span > ((uint64_t)1 << 59))) return false;
  }
  uint64_t b;
  if (!fmt_mul_ok(n, esize, &b) || b > ((uint64_t)1 << 62)) return false;
  *numel = n;
  *nbytes = b;
  return true;
}

/* ---- buffers ---- */
static bool buf_reserve(fmt_buf *b, size_t extra) {
  if (b->oom) return false;
  if (extra > SIZE_MAX - b->n) { b->oom = true; return false; }
  size_t need = b->n + extra;
  if (need <= b->cap) return true;
  size_t nc = b->cap ? b->cap : 256;
  while (nc < need) nc = nc > SIZE_MAX / 2 ? need : nc * 2;
  uint8_t *p = realloc(b->p, nc);
  if (!p) { b->oom = true; return false; }
  b->p = p;
  b->cap = nc;
  return true;
}
void fmt_buf_put(fmt_buf *b, const void *data, size_t n) {
  if (!n || !buf_reserve(b, n)) return;
  memcpy(b->p + b->n, data, n);
  b->n += n;
}
void fmt_buf_byte(fmt_buf *b, uint8_t c) { fmt_buf_put(b, &c, 1); }
void fmt_buf_le16(fmt_buf *b, uint16_t v) { uint8_t t[2] = {(uint8_t)v, (uint8_t)(v >> 8)}; fmt_buf_put(b, t, 2); }
void fmt_buf_le32(fmt_buf *b, uint32_t v) {
  uint8_t t[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  fmt_buf_put(b, t, 4);
}
void fmt_buf_le64(fmt_buf *b, uint64_t v) { fmt_buf_le32(b, (uint32_t)v); fmt_buf_le32(b, (uint32_t)(v >> 32)); }
void fmt_buf_printf(fmt_buf *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) { b->oom = true; return; }
  if ((size_t)n < sizeof tmp) { fmt_buf_put(b, tmp, (size_t)n); return; }
  if (!buf_reserve(b, (size_t)n + 1)) return;
  va_start(ap, fmt);
  vsnprintf((char *)b->p + b->n, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->n += (size_t)n;
}
void fmt_buf_free(fmt_buf *b) { free(b->p); memset(b, 0, sizeof *b); }

/* ---- output files ---- */
struct fmt_out {
  FILE *f;
  char *path, *tmp;
  uint64_t pos;
};

ad_status fmt_out_open(fmt_out **out, const char *path) {
  fmt_out *o = calloc(1, sizeof *o);
  size_t n = strlen(path);
  if (!o || !(o->path = malloc(n + 1)) || !(o->tmp = malloc(n + 32))) {
    if (o) { free(o->path); free(o); }
    return AD_FAIL(AD_ENOMEM, "save '%s': out of memory", path);
  }
  memcpy(o->path, path, n + 1);
  snprintf(o->tmp, n + 32, "%s.tmp.%ld", path, (long)getpid());
  o->f = fopen(o->tmp, "wb");
  if (!o->f) {
    int e = errno;
    free(o->path); free(o->tmp); free(o);
    return AD_FAIL(AD_EIO, "save '%s': cannot create: %s", path, strerror(e));
  }
  setvbuf(o->f, NULL, _IOFBF, 1 << 20);
  *out = o;
  return AD_OK;
}

ad_status fmt_out_write(fmt_out *o, const void *data, size_t n) {
  if (n && fwrite(data, 1, n, o->f) != n)
    return AD_FAIL(AD_EIO, "save '%s': write failed at byte %llu: %s", o->path,
                   (unsigned long long)o->pos, strerror(errno));
  o->pos += n;
  return AD_OK;
}

uint64_t fmt_out_pos(const fmt_out *o) { return o->pos; }

static void out_free(fmt_out *o) { free(o->path); free(o->tmp); free(o); }

ad_status fmt_out_commit(fmt_out *o) {
  ad_status st = AD_OK;
  if (fflush(o->f) != 0 || ferror(o->f)) st = AD_FAIL(AD_EIO, "save '%s': write failed: %s", o->path, strerror(errno));
  if (fclose(o->f) != 0 && st == AD_OK) st = AD_FAIL(AD_EIO, "save '%s': close failed: %s", o->path, strerror(errno));
  if (st == AD_OK && rename(o->tmp, o->path) != 0)
    st = AD_FAIL(AD_EIO, "save '%s': cannot rename the temporary file into place: %s", o->path, strerror(errno));
  if (st != AD_OK) remove(o->tmp);
  out_free(o);
  return st;
}

void fmt_out_abort(fmt_out *o) {
  if (!o) return;
  fclose(o->f);
  remove(o->tmp);
  out_free(o);
}

/* ---- host bytes of tensors for writers ---- */
ad_status fmt_host_bytes(const void **bytes, ad_tensor **keep, const ad_tensor *t) {
  ad_tensor *c = NULL, *h = NULL;
  bool prev = ad_set_grad_enabled(false);
  ad_status st = ad_contiguous(&c, t);
  if (st == AD_OK) st = ad_to_device(&h, c, AD_CPU);
  ad_set_grad_enabled(prev);
  ad_tensor_release(c);
  if (st != AD_OK) return st;
  *bytes = ad_data(h);
  *keep = h;
  return AD_OK;
}

ad_status fmt_storage_host_bytes(const void **bytes, void **keep, const ad_storage *s) {
  if (s->device.type == AD_DEV_CPU) { *bytes = s->data; *keep = NULL; return AD_OK; }
  const ad_backend *bk = ad_backend_for(s->device);
  if (!bk) return AD_FAIL(AD_EDEVICE, "save: no backend for the storage's device");
  void *tmp = malloc(s->nbytes ? s->nbytes : 1);
  if (!tmp) return AD_FAIL(AD_ENOMEM, "save: out of memory staging %zu bytes", s->nbytes);
  ad_status st = s->nbytes ? bk->to_host(tmp, s->data, s->nbytes, s->device.index) : AD_OK;
  if (st != AD_OK) { free(tmp); return st; }
  *bytes = tmp;
  *keep = tmp;
  return AD_OK;
}

bool fmt_utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t k;
    uint32_t cp;
    if (c < 0x80) { i++; continue; }
    if ((c & 0xE0) == 0xC0) { k = 1; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { k = 2; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { k = 3; cp = c & 0x07; }
    else return false;
    if (n - i <= k) return false;
    for (size_t j = 1; j <= k; j++) {
      if ((s[i + j] & 0xC0) != 0x80) return false;
      cp = cp << 6 | (s[i + j] & 0x3F);
    }
    if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += k + 1;
  }
  return true;
}
