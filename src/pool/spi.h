/*
 * pool/spi.h: the one door from libtandem to a backend built outside it (libtandem-mpi's
 * cluster backend). Private to tandem's own libraries.
 *
 * libtandem keeps its internal functions hidden, and a backend needs a few of them (the
 * future's moves, function identity, the allocator). Rather than export each, libtandem exports
 * one function, tdm__pool_spi(), that hands out a table of them. The backend is built from the
 * same source tree, so the structures (struct tdm_pool, struct tdm_future) have the same layout;
 * the version number and size guard against a libtandem-mpi built from another tree.
 */
#ifndef TDM_POOL_SPI_H
#define TDM_POOL_SPI_H

#include "pool/pool.h"

/* Bumped whenever the table or the structures a backend reads change. */
#define TDM__POOL_SPI_VERSION 1

struct tdm__pool_spi {
  uint32_t version; /* TDM__POOL_SPI_VERSION */
  uint32_t size;    /* sizeof(struct tdm__pool_spi) */
  /* Makes `be` the backend of TDM_POOL_CLUSTER pools (NULL: none). 0, or -EINVAL. */
  int (*register_cluster)(const struct tdm__backend *be);
  bool (*future_start)(struct tdm_future *f);
  bool (*future_finish)(struct tdm_future *f, tdm_future_state state, int code, int status,
                        void *result, size_t result_size);
  bool (*future_cancel_pending)(struct tdm_future *f);
  void (*future_unref)(struct tdm_future *f);
  int (*fn_locate)(const void *fn, const char **object, uint64_t *offset);
  void *(*fn_resolve)(const char *object, uint64_t offset);
  void *(*alloc)(size_t size);
  void *(*calloc)(size_t n, size_t size);
  void (*free)(void *ptr);
  int64_t (*thread_cpu_ns)(void);
};

/* The table, or NULL when `version` is not this library's (exported, for libtandem-mpi). */
__attribute__((visibility("default"))) const struct tdm__pool_spi *tdm__pool_spi(unsigned version);

#endif /* TDM_POOL_SPI_H */
