/*
 * array.c: shared cells and arrays (Python's multiprocessing Value, Array, RawValue, RawArray).
 *
 * An array is one contiguous piece of shared memory that holds everything it needs, so that any
 * process mapping it, at any address, can use it:
 *
 *   +0     tdm_array header (64 bytes): magic, layout version, type, flags, element size, length
 *   +64    tdm_rlock (64 bytes), only with TDM_ARRAY_LOCK
 *   +64 or +128   the elements, 16-byte aligned
 *
 * Nothing in it is a pointer: the lock and the elements are found from the header's address
 * and flags. The header is written once, by tdm_array_init(), with the magic number last and
 * with release ordering, so a process that sees the magic (tdm_array_check() loads it with
 * acquire ordering) sees the whole header; afterwards the header is only read.
 *
 * Elements. get(), set(), read() and write() take the lock when the array has one, which makes
 * a copy of several elements one step for the other processes. The lock is the recursive RLock
 * of sync.h, so a caller that holds it already (to make a read-modify-write one step, as
 * `with v.get_lock(): v.value += 1` does in Python) can still call them. A lock whose owner
 * died is reported as -EOWNERDEAD after the copy was made: the caller is told that the data may
 * be half-updated, and the lock goes on working. Single elements are loaded and stored with one
 * relaxed atomic access of their own width (elements are naturally aligned), so even an array
 * without a lock never shows a torn element, and a get() or set() never races with
 * tdm_array_add() in the sense of the C memory model.
 *
 * tdm_array_add() is a lock-free fetch-and-add of the element's width: the addition is done in
 * unsigned arithmetic, which wraps modulo 2^width with no undefined behaviour, and the old
 * value is sign- or zero-extended to int64_t according to the element type. It never takes the
 * lock: mixing it with read-modify-writes made under the lock on the same element can lose
 * updates, as in Python.
 */
#include <string.h>

#include "shm/shm.h"

#define ARRAY_MAGIC  TDM__MAGIC('T', 'A', 'R', 'Y')
#define ARRAY_LAYOUT 1
#define HEADER_SIZE  64u
#define LOCK_SIZE    64u

_Static_assert(sizeof(tdm_array) == HEADER_SIZE, "tdm_array layout");
_Static_assert(sizeof(tdm_rlock) == LOCK_SIZE, "the lock sits between header and elements");
_Static_assert(HEADER_SIZE % 16 == 0 && LOCK_SIZE % 16 == 0, "elements stay 16-byte aligned");

#define CHECK_ARRAY(a, what) TDM__SHM_CHECK(a, ARRAY_MAGIC, ARRAY_LAYOUT, "array", what)

size_t tdm_type_size(tdm_type type) {
  switch (type) {
  case TDM_TYPE_I8:
  case TDM_TYPE_U8:
    return 1;
  case TDM_TYPE_I16:
  case TDM_TYPE_U16:
    return 2;
  case TDM_TYPE_I32:
  case TDM_TYPE_U32:
  case TDM_TYPE_F32:
    return 4;
  case TDM_TYPE_I64:
  case TDM_TYPE_U64:
  case TDM_TYPE_F64:
    return 8;
  }
  return 0;
}

static size_t data_offset(unsigned flags) {
  return HEADER_SIZE + ((flags & TDM_ARRAY_LOCK) ? LOCK_SIZE : 0);
}

/*
 * The footprint is rounded up to 16 bytes, so that arrays laid one after another at their
 * footprints all stay 16-byte aligned.
 */
size_t tdm_array_footprint(tdm_type type, size_t len, unsigned flags) {
  size_t es = tdm_type_size(type);
  if (es == 0 || (flags & ~TDM_ARRAY_LOCK) != 0) return 0;
  size_t head = data_offset(flags);
  if (len > (SIZE_MAX - head - 15) / es) return 0;
  return (head + len * es + 15) & ~(size_t)15;
}

