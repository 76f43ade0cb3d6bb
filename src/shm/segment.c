/*
 * segment.c: named and anonymous shared memory segments.
 *
 * A named segment is a file in /dev/shm (TDM__SHM_DIR), opened directly (glibc's shm_open() does
 * the same with the same directory) so that every descriptor is close-on-exec and no symbolic link
 * is followed. An anonymous segment is a memfd. Either is mapped whole, MAP_SHARED, read-write, and
 * the handle keeps the descriptor open so that it can be passed on. The Linux calls (memfd, the
 * file-system test of attach_fd, the machine's memory) are behind platform.h.
 *
 * Reserving. tmpfs allocates pages on first touch, and a page it cannot allocate then is a
 * SIGBUS in whatever process touches it, long after the segment was made. So the whole size is
 * allocated when the segment is created (posix_fallocate, which tmpfs implements without
 * writing), and a full /dev/shm is -ENOSPC from tdm_shm_create(). A size beyond the machine's
 * memory and swap is refused before trying: tmpfs enforces its own size limit for /dev/shm,
 * but a memfd (or an unlimited tmpfs) has none, and filling all memory would end in the OOM
 * killer, not in an error.
 *
 * Names are removed by inode. A handle records the inode of its file; closing or unlinking it
 * removes the name only while the name still refers to that inode (lstat, then unlink), so a
 * handle whose segment someone else removed and re-created never removes the namesake. The
 * window between the lstat and the unlink is the only one left, and only a process that
 * removes and re-creates a name in that instant can lose its file.
 *
 * Mappings. Every mapped handle is on one process-local list, so that tdm__shm_find() can tell
 * whether an address range lies in a tandem segment (the process pool then passes the
 * segment's descriptor to its workers instead of copying the bytes). The list's lock is taken
 * around fork() by an atfork handler, so a fork child finds the list whole and the lock free.
 *
 * Creation order. The reaper is told about a new segment right after the file exists (before
 * the reservation, which can take long for a large segment), and every failure after that
 * removes the file and tells the reaper, so nothing is left behind by a failure, and only a
 * death between open() and the message to the reaper (a few system calls) can leave a file.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shm/shm.h"

struct tdm_shm {
  void *addr;
  size_t size;
  int fd;
  bool named;
  bool listed;                 /* on the list of mappings */
  struct tdm_shm *prev, *next; /* the list of mappings, under mappings.mu */
  dev_t dev;                   /* the file's identity, with owner.ino, for removal by inode */
  struct tdm__shm_owner owner; /* ownership record (reaper.c) */
  char name[];                 /* "/name" for a named segment */
};

/* The process's mapped segments (tdm__shm_find()). */
static struct {
  pthread_mutex_t mu;
  tdm_shm *head;
} mappings = { PTHREAD_MUTEX_INITIALIZER, NULL };

static void mappings_lock(void) {
  pthread_mutex_lock(&mappings.mu);
}

static void mappings_unlock(void) {
  pthread_mutex_unlock(&mappings.mu);
}

__attribute__((constructor(103))) static void segment_init(void) {
  pthread_atfork(mappings_lock, mappings_unlock, mappings_unlock);
}

static void list_mapping(tdm_shm *s) {
  mappings_lock();
  s->prev = NULL;
  s->next = mappings.head;
  if (mappings.head != NULL) mappings.head->prev = s;
  mappings.head = s;
  s->listed = true;
  mappings_unlock();
}

static void unlist_mapping(tdm_shm *s) {
  if (!s->listed) return;
  mappings_lock();
  if (s->prev != NULL)
    s->prev->next = s->next;
  else
    mappings.head = s->next;
  if (s->next != NULL) s->next->prev = s->prev;
  s->listed = false;
  mappings_unlock();
}

int tdm__shm_find(const void *p, size_t len, int *fd, size_t *offset) {
  uintptr_t a = (uintptr_t)p;
  int r = 0;
  mappings_lock();
  for (tdm_shm *s = mappings.head; s != NULL; s = s->next) {
    uintptr_t base = (uintptr_t)s->addr;
    if (a < base || a - base > s->size || len > s->size - (a - base)) continue;
    int dup = fcntl(s->fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) {
      r = -errno;
    } else {
      *fd = dup;
      *offset = (size_t)(a - base);
      r = 1;
    }
    break;
  }
  mappings_unlock();
  return r;
}

/* Largest segment: a mapping's size must fit ptrdiff_t, a file's size off_t. */
static size_t max_size(void) {
  uintmax_t off_max = ((uintmax_t)1 << (sizeof(off_t) * 8 - 1)) - 1;
  uintmax_t m = (uintmax_t)PTRDIFF_MAX < off_max ? (uintmax_t)PTRDIFF_MAX : off_max;
  return m < SIZE_MAX ? (size_t)m : SIZE_MAX;
}

