/*
 * pool/procs.h (private): what the process backend's two sides share: procs.c in the parent
 * (the supervisor and the calls of the backend table) and procs_worker.c in each worker. Every
 * structure here crosses processes, so it holds sizes, offsets and ids, never pointers, and
 * has a fixed layout (_Static_assert) that both sides compile from this one file.
 *
 * Channels (see the design note at the top of procs.c):
 *   the pool segment   one header and one slot per worker (struct tdm__procs_slot)
 *   a task queue       per worker, parent -> that worker: struct tdm__procs_cmd messages
 *   the results queue  workers -> parent: struct tdm__procs_res messages
 *   a socketpair       per worker, both ways: descriptors (map segments, large arguments and
 *                      results), struct tdm__procs_ctl messages with SCM_RIGHTS
 *   an eventfd         anyone -> the supervisor: "look", written only while it sleeps
 */
#ifndef TDM_POOL_PROCS_H
#define TDM_POOL_PROCS_H

#include <stdatomic.h>
#include <stdint.h>

#include "base/internal.h"

#define TDM__PROCS_MAGIC  TDM__MAGIC('T', 'p', 'p', 'l')
#define TDM__PROCS_LAYOUT 1

/* ---- The pool segment ------------------------------------------------------------------------ */

/* slot.running: the id of the task or map chunk the worker runs (0: none), and KILL once the
 * supervisor has claimed the right to kill the worker for it. */
#define TDM__PROCS_KILL (UINT64_C(1) << 63)

/*
 * slot.item, for a map chunk: which item of the chunk runs and how it ended, in one word so
 * that one compare-and-swap decides between "the item returned" and "the supervisor kills it":
 *   bits 63..34  the item's index in its chunk, plus 1 (0: no item started yet)
 *   bit  33      DONE: the item returned; bits 31..0 hold its return value
 *   bit  32      KILL: the supervisor kills the worker for this item (its timeout)
 */
#define TDM__ITEM_DONE             (UINT64_C(1) << 33)
#define TDM__ITEM_KILL             (UINT64_C(1) << 32)
#define TDM__ITEM_MAX              ((UINT64_C(1) << 30) - 2) /* items in one chunk, at most */
#define TDM__ITEM(rel)             ((uint64_t)((rel) + 1) << 34)
#define TDM__ITEM_REL(w)           ((uint64_t)(w) >> 34) /* index + 1 */
#define TDM__ITEM_RC(w)            ((int32_t)(uint32_t)((w)&0xffffffffu))
#define TDM__ITEM_DONE_RC(rel, rc) (TDM__ITEM(rel) | TDM__ITEM_DONE | (uint64_t)(uint32_t)(rc))

/* One worker's slot: written by the worker, read (and the KILL bits set) by the supervisor. */
struct tdm__procs_slot {
  _Atomic uint64_t running; /* see TDM__PROCS_KILL */
  _Atomic uint64_t item;    /* see TDM__ITEM_* */
  _Atomic int64_t started;  /* CLOCK_MONOTONIC ns when the running task (or item) started */
  _Atomic uint64_t veto[2]; /* per command position (cmd.flags PARITY): the id of a task the
                               parent took back (cancelled, or moved) before it started */
  _Atomic uint64_t tasks;   /* tasks and chunks run */
  _Atomic uint64_t busy_ns; /* their wall time */
  _Atomic uint64_t cpu_ns;  /* their CPU time */
  uint64_t reserved_[8];
};
_Static_assert(sizeof(struct tdm__procs_slot) == 128, "two cache lines per worker");

struct tdm__procs_hdr {
  uint32_t magic;
  uint16_t version;
  uint16_t reserved_;
  uint32_t n_slots;
  uint32_t pad_;
  _Alignas(64) _Atomic uint32_t sleeping; /* 1 while the supervisor sleeps: write the eventfd */
  _Alignas(64) struct tdm__procs_slot slots[];
};
_Static_assert(sizeof(struct tdm__procs_hdr) == 128, "header of two cache lines");

/* ---- Parent -> worker: the task queue -------------------------------------------------------- */

enum {
  TDM__CMD_TASK = 1, /* run a task */
  TDM__CMD_CHUNK,    /* run items [lo, hi) of a map */
  TDM__CMD_CTRL,     /* nothing to run: read `ctl` messages on the socket */
  TDM__CMD_STOP      /* run the finalizer and exit 0 */
};

