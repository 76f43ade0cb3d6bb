/*
 * arena.c: an allocator inside shared memory that survives the death of its users.
 *
 * The region an arena covers is laid out as follows (all positions are offsets from the arena
 * header, so every process finds the same blocks wherever it maps the region):
 *
 *   0        tdm_arena header (128 bytes): magic, version, size, the robust lock, statistics
 *   128      the bin table: a bitmap of the non-empty size classes, then one list head per class
 *   heap_    the first block
 *   ...      blocks, back to back, each starting with a 16-byte header
 *   size_-16 the end marker: a block header of size 0 marked used
 *
 * A block header is two 8-byte words:
 *
 *   word 0   TAG << 48 | size | USED     size of the whole block, header included, a multiple
 *                                        of 16 and at least 32; TAG makes a stray offset
 *                                        unlikely to pass for a header
 *   word 1   size of the block just before (0 for the first block)
 *
 * and a free block keeps the links of its class's doubly linked list (offsets, 0 for none) in
 * the first 16 bytes of its payload. A user gets the payload: block + 16, 16-byte aligned.
 *
 * Allocation takes the arena's lock, finds a block through the size classes (exact classes of
 * 16 bytes below 512 bytes, then 8 classes per power of two), takes it out of its list, splits
 * off the tail when the tail can be a block of its own, and puts the tail in its list. The
 * search is a look at a few blocks of the request's class and then a find-first-set in a
 * bitmap of at most 6 words, so an allocation never walks the heap. Freeing clears the block's
 * USED bit, then merges it with a free neighbour on either side (word 1 finds the one before),
 * so no two free blocks are ever adjacent.
 *
 * Crashes. The arena is shared by processes that can be killed at any instruction, possibly
 * while they hold the lock. The lock is robust, so the next process that takes it is told
 * (-EOWNERDEAD) and repairs the arena before using it. The repair trusts exactly one thing: the
 * chain of word 0 from the first block to the end marker. Everything else (word 1, the lists,
 * the bitmap, used_) is derived from that chain and rebuilt by one walk, which also merges
 * adjacent free blocks. The chain stays walkable whatever instruction a process dies at,
 * because every change to it is one aligned 8-byte store (an atomic store, so the compiler can
 * neither tear nor reorder it) made in an order that keeps it walkable:
 *
 *   split      the new tail's header is written first, inside the free block, where a walk
 *              does not look; then one store to the block's word 0 makes it the smaller, used
 *              block, and the tail appears behind it.
 *   allocate   (no split) one store sets USED.
 *   free       one store clears USED.
 *   merge      one store grows the first block's size over its free neighbour, whose header
 *              becomes payload. A walk sees either two free blocks or one.
 *
 * So a process that dies holding the lock leaves a heap whose blocks are all whole, either
 * used or free. At most the block it was allocating (marked used, but its offset never
 * returned) or freeing (USED not yet cleared) is lost: it stays allocated. A repair that is
 * itself interrupted is simply done again by the next process.
 *
 * Misuse. Freeing checks the offset before touching anything: inside the heap, aligned, a
 * header with the tag, marked used, and linked both ways with its neighbours' headers (the
 * block before names it as its successor's size, the block after has it as its predecessor).
 * A double free finds USED clear; a pointer into the middle of a block finds no header. Either
 * aborts with a message. A heap whose chain is broken (a write past the end of a block) is
 * reported the same way when a repair walks into it.
 */
#include <string.h>

#include "shm/shm.h"
#include "sync/sync.h"

#define ARENA_MAGIC  TDM__MAGIC('T', 'A', 'R', 'N')
#define ARENA_LAYOUT 1

_Static_assert(sizeof(tdm_arena) == 128, "tdm_arena layout");
_Static_assert(offsetof(tdm_arena, lock_) % 8 == 0, "the lock's words are aligned");

