/* zip.c: the zip container of PyTorch checkpoints and .npz files.
 *
 * Reading trusts nothing: the end-of-central-directory record (and its zip64
 * form) is searched for within the file, the central directory must lie
 * inside the file, before that record, and every entry's local header and
 * data must lie before the central directory. Sizes that disagree (a stored
 * entry whose sizes differ, a deflated entry that inflates to another size or
 * claims an impossible ratio, a wrong CRC) are errors that name the entry.
 * Writing produces stored or deflated entries, aligned for mapping, with
 * zip64 records only when sizes or offsets need them. */
#define _POSIX_C_SOURCE 200809L
#define AD_FORMATS_INTERNAL
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>
#include "formats.h"

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOC64 0x07064b50u
#define DEFLATE_MAX_RATIO 1032u   /* deflate cannot expand 1 byte into more than ~1032 */

bool fmt_is_zip(const fmt_src *src) {
  return src->len >= 4 && (fmt_le32(src->data) == SIG_LOCAL || fmt_le32(src->data) == SIG_EOCD);
}

static int cmp_pair(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

typedef struct { uint64_t start, end; } span;
static int cmp_span(const void *a, const void *b) {
  const span *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

void fmt_zip_close(fmt_zip *z) {
  free(z->e);
  free(z->sorted);
  free(z->names);
  memset(z, 0, sizeof *z);
}

/* the zip64 extended-information extra field: the fields whose 32-bit value
 * is 0xFFFFFFFF come in the order usize, csize, local header offset */
static ad_status zip64_extra(const fmt_src *src, const uint8_t *x, size_t xlen, const char *ename,
                             uint64_t *usize, uint64_t *csize, uint64_t *off) {
  size_t i = 0;
  while (i + 4 <= xlen) {
    uint16_t id = fmt_le16(x + i), n = fmt_le16(x + i + 2);
    if (i + 4 + n > xlen) return fmt_fail(src->name, AD_EFORMAT, "zip entry '%s': extra field overruns its header", ename);
    if (id == 0x0001) {
      const uint8_t *p = x + i + 4;
      size_t k = 0;
      uint64_t *want[3] = {usize, csize, off};
      for (int f = 0; f < 3; f++) {
        if (!want[f] || *want[f] != 0xFFFFFFFFu) continue;
        if (k + 8 > n) return fmt_fail(src->name, AD_EFORMAT, "zip entry '%s': zip64 extra field too short", ename);
        *want[f] = fmt_le64(p + k);
        k += 8;
      }
      return AD_OK;
    }
    i += 4 + (size_t)n;
  }
  return AD_OK;
}

ad_status fmt_zip_open(fmt_zip *z, const fmt_src *src) {
  memset(z, 0, sizeof *z);
  const uint8_t *d = src->data;
  size_t len = src->len;
  if (len < 22) return fmt_fail(src->name, AD_EFORMAT, "truncated zip: %zu bytes, no end-of-central-directory record", len);
  /* the EOCD record is the last 22 bytes plus a comment of up to 65535 */
  size_t eocd = SIZE_MAX;
  size_t lo = len >= 22 + 65535 ? len - 22 - 65535 : 0;
  for (size_t p = len - 22 + 1; p-- > lo;) {
    if (fmt_le32(d + p) == SIG_EOCD && p + 22 + fmt_le16(d + p + 20) == len) { eocd = p; break; }
  }
  if (eocd == SIZE_MAX) {
    for (size_t p = len - 22 + 1; p-- > lo;)
      if (fmt_le32(d + p) == SIG_EOCD) { eocd = p; break; }
  }
  if (eocd == SIZE_MAX) return fmt_fail(src->name, AD_EFORMAT, "truncated or damaged zip: no end-of-central-directory record");
  uint64_t nent = fmt_le16(d + eocd + 10), cd_size = fmt_le32(d + eocd + 12), cd_off = fmt_le32(d + eocd + 16);
  uint64_t cd_end_limit = eocd;
  if (fmt_le16(d + eocd + 4) != 0 || fmt_le16(d + eocd + 6) != 0)
    return fmt_fail(src->name, AD_EFORMAT, "multi-disk zip archives are not supported");
  if (nent == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu ||
      (eocd >= 20 && fmt_le32(d + eocd - 20) == SIG_LOC64)) {
    if (eocd < 20 || fmt_le32(d + eocd - 20) != SIG_LOC64)
      return fmt_fail(src->name, AD_EFORMAT, "zip at offset %zu: zip64 locator missing", eocd);
    uint64_t r64 = fmt_le64(d + eocd - 20 + 8);
    if (r64 > eocd - 20 || eocd - 20 - r64 < 56 || fmt_le32(d + r64) != SIG_EOCD64)
      return fmt_fail(src->name, AD_EFORMAT, "zip64 end-of-central-directory record at offset %llu is missing or out of range",
                      (unsigned long long)r64);
    nent = fmt_le64(d + r64 + 32);
    cd_size = fmt_le64(d + r64 + 40);
    cd_off = fmt_le64(d + r64 + 48);
    cd_end_limit = r64;
  }
  uint64_t cd_end;
  if (!fmt_add_ok(cd_off, cd_size, &cd_end) || cd_end > cd_end_limit)
    return fmt_fail(src->name, AD_EFORMAT, "zip central directory (offset %llu, %llu bytes) lies outside the file (truncated?)",
                    (unsigned long long)cd_off, (unsigned long long)cd_size);
  if (nent > cd_size / 46)
    return fmt_fail(src->name, AD_EFORMAT, "zip declares %llu entries in a %llu-byte central directory",
                    (unsigned long long)nent, (unsigned long long)cd_size);
  z->e = calloc(nent ? nent : 1, sizeof *z->e);
  z->sorted = calloc(nent ? nent : 1, sizeof *z->sorted);
  z->names = malloc(cd_size + 1);
  span *spans = calloc(nent ? nent : 1, sizeof *spans);
  if (!z->e || !z->sorted || !z->names || !spans) {
    free(spans);
    fmt_zip_close(z);
    return fmt_fail(src->name, AD_ENOMEM, "out of memory reading the zip directory");
  }
  size_t np = 0;
  uint64_t p = cd_off;
  ad_status st = AD_OK;
  if (src->map && src->map->is_mmap) {
    /* every entry's local header is read below: ask for all those pages at
     * once, so a cold file costs one batch of reads, not one wait per entry */
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (uint64_t i = 0, q = cd_off; i < nent && cd_end - q >= 46 && fmt_le32(d + q) == SIG_CENTRAL; i++) {
      uint64_t lh = fmt_le32(d + q + 42);
      if (lh < len) {
        uintptr_t a = (uintptr_t)(d + lh) & ~(pg - 1);
        posix_madvise((void *)a, pg, POSIX_MADV_WILLNEED);
      }
      q += 46 + (uint64_t)fmt_le16(d + q + 28) + fmt_le16(d + q + 30) + fmt_le16(d + q + 32);
    }
  }
  for (uint64_t i = 0; i < nent; i++) {
    if (cd_end - p < 46 || fmt_le32(d + p) != SIG_CENTRAL) {
      st = fmt_fail(src->name, AD_EFORMAT, "zip central directory entry %llu at offset %llu is damaged",
                    (unsigned long long)i, (unsigned long long)p);
      goto fail;
    }
    const uint8_t *c = d + p;
    uint16_t flags = fmt_le16(c + 8), method = fmt_le16(c + 10);
    uint32_t crc = fmt_le32(c + 16);
    uint64_t csize = fmt_le32(c + 20), usize = fmt_le32(c + 24);
    uint16_t nlen = fmt_le16(c + 28), xlen = fmt_le16(c + 30), clen = fmt_le16(c + 32);
    uint64_t lh = fmt_le32(c + 42);
    if ((uint64_t)46 + nlen + xlen + clen > cd_end - p) {
      st = fmt_fail(src->name, AD_EFORMAT, "zip central directory entry %llu overruns the directory", (unsigned long long)i);
      goto fail;
    }
    char *name = z->names + np;
    memcpy(name, c + 46, nlen);
    name[nlen] = 0;
    if (memchr(name, 0, nlen)) {
      st = fmt_fail(src->name, AD_EFORMAT, "zip entry %llu has a NUL byte in its name", (unsigned long long)i);
      goto fail;
    }
    np += (size_t)nlen + 1;
    AD_TRY_GOTO(st, zip64_extra(src, c + 46 + nlen, xlen, name, &usize, &csize, &lh), fail);
    if (flags & 1) { st = fmt_fail(src->name, AD_EFORMAT, "zip entry '%s' is encrypted", name); goto fail; }
    if (method != 0 && method != 8) {
      st = fmt_fail(src->name, AD_EFORMAT, "zip entry '%s' uses compression method %u (only stored and deflate are supported)", name, method);
      goto fail;
    }
    /* the local header: its own name and extra lengths decide where data starts */
    if (lh > cd_off || cd_off - lh < 30 || fmt_le32(d + lh) != SIG_LOCAL) {
      st = fmt_fail(src->name, AD_EFORMAT, "zip entry '%s': local header at offset %llu is missing or out of range",
                    name, (unsigned long long)lh);
      goto fail;
    }
    uint64_t data_off = lh + 30 + (uint64_t)fmt_le16(d + lh + 26) + fmt_le16(d + lh + 28), data_end;
    if (data_off > cd_off || !fmt_add_ok(data_off, csize, &data_end) || data_end > cd_off) {
      st = fmt_fail(src->name, AD_EFORMAT, "zip entry '%s': %llu bytes of data at offset %llu run past the end of the entries (sizes lie or file truncated)",
                    name, (unsigned long long)csize, (unsigned long long)data_off);
      goto fail;
    }
    if (method == 0 && csize != usize) {
      st = fmt_fail(src->name, AD_EFORMAT, "zip entry '%s' is stored but declares %llu compressed and %llu uncompressed bytes",
                    name, (unsigned long long)csize, (unsigned long long)usize);
      goto fail;
    }
    if (method == 8 && usize / DEFLATE_MAX_RATIO > csize + 1) {
      st = fmt_fail(src->name, AD_EFORMAT, "zip entry '%s' claims %llu bytes from %llu compressed bytes (impossible for deflate)",
                    name, (unsigned long long)usize, (unsigned long long)csize);
      goto fail;
    }
    z->e[i] = (fmt_zip_entry){name, data_off, csize, usize, crc, method};
    spans[i] = (span){lh, data_end};
    z->sorted[i] = (size_t)i;
    p += 46 + (uint64_t)nlen + xlen + clen;
  }
  z->n = (size_t)nent;
  /* entries of a real archive never share bytes; overlapping ones are how
   * zip bombs multiply one compressed blob into many huge members */
  qsort(spans, z->n, sizeof *spans, cmp_span);
  for (size_t i = 1; i < z->n; i++) {
    if (spans[i].start < spans[i - 1].end) {
      st = fmt_fail(src->name, AD_EFORMAT, "zip entries overlap at offset %llu (a zip bomb or a damaged archive)",
                    (unsigned long long)spans[i].start);
      goto fail;
    }
  }
  {
    /* qsort has no context argument in C11: sort (name pointer, index) pairs instead */
    struct pair { const char *name; size_t idx; } *pairs = malloc(z->n ? z->n * sizeof *pairs : 1);
    if (!pairs) { st = fmt_fail(src->name, AD_ENOMEM, "out of memory"); goto fail; }
    for (size_t i = 0; i < z->n; i++) pairs[i] = (struct pair){z->e[i].name, i};
    qsort(pairs, z->n, sizeof *pairs, cmp_pair);
    for (size_t i = 0; i < z->n; i++) z->sorted[i] = pairs[i].idx;
    free(pairs);
  }
  free(spans);
  return AD_OK;
fail:
  free(spans);
  fmt_zip_close(z);
  return st;
}

const fmt_zip_entry *fmt_zip_find(const fmt_zip *z, const char *name) {
  size_t lo = 0, hi = z->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(z->e[z->sorted[mid]].name, name);
    if (c == 0) return &z->e[z->sorted[mid]];
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}

/* inflates exactly e->usize bytes into dst */
static ad_status inflate_entry(uint8_t *dst, const fmt_src *src, const fmt_zip_entry *e) {
  z_stream zs;
  memset(&zs, 0, sizeof zs);
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) return fmt_fail(src->name, AD_ENOMEM, "zlib init failed");
  const uint8_t *in = src->data + e->data_off;
  uint64_t in_left = e->csize, out_left = e->usize;
  uint8_t *out = dst;
  int r = Z_OK;
  while (r != Z_STREAM_END) {
    uInt ci = in_left > (1u << 30) ? (1u << 30) : (uInt)in_left;
    uInt co = out_left > (1u << 30) ? (1u << 30) : (uInt)out_left;
    zs.next_in = (Bytef *)in;
    zs.avail_in = ci;
    zs.next_out = out;
    zs.avail_out = co;
    r = inflate(&zs, Z_NO_FLUSH);
    size_t used_in = ci - zs.avail_in, made = co - zs.avail_out;
    in += used_in; in_left -= used_in;
    out += made; out_left -= made;
    if (r == Z_STREAM_END) break;
    if (r != Z_OK && r != Z_BUF_ERROR) {
      inflateEnd(&zs);
      return fmt_fail(src->name, AD_EFORMAT, "zip entry '%s': corrupt deflate data after %llu output bytes", e->name,
                      (unsigned long long)(e->usize - out_left));
    }
    if (used_in == 0 && made == 0) {
      inflateEnd(&zs);
      if (out_left == 0)
        return fmt_fail(src->name, AD_EFORMAT, "zip entry '%s' inflates to more than its declared %llu bytes", e->name,
                        (unsigned long long)e->usize);
      return fmt_fail(src->name, AD_EFORMAT, "zip entry '%s': deflate data ends early (%llu of %llu bytes)", e->name,
                      (unsigned long long)(e->usize - out_left), (unsigned long long)e->usize);
    }
  }
  inflateEnd(&zs);
  if (out_left != 0)
    return fmt_fail(src->name, AD_EFORMAT, "zip entry '%s' inflates to %llu bytes, its header says %llu", e->name,
                    (unsigned long long)(e->usize - out_left), (unsigned long long)e->usize);
  return AD_OK;
}

static uint32_t crc_of(const uint8_t *p, uint64_t n) {
  uLong c = crc32(0L, Z_NULL, 0);
  while (n) {
    uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
    c = crc32(c, p, k);
    p += k;
    n -= k;
  }
  return (uint32_t)c;
}

static ad_status check_crc(const fmt_src *src, const fmt_zip_entry *e, const uint8_t *p) {
  uint32_t c = crc_of(p, e->usize);
  if (c != e->crc)
    return fmt_fail(src->name, AD_EFORMAT, "zip entry '%s': CRC-32 is %08x, the directory says %08x (damaged file)",
                    e->name, c, e->crc);
  return AD_OK;
}

ad_status fmt_zip_read(uint8_t **buf, const fmt_src *src, const fmt_zip_entry *e) {
  if (e->usize > SIZE_MAX - 1) return fmt_fail(src->name, AD_ENOMEM, "zip entry '%s' is too large", e->name);
  uint8_t *b = malloc((size_t)e->usize + 1);
  if (!b) return fmt_fail(src->name, AD_ENOMEM, "out of memory reading zip entry '%s' (%llu bytes)", e->name,
                          (unsigned long long)e->usize);
  ad_status st = AD_OK;
  if (e->method == 0) memcpy(b, src->data + e->data_off, (size_t)e->usize);
  else st = inflate_entry(b, src, e);
  if (st == AD_OK) st = check_crc(src, e, b);
  if (st != AD_OK) { free(b); return st; }
  b[e->usize] = 0;
  *buf = b;
  return AD_OK;
}

ad_status fmt_zip_storage(ad_storage **out, const fmt_src *src, const fmt_zip_entry *e, uint64_t nbytes, size_t align) {
  if (nbytes > e->usize) return fmt_fail(src->name, AD_EFORMAT, "zip entry '%s' holds %llu bytes, %llu needed", e->name,
                                         (unsigned long long)e->usize, (unsigned long long)nbytes);
  if (e->method == 0) {
    if (src->verify_crc) AD_TRY(check_crc(src, e, src->data + e->data_off));
    return fmt_storage_from_src(out, src, (size_t)e->data_off, (size_t)nbytes, align);
  }
  ad_storage *s;
  ad_status st = ad_storage_new(&s, (size_t)e->usize, AD_CPU);
  if (st != AD_OK) return fmt_fail(src->name, st, "cannot allocate %llu bytes for zip entry '%s'", (unsigned long long)e->usize, e->name);
  st = inflate_entry(s->data, src, e);
  if (st == AD_OK) st = check_crc(src, e, s->data);
  if (st != AD_OK) { ad_storage_release(s); return st; }
  *out = s;
  return AD_OK;
}

/* ---- writing ---- */
typedef struct {
  char *name;
  uint64_t off, csize, usize;
  uint32_t crc;
  int method;
} zw_entry;

struct fmt_zipw {
  fmt_out *out;
  zw_entry *e;
  size_t n, cap;
  char *path;
};

ad_status fmt_zipw_open(fmt_zipw **w, const char *path) {
  fmt_zipw *z = calloc(1, sizeof *z);
  if (!z) return AD_FAIL(AD_ENOMEM, "save '%s': out of memory", path);
  z->path = strdup(path);
  ad_status st = z->path ? fmt_out_open(&z->out, path) : AD_FAIL(AD_ENOMEM, "save: out of memory");
  if (st != AD_OK) { free(z->path); free(z); return st; }
  *w = z;
  return AD_OK;
}

static void zipw_free(fmt_zipw *w) {
  for (size_t i = 0; i < w->n; i++) free(w->e[i].name);
  free(w->e);
  free(w->path);
  free(w);
}

void fmt_zipw_abort(fmt_zipw *w) {
  if (!w) return;
  fmt_out_abort(w->out);
  zipw_free(w);
}

/* DOS date of 1980-01-01 00:00: entries carry no timestamps, so identical
 * checkpoints are identical files */
#define DOS_TIME 0
#define DOS_DATE ((0 << 9) | (1 << 5) | 1)

static ad_status deflate_parts(uint8_t **out, uint64_t *outn, const void *a, size_t na, const void *b, size_t nb,
                               const char *path) {
  z_stream zs;
  memset(&zs, 0, sizeof zs);
  if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    return AD_FAIL(AD_ENOMEM, "save '%s': zlib init failed", path);
  uint64_t total = (uint64_t)na + nb;
  uint64_t cap = deflateBound(&zs, (uLong)total) + 64;
  uint8_t *buf = malloc((size_t)cap);
  if (!buf) { deflateEnd(&zs); return AD_FAIL(AD_ENOMEM, "save '%s': out of memory compressing", path); }
  const uint8_t *parts[2] = {a, b};
  size_t lens[2] = {na, nb};
  uint64_t produced = 0;
  for (int k = 0; k < 2; k++) {
    const uint8_t *p = parts[k];
    size_t left = lens[k];
    do {
      uInt ci = left > (1u << 30) ? (1u << 30) : (uInt)left;
      zs.next_in = (Bytef *)p;
      zs.avail_in = ci;
      int flush = (k == 1 && ci == left) ? Z_FINISH : Z_NO_FLUSH;
      int r;
      do {
        uint64_t room = cap - produced;
        zs.next_out = buf + produced;
        zs.avail_out = room > (1u << 30) ? (1u << 30) : (uInt)room;
        uInt before = zs.avail_out;
        r = deflate(&zs, flush);
        produced += before - zs.avail_out;
        if (r == Z_STREAM_ERROR || (zs.avail_out == 0 && produced == cap && r != Z_STREAM_END)) {
          deflateEnd(&zs);
          free(buf);
          return AD_FAIL(AD_EIO, "save '%s': deflate failed", path);
        }
      } while (zs.avail_in > 0 || (flush == Z_FINISH && r != Z_STREAM_END));
      p += ci;
      left -= ci;
    } while (left > 0);
  }
  deflateEnd(&zs);
  *out = buf;
  *outn = produced;
  return AD_OK;
}

ad_status fmt_zipw_add(fmt_zipw *w, const char *name, const void *a, size_t na, const void *b, size_t nb,
                       int method, size_t align) {
  size_t nlen = strlen(name);
  if (nlen > 0xFFFF) return AD_FAIL(AD_EINVAL, "save '%s': entry name too long", w->path);
  if (w->n == w->cap) {
    size_t nc = w->cap ? w->cap * 2 : 16;
    zw_entry *e = realloc(w->e, nc * sizeof *e);
    if (!e) return AD_FAIL(AD_ENOMEM, "save '%s': out of memory", w->path);
    w->e = e;
    w->cap = nc;
  }
  uLong c = crc32(0L, Z_NULL, 0);
  const uint8_t *parts[2] = {a, b};
  size_t lens[2] = {na, nb};
  for (int k = 0; k < 2; k++) {
    const uint8_t *p = parts[k];
    size_t n = lens[k];
    while (n) { uInt q = n > (1u << 30) ? (1u << 30) : (uInt)n; c = crc32(c, p, q); p += q; n -= q; }
  }
  uint64_t usize = (uint64_t)na + nb, csize = usize;
  uint8_t *comp = NULL;
  if (method == 8) AD_TRY(deflate_parts(&comp, &csize, a, na, b, nb, w->path));
  uint64_t off = fmt_out_pos(w->out);
  bool z64 = usize >= 0xFFFFFFFFu || csize >= 0xFFFFFFFFu;
  fmt_buf h = {0};
  fmt_buf_le32(&h, SIG_LOCAL);
  fmt_buf_le16(&h, z64 ? 45 : 20);
  fmt_buf_le16(&h, 0x0800);            /* names are UTF-8 */
  fmt_buf_le16(&h, (uint16_t)method);
  fmt_buf_le16(&h, DOS_TIME);
  fmt_buf_le16(&h, DOS_DATE);
  fmt_buf_le32(&h, (uint32_t)c);
  fmt_buf_le32(&h, z64 ? 0xFFFFFFFFu : (uint32_t)csize);
  fmt_buf_le32(&h, z64 ? 0xFFFFFFFFu : (uint32_t)usize);
  fmt_buf_le16(&h, (uint16_t)nlen);
  size_t xlen = z64 ? 20 : 0;
  size_t pad = 0;
  if (align > 1 && method == 0) {
    /* torch pads with an extra field ("FB") so the data starts aligned */
    uint64_t data_at = off + 30 + nlen + xlen + 4;
    pad = (size_t)((align - data_at % align) % align);
    xlen += 4 + pad;
  }
  fmt_buf_le16(&h, (uint16_t)xlen);
  fmt_buf_put(&h, name, nlen);
  if (z64) { fmt_buf_le16(&h, 0x0001); fmt_buf_le16(&h, 16); fmt_buf_le64(&h, usize); fmt_buf_le64(&h, csize); }
  if (align > 1 && method == 0) {
    fmt_buf_le16(&h, 0x4246);
    fmt_buf_le16(&h, (uint16_t)pad);
    for (size_t i = 0; i < pad; i++) fmt_buf_byte(&h, 'Z');
  }
  ad_status st = h.oom ? AD_FAIL(AD_ENOMEM, "save '%s': out of memory", w->path) : AD_OK;
  if (st == AD_OK) st = fmt_out_write(w->out, h.p, h.n);
  if (st == AD_OK) {
    if (method == 8) st = fmt_out_write(w->out, comp, (size_t)csize);
    else {
      st = fmt_out_write(w->out, a, na);
      if (st == AD_OK) st = fmt_out_write(w->out, b, nb);
    }
  }
  fmt_buf_free(&h);
  free(comp);
  if (st != AD_OK) return st;
  char *nm = strdup(name);
  if (!nm) return AD_FAIL(AD_ENOMEM, "save '%s': out of memory", w->path);
  w->e[w->n++] = (zw_entry){nm, off, csize, usize, (uint32_t)c, method};
  return AD_OK;
}

ad_status fmt_zipw_finish(fmt_zipw *w) {
  fmt_buf cd = {0};
  uint64_t cd_off = fmt_out_pos(w->out);
  for (size_t i = 0; i < w->n; i++) {
    const zw_entry *e = &w->e[i];
    bool big_u = e->usize >= 0xFFFFFFFFu, big_c = e->csize >= 0xFFFFFFFFu, big_o = e->off >= 0xFFFFFFFFu;
    size_t xlen = (big_u || big_c || big_o) ? 4 + 8 * (size_t)(big_u + big_c + big_o) : 0;
    size_t nlen = strlen(e->name);
    fmt_buf_le32(&cd, SIG_CENTRAL);
    fmt_buf_le16(&cd, xlen ? 45 : 20);   /* made by: MS-DOS, spec 2.0 / 4.5 */
    fmt_buf_le16(&cd, xlen ? 45 : 20);
    fmt_buf_le16(&cd, 0x0800);
    fmt_buf_le16(&cd, (uint16_t)e->method);
    fmt_buf_le16(&cd, DOS_TIME);
    fmt_buf_le16(&cd, DOS_DATE);
    fmt_buf_le32(&cd, e->crc);
    fmt_buf_le32(&cd, big_c ? 0xFFFFFFFFu : (uint32_t)e->csize);
    fmt_buf_le32(&cd, big_u ? 0xFFFFFFFFu : (uint32_t)e->usize);
    fmt_buf_le16(&cd, (uint16_t)nlen);
    fmt_buf_le16(&cd, (uint16_t)xlen);
    fmt_buf_le16(&cd, 0);   /* comment */
    fmt_buf_le16(&cd, 0);   /* disk */
    fmt_buf_le16(&cd, 0);   /* internal attributes */
    fmt_buf_le32(&cd, 0);   /* external attributes */
    fmt_buf_le32(&cd, big_o ? 0xFFFFFFFFu : (uint32_t)e->off);
    fmt_buf_put(&cd, e->name, nlen);
    if (xlen) {
      fmt_buf_le16(&cd, 0x0001);
      fmt_buf_le16(&cd, (uint16_t)(xlen - 4));
      if (big_u) fmt_buf_le64(&cd, e->usize);
      if (big_c) fmt_buf_le64(&cd, e->csize);
      if (big_o) fmt_buf_le64(&cd, e->off);
    }
  }
  uint64_t cd_size = cd.n, cd_end = cd_off + cd_size;
  bool z64 = w->n >= 0xFFFF || cd_off >= 0xFFFFFFFFu || cd_size >= 0xFFFFFFFFu;
  if (z64) {
    fmt_buf_le32(&cd, SIG_EOCD64);
    fmt_buf_le64(&cd, 44);
    fmt_buf_le16(&cd, 45);
    fmt_buf_le16(&cd, 45);
    fmt_buf_le32(&cd, 0);
    fmt_buf_le32(&cd, 0);
    fmt_buf_le64(&cd, w->n);
    fmt_buf_le64(&cd, w->n);
    fmt_buf_le64(&cd, cd_size);
    fmt_buf_le64(&cd, cd_off);
    fmt_buf_le32(&cd, SIG_LOC64);
    fmt_buf_le32(&cd, 0);
    fmt_buf_le64(&cd, cd_end);
    fmt_buf_le32(&cd, 1);
  }
  fmt_buf_le32(&cd, SIG_EOCD);
  fmt_buf_le16(&cd, 0);
  fmt_buf_le16(&cd, 0);
  fmt_buf_le16(&cd, z64 ? 0xFFFF : (uint16_t)w->n);
  fmt_buf_le16(&cd, z64 ? 0xFFFF : (uint16_t)w->n);
  fmt_buf_le32(&cd, z64 ? 0xFFFFFFFFu : (uint32_t)cd_size);
  fmt_buf_le32(&cd, z64 ? 0xFFFFFFFFu : (uint32_t)cd_off);
  fmt_buf_le16(&cd, 0);
  ad_status st = cd.oom ? AD_FAIL(AD_ENOMEM, "save '%s': out of memory", w->path) : fmt_out_write(w->out, cd.p, cd.n);
  fmt_buf_free(&cd);
  if (st != AD_OK) { fmt_zipw_abort(w); return st; }
  st = fmt_out_commit(w->out);
  zipw_free(w);
  return st;
}
