/*
 * imap.c: tdm_pool_imap() and tdm_pool_imap_source(), built on ordinary tasks.
 *
 * The iterator reads items from its source in the caller's thread, packs them by `chunk` into
 * the argument of one internal task (run_chunk(), a library function, so process workers find
 * it like any task), and keeps at most `window` items read but not yet given back. Nothing is
 * read ahead of that, so a source that never ends, or a consumer that is slow, never makes
 * memory grow. A chunk's task returns its outputs and the items' outcomes as its result.
 *
 * The item function travels in the chunk as a pointer and as (loaded object, offset): a worker
 * in the process that packed it (threads) uses the pointer; any other process (a process
 * worker, whatever its start method) resolves the pair.
 *
 * A chunk is the unit of loss here: when the worker running it dies (or it times out), every
 * item of that chunk is given back with the chunk's error (TDM_EWORKER...), or the whole chunk
 * runs again under the retry policy. tdm_pool_map() is finer: there only the item that was
 * running is lost.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pool/pool.h"
#include "process/process.h"

#define CHUNK_MAGIC TDM__MAGIC('c', 'h', 'n', 'k')

/* The argument of a chunk task; the object's path, the map's argument and the items follow. */
struct chunk_hdr {
  uint32_t magic;
  int32_t pid;  /* the process that packed it: the pointer is valid there; 0 when the pool's
                   workers are other processes (a cluster rank may have any pid) */
  uint64_t fn;  /* the item function's address in that process */
  uint64_t off; /* its offset in the object */
  uint64_t n, in_size, out_size, arg_size;
  uint32_t object_len;
  uint32_t pad;
};

/* The task that runs a chunk: outputs (n x out_size), then the outcomes (n x int32). */
static int run_chunk(tdm_task *task, const void *arg, size_t size) {
  struct chunk_hdr h;
  if (size < sizeof h) return -EPROTO;
  memcpy(&h, arg, sizeof h);
  const unsigned char *p = (const unsigned char *)arg + sizeof h;
  if (h.magic != CHUNK_MAGIC || size - sizeof h < h.object_len) return -EPROTO;
  char object[4097];
  if (h.object_len >= sizeof object) return -EPROTO;
  memcpy(object, p, h.object_len);
  object[h.object_len] = '\0';
  p += h.object_len;
  void *addr;
  if (h.pid == (int32_t)tdm__self_pid()) {
    addr = (void *)(uintptr_t)h.fn;
  } else if ((addr = tdm__fn_resolve(object, h.off)) == NULL) {
    return TDM_ENOTASK;
  }
  tdm_map_fn fn;
  memcpy(&fn, &addr, sizeof fn);
  const unsigned char *marg = p;
  const unsigned char *in = p + h.arg_size;
  size_t out_bytes = h.n * h.out_size, total = out_bytes + h.n * sizeof(int32_t);
  unsigned char *res = tdm__calloc(1, total > 0 ? total : 1);
  if (res == NULL) return -ENOMEM;
  for (uint64_t i = 0; i < h.n; i++) {
    int32_t r = fn(h.in_size > 0 ? in + i * h.in_size : NULL,
                   h.out_size > 0 ? res + i * h.out_size : NULL, h.arg_size > 0 ? marg : NULL);
    memcpy(res + out_bytes + i * sizeof r, &r, sizeof r);
  }
  int r = tdm_task_set_result(task, res, total);
  tdm__free(res);
  return r;
}

struct batch {
  tdm_future *f;
  size_t first; /* index of its first item */
  size_t n;
  size_t given; /* items given back */
};

struct tdm_imap {
  tdm_pool *p;
  tdm_map_fn fn;
  size_t in_size, out_size, chunk, window;
  bool unordered;
  /* the source: an array, or a source function */
  bool array;
  const unsigned char *in;
  size_t n;
  tdm_source_fn source;
  void *ctx;
  size_t read;      /* items read from the source */
  bool source_done; /* no more items */
  int source_error; /* to report once every item read before it was given */
  /* the chunk argument being built: header, object, arg, items */
  unsigned char *pack;
  size_t pack_head; /* bytes before the items */
  /* chunks in flight, in submission order */
  struct batch *b;
  size_t nb, cap_b;
  size_t in_flight;      /* items read, not given back */
  struct batch *current; /* the batch being given back; freed at the next call */
  unsigned char *zero;   /* out_size zero bytes, for items whose chunk failed */
  int stop;              /* a pool error: reported after what was already given */
};