int tdm_array_init(tdm_array *a, tdm_type type, size_t len, unsigned flags) {
  TDM__REQUIRE(a != NULL, "tdm_array_init: the array is NULL");
  if (tdm_array_footprint(type, len, flags) == 0 || len == 0) return -EINVAL;
  if ((uintptr_t)a % 16 != 0) return -EINVAL;
  if (flags & TDM_ARRAY_LOCK) {
    int r = tdm_rlock_init((tdm_rlock *)(a + 1), TDM_SYNC_SHARED);
    if (r < 0) return r;
  }
  size_t es = tdm_type_size(type);
  memset((char *)a + data_offset(flags), 0, len * es);
  a->version_ = ARRAY_LAYOUT;
  a->type_ = (uint16_t)type;
  a->flags_ = flags;
  a->elem_size_ = (uint32_t)es;
  a->len_ = len;
  memset(a->reserved_, 0, sizeof a->reserved_);
  /* Last, and with release ordering: whoever sees the magic sees the rest (and the lock). */
  __atomic_store_n(&a->magic_, ARRAY_MAGIC, __ATOMIC_RELEASE);
  return 0;
}

tdm_array *tdm_array_check(void *mem, tdm_type type) {
  tdm_array *a = mem;
  if (a == NULL || (uintptr_t)a % 16 != 0) return NULL;
  if (__atomic_load_n(&a->magic_, __ATOMIC_ACQUIRE) != ARRAY_MAGIC) return NULL;
  if (a->version_ != ARRAY_LAYOUT || a->len_ == 0) return NULL;
  if (tdm_type_size((tdm_type)a->type_) != a->elem_size_ || a->elem_size_ == 0) return NULL;
  if ((a->flags_ & ~TDM_ARRAY_LOCK) != 0) return NULL;
  if (tdm_array_footprint((tdm_type)a->type_, (size_t)a->len_, a->flags_) == 0) return NULL;
  if (type != 0 && a->type_ != (uint16_t)type) return NULL;
  return a;
}

tdm_type tdm_array_type(const tdm_array *a) {
  CHECK_ARRAY(a, "tdm_array_type");
  return (tdm_type)a->type_;
}

size_t tdm_array_len(const tdm_array *a) {
  CHECK_ARRAY(a, "tdm_array_len");
  return (size_t)a->len_;
}

static unsigned char *elems(tdm_array *a) {
  return (unsigned char *)a + data_offset(a->flags_);
}

void *tdm_array_data(tdm_array *a) {
  CHECK_ARRAY(a, "tdm_array_data");
  return elems(a);
}

static tdm_rlock *array_lock(tdm_array *a) {
  return (a->flags_ & TDM_ARRAY_LOCK) ? (tdm_rlock *)(a + 1) : NULL;
}

tdm_rlock *tdm_array_lock(tdm_array *a) {
  CHECK_ARRAY(a, "tdm_array_lock");
  return array_lock(a);
}

/* ---- Copying under the lock ------------------------------------------------------------------ */

/*
 * Takes the array's lock, if it has one. Returns 0 or -EOWNERDEAD with the lock held (the
 * copy goes ahead either way), or another error with nothing held.
 */
static int lock(tdm_array *a) {
  tdm_rlock *l = array_lock(a);
  return l ? tdm_rlock_acquire(l, TDM_FOREVER) : 0;
}

static void unlock(tdm_array *a) {
  tdm_rlock *l = array_lock(a);
  if (l) tdm_rlock_release(l);
}

static bool range_ok(const tdm_array *a, size_t start, size_t n) {
  return start <= a->len_ && n <= a->len_ - start;
}

/* One element, copied with a single atomic access of its width (never torn). */
static void load_elem(const unsigned char *p, size_t es, void *out) {
  switch (es) {
  case 1: {
    uint8_t v = __atomic_load_n(p, __ATOMIC_RELAXED);
    memcpy(out, &v, 1);
    break;
  }
  case 2: {
    uint16_t v = __atomic_load_n((const uint16_t *)(const void *)p, __ATOMIC_RELAXED);
    memcpy(out, &v, 2);
    break;
  }
  case 4: {
    uint32_t v = __atomic_load_n((const uint32_t *)(const void *)p, __ATOMIC_RELAXED);
    memcpy(out, &v, 4);
    break;
  }
  default: {
    uint64_t v = __atomic_load_n((const uint64_t *)(const void *)p, __ATOMIC_RELAXED);
    memcpy(out, &v, 8);
    break;
  }
  }
}