/* Block headers. */
#define HDR        UINT64_C(16)
#define MIN_BLOCK  UINT64_C(32) /* a header and the two links of a free block */
#define USED       UINT64_C(1)
#define SIZE_MASK  UINT64_C(0x0000fffffffffff0)
#define TAG        (UINT64_C(0xa7e5) << 48)
#define CHECK_MASK (UINT64_C(0xffff) << 48 | UINT64_C(0xe)) /* what must equal TAG */

/* The largest region used: sizes must fit in SIZE_MASK, and this is beyond any address space. */
#define MAX_REGION (UINT64_C(1) << 47)

/*
 * Size classes: 32 exact classes of 16 bytes (only 2..31 are used), then 8 per power of two.
 * In units of 16 bytes a block size below MAX_REGION is below 2^43, so the powers of two run
 * from 2^5 to 2^42, and 2^43 (the region's size itself, an upper bound for the table) adds one.
 */
#define SMALL       32u
#define SUB_BITS    3u
#define MAX_CLASSES (SMALL + (47u - 4u - 5u + 1u) * (1u << SUB_BITS))
#define MAP_WORDS   ((MAX_CLASSES + 63u) / 64u)
#define TABLE       ((uint64_t)sizeof(tdm_arena))
#define SCAN        4 /* blocks of the request's own class looked at before larger classes */

_Static_assert(MAP_WORDS == 6, "the bitmap is 6 words");
_Static_assert(TABLE % 16 == 0, "the table is aligned");

#define CHECK_ARENA(a, what) TDM__SHM_CHECK(a, ARENA_MAGIC, ARENA_LAYOUT, "arena", what)

/* ---- Words of the region --------------------------------------------------------------------- */

static inline uint64_t *at(tdm_arena *a, uint64_t off) {
  return (uint64_t *)(void *)((char *)a + off);
}

/* Header words are read and written atomically: see "Crashes" above. */
static inline uint64_t hload(tdm_arena *a, uint64_t off) {
  return __atomic_load_n(at(a, off), __ATOMIC_RELAXED);
}

static inline void hstore(tdm_arena *a, uint64_t off, uint64_t v) {
  __atomic_store_n(at(a, off), v, __ATOMIC_RELEASE);
}

static inline uint64_t block_size(tdm_arena *a, uint64_t h) {
  return hload(a, h) & SIZE_MASK;
}

static inline uint64_t end_of(const tdm_arena *a) {
  return a->size_ - HDR;
}

/* List links of a free block, and the bin table. Derived state: plain accesses, under the lock. */
#define NEXT(a, h) (*at((a), (h) + 16))
#define PREV(a, h) (*at((a), (h) + 24))
#define MAP(a, w)  (*at((a), TABLE + 8 * (uint64_t)(w)))
#define HEAD(a, c) (*at((a), TABLE + 8 * (uint64_t)(MAP_WORDS + (c))))

/* ---- Size classes ---------------------------------------------------------------------------- */

static unsigned class_of(uint64_t size) {
  uint64_t u = size >> 4;
  if (u < SMALL) return (unsigned)u;
  unsigned fl = 63u - (unsigned)__builtin_clzll(u);
  return SMALL + (fl - 5u) * (1u << SUB_BITS) +
         (unsigned)((u >> (fl - SUB_BITS)) & ((1u << SUB_BITS) - 1));
}

/* The smallest block size in class c. */
static uint64_t class_floor(unsigned c) {
  if (c < SMALL) return (uint64_t)c << 4;
  unsigned k = c - SMALL, fl = 5u + k / (1u << SUB_BITS), sl = k % (1u << SUB_BITS);
  return ((uint64_t)((1u << SUB_BITS) + sl) << (fl - SUB_BITS)) << 4;
}

/* The bin table's size for a region of `total` bytes: heads up to the largest class it holds. */
static uint64_t table_bytes(uint64_t total) {
  return 8 * (MAP_WORDS + (uint64_t)class_of(total) + 1);
}

static uint64_t heap_start(uint64_t total) {
  return (TABLE + table_bytes(total) + 15) & ~UINT64_C(15);
}

