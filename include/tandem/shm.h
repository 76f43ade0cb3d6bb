/*
 * tandem/shm.h: shared memory. Named and anonymous segments with owners (Python's
 * shared_memory.SharedMemory), shared cells and arrays of a fixed element type with an optional
 * lock (multiprocessing.Value/Array and RawValue/RawArray), and an arena allocator that lives
 * inside a segment (the heap behind Python's sharedctypes).
 *
 * Segments. A named segment is a POSIX shared memory object (a file in /dev/shm) that any
 * process can attach by name; an anonymous segment is a memfd, reached through its descriptor
 * (inherited by fork, or passed to a child with tdm_process_options.pass_fds, or over a
 * connection). Every segment is mapped read-write and shared. Its whole size is reserved when it
 * is created (posix_fallocate), so a full /dev/shm or a memory limit is an error from
 * tdm_shm_create() and never a SIGBUS on first touch.
 *
 * Owners. The process that creates a named segment owns it: the segment is unlinked when the
 * owner closes its handle, and also when the owner dies without closing it (SIGKILL, a crash,
 * exit, exec): each owning process has a small reaper process of its own, started with its
 * first owned segment, that holds the list of names and unlinks them when the owner's end of a
 * socket closes. The reaper is not a child of the owner (waitpid(-1) never sees it), sits in a
 * session of its own (terminal signals do not reach it) and lives until the owner is gone. It
 * is a fresh exec of the program (its main() never runs there), so it shares none of the
 * owner's memory: the owner's later writes to its heap cost no copies (where the program
 * cannot be started again, as under "ld.so program", it stays a fork: see docs/shm.md).
 * Attaching a segment does not take ownership unless TDM_SHM_OWN is asked for, so an attacher
 * that exits never removes a segment that others still use (Python's resource_tracker problem,
 * gh-82300, does not exist here). Ownership can be handed over: the new owner calls
 * tdm_shm_own(), then the old one tdm_shm_disown(). An anonymous segment has no name to remove:
 * its memory is freed when the last descriptor and mapping are gone.
 *
 * Fork. Mappings and descriptors survive fork(); the child is not an owner (closing the copy of
 * an owned handle in a child unmaps it and removes nothing), and it starts its own reaper if it
 * creates or owns segments. A child that must keep a segment after its parent dies (a daemon)
 * takes it over with tdm_shm_own() before the parent disowns or exits. Descriptors are
 * close-on-exec. Handles are process-local: pass the name or the descriptor, never the handle.
 *
 * Thread safety. One handle may be used from several threads, except that closing it while
 * another thread uses it is a bug. The cells, arrays and arenas below are safe to use from every
 * thread of every process that maps them.
 */
#ifndef TANDEM_SHM_H
#define TANDEM_SHM_H

#include "tandem/base.h"
#include "tandem/clock.h"
#include "tandem/error.h"
#include "tandem/sync.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Segments -------------------------------------------------------------------------------- */

typedef struct tdm_shm tdm_shm;

/*
 * The longest name tdm_shm_create() accepts, in bytes, without the optional leading slash and
 * without the terminating NUL.
 */
#define TDM_SHM_NAME_MAX 250

/* Flags for tdm_shm_options.flags. */
#define TDM_SHM_OWN   0x1u /* attach: become an owner of the segment (see above) */
#define TDM_SHM_NOOWN 0x2u /* create: do not own the new segment (it stays until unlinked) */

/* Options for tdm_shm_create() and tdm_shm_attach(); NULL means all defaults. */
typedef struct tdm_shm_options {
  unsigned flags; /* TDM_SHM_* above */
  unsigned mode;  /* permission bits (0777 at most) of a new named segment, before the umask
                     as with open(); 0: 0600 */
} tdm_shm_options;

/*
 * Creates a segment of `size` bytes, zero-filled and mapped, and returns its handle in *out.
 * With a name ("/tandem-x" or "tandem-x": a leading slash is optional, none other is allowed)
 * the segment is named and owned by the caller (unless TDM_SHM_NOOWN); with name NULL it is an
 * anonymous memfd segment.
 * The segment lives in /dev/shm/<name>; its descriptor is close-on-exec. Thread-safe.
 * Returns 0; -EINVAL for a size of 0, a name that is empty, "." or "..", has a slash after the
 * first byte, or is longer than TDM_SHM_NAME_MAX, unknown flags, TDM_SHM_OWN with
 * TDM_SHM_NOOWN, or mode bits outside 0777; -EEXIST when the name exists (nothing is replaced);
 * -EFBIG when size is beyond what a file or the address space can hold; -ENOSPC when /dev/shm
 * (or the memory behind a memfd) cannot hold the segment, or the size exceeds the machine's
 * memory and swap; -ENOMEM (also when the reaper's table of owned names, 1 MiB, is full);
 * -EAGAIN when the reaper process cannot be started (fork or exec); -EMFILE, -ENFILE, -EACCES.
 * On failure nothing is left behind: no file in /dev/shm, no mapping, no descriptor.
 */
