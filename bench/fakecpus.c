/* LD_PRELOAD shim for the benchmarks: the process believes the host has $FAKE_CPUS cores.
 * Answers sysconf(_SC_NPROCESSORS_CONF/ONLN), get_nprocs(_conf) and sched_getaffinity (a mask of
 * FAKE_CPUS cores): what grpc core, glibc and Python's os.cpu_count/process_cpu_count read. It
 * fakes what the process is told, not the cores it runs on (see bench/common.py). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fake_cpus(void) {
    const char *s = getenv("FAKE_CPUS");
    return s ? atoi(s) : 0;
}

long sysconf(int name) {
    static long (*real)(int);
    if (!real) real = (long (*)(int))dlsym(RTLD_NEXT, "sysconf");
    int n = fake_cpus();
    if (n > 0 && (name == _SC_NPROCESSORS_CONF || name == _SC_NPROCESSORS_ONLN)) return n;
    return real(name);
}

int get_nprocs(void) { int n = fake_cpus(); return n > 0 ? n : (int)sysconf(_SC_NPROCESSORS_ONLN); }
int get_nprocs_conf(void) { return get_nprocs(); }

int sched_getaffinity(pid_t pid, size_t size, cpu_set_t *mask) {
    static int (*real)(pid_t, size_t, cpu_set_t *);
    if (!real) real = (int (*)(pid_t, size_t, cpu_set_t *))dlsym(RTLD_NEXT, "sched_getaffinity");
    int n = fake_cpus();
    if (n <= 0) return real(pid, size, mask);
    memset(mask, 0, size);
    for (int i = 0; i < n && (size_t)i < size * 8; i++) CPU_SET_S(i, size, mask);
    return 0;
}
