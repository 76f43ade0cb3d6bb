/*
 * shm.c: the Linux side of shared memory and of the reaper's start: memfds, the file-system
 * test for shared memory, the machine's memory, a fork without handlers, closing descriptors
 * in bulk, and a fresh exec of the program.
 *
 * Exec'ing the program again. /proc/self/exe names the file the kernel started, even after its
 * path was removed or replaced, so an exec of it runs the same program. Whether that program
 * also loads a given library at start-up (so that the library's constructor can take the new
 * process over before main) depends on how the running program got the library. The dynamic
 * loader keeps the loaded objects in one list in load order: the program first, then the
 * libraries loaded at start-up, breadth first through their dependencies (the loader itself
 * among them, where the C library names it), then every object loaded later by dlopen(). An
 * object found before the loader (AT_BASE) was loaded at start-up, and will be again; one found
 * after it needs LD_PRELOAD to be. A library deep in the dependencies may come after the
 * loader too: preloading it is harmless, as the loader loads each file once.
 */
#include <errno.h>
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <linux/magic.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "platform/platform.h"

int tdm__memfd_create(const char *name) {
  int fd = memfd_create(name, MFD_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

bool tdm__is_shm_fd(int fd) {
  struct statfs sf;
  if (fstatfs(fd, &sf) != 0) return false;
  return sf.f_type == TMPFS_MAGIC || sf.f_type == HUGETLBFS_MAGIC;
}

uint64_t tdm__memory_total(void) {
  struct sysinfo si;
  if (sysinfo(&si) != 0) return 0;
  uint64_t unit = si.mem_unit != 0 ? si.mem_unit : 1;
  return ((uint64_t)si.totalram + (uint64_t)si.totalswap) * unit;
}

pid_t tdm__fork_raw(void) {
#ifdef HAVE__FORK
  return _Fork();
#else
  return fork();
#endif
}

void tdm__close_from(int first) {
#if defined(HAVE_CLOSE_RANGE)
  if (close_range((unsigned)first, ~0u, 0) == 0) return;
#elif defined(SYS_close_range)
  if (syscall(SYS_close_range, (unsigned)first, ~0u, 0u) == 0) return;
#endif
  /* A kernel older than 5.9: one by one, up to the limit (at most 2^20: the kernel's own). */
  struct rlimit rl;
  rlim_t max = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 65536;
  if (max > (rlim_t)1 << 20) max = (rlim_t)1 << 20;
  for (rlim_t fd = (rlim_t)first; fd < max; fd++)
    (void)close((int)fd);
}

int tdm__exec_self(char *const argv[], char *const envp[]) {
  (void)execve("/proc/self/exe", argv, envp);
  return -errno;
}

/* dl_iterate_phdr() callback: the first object is the program; does it name a loader? */
static int program_has_interp(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  bool *interp = data;
  for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++)
    if (info->dlpi_phdr[i].p_type == PT_INTERP) *interp = true;
  return 1; /* the program only */
}

int tdm__exec_self_plan(const void *addr, char *path, size_t size) {
  if (access("/proc/self/exe", X_OK) != 0) return -ENOTSUP;
  /* A dynamic program that the kernel started without a loader was started by naming the
   * loader ("ld.so program"): /proc/self/exe is the loader, not the program. */
  uintptr_t loader = (uintptr_t)getauxval(AT_BASE);
  bool interp = false;
  dl_iterate_phdr(program_has_interp, &interp);
  if (interp && loader == 0) return -ENOTSUP;
  Dl_info info;
  struct link_map *self = NULL;
  if (dladdr1(addr, &info, (void **)&self, RTLD_DL_LINKMAP) == 0 || self == NULL)
    return interp ? -ENOTSUP : 0; /* a static program keeps no link map of itself */

  struct link_map *head = self;
  while (head->l_prev != NULL)
    head = head->l_prev;
  bool base_namespace = head->l_name == NULL || head->l_name[0] == '\0';
  if (self == head && base_namespace) return 0; /* the program itself */
  if (!interp) return -ENOTSUP; /* a static program that dlopen()ed it: no LD_PRELOAD */
  if (base_namespace) {
    for (struct link_map *l = head; l != NULL; l = l->l_next) {
      if (l == self) return 0;
      if ((uintptr_t)l->l_addr == loader) break;
    }
  }
  /* dlopen()ed (or dlmopen()ed into a namespace of its own): it must be preloaded. */
  if (self->l_name == NULL || self->l_name[0] == '\0') return -ENOENT;
  char *full = realpath(self->l_name, NULL);
  if (full == NULL) return -ENOENT;
  size_t n = strlen(full);
  /* LD_PRELOAD separates paths by spaces and colons. */
  int r = n < size && strpbrk(full, " :") == NULL ? 1 : -ENAMETOOLONG;
  if (r == 1) memcpy(path, full, n + 1);
  free(full);
  return r;
}