TDM_API int tdm_shm_create(tdm_shm **out, const char *name, size_t size,
                           const tdm_shm_options *opt);

/*
 * Attaches the named segment `name` and maps it whole. `size` is 0 to accept the segment's
 * size, or the size the caller expects: a segment smaller than that is refused. Ownership is
 * taken only with TDM_SHM_OWN (TDM_SHM_NOOWN is accepted and changes nothing). A segment
 * another process is still creating may be empty: attach once its tdm_shm_create() returned.
 * Returns 0; -ENOENT when no segment has that name; -EINVAL for a bad name or flags, or when
 * the segment is smaller than `size`, empty, or not a regular file; -EACCES; -ENOMEM; -EMFILE;
 * with TDM_SHM_OWN, the errors of tdm_shm_own().
 */
TDM_API int tdm_shm_attach(tdm_shm **out, const char *name, size_t size,
                           const tdm_shm_options *opt);

/*
 * Attaches the segment behind the descriptor `fd` (an anonymous segment, or a named one opened
 * elsewhere) and maps it whole; `size` as in tdm_shm_attach(). The descriptor is duplicated
 * (close-on-exec): the caller keeps `fd`. The handle has no name, so it cannot own the segment.
 * Returns 0; -EBADF; -EINVAL when fd is not a regular file of tmpfs or hugetlbfs (a memfd or a
 * file in /dev/shm), is empty or smaller than `size`; -EACCES when fd is not open read-write;
 * -ENOMEM; -EMFILE.
 */
TDM_API int tdm_shm_attach_fd(tdm_shm **out, int fd, size_t size);

/*
 * Unmaps the segment, closes its descriptor and frees the handle; when the calling process owns
 * the segment, its name is also removed, if it still names this segment (a segment made under
 * the same name after someone else removed this one is left alone). Returns 0, or the error of
 * the removal (-ENOENT when someone else removed it; the handle is freed all the same). NULL is
 * a no-op that returns 0. Closing a handle that another thread still uses is a bug.
 */
TDM_API int tdm_shm_close(tdm_shm *s);

/*
 * Removes the segment's name now (Python's SharedMemory.unlink()): attached processes keep
 * their mappings, nobody can attach it any more, and the caller no longer owns it. Any process
 * may call it, owner or not. The name is removed only if it still names this segment.
 * Returns 0; -ENOENT when the name was already gone (or names another segment now); -EINVAL for
 * an anonymous segment; -EACCES or -EPERM when the caller may not remove it.
 */
TDM_API int tdm_shm_unlink(tdm_shm *s);

/*
 * Removes the named segment `name` without attaching it. An owner that still has it open is
 * not told; its close then returns -ENOENT. Returns 0, -ENOENT, -EINVAL (a bad name), -EACCES
 * or -EPERM.
 */
TDM_API int tdm_shm_unlink_name(const char *name);

/*
 * Makes the calling process an owner of the named segment: it is unlinked when this process
 * closes the handle or dies. Owning an owned handle changes nothing. Starts the process's
 * reaper if it has none (or if its reaper was killed). Thread-safe.
 * Returns 0; -EINVAL for a segment without a name (anonymous, or attached by descriptor);
 * -EAGAIN or -ENOMEM when the reaper process cannot be started (fork or exec); -ENOMEM when
 * its table of names is full; -EMFILE or -ENFILE.
 */
TDM_API int tdm_shm_own(tdm_shm *s);

/*
 * Gives up ownership: the segment stays when this process closes it or dies. A handle the
 * process does not own (or an anonymous one) is left as it is. Returns 0.
 */
TDM_API int tdm_shm_disown(tdm_shm *s);

/* True when the calling process owns the segment (false in the child of a fork). */
TDM_API bool tdm_shm_owned(const tdm_shm *s);

