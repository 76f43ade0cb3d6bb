/*
 * manager.c: starting and serving managers.
 *
 * tdm_manager_start() starts the server as a daemon child process through tdm_process_start(),
 * with a boot message (the address, the key, the limits, where to find the custom types) and
 * one end of a pipe. The child opens the listener itself, answers on the pipe with its status
 * and the real address, closes the pipe and serves. The parent waits for that answer, so a
 * server that cannot listen (the address is taken) is an error of the start call, and a server
 * that died first is TDM_EMANAGER. Python's manager does the same with its address.
 *
 * Custom types cross exec as task functions do: under fork the table's address is valid as
 * is; under spawn and forkserver the child finds each table from the loaded object and offset
 * that dladdr gives in the parent.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "manager/manager.h"
#include "process/process.h"
#include "tandem/conn.h"

#define BOOT_VERSION 1u

static bool is_tcp(const char *address) {
  return address != NULL && strncmp(address, "tcp:", 4) == 0;
}

/* The checks every entry point makes of the options. */
static int check_options(const tdm_manager_options *opt) {
  if (opt == NULL) return 0;
  if (opt->authkey == NULL && opt->authkey_len != 0) return -EINVAL;
  if (is_tcp(opt->address) && opt->authkey_len == 0) return -EINVAL;
  if (opt->connect_timeout < 0 && opt->connect_timeout != TDM_FOREVER) return -EINVAL;
  struct tdm__msrv *s;
  int rc = tdm__msrv_new(&s, opt->types, opt->n_types, opt->max_message);
  if (rc == 0) tdm__msrv_free(s);
  return rc;
}

/* Opens the listener and the server's state. */
static int open_server(const char *address, const void *key, size_t key_len, size_t max_message,
                       const tdm_manager_type *const *types, size_t n_types, tdm_listener **l,
                       struct tdm__msrv **s) {
  int rc = tdm__msrv_new(s, types, n_types, max_message);
  if (rc < 0) return rc;
  tdm_conn_options co = { .authkey = key, .authkey_len = key_len, .max_message = max_message };
  rc = tdm_listener_open(l, address, &co);
  if (rc < 0) {
    tdm__msrv_free(*s);
    *s = NULL;
    return rc;
  }
  int fd = tdm_listener_fd(*l);
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
    rc = -errno;
    tdm_listener_close(*l);
    tdm__msrv_free(*s);
    *l = NULL;
    *s = NULL;
  }
  return rc;
}

int tdm_manager_serve(const tdm_manager_options *opt) {
  int rc = check_options(opt);
  if (rc < 0) return rc;
  tdm_manager_options o = opt != NULL ? *opt : (tdm_manager_options){ 0 };
  tdm_listener *l;
  struct tdm__msrv *s;
  rc = open_server(o.address, o.authkey, o.authkey_len, o.max_message, o.types, o.n_types, &l, &s);
  if (rc < 0) return rc;
  if (o.ready != NULL) o.ready(tdm_listener_address(l), o.ready_ud);
  rc = tdm__msrv_run(s, tdm_listener_fd(l), o.authkey, o.authkey_len);
  tdm__msrv_free(s);
  tdm_listener_close(l);
  return rc;
}

/* ---- The server process -----------------------------------------------------------------------
 */

/*
 * The boot message: u32 version, u32 the pipe's descriptor, u64 max_message, address (string,
 * empty for the default), key, u32 n_types, then per type u32 how (0: an address valid in the
 * child, 1: a loaded object and an offset) and u64 address, or the object's path and u64
 * offset.
 */
static int server_main(void *arg, size_t size) {
  struct tdm__rbuf r = { arg, size, false };
  uint32_t version = tdm__rb_u32(&r);
  int fd = (int)tdm__rb_u32(&r);
  size_t max_message = (size_t)tdm__rb_u64(&r);
  size_t alen, klen;
  const uint8_t *addr = tdm__rb_str(&r, &alen);
  const uint8_t *key = tdm__rb_str(&r, &klen);
  uint32_t n_types = tdm__rb_u32(&r);
  const tdm_manager_type *types[TDM_MANAGER_MAX_TYPES];
  int rc = r.bad || version != BOOT_VERSION || n_types > TDM_MANAGER_MAX_TYPES ? -EPROTO : 0;
  for (uint32_t i = 0; rc == 0 && i < n_types; i++) {
    uint32_t how = tdm__rb_u32(&r);
    if (how == 0) {
      types[i] = (const tdm_manager_type *)(uintptr_t)tdm__rb_u64(&r);
    } else {
      size_t ol;
      const uint8_t *obj = tdm__rb_str(&r, &ol);
      uint64_t off = tdm__rb_u64(&r);
      char path[4096];
      if (r.bad || ol >= sizeof path) {
        rc = -EPROTO;
        break;
      }
      memcpy(path, obj, ol);
      path[ol] = '\0';
      types[i] = tdm__fn_resolve(path, off);
      if (types[i] == NULL) rc = TDM_ENOTASK;
    }
  }
  char address[4096];
  if (rc == 0 && (r.bad || alen >= sizeof address)) rc = -EPROTO;
  if (rc == 0) {
    memcpy(address, addr, alen);
    address[alen] = '\0';
  }
  tdm_conn *ready;
  if (tdm_conn_open_fd(&ready, fd, NULL) < 0) return 70;
  tdm_listener *l = NULL;
  struct tdm__msrv *s = NULL;
  if (rc == 0)
    rc = open_server(alen > 0 ? address : NULL, klen > 0 ? key : NULL, klen, max_message, types,
                     n_types, &l, &s);
  /* The answer: a status, then the address clients connect to. */
  struct tdm__wbuf w = { 0 };
  tdm__wb_u32(&w, (uint32_t)rc);
  if (rc == 0) tdm__wb_str(&w, tdm_listener_address(l), strlen(tdm_listener_address(l)));
  int sent = w.failed ? -ENOMEM : tdm_conn_send(ready, w.p, w.len, TDM_S(10));
  tdm__wb_free(&w);
  tdm_conn_close(ready);
  if (rc < 0 || sent < 0) {
    if (s != NULL) tdm__msrv_free(s);
    tdm_listener_close(l);
    return 71;
  }
  /* A client that goes away while we write to it must not kill the server. */
  signal(SIGPIPE, SIG_IGN);
  rc = tdm__msrv_run(s, tdm_listener_fd(l), klen > 0 ? key : NULL, klen);
  tdm__msrv_free(s);
  tdm_listener_close(l);
  return rc == 0 ? 0 : 72;
}