/*
 * Checks a segment name and returns in *base its part after the optional leading slash, and
 * in *len that part's length. Returns 0 or -EINVAL.
 */
static int check_name(const char *name, const char **base, size_t *len) {
  if (name == NULL) return -EINVAL;
  const char *b = name[0] == '/' ? name + 1 : name;
  size_t n = strnlen(b, TDM_SHM_NAME_MAX + 1);
  if (n == 0 || n > TDM_SHM_NAME_MAX || memchr(b, '/', n) != NULL) return -EINVAL;
  if (strcmp(b, ".") == 0 || strcmp(b, "..") == 0) return -EINVAL;
  *base = b;
  *len = n;
  return 0;
}

static void make_path(char path[TDM__SHM_PATH_MAX], const char *base) {
  snprintf(path, TDM__SHM_PATH_MAX, "%s%s", TDM__SHM_DIR, base);
}

/* A handle with no descriptor and no mapping yet, named "/base" when base is not NULL. */
static tdm_shm *new_handle(const char *base, size_t len) {
  tdm_shm *s = tdm__alloc(sizeof *s + (base != NULL ? len + 2 : 0));
  if (s == NULL) return NULL;
  memset(s, 0, sizeof *s);
  s->fd = -1;
  s->addr = MAP_FAILED;
  if (base != NULL) {
    s->named = true;
    s->name[0] = '/';
    memcpy(s->name + 1, base, len);
    s->name[len + 1] = '\0';
    s->owner.name = s->name;
  }
  return s;
}

/* Closes what the handle holds and frees it; removes nothing. */
static void free_handle(tdm_shm *s) {
  unlist_mapping(s);
  if (s->addr != MAP_FAILED) (void)munmap(s->addr, s->size);
  if (s->fd >= 0) (void)close(s->fd);
  tdm__free(s);
}

static void record_identity(tdm_shm *s, const struct stat *st) {
  s->dev = st->st_dev;
  s->owner.ino = (uint64_t)st->st_ino;
}

/* Removes the handle's name if it still names the handle's file. Returns 0 or -errno. */
static int unlink_if_same(const tdm_shm *s) {
  char path[TDM__SHM_PATH_MAX];
  make_path(path, s->name + 1);
  struct stat st;
  if (lstat(path, &st) != 0) return -errno;
  if (st.st_dev != s->dev || (uint64_t)st.st_ino != s->owner.ino) return -ENOENT;
  return unlink(path) == 0 ? 0 : -errno;
}

/* Refuses a size that memory and swap together could never hold. */
static int check_memory(size_t size) {
  uint64_t total = tdm__memory_total();
  return total != 0 && (uint64_t)size > total ? -ENOSPC : 0;
}

/* Allocates the whole file now, so that no page is missing at first touch. */
static int reserve(int fd, size_t size) {
  int r = check_memory(size);
  if (r < 0) return r;
  do
    r = posix_fallocate(fd, 0, (off_t)size);
  while (r == EINTR);
  return -r;
}

static int map(tdm_shm *s, size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
  if (p == MAP_FAILED) return -errno;
  s->addr = p;
  s->size = size;
  list_mapping(s);
  return 0;
}

/* Maps the whole of s->fd, checking that it is a non-empty file of at least `want` bytes. */
static int map_existing(tdm_shm *s, size_t want) {
  struct stat st;
  if (fstat(s->fd, &st) != 0) return -errno;
  if (!S_ISREG(st.st_mode) || st.st_size <= 0 || (uintmax_t)st.st_size < (uintmax_t)want)
    return -EINVAL;
  if ((uintmax_t)st.st_size > (uintmax_t)max_size()) return -EFBIG;
  record_identity(s, &st);
  return map(s, (size_t)st.st_size);
}

static int create_named(tdm_shm *s, size_t size, unsigned mode, bool own) {
  char path[TDM__SHM_PATH_MAX];
  make_path(path, s->name + 1);
  s->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
  if (s->fd < 0) return -errno;
  struct stat st;
  int r = fstat(s->fd, &st) == 0 ? 0 : -errno;
  if (r == 0) record_identity(s, &st);
  if (r == 0 && own) r = tdm__shm_own(&s->owner);
  if (r == 0) r = reserve(s->fd, size);
  if (r == 0) r = map(s, size);
  if (r < 0) {
    /* Remove the name first: a death before the reaper hears "-" still removes nothing else. */
    (void)unlink_if_same(s);
    tdm__shm_disown(&s->owner);
  }
  return r;
}

static int create_anonymous(tdm_shm *s, size_t size) {
  int r = tdm__memfd_create("tandem-shm");
  if (r < 0) return r;
  s->fd = r;
  r = reserve(s->fd, size);
  if (r == 0) r = map(s, size);
  return r;
}

