/*
 * cpu.c: how many CPUs this process may really use.
 *
 * Three things bound it: the affinity mask (taskset, cpusets), the cgroup CPU quota (docker
 * --cpus, Kubernetes limits, systemd CPUQuota) and the user's own word (TDM_CPU_COUNT). The
 * quota is read on every level from the process's cgroup up to the root of the hierarchy, since
 * a parent's quota caps its children; both cgroup v2 (cpu.max) and the v1 cpu controller
 * (cpu.cfs_quota_us, cpu.cfs_period_us) are read, because hybrid systems still mount v1.
 * The cgroup paths come from /proc/self/cgroup and are placed under the mount points that
 * /proc/self/mountinfo gives, minus the mount's own root (which is not "/" inside containers
 * without a cgroup namespace).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cpu.h"
#include "base/internal.h"
#include "platform/platform.h"

struct hierarchy {
  char mount[PATH_MAX]; /* where it is mounted */
  char root[PATH_MAX];  /* which cgroup is at the mount point */
  char path[PATH_MAX];  /* this process's cgroup */
  bool have_mount, have_path;
};

/* Copies a mountinfo field, decoding the octal escapes (\040 for a space) it uses. */
static void unescape(char *dst, size_t cap, const char *src) {
  size_t n = 0;
  while (*src != '\0' && n + 1 < cap) {
    if (src[0] == '\\' && src[1] >= '0' && src[1] <= '7' && src[2] >= '0' && src[2] <= '7' &&
        src[3] >= '0' && src[3] <= '7') {
      dst[n++] = (char)((src[1] - '0') * 64 + (src[2] - '0') * 8 + (src[3] - '0'));
      src += 4;
    } else {
      dst[n++] = *src++;
    }
  }
  dst[n] = '\0';
}

/* True when the comma-separated `list` contains `word`. */
static bool has_token(const char *list, const char *word) {
  size_t len = strlen(word);
  for (const char *p = list; p != NULL && *p != '\0';) {
    const char *end = strchr(p, ',');
    size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
    if (n == len && memcmp(p, word, len) == 0) return true;
    p = end != NULL ? end + 1 : NULL;
  }
  return false;
}

static FILE *open_at(const char *root, const char *path) {
  char full[PATH_MAX];
  if ((size_t)snprintf(full, sizeof full, "%s%s", root, path) >= sizeof full) return NULL;
  return fopen(full, "re");
}

static void read_mounts(const char *root, struct hierarchy *v2, struct hierarchy *v1) {
  FILE *f = open_at(root, "/proc/self/mountinfo");
  if (f == NULL) return;
  char *line = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, f) > 0) {
    /* id parent major:minor root mount-point options [optional fields] - type source super */
    char *field[6] = { 0 };
    char *save = NULL, *tok = strtok_r(line, " \n", &save);
    int i = 0;
    while (tok != NULL && i < 6 && strcmp(tok, "-") != 0) {
      field[i++] = tok;
      tok = strtok_r(NULL, " \n", &save);
    }
    while (tok != NULL && strcmp(tok, "-") != 0)
      tok = strtok_r(NULL, " \n", &save);
    if (tok == NULL || i < 5) continue;
    char *type = strtok_r(NULL, " \n", &save);
    char *source = strtok_r(NULL, " \n", &save);
    char *super = strtok_r(NULL, " \n", &save);
    if (type == NULL || source == NULL) continue;
    struct hierarchy *h = NULL;
    if (strcmp(type, "cgroup2") == 0)
      h = v2;
    else if (strcmp(type, "cgroup") == 0 && super != NULL && has_token(super, "cpu"))
      h = v1;
    if (h == NULL || h->have_mount) continue;
    unescape(h->root, sizeof h->root, field[3]);
    unescape(h->mount, sizeof h->mount, field[4]);
    h->have_mount = true;
  }
  free(line);
  fclose(f);
}