static void list_insert(tdm_arena *a, uint64_t h, uint64_t size) {
  unsigned c = class_of(size);
  uint64_t first = HEAD(a, c);
  NEXT(a, h) = first;
  PREV(a, h) = 0;
  if (first) PREV(a, first) = h;
  HEAD(a, c) = h;
  MAP(a, c / 64) |= UINT64_C(1) << (c % 64);
}

static void list_remove(tdm_arena *a, uint64_t h, uint64_t size) {
  unsigned c = class_of(size);
  uint64_t next = NEXT(a, h), prev = PREV(a, h);
  if (prev)
    NEXT(a, prev) = next;
  else
    HEAD(a, c) = next;
  if (next) PREV(a, next) = prev;
  if (HEAD(a, c) == 0) MAP(a, c / 64) &= ~(UINT64_C(1) << (c % 64));
}

/* The first non-empty class at or above c, or -1. */
static int first_class_from(tdm_arena *a, unsigned c) {
  if (c >= MAP_WORDS * 64) return -1;
  unsigned w = c / 64;
  uint64_t bits = MAP(a, w) & (~UINT64_C(0) << (c % 64));
  while (bits == 0) {
    if (++w == MAP_WORDS) return -1;
    bits = MAP(a, w);
  }
  return (int)(w * 64 + (unsigned)__builtin_ctzll(bits));
}

/*
 * A free block of at least `need` bytes, or 0. Every block of a class above need's class is
 * large enough; in need's own class only those of need's size or more are, so a few of them
 * are tried first (a close fit keeps large blocks whole), then the larger classes, and the rest
 * of the class only when nothing larger is free.
 */
static uint64_t find_block(tdm_arena *a, uint64_t need) {
  unsigned c = class_of(need);
  if (class_floor(c) == need) {
    int d = first_class_from(a, c);
    return d < 0 ? 0 : HEAD(a, d);
  }
  uint64_t h = HEAD(a, c);
  for (int k = 0; h != 0 && k < SCAN; k++, h = NEXT(a, h))
    if (block_size(a, h) >= need) return h;
  int d = first_class_from(a, c + 1);
  if (d >= 0) return HEAD(a, d);
  for (; h != 0; h = NEXT(a, h))
    if (block_size(a, h) >= need) return h;
  return 0;
}

/* ---- Repair ---------------------------------------------------------------------------------- */

_Noreturn static void corrupt(tdm_arena *a, uint64_t h) {
  tdm__misuse("tdm_arena: arena %p is corrupt: no valid block header at offset %llu (was "
              "something written past the end of a block?)",
              (void *)a, (unsigned long long)h);
}

/*
 * Rebuilds everything but the chain of word 0 from that chain, merging runs of free blocks
 * (see "Crashes" above). Called with the lock held, when its previous owner died.
 */
static void repair(tdm_arena *a) {
  uint64_t end = end_of(a), heap = a->heap_;
  memset(at(a, TABLE), 0, heap - TABLE);
  uint64_t used = 0, prev = 0, run = 0, h = heap;
  while (h < end) {
    uint64_t w = hload(a, h), size = w & SIZE_MASK;
    if ((w & CHECK_MASK) != TAG || size < MIN_BLOCK || size > end - h) corrupt(a, h);
    if (!(w & USED) && run != 0) {
      /* One store: the run's block grows over this one, whose header becomes payload. */
      hstore(a, run, TAG | (h + size - run));
    } else {
      if (run != 0) list_insert(a, run, h - run);
      hstore(a, h + 8, prev ? h - prev : 0);
      prev = h;
      run = (w & USED) ? 0 : h;
      if (w & USED) used += size;
    }
    h += size;
  }
  if (hload(a, end) != (TAG | USED)) corrupt(a, end);
  if (run != 0) list_insert(a, run, end - run);
  hstore(a, end + 8, prev ? end - prev : 0);
  a->used_ = used;
  a->repairs_++;
}

