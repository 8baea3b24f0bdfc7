/* faultfs: an LD_PRELOAD shim that makes an SD card misbehave for files under one folder.
 *
 * While the file named by FAULTFS_FLAG exists, calls on file descriptors whose path starts with
 * FAULTFS_PREFIX fail or stall according to FAULTFS_KIND (comma-separated):
 *   eio-read      read/pread64 fail with EIO
 *   eio-write     write/pwrite64 fail with EIO
 *   enospc-write  write/pwrite64 fail with ENOSPC
 *   slow-fsync    fsync/fdatasync sleep FAULTFS_DELAY_S seconds (default 2) first
 * Removing the flag file ends the fault: the card "recovers". Built by tests/faultfs/__init__.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int active(int fd, const char *kind) {
    const char *flag = getenv("FAULTFS_FLAG");
    const char *prefix = getenv("FAULTFS_PREFIX");
    const char *kinds = getenv("FAULTFS_KIND");
    if (!flag || !prefix || !kinds || !strstr(kinds, kind)) return 0;
    if (access(flag, F_OK) != 0) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    return strncmp(path, prefix, strlen(prefix)) == 0;
}

#define REAL(name, ret, ...) \
    static ret (*real_##name)(__VA_ARGS__); \
    if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

ssize_t read(int fd, void *buf, size_t count) {
    REAL(read, ssize_t, int, void *, size_t);
    if (active(fd, "eio-read")) { errno = EIO; return -1; }
    return real_read(fd, buf, count);
}

ssize_t pread64(int fd, void *buf, size_t count, off_t off) {
    REAL(pread64, ssize_t, int, void *, size_t, off_t);
    if (active(fd, "eio-read")) { errno = EIO; return -1; }
    return real_pread64(fd, buf, count, off);
}

static int write_fault(int fd) {
    if (active(fd, "eio-write")) { errno = EIO; return 1; }
    if (active(fd, "enospc-write")) { errno = ENOSPC; return 1; }
    return 0;
}

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write, ssize_t, int, const void *, size_t);
    if (fd > 2 && write_fault(fd)) return -1;
    return real_write(fd, buf, count);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t off) {
    REAL(pwrite64, ssize_t, int, const void *, size_t, off_t);
    if (write_fault(fd)) return -1;
    return real_pwrite64(fd, buf, count, off);
}

static void stall(int fd) {
    if (active(fd, "slow-fsync")) {
        const char *d = getenv("FAULTFS_DELAY_S");
        sleep(d ? (unsigned)atoi(d) : 2);
    }
}

int fsync(int fd) {
    REAL(fsync, int, int);
    stall(fd);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync, int, int);
    stall(fd);
    return real_fdatasync(fd);
}
