/* cuda_alloc.c: the caching device allocator (cutorch's THCCachingAllocator,
 * PyTorch's CUDACachingAllocator, in small).
 *
 * cudaMalloc and cudaFree synchronise the device and cost tens of
 * microseconds, so storages are carved out of cached segments instead:
 *  - requests are rounded up to 512 bytes;
 *  - small requests (<= 1 MiB) come from 2 MiB segments, large ones from
 *    segments of 20 MiB (requests under 10 MiB) or the request rounded up to
 *    2 MiB;
 *  - free blocks sit in size-binned free lists (one list per power of two,
 *    best fit within); a block larger than the request is split, the rest
 *    staying free (small pool: any rest >= 512 bytes; large pool: > 1 MiB);
 *  - a freed block merges with free neighbours of its segment;
 *  - when cudaMalloc fails, every wholly free segment is returned to the
 *    driver and the allocation is tried once more; a second failure is an
 *    AD_ENOMEM error naming the request and what is allocated and reserved.
 * After the first training step, the same sequence of sizes is served from
 * the cache: no cudaMalloc or cudaFree at all. Blocks are reused in stream
 * order (each device has one stream), so no events are needed. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cuda_internal.h"

#define ROUND 512
#define SMALL_MAX ((size_t)1 << 20)
#define SMALL_SEGMENT ((size_t)2 << 20)
#define LARGE_SEGMENT ((size_t)20 << 20)
#define LARGE_DIRECT ((size_t)10 << 20)
#define LARGE_ROUND ((size_t)2 << 20)
#define NBINS 48

typedef struct block {
  void *ptr;
  size_t size;                  /* bytes of this block */
  size_t requested;             /* bytes asked for (allocated blocks) */
  bool allocated, small;
  struct block *prev, *next;    /* address neighbours inside the segment */
  struct block *fprev, *fnext;  /* free list of its bin */
  struct block *hnext;          /* pointer hash chain (allocated blocks) */
} block;

typedef struct {
  pthread_mutex_t lock;
  block *bins[2][NBINS];        /* [small][bin] free lists */
  block **hash;
  size_t hash_cap, hash_n;
  ad_cuda_memory_stats st;
} dev_alloc;

static dev_alloc allocs[AD_CUDA_MAX_DEVICES];
static pthread_once_t allocs_once = PTHREAD_ONCE_INIT;
static _Thread_local bool scratch_failed;

static void allocs_init(void) {
  for (int i = 0; i < AD_CUDA_MAX_DEVICES; i++) pthread_mutex_init(&allocs[i].lock, NULL);
}

static size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

static int bin_of(size_t size) {
  int b = 0;
  while (b < NBINS - 1 && ((size_t)ROUND << (b + 1)) <= size) b++;
  return b;
}

static void fmt_bytes(char *buf, size_t n, int64_t v) {
  if (v >= (1ll << 30)) snprintf(buf, n, "%.2f GiB", (double)v / (double)(1ll << 30));
  else if (v >= (1ll << 20)) snprintf(buf, n, "%.2f MiB", (double)v / (double)(1ll << 20));
  else snprintf(buf, n, "%lld bytes", (long long)v);
}

/* ---- free lists ---- */
static void free_insert(dev_alloc *a, block *b) {
  block **head = &a->bins[b->small][bin_of(b->size)];
  b->fprev = NULL;
  b->fnext = *head;
  if (*head) (*head)->fprev = b;
  *head = b;
}
static void free_remove(dev_alloc *a, block *b) {
  if (b->fprev) b->fprev->fnext = b->fnext;
  else a->bins[b->small][bin_of(b->size)] = b->fnext;
  if (b->fnext) b->fnext->fprev = b->fprev;
  b->fprev = b->fnext = NULL;
}
/* smallest free block of the pool with size >= size */
static block *best_fit(dev_alloc *a, bool small, size_t size) {
  for (int bin = bin_of(size); bin < NBINS; bin++) {
    block *best = NULL;
    for (block *b = a->bins[small][bin]; b; b = b->fnext)
      if (b->size >= size && (!best || b->size < best->size || (b->size == best->size && b->ptr < best->ptr)))
        best = b;
    if (best) return best;
  }
  return NULL;
}

