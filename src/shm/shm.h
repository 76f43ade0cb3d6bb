/*
 * shm.h (private): what the files of src/shm share. segment.c makes and maps segments;
 * reaper.c keeps the calling process's list of owned names and the reaper process that removes
 * them when the process dies. The two meet in one record, embedded in every segment handle.
 * array.c and arena.c share only the check of their headers.
 */
#ifndef TDM_SHM_INTERNAL_H
#define TDM_SHM_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/internal.h"
#include "platform/platform.h"
#include "tandem/shm.h"

/*
 * Aborts unless `obj` (a tdm_array or tdm_arena) holds the magic number `magic` and the layout
 * version `layout`; `kind` ("array", "arena") and `what` (the public call) name them in the
 * message.
 */
#define TDM__SHM_CHECK(obj, magic, layout, kind, what)                                          \
  TDM__REQUIRE((obj) != NULL && __atomic_load_n(&(obj)->magic_, __ATOMIC_RELAXED) == (magic) && \
                   (obj)->version_ == (layout),                                                 \
               "%s: %p is not an initialised " kind " (never initialised, overwritten, or "     \
               "from another layout version)",                                                  \
               (what), (const void *)(obj))

/*
 * A path in TDM__SHM_DIR (platform.h: where named segments live, the directory glibc's
 * shm_open() uses) for a name of up to TDM_SHM_NAME_MAX bytes, with its NUL.
 */
#define TDM__SHM_PATH_MAX (sizeof TDM__SHM_DIR + TDM_SHM_NAME_MAX)

/*
 * An ownership record: one named segment handle's claim to remove `name` when this process
 * dies. segment.c fills `name` and `ino` and never touches the rest; reaper.c links the record
 * into the process's list of owned records while it is owned, under its own lock.
 */
struct tdm__shm_owner {
  struct tdm__shm_owner *prev, *next; /* the list of owned records, under reaper.c's lock */
  pid_t pid;                          /* the process that owns it; 0: not owned */
  uint64_t gen;                       /* reaper.c's fork generation when it was owned */
  uint64_t ino;                       /* the inode of the segment, so a namesake is spared */
  const char *name;                   /* "/name", as long as the record lives */
};

/*
 * Makes the calling process an owner of the record's segment: links it into the list and tells
 * the reaper, which is started first if the process has none (or its reaper died). Owning an
 * owned record is a no-op. Thread-safe.
 * Returns 0; -ENOMEM when the reaper's table of names is full; -EAGAIN or -ENOMEM when the
 * reaper cannot be started (fork, exec), -EMFILE or -ENFILE (socketpair).
 */
int tdm__shm_own(struct tdm__shm_owner *o);

/*
 * Gives the record's ownership up (the caller removed the name, or keeps the segment): unlinks
 * the record and tells the reaper. A record the calling process does not own (never owned, or
 * owned by the parent of a fork) is left alone. Thread-safe; never fails: when the reaper
 * cannot be told, it is dead and will remove nothing anyway.
 */
void tdm__shm_disown(struct tdm__shm_owner *o);

/* True when the calling process owns the record (not a parent it was forked from). */
bool tdm__shm_owns(const struct tdm__shm_owner *o);

/*
 * Tagged blocks, for users of an arena that must free a block exactly once even when the
 * process that held it died at any instruction (the queue's large messages). A tagged block
 * carries a caller-chosen nonzero `ticket` in its first 8 bytes, written under the arena's lock.
 *
 * tdm__arena_alloc_tagged() allocates max(size, 8) bytes, writes `ticket` at the start of the
 * payload and stores the payload's offset in *cell (a shared word the caller's recovery code
 * reads) before the block is marked used: whatever instruction the process dies at, the arena
 * has no used block that *cell does not name. Returns 0, -ENOMEM, or -ENOTSUP as
 * tdm_arena_alloc().
 *
 * tdm__arena_free_tagged() frees the block at `off` only if it is allocated and carries
 * `ticket`, so calling it twice, or on a block that was freed and allocated again since, does
 * nothing (tickets are never reused). Returns whether it freed.
 */
int tdm__arena_alloc_tagged(tdm_arena *a, size_t size, uint64_t ticket, uint64_t *cell);
bool tdm__arena_free_tagged(tdm_arena *a, uint64_t off, uint64_t ticket);

/*
 * Tells whether [p, p + len) lies inside a segment this process has mapped (any handle, made
 * or attached). Returns 1 with a duplicate of that segment's descriptor in *fd (close-on-exec,
 * owned by the caller, valid whatever becomes of the handle) and the range's offset in the
 * segment in *offset; 0 when no segment holds the whole range; -EMFILE or another errno of the
 * duplication. Thread-safe.
 */
int tdm__shm_find(const void *p, size_t len, int *fd, size_t *offset);

#endif /* TDM_SHM_INTERNAL_H */