static int open_common(tdm_imap **out, tdm_pool *p, tdm_map_fn fn, size_t in_size, size_t out_size,
                       const tdm_map_options *opt, tdm_imap *it) {
  static const tdm_map_options defaults;
  if (opt == NULL) opt = &defaults;
  if (tdm__pool_remote(p) && opt->arg_size > p->opt.max_result) return -EMSGSIZE;
  int r = atomic_load(&p->closed) ? -EPIPE : atomic_load(&p->broken);
  if (r != 0) return r;
  const char *object = "";
  uint64_t off = 0;
  void *addr;
  memcpy(&addr, &fn, sizeof addr);
  if (tdm__pool_remote(p) && (r = tdm__fn_locate(addr, &object, &off)) != 0) return r;
  unsigned workers = p->opt.workers > 0 ? p->opt.workers : 1;
  it->p = p;
  it->fn = fn;
  it->in_size = in_size;
  it->out_size = out_size;
  it->unordered = opt->unordered;
  it->chunk = opt->chunk;
  if (it->chunk == 0) {
    size_t c = it->array ? it->n / ((size_t)workers * 16) : 1;
    it->chunk = c < 1 ? 1 : c > 4096 ? 4096 : c;
  }
  it->window = opt->window;
  if (it->window == 0) {
    it->window = 64 * it->chunk;
    if (it->window < 4 * (size_t)workers) it->window = 4 * (size_t)workers;
  }
  if (it->window < it->chunk) it->window = it->chunk;
  size_t object_len = strlen(object);
  it->pack_head = sizeof(struct chunk_hdr) + object_len + opt->arg_size;
  size_t items_bytes;
  if (__builtin_mul_overflow(it->chunk, in_size, &items_bytes)) return -EINVAL;
  it->pack = tdm__alloc(it->pack_head + items_bytes);
  it->cap_b = it->window / it->chunk + 2;
  it->b = tdm__calloc(it->cap_b, sizeof *it->b);
  it->zero = tdm__calloc(1, out_size > 0 ? out_size : 1);
  if (it->pack == NULL || it->b == NULL || it->zero == NULL) {
    tdm__free(it->pack);
    tdm__free(it->b);
    tdm__free(it->zero);
    return -ENOMEM;
  }
  struct chunk_hdr h = { .magic = CHUNK_MAGIC,
                         .pid = tdm__pool_remote(p) ? 0 : (int32_t)tdm__self_pid(),
                         .fn = (uint64_t)(uintptr_t)addr,
                         .off = off,
                         .in_size = in_size,
                         .out_size = out_size,
                         .arg_size = opt->arg_size,
                         .object_len = (uint32_t)object_len };
  memcpy(it->pack, &h, sizeof h);
  memcpy(it->pack + sizeof h, object, object_len);
  if (opt->arg_size > 0) memcpy(it->pack + sizeof h + object_len, opt->arg, opt->arg_size);
  tdm_imap *copy = tdm__alloc(sizeof *copy);
  if (copy == NULL) {
    tdm__free(it->pack);
    tdm__free(it->b);
    tdm__free(it->zero);
    return -ENOMEM;
  }
  *copy = *it;
  *out = copy;
  return 0;
}

int tdm_pool_imap(tdm_imap **out, tdm_pool *p, tdm_map_fn fn, const void *in, size_t in_size,
                  size_t out_size, size_t n, const tdm_map_options *opt) {
  if (out == NULL || p == NULL) return -EINVAL;
  int r = tdm__map_check(fn, in, in_size, n, opt);
  if (r != 0) return r;
  tdm_imap it = { .array = true, .in = in, .n = n };
  return open_common(out, p, fn, in_size, out_size, opt, &it);
}

int tdm_pool_imap_source(tdm_imap **out, tdm_pool *p, tdm_map_fn fn, tdm_source_fn source,
                         void *ctx, size_t in_size, size_t out_size, const tdm_map_options *opt) {
  if (out == NULL || p == NULL || source == NULL) return -EINVAL;
  int r = tdm__map_check(fn, NULL, 0, 0, opt);
  if (r != 0) return r;
  tdm_imap it = { .source = source, .ctx = ctx };
  return open_common(out, p, fn, in_size, out_size, opt, &it);
}