/* ---- pointer -> block ---- */
static size_t hash_ptr(const void *p, size_t cap) {
  uint64_t x = (uint64_t)(uintptr_t)p >> 9;
  x *= 0x9E3779B97F4A7C15ull;
  return (size_t)(x >> 20) & (cap - 1);
}
static bool hash_grow(dev_alloc *a) {
  size_t cap = a->hash_cap ? a->hash_cap * 2 : 1024;
  block **h = calloc(cap, sizeof *h);
  if (!h) return false;
  for (size_t i = 0; i < a->hash_cap; i++)
    for (block *b = a->hash[i], *nx; b; b = nx) {
      nx = b->hnext;
      size_t k = hash_ptr(b->ptr, cap);
      b->hnext = h[k];
      h[k] = b;
    }
  free(a->hash);
  a->hash = h;
  a->hash_cap = cap;
  return true;
}
static bool hash_put(dev_alloc *a, block *b) {
  if ((a->hash_n + 1) * 4 > a->hash_cap * 3 && !hash_grow(a)) return false;
  size_t k = hash_ptr(b->ptr, a->hash_cap);
  b->hnext = a->hash[k];
  a->hash[k] = b;
  a->hash_n++;
  return true;
}
static block *hash_take(dev_alloc *a, const void *p) {
  if (!a->hash_cap) return NULL;
  for (block **pp = &a->hash[hash_ptr(p, a->hash_cap)]; *pp; pp = &(*pp)->hnext)
    if ((*pp)->ptr == p) {
      block *b = *pp;
      *pp = b->hnext;
      b->hnext = NULL;
      a->hash_n--;
      return b;
    }
  return NULL;
}

/* ---- segments ---- */
/* Returns every wholly free segment of device dev to the driver. Lock held. */
static void release_free_segments(dev_alloc *a, int dev) {
  for (int s = 0; s < 2; s++)
    for (int bin = 0; bin < NBINS; bin++)
      for (block *b = a->bins[s][bin], *nx; b; b = nx) {
        nx = b->fnext;
        if (b->prev || b->next) continue;   /* part of a segment still in use */
        free_remove(a, b);
        cudaFree(b->ptr);
        (void)cudaGetLastError();
        a->st.reserved -= (int64_t)b->size;
        a->st.num_cuda_free++;
        a->st.num_segments--;
        free(b);
      }
  (void)dev;
}

static void update_peaks(dev_alloc *a) {
  if (a->st.allocated > a->st.peak_allocated) a->st.peak_allocated = a->st.allocated;
  if (a->st.reserved > a->st.peak_reserved) a->st.peak_reserved = a->st.reserved;
}

/* cudaMalloc of a new segment; on failure frees the cache and retries once. Lock held. */
static ad_status new_segment(block **out, dev_alloc *a, int dev, size_t seg, size_t size, size_t nbytes, bool small) {
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, seg);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    a->st.num_oom_retries++;
    release_free_segments(a, dev);
    e = cudaMalloc(&p, seg);
    if (e != cudaSuccess && seg > round_up(size, LARGE_ROUND) && !small) {  /* drop the slack of a 20 MiB segment */
      (void)cudaGetLastError();
      seg = round_up(size, LARGE_ROUND);
      e = cudaMalloc(&p, seg);
    }
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    (void)cudaGetLastError();
    char want[32], alloc[32], res[32], fr[32], tot[32];
    fmt_bytes(want, sizeof want, (int64_t)nbytes);
    fmt_bytes(alloc, sizeof alloc, a->st.allocated);
    fmt_bytes(res, sizeof res, a->st.reserved);
    fmt_bytes(fr, sizeof fr, (int64_t)free_b);
    fmt_bytes(tot, sizeof tot, (int64_t)total_b);
    return AD_FAIL(AD_ENOMEM,
                   "CUDA out of memory: tried to allocate %s on cuda:%d; %s allocated by tensors, %s reserved by "
                   "the caching allocator, %s free of %s on the device (%s)",
                   want, dev, alloc, res, fr, tot, cudaGetErrorString(e));
  }
  block *b = calloc(1, sizeof *b);
  if (!b) {
    cudaFree(p);
    return AD_FAIL(AD_ENOMEM, "out of host memory for an allocator block");
  }
  b->ptr = p;
  b->size = seg;
  b->small = small;
  a->st.reserved += (int64_t)seg;
  a->st.num_cuda_malloc++;
  a->st.num_segments++;
  update_peaks(a);
  *out = b;
  return AD_OK;
}