/* Known flags, and not TDM_SHM_OWN with TDM_SHM_NOOWN. */
static bool flags_ok(unsigned flags) {
  const unsigned both = TDM_SHM_OWN | TDM_SHM_NOOWN;
  return (flags & ~both) == 0 && (flags & both) != both;
}

int tdm_shm_create(tdm_shm **out, const char *name, size_t size, const tdm_shm_options *opt) {
  TDM__REQUIRE(out != NULL, "tdm_shm_create: out is NULL");
  unsigned flags = opt != NULL ? opt->flags : 0;
  unsigned mode = opt != NULL && opt->mode != 0 ? opt->mode : 0600;
  if (!flags_ok(flags) || (mode & ~0777u) != 0 || size == 0) return -EINVAL;
  const char *base = NULL;
  size_t len = 0;
  if (name != NULL) {
    int r = check_name(name, &base, &len);
    if (r < 0) return r;
  }
  if (size > max_size()) return -EFBIG;

  tdm_shm *s = new_handle(base, len);
  if (s == NULL) return -ENOMEM;
  int r = name != NULL ? create_named(s, size, mode, !(flags & TDM_SHM_NOOWN))
                       : create_anonymous(s, size);
  if (r < 0) {
    free_handle(s);
    return r;
  }
  *out = s;
  return 0;
}

int tdm_shm_attach(tdm_shm **out, const char *name, size_t size, const tdm_shm_options *opt) {
  TDM__REQUIRE(out != NULL, "tdm_shm_attach: out is NULL");
  unsigned flags = opt != NULL ? opt->flags : 0;
  if (!flags_ok(flags)) return -EINVAL;
  const char *base;
  size_t len;
  int r = check_name(name, &base, &len);
  if (r < 0) return r;

  tdm_shm *s = new_handle(base, len);
  if (s == NULL) return -ENOMEM;
  char path[TDM__SHM_PATH_MAX];
  make_path(path, base);
  s->fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (s->fd < 0) {
    r = errno == ELOOP || errno == EISDIR ? -EINVAL : -errno;
  } else {
    r = map_existing(s, size);
    if (r == 0 && (flags & TDM_SHM_OWN)) r = tdm__shm_own(&s->owner);
  }
  if (r < 0) {
    free_handle(s);
    return r;
  }
  *out = s;
  return 0;
}

int tdm_shm_attach_fd(tdm_shm **out, int fd, size_t size) {
  TDM__REQUIRE(out != NULL, "tdm_shm_attach_fd: out is NULL");
  if (fd < 0) return -EBADF;
  tdm_shm *s = new_handle(NULL, 0);
  if (s == NULL) return -ENOMEM;
  int r = 0;
  s->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (s->fd < 0)
    r = -errno;
  else if (!tdm__is_shm_fd(s->fd))
    r = -EINVAL;
  else
    r = map_existing(s, size);
  if (r < 0) {
    free_handle(s);
    return r;
  }
  *out = s;
  return 0;
}

int tdm_shm_close(tdm_shm *s) {
  if (s == NULL) return 0;
  int r = 0;
  if (s->named && tdm__shm_owns(&s->owner)) {
    r = unlink_if_same(s);
    tdm__shm_disown(&s->owner);
  }
  free_handle(s);
  return r;
}

int tdm_shm_unlink(tdm_shm *s) {
  TDM__REQUIRE(s != NULL, "tdm_shm_unlink: the handle is NULL");
  if (!s->named) return -EINVAL;
  int r = unlink_if_same(s);
  tdm__shm_disown(&s->owner);
  return r;
}

int tdm_shm_unlink_name(const char *name) {
  const char *base;
  size_t len;
  int r = check_name(name, &base, &len);
  if (r < 0) return r;
  char path[TDM__SHM_PATH_MAX];
  make_path(path, base);
  return unlink(path) == 0 ? 0 : -errno;
}

int tdm_shm_own(tdm_shm *s) {
  TDM__REQUIRE(s != NULL, "tdm_shm_own: the handle is NULL");
  if (!s->named) return -EINVAL;
  return tdm__shm_own(&s->owner);
}

int tdm_shm_disown(tdm_shm *s) {
  TDM__REQUIRE(s != NULL, "tdm_shm_disown: the handle is NULL");
  if (s->named) tdm__shm_disown(&s->owner);
  return 0;
}

bool tdm_shm_owned(const tdm_shm *s) {
  return s != NULL && s->named && tdm__shm_owns(&s->owner);
}

void *tdm_shm_addr(const tdm_shm *s) {
  return s->addr;
}

size_t tdm_shm_size(const tdm_shm *s) {
  return s->size;
}

const char *tdm_shm_name(const tdm_shm *s) {
  return s->named ? s->name : NULL;
}

int tdm_shm_fd(const tdm_shm *s) {
  return s->fd;
}