/* Reads up to one chunk from the source and submits it. 0; TDM_EEOF when nothing was left. */
static int submit_chunk(tdm_imap *it) {
  if (it->source_done || it->stop != 0) return TDM_EEOF;
  unsigned char *items = it->pack + it->pack_head;
  size_t k = 0;
  for (; k < it->chunk; k++) {
    if (it->array) {
      if (it->read + k >= it->n) {
        it->source_done = true;
        break;
      }
      if (it->in_size > 0)
        memcpy(items + k * it->in_size, it->in + (it->read + k) * it->in_size, it->in_size);
    } else {
      int r = it->source(it->ctx, items + k * it->in_size);
      if (r == TDM_EEOF) {
        it->source_done = true;
        break;
      }
      if (r != 0) {
        it->source_done = true;
        it->source_error = r < 0 ? r : -EIO;
        break;
      }
    }
  }
  if (k == 0) return TDM_EEOF;
  struct chunk_hdr h;
  memcpy(&h, it->pack, sizeof h);
  h.n = k;
  memcpy(it->pack, &h, sizeof h);
  tdm_future *f;
  int r = tdm__pool_submit_internal(it->p, run_chunk, it->pack, it->pack_head + k * it->in_size,
                                    it->p->opt.task_timeout, true, &f);
  if (r != 0) {
    it->stop = r;
    it->source_done = true;
    return TDM_EEOF;
  }
  atomic_fetch_add_explicit(&it->p->c.items, k, memory_order_relaxed);
  it->b[it->nb++] = (struct batch){ .f = f, .first = it->read, .n = k };
  it->read += k;
  it->in_flight += k;
  return 0;
}

/* Keeps the window full. */
static void fill(tdm_imap *it) {
  while (it->nb + 1 < it->cap_b && it->in_flight + it->chunk <= it->window &&
         submit_chunk(it) == 0) {
  }
  if (it->nb == 0 && it->in_flight == 0) (void)submit_chunk(it);
}

static void drop_current(tdm_imap *it) {
  if (it->current == NULL) return;
  tdm_future_free(it->current->f);
  tdm__free(it->current);
  it->current = NULL;
}

int tdm_imap_next(tdm_imap *it, int64_t timeout, tdm_imap_item *item) {
  struct batch *c = it->current;
  if (c != NULL && c->given == c->n) {
    drop_current(it);
    c = NULL;
  }
  if (c == NULL) {
    fill(it);
    if (it->nb == 0) {
      if (it->source_error != 0) {
        int r = it->source_error;
        it->source_error = 0;
        return r;
      }
      if (it->stop != 0) return it->stop;
      return TDM_EEOF;
    }
    size_t pick = 0;
    if (!it->unordered) {
      int r = tdm_future_wait(it->b[0].f, timeout);
      if (r != 0) return r;
    } else {
      tdm_future *fs[it->nb];
      for (size_t i = 0; i < it->nb; i++)
        fs[i] = it->b[i].f;
      int r = tdm_wait(fs, it->nb, TDM_WAIT_FIRST, timeout, NULL);
      if (r != 0) return r;
      while (!tdm_future_done(it->b[pick].f))
        pick++;
    }
    c = tdm__alloc(sizeof *c);
    if (c == NULL) return -ENOMEM;
    *c = it->b[pick];
    memmove(&it->b[pick], &it->b[pick + 1], (it->nb - pick - 1) * sizeof *it->b);
    it->nb--;
    it->current = c;
  }
  const void *res = NULL;
  size_t size = 0;
  int r = tdm_future_result(c->f, 0, &res, &size);
  size_t i = c->given++;
  it->in_flight--;
  item->index = c->first + i;
  if (r == 0 && size == c->n * (it->out_size + sizeof(int32_t))) {
    const unsigned char *bytes = res;
    int32_t e;
    memcpy(&e, bytes + c->n * it->out_size + i * sizeof e, sizeof e);
    item->out = it->out_size > 0 ? bytes + i * it->out_size : it->zero;
    item->error = e;
  } else {
    /* The chunk as a whole failed: its worker died, it timed out, it was cancelled. */
    tdm_task_error err;
    int code = tdm_future_error(c->f, &err);
    item->out = it->zero;
    item->error = code == TDM_ETASK ? err.status : code != 0 ? code : -EPROTO;
  }
  return 0;
}

int tdm_imap_close(tdm_imap *it) {
  if (it == NULL) return 0;
  drop_current(it);
  for (size_t i = 0; i < it->nb; i++) {
    /* Chunks not started are dropped; running ones finish unseen (no worker is killed). */
    if (tdm__future_cancel_pending(it->b[i].f) && it->p->be->cancelled_pending != NULL)
      it->p->be->cancelled_pending(it->p, it->b[i].f);
    tdm_future_free(it->b[i].f);
  }
  tdm__free(it->pack);
  tdm__free(it->b);
  tdm__free(it->zero);
  tdm__free(it);
  return 0;
}