/* Takes the arena's lock, repairing the arena when the previous owner died. 0 or an error. */
static int lock_arena(tdm_arena *a, const char *what) {
  int r = tdm__lock_acquire(&a->lock_, TDM_FOREVER);
  /* Only a signal handler that interrupts a call on the same arena can get here. */
  TDM__REQUIRE(r != -EDEADLK, "%s: arena %p is already locked by this thread", what, (void *)a);
  if (r == -EOWNERDEAD) {
    repair(a);
    r = 0;
  }
  return r;
}

/* lock_arena() for calls that have no way to report an error. */
static void lock_or_abort(tdm_arena *a, const char *what) {
  int r = lock_arena(a, what);
  TDM__REQUIRE(r == 0, "%s: cannot lock arena %p: %s", what, (void *)a, tdm_strerror(r));
}

static void unlock_arena(tdm_arena *a) {
  tdm__lock_release(&a->lock_);
}

/* ---- Initialisation -------------------------------------------------------------------------- */

int tdm_arena_init(tdm_arena *a, size_t size) {
  TDM__REQUIRE(a != NULL, "tdm_arena_init: the arena is NULL");
  if ((uintptr_t)a % TDM_ARENA_ALIGN != 0 || size < TDM_ARENA_MIN) return -EINVAL;
  uint64_t total = ((uint64_t)size < MAX_REGION ? (uint64_t)size : MAX_REGION) & ~UINT64_C(15);
  memset(a, 0, sizeof *a);
  int r = tdm_lock_init(&a->lock_, TDM_SYNC_SHARED);
  if (r < 0) return r;
  uint64_t heap = heap_start(total), end = total - HDR;
  a->size_ = total;
  a->heap_ = heap;
  memset(at(a, TABLE), 0, heap - TABLE);
  hstore(a, heap + 8, 0);
  hstore(a, heap, TAG | (end - heap));
  hstore(a, end + 8, end - heap);
  hstore(a, end, TAG | USED);
  list_insert(a, heap, end - heap);
  a->version_ = ARENA_LAYOUT;
  /* Last, and with release ordering: whoever sees the magic sees an initialised arena. */
  __atomic_store_n(&a->magic_, ARENA_MAGIC, __ATOMIC_RELEASE);
  return 0;
}

tdm_arena *tdm_arena_check(void *mem) {
  tdm_arena *a = mem;
  if (a == NULL || (uintptr_t)a % TDM_ARENA_ALIGN != 0) return NULL;
  if (__atomic_load_n(&a->magic_, __ATOMIC_ACQUIRE) != ARENA_MAGIC) return NULL;
  if (a->version_ != ARENA_LAYOUT || a->size_ < TDM_ARENA_MIN || a->size_ % 16 != 0 ||
      a->size_ > MAX_REGION || a->heap_ != heap_start(a->size_))
    return NULL;
  return a;
}

/* ---- Allocation ------------------------------------------------------------------------------ */

/* The block size an allocation of `size` bytes takes, or 0 when it cannot fit in the arena. */
static uint64_t need_for(const tdm_arena *a, size_t size) {
  if ((uint64_t)size > a->size_) return 0; /* also keeps the sum below from overflowing */
  uint64_t need = ((uint64_t)size + HDR + 15) & ~UINT64_C(15);
  return need < MIN_BLOCK ? MIN_BLOCK : need;
}

/*
 * Takes a used block of `need` bytes (the lock held); returns its payload's offset, or 0. With
 * `cell`, writes `ticket` at the start of the payload and the payload's offset in *cell once
 * the block is out of its list and before the store that marks it used: a process that dies
 * in between leaves *cell naming a block that the repair finds free.
 */