/* The address of the mapping (page-aligned). */
TDM_API void *tdm_shm_addr(const tdm_shm *s);

/* The size of the segment in bytes. */
TDM_API size_t tdm_shm_size(const tdm_shm *s);

/* The name, with its leading slash ("/tandem-x"), or NULL for an anonymous segment. */
TDM_API const char *tdm_shm_name(const tdm_shm *s);

/*
 * The segment's descriptor, owned by the handle (valid until tdm_shm_close()). Pass it to a
 * child in tdm_process_options.pass_fds, and attach it there with tdm_shm_attach_fd().
 */
TDM_API int tdm_shm_fd(const tdm_shm *s);

/* ---- Cells and arrays (Value, Array, RawValue, RawArray) ------------------------------------- */

/* Element types of a shared array. */
typedef enum tdm_type {
  TDM_TYPE_I8 = 1,
  TDM_TYPE_U8,
  TDM_TYPE_I16,
  TDM_TYPE_U16,
  TDM_TYPE_I32,
  TDM_TYPE_U32,
  TDM_TYPE_I64,
  TDM_TYPE_U64,
  TDM_TYPE_F32,
  TDM_TYPE_F64,
} tdm_type;

/* Flags for tdm_array_init(). */
#define TDM_ARRAY_LOCK 0x1u /* guard the array with a shared RLock (Python's lock=True) */

/*
 * A shared array header (64 bytes), followed in memory by its elements, 16-byte aligned. A
 * cell (Python's Value) is an array of length 1. Place it in shared memory: a segment, an arena
 * block, a MAP_SHARED mapping. The layout is public only to fix its size.
 */
typedef struct tdm_array {
  uint32_t magic_;
  uint16_t version_;
  uint16_t type_;
  uint32_t flags_;
  uint32_t elem_size_;
  uint64_t len_;
  uint64_t reserved_[5];
} tdm_array;

/* The size of one element of `type` in bytes, or 0 for an unknown type. */
TDM_API size_t tdm_type_size(tdm_type type);

/*
 * The number of bytes an array of `len` elements of `type` needs, header and lock included;
 * 0 for an unknown type or when the size would overflow.
 */
TDM_API size_t tdm_array_footprint(tdm_type type, size_t len, unsigned flags);

/*
 * Initialises an array of `len` zeroed elements of `type` in `mem`, which must hold
 * tdm_array_footprint(type, len, flags) bytes and be 16-byte aligned. With TDM_ARRAY_LOCK the
 * array carries a shared recursive lock. Call once, in one process, before any other process
 * uses it. Returns 0; -EINVAL for an unknown type or flags, a length of 0, misaligned memory;
 * -ENOTSUP as tdm_rlock_init() for TDM_ARRAY_LOCK.
 */
TDM_API int tdm_array_init(tdm_array *a, tdm_type type, size_t len, unsigned flags);

/*
 * Checks that `mem` holds an initialised array (from another process, say) of `type` (0: any
 * type) and returns it. Returns NULL when it does not.
 */
TDM_API tdm_array *tdm_array_check(void *mem, tdm_type type);

/* The array's element type, length and elements (Python's get_obj()). */
TDM_API tdm_type tdm_array_type(const tdm_array *a);
TDM_API size_t tdm_array_len(const tdm_array *a);
TDM_API void *tdm_array_data(tdm_array *a);

/*
 * The array's lock (Python's get_lock()), or NULL for an array made without TDM_ARRAY_LOCK.
 * Hold it to make several reads and writes one step; tdm_array_get()/set()/read()/write() take
 * it themselves (it is recursive).
 */
TDM_API tdm_rlock *tdm_array_lock(tdm_array *a);

/*
 * Copies element i into *out (tdm_type_size() bytes), under the array's lock if it has one,
 * with one atomic load of the element's width (never torn, with or without the lock).
 * Returns 0; -ERANGE when i is out of range; -EOWNERDEAD as tdm_rlock_acquire() (the element
 * was copied; it may hold a half-made update of the process that died); -ENOTSUP as
 * tdm_rlock_acquire() (nothing copied). The same holds for set, read and write below.
 */
TDM_API int tdm_array_get(tdm_array *a, size_t i, void *out);

/* Stores *in into element i with one atomic store, under the lock if any. Errors as get. */
TDM_API int tdm_array_set(tdm_array *a, size_t i, const void *in);

/*
 * Copies elements [start, start+n) into out, under the lock if any. An empty range is fine at
 * any start up to the length; -ERANGE when the range does not fit. Errors as get.
 */
