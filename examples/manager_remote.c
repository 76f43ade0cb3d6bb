/*
 * manager_remote: a manager that other programs reach over TCP, with a key (Python's remote
 * managers). Three commands, for three terminals:
 *
 *   build/examples/manager_remote serve tcp:127.0.0.1:5000 KEY    # serves until stopped
 *   build/examples/manager_remote client tcp:127.0.0.1:5000 KEY   # one visit; run it again
 *   build/examples/manager_remote stop tcp:127.0.0.1:5000 KEY     # shuts the server down
 *
 * KEY is any string, the same for all three (a visitor with another key is refused); serve on
 * tcp:0.0.0.0:5000 and visit the host's address to go from one machine to another. With no
 * arguments, as `make test` runs it, the program plays every part itself: it starts the server
 * side as a child process on tcp:127.0.0.1:0 (any free port) with a random key, learns the real
 * address from the server's ready callback through a pipe, visits twice as a client, shows that
 * a wrong key is refused, and stops the server.
 *
 * The server holds three objects for its visitors: a guest book (a dict), a mailbox (a queue) and
 * a visitor count (an integer value). Each visit takes a number, reads the message the previous
 * visitor left in the mailbox, leaves one for the next, and signs the guest book. Python's remote
 * managers hand out such shared objects through registered callables:
 *
 *   # serve
 *   book, mailbox = {}, queue.Queue()
 *   class M(BaseManager): pass
 *   M.register("get_book", callable=lambda: book, proxytype=DictProxy)
 *   M.register("get_mailbox", callable=lambda: mailbox)
 *   M(address=("127.0.0.1", 5000), authkey=b"KEY").get_server().serve_forever()
 *
 *   # client (M registers the same names, without the callables)
 *   m = M(address=("127.0.0.1", 5000), authkey=b"KEY"); m.connect()
 *   book, mailbox = m.get_book(), m.get_mailbox()
 *
 * In tandem the names live in a custom type of the server, "directory" (tdm_manager_type): its
 * create() gives every client the same table, and its lookup operation returns the token of a
 * named object, from which the client makes its proxy. A thread of the serving process makes
 * the objects: tdm_manager_serve() runs the server on the calling thread, and other threads of
 * the process may be its clients. That thread starts once the server listens, makes the three
 * objects, publishes their tokens and keeps its proxies, which keep the objects alive, until the
 * server has shut down.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "tandem.h"

/* ---- The directory: the server's names for its shared objects -------------------------------- */

enum { BOOK, MAILBOX, VISITORS, N_NAMES };
static const char *const names[N_NAMES] = { "guestbook", "mailbox", "visitors" };

#define DIR_LOOKUP 1 /* in: a name; out: the token of the object it names */

/* One table per server process. The publishing thread fills the tokens, then sets `published`
 * (release); the server thread reads `published` (acquire) before it reads a token. */
static struct directory {
  tdm_token token[N_NAMES];
  int published;
} directory;

static int dir_create(void **state, const void *arg, size_t len) {
  (void)arg;
  (void)len;
  *state = &directory; /* every directory object is this one table */
  return 0;
}

/* Runs on the server's thread, one call at a time; must not block. */
static int dir_call(void *state, uint32_t op, const void *in, size_t in_len, void **out,
                    size_t *out_len) {
  struct directory *dir = state;
  if (op != DIR_LOOKUP) return -EINVAL;
  if (!__atomic_load_n(&dir->published, __ATOMIC_ACQUIRE)) return -EAGAIN; /* not yet */
  for (int i = 0; i < N_NAMES; i++) {
    if (in_len != strlen(names[i]) || memcmp(in, names[i], in_len) != 0) continue;
    tdm_token *t = malloc(sizeof *t); /* the server frees it once it is sent */
    if (t == NULL) return -ENOMEM;
    *t = dir->token[i];
    *out = t;
    *out_len = sizeof *t;
    return 0;
  }
  return -ENOENT;
}

static void dir_destroy(void *state) {
  (void)state; /* static: nothing to free */
}