static uint64_t alloc_locked(tdm_arena *a, uint64_t need, uint64_t ticket, uint64_t *cell) {
  uint64_t h = find_block(a, need);
  if (h == 0) return 0;
  uint64_t have = block_size(a, h);
  list_remove(a, h, have);
  if (cell != NULL) {
    __atomic_store_n(at(a, h + HDR), ticket, __ATOMIC_RELAXED);
    __atomic_store_n(cell, h + HDR, __ATOMIC_RELEASE);
  }
  if (have - need >= MIN_BLOCK) {
    uint64_t tail = h + need, rest = have - need;
    hstore(a, tail + 8, need);
    hstore(a, tail, TAG | rest);     /* inside the free block h: no walk sees it yet */
    hstore(a, h, TAG | need | USED); /* the split: h shrinks, and the tail appears behind it */
    hstore(a, tail + rest + 8, rest);
    list_insert(a, tail, rest);
    have = need;
  } else {
    hstore(a, h, TAG | have | USED);
  }
  a->used_ += have;
  return h + HDR;
}

int tdm_arena_alloc(tdm_arena *a, size_t size, uint64_t *off) {
  CHECK_ARENA(a, "tdm_arena_alloc");
  TDM__REQUIRE(off != NULL, "tdm_arena_alloc: off is NULL");
  if (size == 0) return -EINVAL;
  uint64_t need = need_for(a, size);
  if (need == 0) return -ENOMEM;
  int r = lock_arena(a, "tdm_arena_alloc");
  if (r < 0) return r;
  uint64_t got = alloc_locked(a, need, 0, NULL);
  unlock_arena(a);
  if (got == 0) return -ENOMEM;
  *off = got;
  return 0;
}

int tdm__arena_alloc_tagged(tdm_arena *a, size_t size, uint64_t ticket, uint64_t *cell) {
  CHECK_ARENA(a, "tdm__arena_alloc_tagged");
  uint64_t need = need_for(a, size < 8 ? 8 : size);
  if (need == 0) return -ENOMEM;
  int r = lock_arena(a, "tdm__arena_alloc_tagged");
  if (r < 0) return r;
  uint64_t got = alloc_locked(a, need, ticket, cell);
  unlock_arena(a);
  return got != 0 ? 0 : -ENOMEM;
}

/* NULL when `off` is the payload of a used block (the lock held), else what is wrong with it. */
static const char *check_block(tdm_arena *a, uint64_t off) {
  uint64_t heap = a->heap_, end = end_of(a);
  if (off % TDM_ARENA_ALIGN != 0 || off < heap + HDR || off >= end + HDR)
    return "outside the heap or misaligned";
  uint64_t h = off - HDR, w = hload(a, h), size = w & SIZE_MASK;
  if ((w & CHECK_MASK) != TAG || size < MIN_BLOCK || size > end - h) return "no block header there";
  if (!(w & USED)) return "not allocated: freed already?";
  uint64_t prev = hload(a, h + 8);
  if (h == heap ? prev != 0
                : prev < MIN_BLOCK || prev > h - heap || block_size(a, h - prev) != prev)
    return "no block header there";
  if (hload(a, h + size + 8) != size) return "no block header there";
  return NULL;
}

/*
 * Takes the lock and returns the header of the used block whose payload is at `off`; aborts
 * (with the lock released) when there is none. `what` names the public call.
 */
static uint64_t lock_block(tdm_arena *a, uint64_t off, const char *what) {
  lock_or_abort(a, what);
  const char *why = check_block(a, off);
  if (why != NULL) {
    unlock_arena(a);
    tdm__misuse("%s: offset %llu is not an allocated block of arena %p (%s)", what,
                (unsigned long long)off, (void *)a, why);
  }
  return off - HDR;
}