TDM_API int tdm_array_read(tdm_array *a, size_t start, size_t n, void *out);

/* Copies n elements from in into [start, start+n), under the lock if any. Errors as read. */
TDM_API int tdm_array_write(tdm_array *a, size_t start, size_t n, const void *in);

/*
 * Adds `delta` to integer element i and returns the value before in *old (if not NULL), as one
 * atomic step that needs no lock (`with v.get_lock(): v.value += 1` in Python). The sum wraps
 * around modulo the type's width. Returns 0; -ERANGE; -EINVAL for a floating-point array.
 */
TDM_API int tdm_array_add(tdm_array *a, size_t i, int64_t delta, int64_t *old);

/* ---- Arena ----------------------------------------------------------------------------------- */

/*
 * An arena allocator inside shared memory: blocks allocated and freed by offset, from any
 * process that maps the arena, wherever it maps it. The header (128 bytes) sits at the start of
 * the region; the rest is the heap. Offsets are relative to the header, so a block allocated
 * in one process is tdm_arena_ptr(arena, off) in every process.
 *
 * The arena is guarded by a robust shared lock. A process that dies while it allocates or
 * frees leaves the arena consistent: the next caller repairs it from the block headers (the
 * only truth the allocator keeps; every change to them is one aligned store), and at most the
 * block the dead process was allocating or freeing is lost (it stays allocated).
 */
typedef struct tdm_arena {
  uint32_t magic_;
  uint16_t version_;
  uint16_t flags_;
  uint64_t size_;
  tdm_lock lock_;
  uint64_t used_;
  uint64_t heap_;
  uint64_t repairs_;
  uint64_t reserved_[5];
} tdm_arena;

/* The smallest region tdm_arena_init() accepts. */
#define TDM_ARENA_MIN 4096

/* Blocks are aligned to this many bytes. */
#define TDM_ARENA_ALIGN 16

/*
 * Initialises an empty arena over the `size` bytes at `mem` (16-byte aligned; a segment's
 * address is). Call once, in one process, before any other process uses it.
 * Returns 0; -EINVAL when mem is misaligned or size < TDM_ARENA_MIN; -ENOTSUP as
 * tdm_lock_init() with TDM_SYNC_SHARED.
 */
TDM_API int tdm_arena_init(tdm_arena *a, size_t size);

/* Checks that `mem` holds an initialised arena and returns it, or NULL. */
TDM_API tdm_arena *tdm_arena_check(void *mem);

/*
 * Allocates `size` bytes (16-byte aligned, not zeroed) and stores their offset in *off.
 * Returns 0; -EINVAL for a size of 0; -ENOMEM when no free block is large enough; -ENOTSUP as
 * tdm_lock_acquire() (a thread without a usable robust list). Repairs the arena first if a
 * process died while using it (see tdm_arena_repairs()).
 */
TDM_API int tdm_arena_alloc(tdm_arena *a, size_t size, uint64_t *off);

/*
 * Frees the block at `off`, from any process that maps the arena. Freeing an offset that is
 * not an allocated block (or freeing twice) is a bug: it aborts with a message when tandem can
 * tell. Repairs the arena first, as tdm_arena_alloc() does.
 */
TDM_API void tdm_arena_free(tdm_arena *a, uint64_t off);

/*
 * The address of the block at `off` in the calling process; aborts for an offset outside the
 * heap. Takes no lock.
 */
TDM_API void *tdm_arena_ptr(tdm_arena *a, uint64_t off);

/*
 * The offset of the block at address `p` (a pointer tdm_arena_ptr() returned); aborts for an
 * address outside the heap. Takes no lock.
 */
TDM_API uint64_t tdm_arena_off(const tdm_arena *a, const void *p);

/*
 * The usable size of the block at `off` (at least what was asked for); checks `off` as
 * tdm_arena_free() does.
 */
TDM_API size_t tdm_arena_block_size(tdm_arena *a, uint64_t off);

/* Bytes in allocated blocks, their headers included. */
TDM_API size_t tdm_arena_used(tdm_arena *a);

/* The size of the largest block tdm_arena_alloc() could return now. */
TDM_API size_t tdm_arena_largest(tdm_arena *a);

/* How many times the arena was repaired after a process died holding its lock. */
TDM_API uint64_t tdm_arena_repairs(tdm_arena *a);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_SHM_H */