static const tdm_manager_type directory_type = { "directory", dir_create, dir_call, dir_destroy };
static const tdm_manager_type *const types[] = { &directory_type };

/* ---- serve ------------------------------------------------------------------------------------
 */

static struct server {
  const char *key;
  int ready_fd; /* the demo's pipe to its parent, or -1 */
  char address[128];
  tdm_thread *publisher;
  tdm_event stop; /* set once tdm_manager_serve() has returned */
  tdm_manager *m; /* the publisher's handle and proxies */
  tdm_proxy *obj[N_NAMES];
  int rc;
} server;

/* The publishing thread: a client of the server that runs in the same process. */
static void publish(void *arg) {
  struct server *sv = arg;
  tdm_manager_options o = { .authkey = sv->key, .authkey_len = strlen(sv->key) };
  int rc = tdm_manager_connect(&sv->m, sv->address, &o);
  if (rc == 0) rc = tdm_manager_dict(sv->m, &sv->obj[BOOK]);
  if (rc == 0) rc = tdm_manager_queue(sv->m, 0, false, &sv->obj[MAILBOX]);
  if (rc == 0) rc = tdm_manager_value_int(sv->m, 0, &sv->obj[VISITORS]);
  if (rc == 0) {
    for (int i = 0; i < N_NAMES; i++)
      tdm_proxy_token(sv->obj[i], &directory.token[i]);
    __atomic_store_n(&directory.published, 1, __ATOMIC_RELEASE);
  } else {
    fprintf(stderr, "server: cannot make the shared objects: %s\n", tdm_strerror(rc));
  }
  sv->rc = rc;
  tdm_event_wait(&sv->stop, TDM_FOREVER);
  for (int i = 0; i < N_NAMES; i++)
    tdm_proxy_close(sv->obj[i]); /* 0 also now that the server is gone */
  tdm_manager_close(sv->m);
}

/* Called by tdm_manager_serve() on the server's thread once it listens. */
static void on_ready(const char *address, void *ud) {
  struct server *sv = ud;
  snprintf(sv->address, sizeof sv->address, "%s", address);
  printf("server: serving on %s\n", address);
  if (sv->ready_fd < 0)
    printf("server: visit with `manager_remote client %s KEY`,\n"
           "        stop with `manager_remote stop %s KEY`\n",
           address, address);
  fflush(stdout);
  int rc = tdm_thread_start(&sv->publisher, publish, sv, NULL);
  if (rc != 0) {
    fprintf(stderr, "server: thread: %s\n", tdm_strerror(rc));
    sv->publisher = NULL;
    sv->rc = rc;
  }
  if (sv->ready_fd >= 0) {
    dprintf(sv->ready_fd, "%s\n", address);
    close(sv->ready_fd);
    sv->ready_fd = -1;
  }
}

/* Runs a server at `address` until a client shuts it down. Returns the exit status. */
static int serve(const char *address, const char *key, int ready_fd) {
  server.key = key;
  server.ready_fd = ready_fd;
  if (tdm_event_init(&server.stop, 0) != 0) return 1;
  tdm_manager_options o = { .address = address,
                            .authkey = key,
                            .authkey_len = strlen(key),
                            .types = types,
                            .n_types = 1,
                            .ready = on_ready,
                            .ready_ud = &server };
  int rc = tdm_manager_serve(&o);
  if (server.publisher != NULL) {
    tdm_event_set(&server.stop);
    tdm_thread_join(server.publisher, TDM_FOREVER);
  }
  tdm_event_fini(&server.stop);
  if (rc != 0) {
    fprintf(stderr, "server: %s: %s\n", address, tdm_strerror(rc));
    return 1;
  }
  printf("server: shut down\n");
  return server.rc == 0 ? 0 : 1;
}

/* ---- client -----------------------------------------------------------------------------------
 */

struct visit {
  int64_t number;    /* this visitor's */
  char message[64];  /* what the previous visitor left; "" when the mailbox was empty */
  size_t signatures; /* in the guest book, this visit's included */
};