/* Frees the used block with header h and merges it with its free neighbours (the lock held). */
static void free_locked(tdm_arena *a, uint64_t h) {
  uint64_t size = block_size(a, h);
  a->used_ -= size;
  hstore(a, h, TAG | size); /* the free itself */

  uint64_t next = h + size, wn = hload(a, next);
  if (!(wn & USED)) { /* the end marker is marked used */
    list_remove(a, next, wn & SIZE_MASK);
    size += wn & SIZE_MASK;
    hstore(a, h, TAG | size);
  }
  if (h != a->heap_) {
    uint64_t prev = h - hload(a, h + 8), wp = hload(a, prev);
    if (!(wp & USED)) {
      list_remove(a, prev, wp & SIZE_MASK);
      size += wp & SIZE_MASK;
      h = prev;
      hstore(a, h, TAG | size);
    }
  }
  hstore(a, h + size + 8, size);
  list_insert(a, h, size);
}

void tdm_arena_free(tdm_arena *a, uint64_t off) {
  CHECK_ARENA(a, "tdm_arena_free");
  free_locked(a, lock_block(a, off, "tdm_arena_free"));
  unlock_arena(a);
}

bool tdm__arena_free_tagged(tdm_arena *a, uint64_t off, uint64_t ticket) {
  CHECK_ARENA(a, "tdm__arena_free_tagged");
  lock_or_abort(a, "tdm__arena_free_tagged");
  bool ours =
      check_block(a, off) == NULL && __atomic_load_n(at(a, off), __ATOMIC_RELAXED) == ticket;
  if (ours) {
    /* Cleared first, so that the block, once reused, never carries the old ticket. */
    __atomic_store_n(at(a, off), 0, __ATOMIC_RELAXED);
    free_locked(a, off - HDR);
  }
  unlock_arena(a);
  return ours;
}

/* ---- Addresses and statistics ---------------------------------------------------------------- */

void *tdm_arena_ptr(tdm_arena *a, uint64_t off) {
  CHECK_ARENA(a, "tdm_arena_ptr");
  TDM__REQUIRE(off >= a->heap_ + HDR && off < a->size_,
               "tdm_arena_ptr: offset %llu is outside the heap of arena %p",
               (unsigned long long)off, (void *)a);
  return (char *)a + off;
}

uint64_t tdm_arena_off(const tdm_arena *a, const void *p) {
  CHECK_ARENA(a, "tdm_arena_off");
  uintptr_t base = (uintptr_t)a, q = (uintptr_t)p;
  TDM__REQUIRE(q >= base + a->heap_ + HDR && q < base + a->size_,
               "tdm_arena_off: %p is outside the heap of arena %p", p, (const void *)a);
  return (uint64_t)(q - base);
}

size_t tdm_arena_block_size(tdm_arena *a, uint64_t off) {
  CHECK_ARENA(a, "tdm_arena_block_size");
  uint64_t size = block_size(a, lock_block(a, off, "tdm_arena_block_size")) - HDR;
  unlock_arena(a);
  return (size_t)size;
}

size_t tdm_arena_used(tdm_arena *a) {
  CHECK_ARENA(a, "tdm_arena_used");
  lock_or_abort(a, "tdm_arena_used");
  uint64_t used = a->used_;
  unlock_arena(a);
  return (size_t)used;
}

size_t tdm_arena_largest(tdm_arena *a) {
  CHECK_ARENA(a, "tdm_arena_largest");
  lock_or_abort(a, "tdm_arena_largest");
  uint64_t best = 0;
  for (unsigned w = MAP_WORDS; w-- > 0 && best == 0;) {
    uint64_t bits = MAP(a, w);
    if (bits == 0) continue;
    unsigned c = w * 64 + 63u - (unsigned)__builtin_clzll(bits);
    for (uint64_t h = HEAD(a, c); h != 0; h = NEXT(a, h))
      if (block_size(a, h) > best) best = block_size(a, h);
  }
  unlock_arena(a);
  return best ? (size_t)(best - HDR) : 0;
}

uint64_t tdm_arena_repairs(tdm_arena *a) {
  CHECK_ARENA(a, "tdm_arena_repairs");
  lock_or_abort(a, "tdm_arena_repairs"); /* a repair that is due is made, and counted */
  uint64_t n = a->repairs_;
  unlock_arena(a);
  return n;
}