/* cmd.flags */
#define TDM__CMD_ARG_FD 0x1u /* TASK: the argument is in a memfd sent on the socket */
#define TDM__CMD_TIMED  0x2u /* CHUNK: items have a timeout: record each item's start */
#define TDM__CMD_PARITY 0x4u /* TASK: its veto word is veto[1] (else veto[0]) */

/* A command; the function's object path (obj_len bytes) follows, then, padded to 16 bytes, a
 * TASK's inline argument (size bytes). */
struct tdm__procs_cmd {
  uint32_t kind;
  uint32_t ctl; /* socket messages to read before this command */
  uint64_t id;  /* the task's or chunk's id (slot.running) */
  uint64_t fn_off;
  uint32_t obj_len;
  uint32_t flags;
  uint64_t size; /* TASK: argument bytes */
  /* CHUNK: where the map's arrays are, as (segment id, offset); id 0 for none */
  uint64_t lo, hi;
  uint64_t in_seg, in_off, in_size;
  uint64_t out_seg, out_off, out_size;
  uint64_t rc_seg, rc_off; /* the items' outcomes, int32 each, indexed from item 0 */
  uint64_t arg_seg, arg_off, arg_size;
};

/* ---- Worker -> parent: the results queue ----------------------------------------------------- */

enum {
  TDM__RES_READY = 1, /* the initializer ran: code is its return value */
  TDM__RES_TASK,      /* a task ended: code is its return value */
  TDM__RES_VETOED,    /* a task was vetoed (taken back by the parent) and not run */
  TDM__RES_CHUNK      /* a chunk ended: its outcomes are in shared memory */
};

/* res.flags */
#define TDM__RES_FD 0x1u /* the result is in a memfd sent on the socket */
#define TDM__RES_ERROR                                                \
  0x2u /* the worker could not run it: code is a pool error (-ENOMEM, \
          TDM_ENOTASK...), not the function's return value */

/* A result; a TASK's result bytes (size of them) follow unless RES_FD. */
struct tdm__procs_res {
  uint32_t kind;
  uint32_t worker; /* its slot */
  uint32_t gen;    /* which start of that slot */
  int32_t code;
  uint64_t id;
  uint64_t size;
  uint32_t flags;
  uint32_t pad_;
  uint64_t wall_ns, cpu_ns;
};

/* ---- The socket ------------------------------------------------------------------------------ */

enum {
  TDM__CTL_ADD = 1, /* parent -> worker: map the segment (descriptor attached) as `id` */
  TDM__CTL_DROP,    /* parent -> worker: unmap segment `id` */
  TDM__CTL_BLOB     /* either way: the bytes of task `id` (size), in the attached memfd */
};

struct tdm__procs_ctl {
  uint32_t kind;
  uint32_t pad_;
  uint64_t id;
  uint64_t size;
};

/* ---- Starting a worker ----------------------------------------------------------------------- */

/*
 * The worker's argument (tdm_process_start()): this header, then the initializer's object path
 * (init_obj_len bytes), the finalizer's (fini_obj_len), the initializer's argument (init_size),
 * and n_close int32 descriptors that a fork child must close (the parent's other pool
 * descriptors, which fork copied into it).
 */
struct tdm__procs_boot {
  uint32_t magic;
  uint16_t version;
  uint16_t flags; /* TDM__BOOT_INIT, TDM__BOOT_FINI */
  uint32_t index, gen;
  int32_t tq_fd, rq_fd, seg_fd, efd, sock_fd;
  uint32_t n_close;
  uint64_t max_result; /* tdm_task_set_result()'s limit */
  uint64_t inline_max; /* results up to this size go in the queue, larger ones by memfd */
  uint64_t init_off, fini_off;
  uint32_t init_obj_len, fini_obj_len;
  uint64_t init_size;
};

#define TDM__BOOT_INIT 0x1u
#define TDM__BOOT_FINI 0x2u

/* The worker's main function (procs_worker.c), started by tdm_process_start(). */
int tdm__procs_worker(void *arg, size_t size);

/*
 * Tells the supervisor to look: if it sleeps (hdr->sleeping), wakes it through the eventfd
 * `efd`. The caller has just published what the supervisor should see (a queue put, a flag):
 * the fence orders that before the load of `sleeping`, and the supervisor stores `sleeping`
 * and then looks, with a fence between, so one of the two sees the other. Async-signal-safe.
 */
void tdm__procs_poke(struct tdm__procs_hdr *h, int efd);

#endif /* TDM_POOL_PROCS_H */