static void store_elem(unsigned char *p, size_t es, const void *in) {
  switch (es) {
  case 1: {
    uint8_t v;
    memcpy(&v, in, 1);
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
    break;
  }
  case 2: {
    uint16_t v;
    memcpy(&v, in, 2);
    __atomic_store_n((uint16_t *)(void *)p, v, __ATOMIC_RELAXED);
    break;
  }
  case 4: {
    uint32_t v;
    memcpy(&v, in, 4);
    __atomic_store_n((uint32_t *)(void *)p, v, __ATOMIC_RELAXED);
    break;
  }
  default: {
    uint64_t v;
    memcpy(&v, in, 8);
    __atomic_store_n((uint64_t *)(void *)p, v, __ATOMIC_RELAXED);
    break;
  }
  }
}

/*
 * The body of get/set/read/write: copies elements [start, start+n) into `out`, or from `in`
 * when it is not NULL, under the lock if the array has one. A single element is copied with
 * one atomic access of its width, a range with memcpy. Returns 0, -ERANGE (nothing copied),
 * -EOWNERDEAD (copied), or another error of the lock (nothing copied).
 */
static int copy(tdm_array *a, size_t start, size_t n, void *out, const void *in) {
  if (!range_ok(a, start, n)) return -ERANGE;
  int r = lock(a);
  if (r != 0 && r != -EOWNERDEAD) return r;
  size_t es = a->elem_size_;
  unsigned char *p = elems(a) + start * es;
  if (n == 1 && in != NULL)
    store_elem(p, es, in);
  else if (n == 1)
    load_elem(p, es, out);
  else if (n > 0 && in != NULL)
    memcpy(p, in, n * es);
  else if (n > 0)
    memcpy(out, p, n * es);
  unlock(a);
  return r;
}

int tdm_array_get(tdm_array *a, size_t i, void *out) {
  CHECK_ARRAY(a, "tdm_array_get");
  TDM__REQUIRE(out != NULL, "tdm_array_get: out is NULL");
  return copy(a, i, 1, out, NULL);
}

int tdm_array_set(tdm_array *a, size_t i, const void *in) {
  CHECK_ARRAY(a, "tdm_array_set");
  TDM__REQUIRE(in != NULL, "tdm_array_set: in is NULL");
  return copy(a, i, 1, NULL, in);
}

int tdm_array_read(tdm_array *a, size_t start, size_t n, void *out) {
  CHECK_ARRAY(a, "tdm_array_read");
  TDM__REQUIRE(out != NULL || n == 0, "tdm_array_read: out is NULL");
  return copy(a, start, n, out, NULL);
}

int tdm_array_write(tdm_array *a, size_t start, size_t n, const void *in) {
  CHECK_ARRAY(a, "tdm_array_write");
  TDM__REQUIRE(in != NULL || n == 0, "tdm_array_write: in is NULL");
  return copy(a, start, n, NULL, in);
}

/* ---- Atomic add ------------------------------------------------------------------------------ */

/* One atomic fetch-and-add of `es` bytes; returns the bits before, zero-extended. */
static uint64_t fetch_add(void *p, size_t es, uint64_t d) {
  /* Unsigned arithmetic wraps by definition; the conversions keep the low bits of d. */
  switch (es) {
  case 1:
    return __atomic_fetch_add((uint8_t *)p, (uint8_t)d, __ATOMIC_SEQ_CST);
  case 2:
    return __atomic_fetch_add((uint16_t *)p, (uint16_t)d, __ATOMIC_SEQ_CST);
  case 4:
    return __atomic_fetch_add((uint32_t *)p, (uint32_t)d, __ATOMIC_SEQ_CST);
  default:
    return __atomic_fetch_add((uint64_t *)p, d, __ATOMIC_SEQ_CST);
  }
}

int tdm_array_add(tdm_array *a, size_t i, int64_t delta, int64_t *old) {
  CHECK_ARRAY(a, "tdm_array_add");
  tdm_type type = (tdm_type)a->type_;
  if (type == TDM_TYPE_F32 || type == TDM_TYPE_F64) return -EINVAL;
  if (i >= a->len_) return -ERANGE;
  size_t es = a->elem_size_;
  uint64_t before = fetch_add(elems(a) + i * es, es, (uint64_t)delta);
  if (es < 8 && (type == TDM_TYPE_I8 || type == TDM_TYPE_I16 || type == TDM_TYPE_I32)) {
    uint64_t sign = UINT64_C(1) << (8 * es - 1); /* sign-extends the es-byte value */
    before = (before ^ sign) - sign;
  }
  /* A U64 above INT64_MAX comes back as its two's-complement bits. */
  if (old) *old = (int64_t)before;
  return 0;
}