static void read_paths(const char *root, struct hierarchy *v2, struct hierarchy *v1) {
  FILE *f = open_at(root, "/proc/self/cgroup");
  if (f == NULL) return;
  char *line = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, f) > 0) {
    /* hierarchy-id:controller-list:path */
    char *c1 = strchr(line, ':');
    char *c2 = c1 != NULL ? strchr(c1 + 1, ':') : NULL;
    if (c2 == NULL) continue;
    *c1 = '\0';
    *c2 = '\0';
    char *path = c2 + 1;
    path[strcspn(path, "\n")] = '\0';
    struct hierarchy *h = NULL;
    if (strcmp(line, "0") == 0 && c1[1] == '\0')
      h = v2;
    else if (has_token(c1 + 1, "cpu"))
      h = v1;
    if (h == NULL || h->have_path) continue;
    snprintf(h->path, sizeof h->path, "%s", path);
    h->have_path = true;
  }
  free(line);
  fclose(f);
}

/* Reads up to two numbers (or the word "max") from a cgroup file. Returns how many were read. */
static int read_pair(const char *dir, const char *file, long long *a, long long *b) {
  char path[PATH_MAX];
  if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, file) >= sizeof path) return 0;
  FILE *f = fopen(path, "re");
  if (f == NULL) return 0;
  char buf[128];
  int n = 0;
  if (fgets(buf, sizeof buf, f) != NULL) {
    if (strncmp(buf, "max", 3) == 0) {
      *a = -1;
      n = sscanf(buf + 3, "%lld", b) == 1 ? 2 : 1;
    } else {
      n = sscanf(buf, "%lld %lld", a, b);
    }
  }
  fclose(f);
  return n < 0 ? 0 : n;
}

/* ceil(quota / period) CPUs, or 0 for no limit. */
static long long quota_cpus(long long quota, long long period) {
  if (quota <= 0 || period <= 0) return 0;
  return (quota + period - 1) / period;
}

static long long level_limit(const char *dir, bool v2) {
  long long quota = -1, period = 0;
  if (v2) {
    if (read_pair(dir, "cpu.max", &quota, &period) < 2) return 0;
  } else {
    long long unused;
    if (read_pair(dir, "cpu.cfs_quota_us", &quota, &unused) < 1) return 0;
    if (read_pair(dir, "cpu.cfs_period_us", &period, &unused) < 1) return 0;
  }
  return quota_cpus(quota, period);
}

/* The smallest limit from the process's cgroup up to the mount point of the hierarchy. */
static long long hierarchy_limit(const char *root, const struct hierarchy *h, bool v2) {
  if (!h->have_mount || !h->have_path) return 0;
  const char *rel = h->path;
  size_t rootlen = strlen(h->root);
  if (strcmp(h->root, "/") != 0) {
    /* The mount shows a sub-tree: the process's path must lie inside it. */
    if (strncmp(rel, h->root, rootlen) != 0 || (rel[rootlen] != '/' && rel[rootlen] != '\0'))
      return 0;
    rel += rootlen;
  }
  char dir[PATH_MAX];
  int base = snprintf(dir, sizeof dir, "%s%s", root, h->mount);
  if (base < 0 || (size_t)base >= sizeof dir) return 0;
  if ((size_t)snprintf(dir + base, sizeof dir - (size_t)base, "%s", rel) >=
      sizeof dir - (size_t)base)
    return 0;
  size_t len = strlen(dir);
  while (len > (size_t)base && dir[len - 1] == '/')
    dir[--len] = '\0';

  long long best = 0;
  for (;;) {
    long long lim = level_limit(dir, v2);
    if (lim > 0 && (best == 0 || lim < best)) best = lim;
    /* Up one level, but not above the mount point. */
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash < dir + base) break;
    *slash = '\0';
  }
  return best;
}

int tdm__cgroup_cpu_limit(const char *root) {
  struct hierarchy v2 = { 0 }, v1 = { 0 };
  read_mounts(root, &v2, &v1);
  read_paths(root, &v2, &v1);
  long long a = hierarchy_limit(root, &v2, true);
  long long b = hierarchy_limit(root, &v1, false);
  long long best = a == 0 ? b : (b == 0 || a < b ? a : b);
  return best > INT_MAX ? INT_MAX : (int)best;
}

int tdm_cpu_count(void) {
  const char *env = getenv("TDM_CPU_COUNT");
  if (env != NULL && *env >= '0' && *env <= '9') {
    char *end;
    errno = 0;
    long v = strtol(env, &end, 10);
    if (errno == 0 && *end == '\0' && v > 0 && v <= INT_MAX) return (int)v;
  }
  int n = tdm__affinity_cpus();
  int quota = tdm__cgroup_cpu_limit("");
  if (quota > 0 && quota < n) n = quota;
  return n;
}
