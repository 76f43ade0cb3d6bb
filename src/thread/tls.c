/*
 * tls.c: thread-local slots, a checked layer over pthread keys (whose destructors already have
 * the semantics Python's threading.local needs: each thread's value is destroyed, in that
 * thread, when it ends).
 */
#include <pthread.h>

#include "base/internal.h"
#include "tandem/thread.h"

#define TLS_MAGIC TDM__MAGIC('T', 'T', 'L', 'S')

_Static_assert(sizeof(pthread_key_t) <= sizeof(uint32_t), "pthread_key_t fits the slot");

static pthread_key_t key_of(const tdm_tls *k, const char *what) {
  TDM__REQUIRE(k->magic_ == TLS_MAGIC, "%s: %p is not an initialised tdm_tls", what,
               (const void *)k);
  return (pthread_key_t)k->key_;
}

int tdm_tls_init(tdm_tls *k, void (*dtor)(void *value)) {
  pthread_key_t key;
  int r = pthread_key_create(&key, dtor);
  if (r != 0) return -r;
  k->key_ = (uint32_t)key;
  k->magic_ = TLS_MAGIC;
  return 0;
}

void tdm_tls_fini(tdm_tls *k) {
  pthread_key_delete(key_of(k, "tdm_tls_fini"));
  k->magic_ = 0;
}

void *tdm_tls_get(const tdm_tls *k) {
  return pthread_getspecific(key_of(k, "tdm_tls_get"));
}

int tdm_tls_set(tdm_tls *k, void *value) {
  return -pthread_setspecific(key_of(k, "tdm_tls_set"), value);
}