/* Looks up a name in the server's directory and makes a proxy of what it names. */
static int lookup(tdm_manager *m, tdm_proxy *dir, int name, tdm_proxy **out) {
  for (int tries = 0;; tries++) {
    void *token = NULL;
    size_t len = 0;
    int rc = tdm_proxy_call(dir, DIR_LOOKUP, names[name], strlen(names[name]), &token, &len);
    if (rc == -EAGAIN && tries < 500) { /* the server is still making its objects */
      nanosleep(&(struct timespec){ 0, 10 * 1000 * 1000 }, NULL);
      continue;
    }
    if (rc == 0 && len != sizeof(tdm_token)) rc = -EPROTO;
    if (rc == 0) rc = tdm_proxy_open(out, m, token);
    tdm_free(token);
    return rc;
  }
}

/* One visit. Returns 0 or an error, and what it saw in *v. */
static int visit(const char *address, const char *key, struct visit *v) {
  tdm_manager_options o = { .authkey = key, .authkey_len = strlen(key) };
  tdm_manager *m;
  int rc = tdm_manager_connect(&m, address, &o);
  if (rc != 0) {
    fprintf(stderr, "client: %s: %s\n", address, tdm_strerror(rc));
    return rc;
  }
  printf("client: connected to %s; the server knows our key\n", address);
  tdm_proxy *dir = NULL, *obj[N_NAMES] = { NULL };
  rc = tdm_manager_create(m, "directory", NULL, 0, &dir);
  for (int i = 0; i < N_NAMES && rc == 0; i++)
    rc = lookup(m, dir, i, &obj[i]);
  if (rc == 0) rc = tdm_mvalue_add_int(obj[VISITORS], 1, &v->number);
  if (rc == 0) printf("client: you are visitor %lld\n", (long long)v->number);

  void *msg = NULL;
  size_t len = 0;
  v->message[0] = '\0';
  if (rc == 0) rc = tdm_mqueue_get(obj[MAILBOX], &msg, &len, 0); /* 0: do not wait */
  if (rc == 0) {
    snprintf(v->message, sizeof v->message, "%.*s", (int)len, (const char *)msg);
    printf("client: a message in the mailbox: \"%s\"\n", v->message);
  } else if (rc == -ETIMEDOUT) {
    printf("client: the mailbox is empty\n");
    rc = 0;
  }
  tdm_free(msg);

  char text[64], who[32];
  int tlen = snprintf(text, sizeof text, "hello from visitor %lld", (long long)v->number);
  int wlen = snprintf(who, sizeof who, "visitor %lld", (long long)v->number);
  if (rc == 0) rc = tdm_mqueue_put(obj[MAILBOX], text, (size_t)tlen, TDM_S(5));
  if (rc == 0) rc = tdm_mdict_set(obj[BOOK], who, (size_t)wlen, "was here", 8);
  if (rc == 0) rc = tdm_mdict_len(obj[BOOK], &v->signatures);
  if (rc == 0)
    printf("client: left \"%s\" for the next visitor; the guest book has %zu signature%s\n", text,
           v->signatures, v->signatures == 1 ? "" : "s");
  if (rc != 0) fprintf(stderr, "client: %s\n", tdm_strerror(rc));
  for (int i = 0; i < N_NAMES; i++)
    tdm_proxy_close(obj[i]);
  tdm_proxy_close(dir);
  tdm_manager_close(m); /* the server runs on: we did not start it */
  fflush(stdout);
  return rc;
}

/* ---- stop -------------------------------------------------------------------------------------
 */

static int stop(const char *address, const char *key) {
  tdm_manager_options o = { .authkey = key, .authkey_len = strlen(key) };
  tdm_manager *m;
  int rc = tdm_manager_connect(&m, address, &o);
  if (rc == 0) {
    printf("stop: asking the server at %s to shut down\n", address);
    fflush(stdout);
    rc = tdm_manager_shutdown(m, TDM_S(5));
    tdm_manager_close(m);
  }
  if (rc != 0) fprintf(stderr, "stop: %s: %s\n", address, tdm_strerror(rc));
  return rc;
}