ad_status ad_cuda_malloc(void **ptr, size_t nbytes, int dev) {
  ad_cuda_dev *d;
  AD_TRY(ad_cuda_dev_get(&d, dev));     /* validates dev and makes it current */
  pthread_once(&allocs_once, allocs_init);
  dev_alloc *a = &allocs[dev];
  size_t size = round_up(nbytes ? nbytes : 1, ROUND);
  bool small = size <= SMALL_MAX;
  ad_status st = AD_OK;
  pthread_mutex_lock(&a->lock);
  block *b = best_fit(a, small, size);
  if (b) {
    free_remove(a, b);
    a->st.num_cache_hits++;
  } else {
    size_t seg = small ? SMALL_SEGMENT : size < LARGE_DIRECT ? LARGE_SEGMENT : round_up(size, LARGE_ROUND);
    st = new_segment(&b, a, dev, seg, size, nbytes, small);
    if (st != AD_OK) goto done;
  }
  /* split off the rest when it is worth keeping */
  size_t rest = b->size - size;
  if (small ? rest >= ROUND : rest > SMALL_MAX) {
    block *r = calloc(1, sizeof *r);
    if (r) {
      r->ptr = (char *)b->ptr + size;
      r->size = rest;
      r->small = small;
      r->prev = b;
      r->next = b->next;
      if (b->next) b->next->prev = r;
      b->next = r;
      b->size = size;
      free_insert(a, r);
    }
  }
  b->allocated = true;
  b->requested = nbytes;
  if (!hash_put(a, b)) {
    b->allocated = false;
    free_insert(a, b);
    st = AD_FAIL(AD_ENOMEM, "out of host memory for the allocator's table");
    goto done;
  }
  a->st.allocated += (int64_t)b->size;
  a->st.requested += (int64_t)nbytes;
  a->st.num_alloc++;
  update_peaks(a);
  *ptr = b->ptr;
done:
  pthread_mutex_unlock(&a->lock);
  return st;
}

void ad_cuda_free(void *ptr, size_t nbytes, int dev) {
  if (!ptr || dev < 0 || dev >= AD_CUDA_MAX_DEVICES) return;
  pthread_once(&allocs_once, allocs_init);
  dev_alloc *a = &allocs[dev];
  pthread_mutex_lock(&a->lock);
  block *b = hash_take(a, ptr);
  if (!b) { pthread_mutex_unlock(&a->lock); return; }   /* not ours: nothing to do */
  b->allocated = false;
  a->st.allocated -= (int64_t)b->size;
  a->st.requested -= (int64_t)b->requested;
  /* merge with free neighbours */
  if (b->prev && !b->prev->allocated) {
    block *p = b->prev;
    free_remove(a, p);
    p->size += b->size;
    p->next = b->next;
    if (b->next) b->next->prev = p;
    free(b);
    b = p;
  }
  if (b->next && !b->next->allocated) {
    block *n = b->next;
    free_remove(a, n);
    b->size += n->size;
    b->next = n->next;
    if (n->next) n->next->prev = b;
    free(n);
  }
  free_insert(a, b);
  pthread_mutex_unlock(&a->lock);
  (void)nbytes;
}

void *ad_cuda_scratch_alloc(size_t nbytes, int dev) {
  void *p = NULL;
  if (ad_cuda_malloc(&p, nbytes, dev) != AD_OK) {
    scratch_failed = true;
    return NULL;
  }
  return p;
}
void ad_cuda_scratch_free(void *p, int dev) { ad_cuda_free(p, 0, dev); }

/* Whether the last launcher failure was a scratch allocation (its message is
 * already recorded); clears the flag. */
bool ad_cuda_take_scratch_failure(void) {
  bool f = scratch_failed;
  scratch_failed = false;
  return f;
}

void ad_cuda_alloc_release_cached(int dev) {
  if (dev < 0 || dev >= AD_CUDA_MAX_DEVICES) return;
  pthread_once(&allocs_once, allocs_init);
  dev_alloc *a = &allocs[dev];
  pthread_mutex_lock(&a->lock);
  bool any = a->st.num_segments > 0;
  pthread_mutex_unlock(&a->lock);
  ad_cuda_dev *d;
  /* a device never used has nothing cached: do not create its context for nothing */
  if (!any || ad_cuda_dev_get(&d, dev) != AD_OK) return;   /* makes dev current for cudaFree */
  pthread_mutex_lock(&a->lock);
  release_free_segments(a, dev);
  pthread_mutex_unlock(&a->lock);
}

ad_status ad_cuda_empty_cache(void) {
  int n = ad_cuda_device_count();
  for (int i = 0; i < n; i++) ad_cuda_alloc_release_cached(i);
  return AD_OK;
}

ad_status ad_cuda_memory_stats_get(ad_cuda_memory_stats *out, int dev) {
  if (dev < 0 || dev >= ad_cuda_device_count())
    return AD_FAIL(AD_EDEVICE, "no CUDA device: cuda:%d does not exist (%d devices)", dev, ad_cuda_device_count());
  pthread_once(&allocs_once, allocs_init);
  dev_alloc *a = &allocs[dev];
  pthread_mutex_lock(&a->lock);
  *out = a->st;
  pthread_mutex_unlock(&a->lock);
  return AD_OK;
}

void ad_cuda_reset_peak_memory(int dev) {
  if (dev < 0 || dev >= AD_CUDA_MAX_DEVICES) return;
  pthread_once(&allocs_once, allocs_init);
  dev_alloc *a = &allocs[dev];
  pthread_mutex_lock(&a->lock);
  a->st.peak_allocated = a->st.allocated;
  a->st.peak_reserved = a->st.reserved;
  pthread_mutex_unlock(&a->lock);
}
