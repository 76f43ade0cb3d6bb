/*
 * auth_server: an authenticated server and its clients in one program. The server listens on
 * TCP loopback with a key; each client is a tandem process (spawned: a fresh exec, so it shares
 * nothing with the server but the key it was given) that connects, proves it knows the key, sends
 * numbers and reads back their squares. A client with the wrong key is refused on both sides.
 *
 * The Python it re-creates:
 *
 *   from multiprocessing import Process
 *   from multiprocessing.connection import Listener, Client
 *
 *   def client(address, key):
 *       with Client(address, authkey=key) as c:
 *           for n in range(1, 4):
 *               c.send_bytes(str(n).encode()); print("client got", c.recv_bytes().decode())
 *
 *   with Listener(("127.0.0.1", 0), authkey=b"secret") as l:
 *       p = Process(target=client, args=(l.address, b"secret")); p.start()
 *       with l.accept() as c:
 *           while True:
 *               try: n = int(c.recv_bytes())
 *               except EOFError: break
 *               c.send_bytes(str(n * n).encode())
 *       p.join()
 *
 * tdm_conn_wait() serves the client while watching its sentinel, as connection.wait() would.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tandem.h"

struct job {
  char address[64];
  char key[16];
};

/* The client process: returns 0 when every answer was right, 2 when the server refused us. */
static int client(void *arg, size_t size) {
  struct job job;
  memcpy(&job, arg, size);
  tdm_conn_options o = { .authkey = job.key, .authkey_len = strlen(job.key) };
  tdm_conn *c;
  int rc = tdm_client_connect(&c, job.address, &o);
  if (rc == TDM_EAUTH) return 2;
  if (rc != 0) return 1;
  for (long n = 1; n <= 3; n++) {
    char buf[32];
    size_t len;
    if (tdm_conn_send(c, &n, sizeof n, TDM_S(10)) != 0) return 1;
    if (tdm_conn_recv_into(c, buf, sizeof buf - 1, &len, TDM_S(10)) != 0) return 1;
    buf[len] = '\0';
    printf("client: %ld squared is %s\n", n, buf);
    fflush(stdout);
    if (atol(buf) != n * n) return 1;
  }
  tdm_conn_close(c);
  return 0;
}

static tdm_process *start_client(const char *address, const char *key) {
  struct job job = { { 0 }, { 0 } };
  snprintf(job.address, sizeof job.address, "%s", address);
  snprintf(job.key, sizeof job.key, "%s", key);
  tdm_process_options o = { .start = TDM_START_SPAWN };
  tdm_process *p;
  int rc = tdm_process_start(&p, client, &job, sizeof job, &o);
  if (rc != 0) {
    fprintf(stderr, "start: %s\n", tdm_strerror(rc));
    exit(1);
  }
  return p;
}

static int exit_code(tdm_process *p) {
  int code = -1;
  if (tdm_process_join(p, TDM_S(30)) != 0 || tdm_process_exitcode(p, &code) != 0) return -1;
  tdm_process_close(p);
  return code;
}

/* Serves one client until it closes its end; its sentinel tells us if it died instead. */
static int serve(tdm_conn *c, tdm_process *p) {
  for (;;) {
    tdm_wait_entry set[2] = { { .kind = TDM_WAIT_CONN, .conn = c },
                              { .kind = TDM_WAIT_PROCESS, .process = p } };
    int n = tdm_conn_wait(set, 2, TDM_S(30));
    if (n < 0) return n;
    if (!set[0].ready) return -ECHILD; /* ended without closing: cannot happen here */
    long v;
    size_t len;
    int rc = tdm_conn_recv_into(c, &v, sizeof v, &len, TDM_S(10));
    if (rc == TDM_EEOF) return 0; /* the client is done */
    if (rc != 0 || len != sizeof v) return rc != 0 ? rc : -EPROTO;
    char answer[32];
    int k = snprintf(answer, sizeof answer, "%ld", v * v);
    rc = tdm_conn_send(c, answer, (size_t)k, TDM_S(10));
    if (rc != 0) return rc;
  }
}

int main(void) {
  tdm_conn_options o = { .authkey = "secret", .authkey_len = 6 };
  tdm_listener *l;
  int rc = tdm_listener_open(&l, "tcp:127.0.0.1:0", &o); /* port 0: any free port */
  if (rc != 0) {
    fprintf(stderr, "listen: %s\n", tdm_strerror(rc));
    return 1;
  }
  printf("server: listening on tcp:127.0.0.1:<port>, key required\n");
  fflush(stdout);

  tdm_process *p = start_client(tdm_listener_address(l), "secret");
  tdm_conn *c;
  rc = tdm_listener_accept(l, &c, TDM_S(30));
  if (rc != 0) {
    fprintf(stderr, "accept: %s\n", tdm_strerror(rc));
    return 1;
  }
  printf("server: a client proved it knows the key\n");
  fflush(stdout);
  rc = serve(c, p);
  tdm_conn_close(c);
  if (rc != 0 || exit_code(p) != 0) return 1;
  printf("server: the client is done\n");

  /* The wrong key: the listener refuses the client, and the client refuses the listener. */
  p = start_client(tdm_listener_address(l), "guess");
  rc = tdm_listener_accept(l, &c, TDM_S(30));
  int code = exit_code(p);
  printf("server: a client with the wrong key: accept says \"%s\", the client exits %d\n",
         tdm_strerror(rc), code);
  tdm_listener_close(l);
  return rc == TDM_EAUTH && code == 2 ? 0 : 1;
}