/* ---- Both sides in one program (no arguments) -------------------------------------------------
 */

struct serve_job {
  char key[40];
  int ready_fd;
};

/* The server's process. */
static int serve_child(void *arg, size_t size) {
  struct serve_job job;
  if (size != sizeof job) return 1;
  memcpy(&job, arg, sizeof job);
  return serve("tcp:127.0.0.1:0", job.key, job.ready_fd);
}

/* Reads the server's address from the pipe: one line, within 10 s. Returns 0 or -1. */
static int read_address(int fd, char *out, size_t size) {
  size_t got = 0;
  while (got + 1 < size) {
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    if (poll(&pfd, 1, 10000) <= 0) return -1;
    ssize_t r = read(fd, out + got, size - 1 - got);
    if (r <= 0) break; /* end of file: the server is gone, or said all it had */
    got += (size_t)r;
    if (memchr(out, '\n', got) != NULL) break;
  }
  out[got] = '\0';
  char *nl = strchr(out, '\n');
  if (nl == NULL) return -1;
  *nl = '\0';
  return 0;
}

static int demo(void) {
  struct serve_job job = { .ready_fd = -1 };
  unsigned char raw[16];
  if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) return 1;
  for (size_t i = 0; i < sizeof raw; i++)
    snprintf(job.key + 2 * i, 3, "%02x", raw[i]);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return 1;
  job.ready_fd = fds[1];

  /* A daemon: it dies with us if we fail before stopping it. */
  tdm_process_options o = {
    .name = "manager-server", .daemon = true, .pass_fds = &fds[1], .n_pass_fds = 1
  };
  tdm_process *p;
  int rc = tdm_process_start(&p, serve_child, &job, sizeof job, &o);
  close(fds[1]); /* the server holds the only write end: end of file if it dies */
  if (rc != 0) {
    fprintf(stderr, "start: %s\n", tdm_strerror(rc));
    return 1;
  }
  char address[128];
  rc = read_address(fds[0], address, sizeof address);
  close(fds[0]);
  bool ok = rc == 0;
  if (!ok) fprintf(stderr, "the server did not say where it listens\n");

  struct visit v1 = { 0 }, v2 = { 0 };
  ok = ok && visit(address, job.key, &v1) == 0;
  ok = ok && visit(address, job.key, &v2) == 0;
  if (ok) {
    tdm_manager_options wrong = { .authkey = "guess", .authkey_len = 5 };
    tdm_manager *m = NULL;
    rc = tdm_manager_connect(&m, address, &wrong);
    printf("client with the wrong key: \"%s\"\n", tdm_strerror(rc));
    if (rc == 0) tdm_manager_close(m);
    ok = rc == TDM_EAUTH;
  }
  if (ok) ok = stop(address, job.key) == 0;

  int code = -1;
  if (tdm_process_join(p, TDM_S(10)) != 0) {
    tdm_process_kill(p);
    tdm_process_join(p, TDM_S(5));
  }
  tdm_process_exitcode(p, &code);
  tdm_process_close(p);
  printf("the server exited with %d\n", code);
  ok = ok && code == 0 && v1.number == 1 && v1.message[0] == '\0' && v2.number == 2 &&
       strcmp(v2.message, "hello from visitor 1") == 0 && v2.signatures == 2;
  return ok ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc == 1) return demo();
  if (argc == 4 && strcmp(argv[1], "serve") == 0) return serve(argv[2], argv[3], -1);
  if (argc == 4 && strcmp(argv[1], "client") == 0) {
    struct visit v;
    return visit(argv[2], argv[3], &v) == 0 ? 0 : 1;
  }
  if (argc == 4 && strcmp(argv[1], "stop") == 0) return stop(argv[2], argv[3]) == 0 ? 0 : 1;
  fprintf(stderr, "usage: manager_remote [serve|client|stop ADDRESS KEY]\n"
                  "  e.g. manager_remote serve tcp:127.0.0.1:5000 secret\n"
                  "  with no arguments: both sides in one run, on a free port\n");
  return 2;
}