int tdm_manager_start(tdm_manager **out, const tdm_manager_options *opt) {
  if (out == NULL) return -EINVAL;
  int rc = check_options(opt);
  if (rc < 0) return rc;
  tdm_manager_options o = opt != NULL ? *opt : (tdm_manager_options){ 0 };
  tdm_start_method method = o.start != TDM_START_DEFAULT ? o.start : tdm_process_start_method();
  tdm_conn *here, *there;
  rc = tdm_pipe(&here, &there, NULL);
  if (rc < 0) return rc;
  int fd = tdm_conn_fd(there);
  struct tdm__wbuf w = { 0 };
  tdm__wb_u32(&w, BOOT_VERSION);
  tdm__wb_u32(&w, (uint32_t)fd);
  tdm__wb_u64(&w, o.max_message);
  tdm__wb_str(&w, o.address, o.address != NULL ? strlen(o.address) : 0);
  tdm__wb_str(&w, o.authkey, o.authkey_len);
  tdm__wb_u32(&w, (uint32_t)o.n_types);
  for (size_t i = 0; i < o.n_types && rc == 0; i++) {
    if (method == TDM_START_FORK) {
      tdm__wb_u32(&w, 0);
      tdm__wb_u64(&w, (uint64_t)(uintptr_t)o.types[i]);
      continue;
    }
    const char *object;
    uint64_t offset;
    rc = tdm__fn_locate(o.types[i], &object, &offset);
    tdm__wb_u32(&w, 1);
    tdm__wb_str(&w, object, rc == 0 ? strlen(object) : 0);
    tdm__wb_u64(&w, offset);
  }
  if (rc == 0 && w.failed) rc = -ENOMEM;
  tdm_process *proc = NULL;
  if (rc == 0) {
    tdm_process_options po = {
      .name = "tandem-manager", .start = method, .daemon = true, .pass_fds = &fd, .n_pass_fds = 1
    };
    rc = tdm_process_start(&proc, server_main, w.p, w.len, &po);
  }
  if (w.p != NULL) memset(w.p, 0, w.len); /* the key */
  tdm__wb_free(&w);
  tdm_conn_close(there);
  void *msg = NULL;
  size_t len = 0;
  if (rc == 0) {
    int64_t t = o.connect_timeout != 0 ? o.connect_timeout : TDM__MGR_CONNECT_DEFAULT;
    rc = tdm_conn_recv(here, &msg, &len, t);
    if (rc < 0 && rc != -ETIMEDOUT) rc = TDM_EMANAGER; /* it died before it answered */
  }
  tdm_conn_close(here);
  char *address = NULL;
  if (rc == 0) {
    struct tdm__rbuf r = { msg, len, false };
    rc = (int)tdm__rb_u32(&r);
    size_t alen = 0;
    const uint8_t *a = rc == 0 ? tdm__rb_str(&r, &alen) : NULL;
    if (r.bad) rc = TDM_EMANAGER;
    if (rc == 0 && (address = tdm__alloc(alen + 1)) == NULL) rc = -ENOMEM;
    if (rc == 0) {
      memcpy(address, a, alen);
      address[alen] = '\0';
    }
  }
  tdm__free(msg);
  tdm_manager *m = NULL;
  if (rc == 0) rc = tdm__manager_open(&m, address, &o, proc);
  tdm__free(address);
  if (rc < 0) {
    if (proc != NULL) {
      tdm_process_kill(proc);
      tdm_process_join(proc, TDM_FOREVER);
      tdm_process_close(proc);
    }
    return rc;
  }
  *out = m;
  return 0;
}
