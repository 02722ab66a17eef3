/*
 * A fake libnvidia-ml.so.1 for tests: the NVML functions the exporter calls, driven by a
 * "key=value" text file named by the environment variable FAKE_NVML_CONFIG.
 *
 * The file is re-read whenever its inode, size or mtime changes, so a test changes what the
 * "driver" reports while the library stays loaded (pynvml never unloads it). Every key is
 * documented in tests/fakenvml.py, which writes the file. In short:
 *
 *   run_id=<str>            new value = fresh run: XID queue and sequence reset
 *   init_error=1            nvmlInitWithFlags fails with NVML_ERROR_DRIVER_NOT_LOADED
 *   init_error_code=<n>     ... or with this nvmlReturn_t
 *   driver_version, cuda_version (int, 12040), nvml_version, gpu_count
 *   init_seconds=s, count_seconds=s   nvmlInit / nvmlDeviceGetCount take s seconds
 *   gpu.<i>.<key>=<value>   per GPU values (name, uuid, temperature, power_mw, ...)
 *   gpu.<i>.lost=1          every call on the GPU returns NVML_ERROR_GPU_IS_LOST
 *   gpu.<i>.hang_seconds=s  every call on the GPU sleeps s seconds first (re-checked every 50 ms)
 *   gpu.<i>.unsupported=a,b the named reads return NVML_ERROR_NOT_SUPPORTED
 *   gpu.<i>.fail.<name>=n   the named read returns nvmlReturn_t n
 *   gpu.<i>.mig.<j>.<key>   MIG device j of GPU i (uuid, gi, ci, profile, mem_*, processes,
 *                           mps_processes)
 *   gpu.<i>.processes=pid:bytes[:sm%],...   compute processes; "pid:na[:sm%]" for memory
 *                           the driver cannot tell (NVML_VALUE_NOT_AVAILABLE). A process list
 *                           answers the sizing call with INSUFFICIENT_SIZE when it is not empty
 *   gpu.<i>.nvlink_links=0,1,4,5   the links that exist (sparse numbering; empty: no NVLink);
 *                           other links answer NOT_SUPPORTED (a gap) or INVALID_ARGUMENT
 *                           (beyond the highest); the total fields (NVML_FI_DEV_NVLINK_*_ERROR_
 *                           COUNT_TOTAL, the read "nvlink_totals") sum gpu.<i>.nvlink.<link>.<type>
 *   gpu.<i>.pcie_tx_bytes, pcie_rx_bytes   fields 197/198 (NVML_FI_DEV_PCIE_COUNT_*_BYTES)
 *   xid.<seq>=<gpu>:<code>[:<gi>:<ci>][,...]   events raised once per seq (seq > last seen),
 *                           when the library next notices the file changed. As in NVML, an
 *                           event is recorded only for a GPU that an event set watches at
 *                           that moment ("xid_dropped" counts the others)
 *   gpu.<i>.xid_on.<what>=code   every call of the read <what> raises that XID on the GPU
 *   gpu.<i>.delay.<what>=s  every call of the read <what> sleeps s seconds (outside the lock),
 *                           as slow real queries do; gpu.<i>.delay.field.<id>=s per field of
 *                           a nvmlDeviceGetFieldValues batch (reported in latencyUsec too,
 *                           unless gpu.<i>.field_latency=0)
 *   gpu.<i>.gpm_supported=1 GPM supported; gpu.<i>.gpm.<metricId>=value, gpu.<i>.mig.<j>.gpm.<id>;
 *                           gpu.<i>.gpm_unsupported=5,7 metrics answering NOT_SUPPORTED alone;
 *                           gpm_missing=1: every GPM function answers FUNCTION_NOT_FOUND
 *
 * As real NVML does, a MIG-enabled GPU answers NOT_SUPPORTED to utilisation (GPU, memory,
 * encoder, decoder) and to per-process utilisation.
 * Test hooks (not NVML): fake_nvml_reset(), fake_nvml_stat(gpu, name): "calls.<what>" and
 * "field.<id>" count calls per GPU; "delayed" counts calls sleeping in a delay now;
 * "gpm_allocs"/"gpm_frees" count GPM sample buffers (any gpu argument); "xid_dropped" counts
 * events raised on a GPU no event set watched.
 *
 * Build: gcc -shared -fPIC -O1 -I<nvml include> -Wl,-soname,libnvidia-ml.so.1 -o libnvidia-ml.so.1 fake_nvml.c
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "nvml.h"

#define MAX_GPUS 16
#define MAX_MIG 8
#define MAX_KEYS 4096
#define MAX_EVENTS 1024
#define MAX_SETS 32
#define NOT_MIG 0xFFFFFFFFu /* also UINT_MAX scopeId */

struct nvmlDevice_st {
    int gpu;
    int mig; /* -1 for the full GPU */
};

struct nvmlEventSet_st {
    int used;
    unsigned long long mask[MAX_GPUS];
};

struct event { int gpu; unsigned long long code; unsigned int gi, ci; };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct nvmlDevice_st gpu_handles[MAX_GPUS];
static struct nvmlDevice_st mig_handles[MAX_GPUS][MAX_MIG];
static struct nvmlEventSet_st sets[MAX_SETS];

static char *keys[MAX_KEYS];
static char *vals[MAX_KEYS];
static int nkeys;
static int max_gpu_seen = -1;
static struct stat last_stat;
static int have_stat;
static int init_count;
static char run_id[128];
static long last_xid_seq;
static struct event events[MAX_EVENTS];
static int ev_head, ev_len;
/* Test hooks (not NVML), read through fake_nvml_stat(gpu, name): */
static unsigned int util_calls[MAX_GPUS];   /* "process_utilization": nvmlDeviceGetProcessUtilization calls */
static unsigned int sizing_calls[MAX_GPUS]; /* "process_list_sizing": INSUFFICIENT_SIZE from a process list */
static unsigned int hanging[MAX_GPUS];      /* "hanging": calls now held by hang_seconds */
static unsigned int delayed[MAX_GPUS];      /* "delayed": calls now sleeping in delay.<what> */
static unsigned int xid_dropped[MAX_GPUS];  /* "xid_dropped": events raised on an unwatched GPU */
#define MAX_COUNTERS 256
static char *counter_names[MAX_COUNTERS];   /* "calls.<what>", "field.<id>": calls per GPU */
static unsigned int counter_values[MAX_COUNTERS][MAX_GPUS];
static int ncounters;
static unsigned int gpm_allocs, gpm_frees;  /* "gpm_allocs", "gpm_frees" */

/* Count one call named `name` on `gpu`. Lock held. */
static void count_call(int gpu, const char *name)
{
    if (gpu < 0 || gpu >= MAX_GPUS)
        return;
    for (int i = 0; i < ncounters; i++)
        if (strcmp(counter_names[i], name) == 0) {
            counter_values[i][gpu]++;
            return;
        }
    if (ncounters < MAX_COUNTERS) {
        counter_names[ncounters] = strdup(name);
        memset(counter_values[ncounters], 0, sizeof counter_values[ncounters]);
        counter_values[ncounters++][gpu] = 1;
    }
}

/* ---- configuration ------------------------------------------------------------------- */

static void clear_config(void)
{
    for (int i = 0; i < nkeys; i++) {
        free(keys[i]);
        free(vals[i]);
    }
    nkeys = 0;
    max_gpu_seen = -1;
}

static const char *get(const char *key)
{
    for (int i = nkeys - 1; i >= 0; i--)
        if (strcmp(keys[i], key) == 0)
            return vals[i];
    return NULL;
}

static void push_event(int gpu, unsigned long long code, unsigned int gi, unsigned int ci)
{
    if (ev_len >= MAX_EVENTS)
        return;
    events[(ev_head + ev_len) % MAX_EVENTS] = (struct event){gpu, code, gi, ci};
    ev_len++;
}

/* Whether an event set in use records XID events of `gpu`. Lock held. */
static int watched(int gpu)
{
    for (int i = 0; i < MAX_SETS; i++)
        if (sets[i].used && (sets[i].mask[gpu] & nvmlEventTypeXidCriticalError))
            return 1;
    return 0;
}

/* An XID event on `gpu` now: queued if an event set watches the GPU, else lost ("All events
   that occurred before this call are not recorded": nvmlDeviceRegisterEvents). Lock held. */
static void raise_xid(int gpu, unsigned long long code, unsigned int gi, unsigned int ci)
{
    if (watched(gpu))
        push_event(gpu, code, gi, ci);
    else
        xid_dropped[gpu]++;
}

/* Raise the events of every xid.<seq> line newer than the last one raised. */
static void queue_new_xids(void)
{
    long newest = last_xid_seq;
    for (long seq = last_xid_seq + 1;; seq++) {
        char key[64];
        snprintf(key, sizeof key, "xid.%ld", seq);
        const char *v = get(key);
        if (!v)
            break;
        newest = seq;
        char buf[1024];
        snprintf(buf, sizeof buf, "%s", v);
        char *save = NULL;
        for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            int gpu;
            unsigned long long code;
            unsigned int gi = NOT_MIG, ci = NOT_MIG; /* an event on a MIG instance carries its ids */
            if (sscanf(tok, " %d:%llu:%u:%u", &gpu, &code, &gi, &ci) >= 2 && gpu >= 0 && gpu < MAX_GPUS)
                raise_xid(gpu, code, gi, ci);
        }
    }
    last_xid_seq = newest;
}

static void parse_line(char *line)
{
    char *nl = strpbrk(line, "\r\n");
    if (nl)
        *nl = 0;
    while (*line == ' ' || *line == '\t')
        line++;
    if (*line == 0 || *line == '#')
        return;
    char *eq = strchr(line, '=');
    if (!eq || nkeys >= MAX_KEYS)
        return;
    *eq = 0;
    keys[nkeys] = strdup(line);
    vals[nkeys] = strdup(eq + 1);
    nkeys++;
    int g;
    if (sscanf(line, "gpu.%d.", &g) == 1 && g >= 0 && g < MAX_GPUS && g > max_gpu_seen)
        max_gpu_seen = g;
}

/* Re-read the file if it changed. Called with the lock held. Returns 0 if there is no config. */
static int refresh(void)
{
    const char *path = getenv("FAKE_NVML_CONFIG");
    struct stat st;
    if (!path || stat(path, &st) != 0) {
        clear_config();
        have_stat = 0;
        return 0;
    }
    if (have_stat && st.st_ino == last_stat.st_ino && st.st_size == last_stat.st_size &&
        st.st_mtim.tv_sec == last_stat.st_mtim.tv_sec && st.st_mtim.tv_nsec == last_stat.st_mtim.tv_nsec)
        return 1;
    FILE *f = fopen(path, "r");
    if (!f)
        return have_stat;
    clear_config();
    char line[4096];
    while (fgets(line, sizeof line, f))
        parse_line(line);
    fclose(f);
    last_stat = st;
    have_stat = 1;
    const char *rid = get("run_id");
    if (!rid)
        rid = "";
    if (strcmp(rid, run_id) != 0) {
        snprintf(run_id, sizeof run_id, "%s", rid);
        last_xid_seq = 0;
        ev_head = ev_len = 0;
    }
    queue_new_xids();
    return 1;
}

static const char *gget(int gpu, const char *name)
{
    char key[160];
    snprintf(key, sizeof key, "gpu.%d.%s", gpu, name);
    return get(key);
}

static unsigned long long gnum(int gpu, const char *name, unsigned long long dflt)
{
    const char *v = gget(gpu, name);
    return v ? strtoull(v, NULL, 0) : dflt;
}

static const char *mget(int gpu, int mig, const char *name)
{
    char key[160];
    snprintf(key, sizeof key, "gpu.%d.mig.%d.%s", gpu, mig, name);
    return get(key);
}

static unsigned long long mnum(int gpu, int mig, const char *name, unsigned long long dflt)
{
    const char *v = mget(gpu, mig, name);
    return v ? strtoull(v, NULL, 0) : dflt;
}

static int gpu_count(void)
{
    const char *v = get("gpu_count");
    int n = v ? atoi(v) : max_gpu_seen + 1;
    return n < 0 ? 0 : (n > MAX_GPUS ? MAX_GPUS : n);
}

static int mig_count(int gpu)
{
    int n = (int)gnum(gpu, "mig.count", 0);
    return n > MAX_MIG ? MAX_MIG : n;
}

/* Is `name` an element of the comma separated list `list`? */
static int in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && t[-1] == ' ')
            t--;
        if ((size_t)(t - p) == n && strncmp(p, name, n) == 0)
            return 1;
        p = e;
    }
    return 0;
}

/* The configured result of the read `what` on a GPU: NVML_SUCCESS or an error. */
static nvmlReturn_t configured_result(int gpu, const char *what)
{
    if (!what)
        return NVML_SUCCESS;
    char key[160];
    snprintf(key, sizeof key, "fail.%s", what);
    const char *v = gget(gpu, key);
    if (v)
        return (nvmlReturn_t)atoi(v);
    if (in_list(gget(gpu, "unsupported"), what))
        return NVML_ERROR_NOT_SUPPORTED;
    return NVML_SUCCESS;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * Common entry of every device call: validate the handle, reload the config, honour
 * hang_seconds (without holding the lock), lost, unsupported and fail.<what>.
 * On NVML_SUCCESS the lock is held and must be released by the caller (UNLOCK_RETURN).
 */
static nvmlReturn_t enter(nvmlDevice_t dev, const char *what, int allow_mig)
{
    if (!dev)
        return NVML_ERROR_INVALID_ARGUMENT;
    const char *p = (const char *)dev;
    int is_gpu = p >= (const char *)gpu_handles && p < (const char *)gpu_handles + sizeof gpu_handles;
    int is_mig = p >= (const char *)mig_handles && p < (const char *)mig_handles + sizeof mig_handles;
    if (!is_gpu && !is_mig)
        return NVML_ERROR_INVALID_ARGUMENT;
    int gpu = dev->gpu;
    double start = now_s();
    int held = 0; /* counted in hanging[gpu] while this call sleeps */
    for (;;) {
        pthread_mutex_lock(&lock);
        if (init_count == 0) {
            hanging[gpu] -= held;
            pthread_mutex_unlock(&lock);
            return NVML_ERROR_UNINITIALIZED;
        }
        refresh();
        double hang = 0;
        const char *h = gget(gpu, "hang_seconds");
        if (h)
            hang = atof(h);
        if (hang <= 0 || now_s() - start >= hang)
            break;
        if (!held)
            hanging[gpu] += held = 1;
        pthread_mutex_unlock(&lock);
        sleep_ms(50);
    }
    hanging[gpu] -= held;
    if (what) {
        char name[96];
        snprintf(name, sizeof name, "calls.%s", what);
        count_call(gpu, name);
        snprintf(name, sizeof name, "xid_on.%s", what);
        const char *xid = gget(gpu, name);
        if (xid) /* a failing GPU raises its XID while it is read */
            raise_xid(gpu, strtoull(xid, NULL, 10), NOT_MIG, NOT_MIG);
        snprintf(name, sizeof name, "delay.%s", what);
        const char *d = gget(gpu, name);
        double delay = d ? atof(d) : 0;
        if (delay > 0) { /* a slow query: other GPUs' calls go on meanwhile */
            delayed[gpu]++;
            pthread_mutex_unlock(&lock);
            sleep_us((long)(delay * 1e6));
            pthread_mutex_lock(&lock);
            delayed[gpu]--;
            refresh();
        }
    }
    nvmlReturn_t r = NVML_SUCCESS;
    if (gpu >= gpu_count())
        r = NVML_ERROR_INVALID_ARGUMENT;
    else if (gnum(gpu, "lost", 0))
        r = NVML_ERROR_GPU_IS_LOST;
    else if (is_mig && !allow_mig)
        r = NVML_ERROR_NOT_SUPPORTED;
    else if (is_mig && (!gnum(gpu, "mig_mode", 0) || dev->mig >= mig_count(gpu)))
        r = NVML_ERROR_INVALID_ARGUMENT;
    else
        r = configured_result(gpu, what);
    if (r != NVML_SUCCESS)
        pthread_mutex_unlock(&lock);
    return r;
}

#define ENTER(dev, what, allow_mig)                          \
    do {                                                     \
        nvmlReturn_t _r = enter((dev), (what), (allow_mig)); \
        if (_r != NVML_SUCCESS)                              \
            return _r;                                       \
    } while (0)
#define LEAVE(r)                       \
    do {                               \
        pthread_mutex_unlock(&lock);   \
        return (r);                    \
    } while (0)

static nvmlReturn_t copy_str(char *dst, unsigned int len, const char *src)
{
    if (!dst)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!src)
        src = "";
    if (strlen(src) + 1 > len)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(dst, src);
    return NVML_SUCCESS;
}

/* ---- init, system -------------------------------------------------------------------- */

/* Seconds a config key asks some call to take (read under the lock, slept outside it). */
static double delay_of(const char *key)
{
    pthread_mutex_lock(&lock);
    refresh();
    const char *v = get(key);
    pthread_mutex_unlock(&lock);
    return v ? atof(v) : 0;
}

static nvmlReturn_t do_init(void)
{
    double delay = delay_of("init_seconds"); /* real nvmlInit takes seconds without persistence mode */
    if (delay > 0)
        sleep_ms((int)(delay * 1000));
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_GPUS; i++) {
        gpu_handles[i] = (struct nvmlDevice_st){i, -1};
        for (int j = 0; j < MAX_MIG; j++)
            mig_handles[i][j] = (struct nvmlDevice_st){i, j};
    }
    nvmlReturn_t r = NVML_SUCCESS;
    if (!refresh()) {
        r = NVML_ERROR_DRIVER_NOT_LOADED;
    } else {
        const char *code = get("init_error_code");
        const char *err = get("init_error");
        if (code && atoi(code) != 0)
            r = (nvmlReturn_t)atoi(code);
        else if (err && atoi(err) != 0)
            r = NVML_ERROR_DRIVER_NOT_LOADED;
    }
    if (r == NVML_SUCCESS)
        init_count++;
    pthread_mutex_unlock(&lock);
    return r;
}

nvmlReturn_t DECLDIR nvmlInitWithFlags(unsigned int flags) { (void)flags; return do_init(); }
nvmlReturn_t DECLDIR nvmlShutdown(void)
{
    pthread_mutex_lock(&lock);
    nvmlReturn_t r = NVML_SUCCESS;
    if (init_count == 0)
        r = NVML_ERROR_UNINITIALIZED;
    else
        init_count--;
    pthread_mutex_unlock(&lock);
    return r;
}

static void gpm_reset(void);

/* Test hook, not NVML: forget init counts, events, event sets, counters and GPM buffers (used
   between tests). */
void fake_nvml_reset(void)
{
    gpm_reset();
    pthread_mutex_lock(&lock);
    init_count = 0;
    ev_head = ev_len = 0;
    last_xid_seq = 0;
    run_id[0] = 0;
    have_stat = 0;
    memset(sets, 0, sizeof sets);
    memset(util_calls, 0, sizeof util_calls);
    memset(sizing_calls, 0, sizeof sizing_calls);
    memset(xid_dropped, 0, sizeof xid_dropped);
    for (int i = 0; i < ncounters; i++)
        memset(counter_values[i], 0, sizeof counter_values[i]);
    gpm_allocs = gpm_frees = 0;
    pthread_mutex_unlock(&lock);
}

const DECLDIR char *nvmlErrorString(nvmlReturn_t r)
{
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t system_enter(void)
{
    pthread_mutex_lock(&lock);
    if (init_count == 0) {
        pthread_mutex_unlock(&lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    refresh();
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    nvmlReturn_t r = system_enter();
    if (r) return r;
    const char *v = get("driver_version");
    LEAVE(copy_str(version, length, v ? v : "550.54.15"));
}

/* The NVML library's own version: "nvml_version", by default "12." + the driver version. */
nvmlReturn_t DECLDIR nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    nvmlReturn_t r = system_enter();
    if (r) return r;
    const char *v = get("nvml_version");
    if (v) LEAVE(copy_str(version, length, v));
    const char *driver = get("driver_version");
    char buf[96];
    snprintf(buf, sizeof buf, "12.%s", driver ? driver : "550.54.15");
    LEAVE(copy_str(version, length, buf));
}

static nvmlReturn_t cuda_version(int *out)
{
    nvmlReturn_t r = system_enter();
    if (r) return r;
    if (!out) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    const char *v = get("cuda_version");
    *out = v ? atoi(v) : 12040;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlSystemGetCudaDriverVersion_v2(int *v) { return cuda_version(v); }

nvmlReturn_t DECLDIR nvmlDeviceGetCount_v2(unsigned int *count)
{
    double delay = delay_of("count_seconds"); /* a driver in trouble holds every call */
    if (delay > 0)
        sleep_ms((int)(delay * 1000));
    nvmlReturn_t r = system_enter();
    if (r) return r;
    if (!count) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *count = (unsigned int)gpu_count();
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (!device || index >= MAX_GPUS)
        return NVML_ERROR_INVALID_ARGUMENT;
    char key[64];
    snprintf(key, sizeof key, "gpu.%u.handle_seconds", index); /* 1-3 s per GPU without persistence mode */
    double delay = delay_of(key);
    if (delay > 0)
        sleep_ms((int)(delay * 1000));
    ENTER(&gpu_handles[index], "handle", 0);
    *device = &gpu_handles[index];
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetMinorNumber(nvmlDevice_t dev, unsigned int *minor)
{
    ENTER(dev, "minor", 0);
    if (!minor) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *minor = (unsigned int)gnum(dev->gpu, "minor", (unsigned long long)dev->gpu);
    LEAVE(NVML_SUCCESS);
}

/* ---- identity -------------------------------------------------------------------------- */

nvmlReturn_t DECLDIR nvmlDeviceGetName(nvmlDevice_t dev, char *name, unsigned int length)
{
    ENTER(dev, "name", 1);
    const char *n = gget(dev->gpu, "name");
    if (!n) n = "NVIDIA H100 80GB HBM3";
    if (dev->mig >= 0) {
        char buf[256];
        const char *p = mget(dev->gpu, dev->mig, "profile");
        snprintf(buf, sizeof buf, "%s MIG %s", n, p ? p : "1g.10gb");
        LEAVE(copy_str(name, length, buf));
    }
    LEAVE(copy_str(name, length, n));
}

nvmlReturn_t DECLDIR nvmlDeviceGetUUID(nvmlDevice_t dev, char *uuid, unsigned int length)
{
    ENTER(dev, "uuid", 1);
    char buf[128];
    const char *u;
    if (dev->mig >= 0) {
        u = mget(dev->gpu, dev->mig, "uuid");
        if (!u) {
            snprintf(buf, sizeof buf, "MIG-00000000-0000-0000-0000-%06d%06d", dev->gpu, dev->mig);
            u = buf;
        }
    } else {
        u = gget(dev->gpu, "uuid");
        if (!u) {
            snprintf(buf, sizeof buf, "GPU-00000000-0000-0000-0000-%012d", dev->gpu);
            u = buf;
        }
    }
    LEAVE(copy_str(uuid, length, u));
}

nvmlReturn_t DECLDIR nvmlDeviceGetSerial(nvmlDevice_t dev, char *serial, unsigned int length)
{
    ENTER(dev, "serial", 0);
    const char *s = gget(dev->gpu, "serial");
    LEAVE(copy_str(serial, length, s ? s : "1650000000000"));
}

nvmlReturn_t DECLDIR nvmlDeviceGetVbiosVersion(nvmlDevice_t dev, char *version, unsigned int length)
{
    ENTER(dev, "vbios", 0);
    const char *s = gget(dev->gpu, "vbios");
    LEAVE(copy_str(version, length, s ? s : "96.00.74.00.01"));
}

nvmlReturn_t DECLDIR nvmlDeviceGetPciInfo_v3(nvmlDevice_t dev, nvmlPciInfo_t *pci)
{
    ENTER(dev, "pci", 0);
    if (!pci) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    memset(pci, 0, sizeof *pci);
    char buf[64];
    const char *b = gget(dev->gpu, "pci_bus_id");
    if (!b) {
        snprintf(buf, sizeof buf, "00000000:%02X:00.0", 0x18 + dev->gpu);
        b = buf;
    }
    strncpy(pci->busId, b, sizeof pci->busId - 1);
    strncpy(pci->busIdLegacy, b + (strlen(b) > 12 ? 4 : 0), sizeof pci->busIdLegacy - 1);
    unsigned int dom = 0, bus = 0, d = 0;
    sscanf(b, "%x:%x:%x", &dom, &bus, &d);
    pci->domain = dom;
    pci->bus = bus;
    pci->device = d;
    pci->pciDeviceId = (unsigned int)gnum(dev->gpu, "pci_device_id", 0x233010DE);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetMigMode(nvmlDevice_t dev, unsigned int *current, unsigned int *pending)
{
    ENTER(dev, "mig_mode", 0);
    if (!current || !pending) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *current = (unsigned int)gnum(dev->gpu, "mig_mode", 0);
    *pending = (unsigned int)gnum(dev->gpu, "mig_mode_pending", *current);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetPersistenceMode(nvmlDevice_t dev, nvmlEnableState_t *mode)
{
    ENTER(dev, "persistence_mode", 0);
    if (!mode) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *mode = (nvmlEnableState_t)gnum(dev->gpu, "persistence_mode", 1);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetComputeMode(nvmlDevice_t dev, nvmlComputeMode_t *mode)
{
    ENTER(dev, "compute_mode", 0);
    if (!mode) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *mode = (nvmlComputeMode_t)gnum(dev->gpu, "compute_mode", 0);
    LEAVE(NVML_SUCCESS);
}

/* ---- utilisation, memory, thermals, power, clocks ------------------------------------- */

nvmlReturn_t DECLDIR nvmlDeviceGetUtilizationRates(nvmlDevice_t dev, nvmlUtilization_t *u)
{
    ENTER(dev, "utilization", 0);
    if (!u) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (gnum(dev->gpu, "mig_mode", 0)) LEAVE(NVML_ERROR_NOT_SUPPORTED); /* nvml.h: not in MIG mode */
    u->gpu = (unsigned int)gnum(dev->gpu, "utilization_gpu", 0);
    u->memory = (unsigned int)gnum(dev->gpu, "utilization_memory", 0);
    LEAVE(NVML_SUCCESS);
}

static nvmlReturn_t codec_util(nvmlDevice_t dev, const char *what, unsigned int *u, unsigned int *period)
{
    ENTER(dev, what, 0);
    if (!u || !period) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (gnum(dev->gpu, "mig_mode", 0)) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    *u = (unsigned int)gnum(dev->gpu, what, 0);
    *period = 167000;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetEncoderUtilization(nvmlDevice_t dev, unsigned int *u, unsigned int *p)
{
    return codec_util(dev, "encoder", u, p);
}

nvmlReturn_t DECLDIR nvmlDeviceGetDecoderUtilization(nvmlDevice_t dev, unsigned int *u, unsigned int *p)
{
    return codec_util(dev, "decoder", u, p);
}

/* Memory of a GPU or a MIG device: mem_total, mem_used (allocated), mem_reserved, mem_free. */
static void memory_of(nvmlDevice_t dev, unsigned long long *total, unsigned long long *used,
                      unsigned long long *reserved, unsigned long long *free_)
{
    if (dev->mig >= 0) {
        *total = mnum(dev->gpu, dev->mig, "mem_total", 10ULL << 30);
        *used = mnum(dev->gpu, dev->mig, "mem_used", 0);
        *reserved = mnum(dev->gpu, dev->mig, "mem_reserved", 0);
        *free_ = mnum(dev->gpu, dev->mig, "mem_free", *total - *used - *reserved);
    } else {
        *total = gnum(dev->gpu, "mem_total", 80ULL << 30);
        *used = gnum(dev->gpu, "mem_used", 0);
        *reserved = gnum(dev->gpu, "mem_reserved", 0);
        *free_ = gnum(dev->gpu, "mem_free", *total - *used - *reserved);
    }
}

nvmlReturn_t DECLDIR nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *m)
{
    ENTER(dev, "memory", 1);
    if (!m) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    unsigned long long total, used, reserved, free_;
    memory_of(dev, &total, &used, &reserved, &free_);
    m->total = total;
    m->used = used + reserved; /* v1: used includes reserved */
    m->free = free_;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t dev, nvmlMemory_v2_t *m)
{
    ENTER(dev, "memory_v2", 1);
    if (!m) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (m->version != nvmlMemory_v2) LEAVE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    memory_of(dev, &m->total, &m->used, &m->reserved, &m->free);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetTemperature(nvmlDevice_t dev, nvmlTemperatureSensors_t sensor, unsigned int *t)
{
    ENTER(dev, "temperature", 0);
    if (!t || sensor != NVML_TEMPERATURE_GPU) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *t = (unsigned int)gnum(dev->gpu, "temperature", 40);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetTemperatureThreshold(nvmlDevice_t dev, nvmlTemperatureThresholds_t type,
                                                       unsigned int *t)
{
    static const char *names[] = {"temp_shutdown", "temp_slowdown", "temp_memory_max", "temp_gpu_max"};
    if ((unsigned)type >= 4)
        return NVML_ERROR_NOT_SUPPORTED;
    ENTER(dev, names[type], 0);
    if (!t) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    const char *v = gget(dev->gpu, names[type]);
    if (!v) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    *t = (unsigned int)strtoul(v, NULL, 0);
    LEAVE(NVML_SUCCESS);
}

static nvmlReturn_t get_uint(nvmlDevice_t dev, const char *what, unsigned int *out, unsigned int dflt)
{
    ENTER(dev, what, 0);
    if (!out) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *out = (unsigned int)gnum(dev->gpu, what, dflt);
    LEAVE(NVML_SUCCESS);
}

static nvmlReturn_t get_ull(nvmlDevice_t dev, const char *what, unsigned long long *out)
{
    ENTER(dev, what, 0);
    if (!out) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *out = gnum(dev->gpu, what, 0);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetPowerUsage(nvmlDevice_t dev, unsigned int *mw) { return get_uint(dev, "power_mw", mw, 0); }
nvmlReturn_t DECLDIR nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t dev, unsigned int *mw) { return get_uint(dev, "power_limit_mw", mw, 700000); }
nvmlReturn_t DECLDIR nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t dev, unsigned long long *mj) { return get_ull(dev, "energy_mj", mj); }
nvmlReturn_t DECLDIR nvmlDeviceGetFanSpeed(nvmlDevice_t dev, unsigned int *pct) { return get_uint(dev, "fan", pct, 30); }
nvmlReturn_t DECLDIR nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t dev, unsigned int *g) { return get_uint(dev, "pcie_gen", g, 5); }
nvmlReturn_t DECLDIR nvmlDeviceGetMaxPcieLinkGeneration(nvmlDevice_t dev, unsigned int *g) { return get_uint(dev, "pcie_max_gen", g, 5); }
nvmlReturn_t DECLDIR nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t dev, unsigned int *w) { return get_uint(dev, "pcie_width", w, 16); }
nvmlReturn_t DECLDIR nvmlDeviceGetMaxPcieLinkWidth(nvmlDevice_t dev, unsigned int *w) { return get_uint(dev, "pcie_max_width", w, 16); }
nvmlReturn_t DECLDIR nvmlDeviceGetPcieReplayCounter(nvmlDevice_t dev, unsigned int *n) { return get_uint(dev, "pcie_replay", n, 0); }

static const char *clock_name(nvmlClockType_t type)
{
    switch (type) {
    case NVML_CLOCK_GRAPHICS: return "graphics";
    case NVML_CLOCK_SM: return "sm";
    case NVML_CLOCK_MEM: return "memory";
    case NVML_CLOCK_VIDEO: return "video";
    default: return NULL;
    }
}

/* <what>.<domain> in MHz; absent: `dflt`, or NOT_SUPPORTED when `dflt` is 0. */
static nvmlReturn_t clock_read(nvmlDevice_t dev, const char *what, nvmlClockType_t type, unsigned int *mhz,
                               unsigned int dflt)
{
    const char *n = clock_name(type);
    if (!n)
        return NVML_ERROR_INVALID_ARGUMENT;
    ENTER(dev, what, 0);
    if (!mhz) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    char key[64];
    snprintf(key, sizeof key, "%s.%s", what, n);
    if (!dflt && !gget(dev->gpu, key)) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    *mhz = (unsigned int)gnum(dev->gpu, key, dflt);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetClockInfo(nvmlDevice_t dev, nvmlClockType_t type, unsigned int *mhz) { return clock_read(dev, "clock", type, mhz, 1000); }
nvmlReturn_t DECLDIR nvmlDeviceGetMaxClockInfo(nvmlDevice_t dev, nvmlClockType_t type, unsigned int *mhz) { return clock_read(dev, "max_clock", type, mhz, 1000); }

nvmlReturn_t DECLDIR nvmlDeviceGetPerformanceState(nvmlDevice_t dev, nvmlPstates_t *p)
{
    ENTER(dev, "pstate", 0);
    if (!p) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *p = (nvmlPstates_t)gnum(dev->gpu, "pstate", 0);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t dev, unsigned long long *r) { return get_ull(dev, "clock_events", r); }
nvmlReturn_t DECLDIR nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t dev, unsigned long long *r) { return get_ull(dev, "clock_events", r); }

nvmlReturn_t DECLDIR nvmlDeviceGetViolationStatus(nvmlDevice_t dev, nvmlPerfPolicyType_t policy, nvmlViolationTime_t *t)
{
    ENTER(dev, "violation", 0);
    if (!t) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    char key[64];
    snprintf(key, sizeof key, "violation.%d", (int)policy);
    t->referenceTime = (unsigned long long)time(NULL) * 1000000ULL;
    t->violationTime = gnum(dev->gpu, key, 0);
    LEAVE(NVML_SUCCESS);
}

/* ---- ECC, retired pages, remapped rows ------------------------------------------------- */

static const char *ecc_key(nvmlMemoryErrorType_t type, nvmlEccCounterType_t counter)
{
    if (type == NVML_MEMORY_ERROR_TYPE_CORRECTED)
        return counter == NVML_VOLATILE_ECC ? "ecc.corrected.volatile" : "ecc.corrected.aggregate";
    return counter == NVML_VOLATILE_ECC ? "ecc.uncorrected.volatile" : "ecc.uncorrected.aggregate";
}

nvmlReturn_t DECLDIR nvmlDeviceGetTotalEccErrors(nvmlDevice_t dev, nvmlMemoryErrorType_t type,
                                                 nvmlEccCounterType_t counter, unsigned long long *n)
{
    ENTER(dev, "ecc", 0);
    if (!n) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *n = gnum(dev->gpu, ecc_key(type, counter), 0);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetRetiredPages(nvmlDevice_t dev, nvmlPageRetirementCause_t cause,
                                               unsigned int *count, unsigned long long *addresses)
{
    ENTER(dev, "retired_pages", 0);
    if (!count) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int n = (unsigned int)gnum(dev->gpu,
        cause == NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR ? "retired_dbe" : "retired_sbe", 0);
    if (!addresses || *count < n) {
        *count = n;
        LEAVE(n ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS);
    }
    for (unsigned int i = 0; i < n; i++)
        addresses[i] = 0x1000ULL * (i + 1);
    *count = n;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t dev, nvmlEnableState_t *p)
{
    ENTER(dev, "retired_pages", 0);
    if (!p) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *p = (nvmlEnableState_t)gnum(dev->gpu, "retired_pending", 0);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetRemappedRows(nvmlDevice_t dev, unsigned int *corr, unsigned int *unc,
                                               unsigned int *pending, unsigned int *failure)
{
    ENTER(dev, "remapped_rows", 0);
    if (!corr || !unc || !pending || !failure) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *corr = (unsigned int)gnum(dev->gpu, "remap.correctable", 0);
    *unc = (unsigned int)gnum(dev->gpu, "remap.uncorrectable", 0);
    *pending = (unsigned int)gnum(dev->gpu, "remap.pending", 0);
    *failure = (unsigned int)gnum(dev->gpu, "remap.failure", 0);
    LEAVE(NVML_SUCCESS);
}

/* ---- NVLink ------------------------------------------------------------------------------ */

/*
 * gpu.<i>.nvlink_links lists the numbers of the links that exist ("0,1,4,5": numbering need not
 * be dense; empty or absent: no NVLink). Asking for another link answers like the driver:
 * NOT_SUPPORTED without NVLink or for a gap in the numbering, INVALID_ARGUMENT beyond the
 * highest link. Lock held in all three helpers.
 */
static int link_present(int gpu, unsigned int link)
{
    char name[16];
    snprintf(name, sizeof name, "%u", link);
    return in_list(gget(gpu, "nvlink_links"), name);
}

/* Number of links; *highest = the highest link number (-1: none). */
static int links_of(int gpu, int *highest)
{
    int n = 0;
    *highest = -1;
    for (int link = 0; link < NVML_NVLINK_MAX_LINKS; link++)
        if (link_present(gpu, (unsigned)link)) {
            n++;
            *highest = link;
        }
    return n;
}

static nvmlReturn_t link_result(int gpu, unsigned int link)
{
    int highest;
    if (links_of(gpu, &highest) == 0)
        return NVML_ERROR_NOT_SUPPORTED;
    if ((long)link > highest)
        return NVML_ERROR_INVALID_ARGUMENT;
    return link_present(gpu, link) ? NVML_SUCCESS : NVML_ERROR_NOT_SUPPORTED;
}

nvmlReturn_t DECLDIR nvmlDeviceGetNvLinkState(nvmlDevice_t dev, unsigned int link, nvmlEnableState_t *active)
{
    ENTER(dev, "nvlink", 0);
    if (!active) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    nvmlReturn_t r = link_result(dev->gpu, link);
    if (r != NVML_SUCCESS) LEAVE(r);
    char name[16];
    snprintf(name, sizeof name, "%u", link);
    *active = in_list(gget(dev->gpu, "nvlink_down"), name) ? NVML_FEATURE_DISABLED : NVML_FEATURE_ENABLED;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetNvLinkErrorCounter(nvmlDevice_t dev, unsigned int link,
                                                     nvmlNvLinkErrorCounter_t counter, unsigned long long *value)
{
    static const char *names[] = {"replay", "recovery", "crc_flit", "crc_data", "ecc_data"};
    ENTER(dev, "nvlink_errors", 0);
    if (!value || (unsigned)counter >= 5) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    nvmlReturn_t r = link_result(dev->gpu, link);
    if (r != NVML_SUCCESS) LEAVE(r);
    char key[64];
    snprintf(key, sizeof key, "nvlink.%u.%s", link, names[counter]);
    *value = gnum(dev->gpu, key, 0);
    LEAVE(NVML_SUCCESS);
}

/* ---- field values ------------------------------------------------------------------------ */

/* One field: sets type and value, returns its nvmlReturn. Lock held. */
static nvmlReturn_t field(int gpu, nvmlFieldValue_t *f)
{
    const char *what = NULL, *key = NULL;
    nvmlValueType_t type = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
    int links = 0, highest = -1;
    char buf[64];
    switch (f->fieldId) {
    case NVML_FI_DEV_MEMORY_TEMP: what = key = "memory_temp"; type = NVML_VALUE_TYPE_UNSIGNED_INT; break;
    case NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION: what = "energy"; key = "energy_mj"; break;
    case NVML_FI_DEV_PCIE_REPLAY_COUNTER: what = key = "pcie_replay"; break;
    case NVML_FI_DEV_PCIE_COUNT_TX_BYTES: what = "pcie_data"; key = "pcie_tx_bytes"; break;
    case NVML_FI_DEV_PCIE_COUNT_RX_BYTES: what = "pcie_data"; key = "pcie_rx_bytes"; break;
    case NVML_FI_DEV_ECC_SBE_VOL_TOTAL: what = "ecc"; key = "ecc.corrected.volatile"; break;
    case NVML_FI_DEV_ECC_DBE_VOL_TOTAL: what = "ecc"; key = "ecc.uncorrected.volatile"; break;
    case NVML_FI_DEV_ECC_SBE_AGG_TOTAL: what = "ecc"; key = "ecc.corrected.aggregate"; break;
    case NVML_FI_DEV_ECC_DBE_AGG_TOTAL: what = "ecc"; key = "ecc.uncorrected.aggregate"; break;
    case NVML_FI_DEV_RETIRED_SBE: what = "retired_pages"; key = "retired_sbe"; break;
    case NVML_FI_DEV_RETIRED_DBE: what = "retired_pages"; key = "retired_dbe"; break;
    case NVML_FI_DEV_RETIRED_PENDING: what = "retired_pages"; key = "retired_pending"; break;
    case NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL:
    case NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL:
    case NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL:
    case NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL: {
        /* every link's nvlink.<link>.<type> at once (the read "nvlink_totals") */
        const char *type = f->fieldId == NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL ? "replay"
                         : f->fieldId == NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL ? "recovery"
                         : f->fieldId == NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL ? "crc_flit" : "crc_data";
        if (links_of(gpu, &highest) == 0)
            return NVML_ERROR_NOT_SUPPORTED;
        nvmlReturn_t r = configured_result(gpu, "nvlink_totals");
        if (r != NVML_SUCCESS)
            return r;
        unsigned long long sum = 0;
        for (int link = 0; link <= highest; link++) {
            if (!link_present(gpu, (unsigned)link))
                continue;
            snprintf(buf, sizeof buf, "nvlink.%d.%s", link, type);
            sum += gnum(gpu, buf, 0);
        }
        f->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        f->value.ullVal = sum;
        return NVML_SUCCESS;
    }
    case NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX:
    case NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX:
        what = "nvlink_throughput";
        links = links_of(gpu, &highest);
        if (links == 0 || configured_result(gpu, "nvlink") != NVML_SUCCESS)
            return NVML_ERROR_NOT_SUPPORTED;
        /* scopeId UINT_MAX: total over all links; a link: total / links (the highest takes the rest) */
        if (f->scopeId != NOT_MIG && link_result(gpu, f->scopeId) != NVML_SUCCESS)
            return NVML_ERROR_INVALID_ARGUMENT;
        snprintf(buf, sizeof buf, "nvlink_%s_kib", f->fieldId == NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX ? "tx" : "rx");
        key = buf;
        break;
    default:
        return NVML_ERROR_NOT_SUPPORTED;
    }
    nvmlReturn_t r = configured_result(gpu, what);
    if (r != NVML_SUCCESS)
        return r;
    unsigned long long v = gnum(gpu, key, 0);
    if (links > 0 && f->scopeId != NOT_MIG) {
        unsigned long long share = v / (unsigned)links;
        v = (long)f->scopeId == highest ? v - share * (unsigned)(links - 1) : share;
    }
    f->valueType = type;
    if (type == NVML_VALUE_TYPE_UNSIGNED_INT)
        f->value.uiVal = (unsigned int)v;
    else
        f->value.ullVal = v;
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlDeviceGetFieldValues(nvmlDevice_t dev, int count, nvmlFieldValue_t *values)
{
    ENTER(dev, "field_values", 0);
    if (!values || count < 0) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    double delay = 0;
    int report_latency = (int)gnum(dev->gpu, "field_latency", 1);
    for (int i = 0; i < count; i++) {
        char name[64];
        snprintf(name, sizeof name, "field.%u", values[i].fieldId);
        count_call(dev->gpu, name);
        snprintf(name, sizeof name, "delay.field.%u", values[i].fieldId);
        const char *d = gget(dev->gpu, name);
        double own = d ? atof(d) : 0;
        delay += own;
        values[i].latencyUsec = report_latency ? (long long)(own * 1e6) + 5 : 0;
    }
    if (delay > 0) {
        delayed[dev->gpu]++;
        pthread_mutex_unlock(&lock);
        sleep_us((long)(delay * 1e6));
        pthread_mutex_lock(&lock);
        delayed[dev->gpu]--;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    for (int i = 0; i < count; i++) {
        values[i].timestamp = (long long)tv.tv_sec * 1000000LL + tv.tv_usec;
        values[i].nvmlReturn = field(dev->gpu, &values[i]);
    }
    LEAVE(NVML_SUCCESS);
}

/* ---- processes ------------------------------------------------------------------------- */

/*
 * Processes are "pid:used_bytes[:sm_percent]" lists: gpu.<i>.processes (plain compute list),
 * gpu.<i>.mps_processes (MPS clients, nvmlDeviceGetMPSComputeRunningProcesses), and the same
 * keys under gpu.<i>.mig.<j>. Like the real driver, the parent of a MIG GPU also reports the
 * processes of its MIG devices, each with its gpuInstanceId/computeInstanceId; full-GPU
 * processes carry 0xFFFFFFFF. A MIG handle's own list is the read "mig_processes" (resp.
 * "mig_mps_processes"), so it can fail apart from the parent's "processes" ("mps_processes").
 */
struct proc { unsigned int pid, gi, ci, sm; unsigned long long mem; };

static int parse_procs(const char *list, unsigned int gi, unsigned int ci, struct proc *out, int max, int n)
{
    if (!list)
        return n;
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", list);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok && n < max; tok = strtok_r(NULL, ",", &save)) {
        unsigned int pid = 0, sm = 0;
        unsigned long long mem = 0;
        if (strstr(tok, ":na") && sscanf(tok, " %u:na:%u", &pid, &sm) >= 1)
            mem = (unsigned long long)NVML_VALUE_NOT_AVAILABLE; /* the driver cannot tell */
        else if (sscanf(tok, " %u:%llu:%u", &pid, &mem, &sm) < 1)
            continue;
        out[n++] = (struct proc){pid, gi, ci, sm, mem};
    }
    return n;
}

/* The processes of list `key` ("processes" or "mps_processes") on a GPU or MIG handle. Lock held. */
static int procs_of(nvmlDevice_t dev, const char *key, struct proc *out, int max)
{
    int g = dev->gpu;
    if (dev->mig >= 0)
        return parse_procs(mget(g, dev->mig, key), (unsigned)mnum(g, dev->mig, "gi", 1),
                           (unsigned)mnum(g, dev->mig, "ci", 0), out, max, 0);
    int n = parse_procs(gget(g, key), NOT_MIG, NOT_MIG, out, max, 0);
    if (gnum(g, "mig_mode", 0))
        for (int j = 0; j < mig_count(g); j++)
            n = parse_procs(mget(g, j, key), (unsigned)mnum(g, j, "gi", 1), (unsigned)mnum(g, j, "ci", 0),
                            out, max, n);
    return n;
}

static int is_mig_handle(nvmlDevice_t dev)
{
    const char *p = (const char *)dev;
    return p >= (const char *)mig_handles && p < (const char *)mig_handles + sizeof mig_handles;
}

/* nvmlDeviceGet{,MPS}ComputeRunningProcesses_v3: sizing call, then the list. */
static nvmlReturn_t running_processes(nvmlDevice_t dev, const char *key, unsigned int *count, nvmlProcessInfo_t *infos)
{
    char what[32];
    snprintf(what, sizeof what, "%s%s", is_mig_handle(dev) ? "mig_" : "", key);
    ENTER(dev, what, 1);
    if (!count) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    struct proc p[64];
    int n = procs_of(dev, key, p, 64);
    if (n == 0) {
        *count = 0;
        LEAVE(NVML_SUCCESS);
    }
    if (!infos || *count < (unsigned)n) {
        *count = (unsigned)n;
        sizing_calls[dev->gpu]++;
        LEAVE(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (int i = 0; i < n; i++) {
        infos[i].pid = p[i].pid;
        infos[i].usedGpuMemory = p[i].mem;
        infos[i].gpuInstanceId = p[i].gi;
        infos[i].computeInstanceId = p[i].ci;
    }
    *count = (unsigned)n;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                             nvmlProcessInfo_t *infos)
{
    return running_processes(dev, "processes", count, infos);
}

nvmlReturn_t DECLDIR nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                                nvmlProcessInfo_t *infos)
{
    return running_processes(dev, "mps_processes", count, infos);
}

/* Test hook, not NVML: the counters above ("process_utilization", "process_list_sizing",
   "hanging") for one GPU; -1 for an unknown name. */
int fake_nvml_stat(int gpu, const char *name)
{
    if (gpu < 0 || gpu >= MAX_GPUS || !name)
        return -1;
    pthread_mutex_lock(&lock);
    int n = strcmp(name, "process_utilization") == 0 ? (int)util_calls[gpu]
          : strcmp(name, "process_list_sizing") == 0 ? (int)sizing_calls[gpu]
          : strcmp(name, "hanging") == 0 ? (int)hanging[gpu]
          : strcmp(name, "delayed") == 0 ? (int)delayed[gpu]
          : strcmp(name, "xid_dropped") == 0 ? (int)xid_dropped[gpu]
          : strcmp(name, "gpm_allocs") == 0 ? (int)gpm_allocs
          : strcmp(name, "gpm_frees") == 0 ? (int)gpm_frees : -1;
    if (strncmp(name, "calls.", 6) == 0 || strncmp(name, "field.", 6) == 0) {
        n = 0; /* never called yet */
        for (int i = 0; i < ncounters; i++)
            if (strcmp(counter_names[i], name) == 0)
                n = (int)counter_values[i][gpu];
    }
    pthread_mutex_unlock(&lock);
    return n;
}

/*
 * Like the real driver (nvml.h): one sample per process with non-zero SM utilisation newer than
 * lastSeen, NVML_ERROR_NOT_FOUND when there is none (gpu.<i>.no_util_samples_result=N answers
 * N instead, e.g. 0: drivers whose sizing call says SUCCESS with no samples), NOT_SUPPORTED in
 * MIG mode.
 */

nvmlReturn_t DECLDIR nvmlDeviceGetProcessUtilization(nvmlDevice_t dev, nvmlProcessUtilizationSample_t *samples,
                                                     unsigned int *count, unsigned long long lastSeen)
{
    ENTER(dev, "process_utilization", 0);
    util_calls[dev->gpu]++;
    if (!count) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (gnum(dev->gpu, "mig_mode", 0)) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    struct proc all[128], p[128];
    int total = procs_of(dev, "processes", all, 64);
    total += procs_of(dev, "mps_processes", all + total, 64);
    int n = 0;
    for (int i = 0; i < total; i++)
        if (all[i].sm > 0)
            p[n++] = all[i];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    unsigned long long now = (unsigned long long)tv.tv_sec * 1000000ULL + tv.tv_usec;
    if (n == 0 || now <= lastSeen) {
        *count = 0;
        LEAVE((nvmlReturn_t)gnum(dev->gpu, "no_util_samples_result", NVML_ERROR_NOT_FOUND));
    }
    if (!samples || *count < (unsigned)n) {
        *count = (unsigned)n;
        LEAVE(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (int i = 0; i < n; i++)
        samples[i] = (nvmlProcessUtilizationSample_t){p[i].pid, now, p[i].sm, 0, 0, 0};
    *count = (unsigned)n;
    LEAVE(NVML_SUCCESS);
}

/* ---- MIG --------------------------------------------------------------------------------- */

nvmlReturn_t DECLDIR nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t dev, unsigned int *count)
{
    ENTER(dev, "mig", 0);
    if (!count) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (!gget(dev->gpu, "mig_mode")) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    *count = (unsigned int)gnum(dev->gpu, "mig.max", 7);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t dev, unsigned int index, nvmlDevice_t *mig)
{
    ENTER(dev, "mig", 0);
    if (!mig) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (!gnum(dev->gpu, "mig_mode", 0)) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (index >= (unsigned)mig_count(dev->gpu)) LEAVE(NVML_ERROR_NOT_FOUND);
    *mig = &mig_handles[dev->gpu][index];
    LEAVE(NVML_SUCCESS);
}

static nvmlReturn_t instance_id(nvmlDevice_t dev, const char *what, unsigned int dflt, unsigned int *id)
{
    ENTER(dev, NULL, 1);
    if (!id || dev->mig < 0) LEAVE(dev->mig < 0 ? NVML_ERROR_NOT_SUPPORTED : NVML_ERROR_INVALID_ARGUMENT);
    *id = (unsigned int)mnum(dev->gpu, dev->mig, what, dflt);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetGpuInstanceId(nvmlDevice_t dev, unsigned int *id) { return instance_id(dev, "gi", 1, id); }
nvmlReturn_t DECLDIR nvmlDeviceGetComputeInstanceId(nvmlDevice_t dev, unsigned int *id) { return instance_id(dev, "ci", 0, id); }

/* ---- events ------------------------------------------------------------------------------ */

nvmlReturn_t DECLDIR nvmlEventSetCreate(nvmlEventSet_t *set)
{
    nvmlReturn_t r = system_enter();
    if (r) return r;
    if (!set) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < MAX_SETS; i++)
        if (!sets[i].used) {
            memset(&sets[i], 0, sizeof sets[i]);
            sets[i].used = 1;
            *set = &sets[i];
            LEAVE(NVML_SUCCESS);
        }
    LEAVE(NVML_ERROR_MEMORY);
}

nvmlReturn_t DECLDIR nvmlEventSetFree(nvmlEventSet_t set)
{
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    set->used = 0;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceRegisterEvents(nvmlDevice_t dev, unsigned long long types, nvmlEventSet_t set)
{
    ENTER(dev, "events", 0);
    if (!set || !set->used) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (types & ~(unsigned long long)nvmlEventTypeXidCriticalError) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    set->mask[dev->gpu] |= types;
    LEAVE(NVML_SUCCESS);
}

/* Pop the first queued event for a GPU registered in `set`. Lock held. */
static int pop_event(nvmlEventSet_t set, struct event *out)
{
    for (int i = 0; i < ev_len; i++) {
        struct event *e = &events[(ev_head + i) % MAX_EVENTS];
        if (e->gpu < MAX_GPUS && (set->mask[e->gpu] & nvmlEventTypeXidCriticalError)) {
            *out = *e;
            for (int k = i; k > 0; k--)
                events[(ev_head + k) % MAX_EVENTS] = events[(ev_head + k - 1) % MAX_EVENTS];
            ev_head = (ev_head + 1) % MAX_EVENTS;
            ev_len--;
            return 1;
        }
    }
    return 0;
}

nvmlReturn_t DECLDIR nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    if (!set || !data)
        return NVML_ERROR_INVALID_ARGUMENT;
    double deadline = now_s() + timeoutms / 1000.0;
    for (;;) {
        pthread_mutex_lock(&lock);
        if (init_count == 0 || !set->used)
            LEAVE(NVML_ERROR_UNINITIALIZED);
        refresh();
        struct event e;
        if (pop_event(set, &e)) {
            memset(data, 0, sizeof *data);
            data->device = &gpu_handles[e.gpu];
            data->eventType = nvmlEventTypeXidCriticalError;
            data->eventData = e.code;
            data->gpuInstanceId = e.gi;
            data->computeInstanceId = e.ci;
            LEAVE(NVML_SUCCESS);
        }
        pthread_mutex_unlock(&lock);
        double left = deadline - now_s();
        if (left <= 0)
            return NVML_ERROR_TIMEOUT;
        sleep_ms(left > 0.05 ? 50 : (int)(left * 1000) + 1);
    }
}

/* ---- facts added for nvidia_gpu_info and the limits beside the readings ------------------ */

nvmlReturn_t DECLDIR nvmlDeviceGetArchitecture(nvmlDevice_t dev, nvmlDeviceArchitecture_t *arch)
{
    ENTER(dev, "architecture", 0);
    if (!arch) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *arch = (nvmlDeviceArchitecture_t)gnum(dev->gpu, "architecture", NVML_DEVICE_ARCH_HOPPER);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetCudaComputeCapability(nvmlDevice_t dev, int *major, int *minor)
{
    ENTER(dev, "compute_capability", 0);
    if (!major || !minor) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    const char *v = gget(dev->gpu, "compute_capability"); /* "9.0" */
    *major = 9;
    *minor = 0;
    if (v)
        sscanf(v, "%d.%d", major, minor);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetBoardPartNumber(nvmlDevice_t dev, char *part, unsigned int length)
{
    ENTER(dev, "board_part_number", 0);
    const char *v = gget(dev->gpu, "board_part_number");
    if (!v) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    LEAVE(copy_str(part, length, v));
}

nvmlReturn_t DECLDIR nvmlDeviceGetBAR1MemoryInfo(nvmlDevice_t dev, nvmlBAR1Memory_t *bar1)
{
    ENTER(dev, "bar1", 0);
    if (!bar1) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    bar1->bar1Total = gnum(dev->gpu, "bar1_total", 128ULL << 30);
    bar1->bar1Used = gnum(dev->gpu, "bar1_used", 0);
    bar1->bar1Free = bar1->bar1Total - bar1->bar1Used;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t dev, unsigned int *min_mw,
                                                                  unsigned int *max_mw)
{
    ENTER(dev, "power_limit_range", 0);
    if (!min_mw || !max_mw) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *min_mw = (unsigned int)gnum(dev->gpu, "power_min_mw", 200000);
    *max_mw = (unsigned int)gnum(dev->gpu, "power_max_mw", 700000);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t dev, unsigned int *mw)
{
    return get_uint(dev, "power_default_mw", mw, 700000);
}

/* Application clocks: app_clock.<domain> / default_app_clock.<domain> in MHz; absent = NOT_SUPPORTED. */
nvmlReturn_t DECLDIR nvmlDeviceGetApplicationsClock(nvmlDevice_t dev, nvmlClockType_t type, unsigned int *mhz)
{
    return clock_read(dev, "app_clock", type, mhz, 0);
}

nvmlReturn_t DECLDIR nvmlDeviceGetDefaultApplicationsClock(nvmlDevice_t dev, nvmlClockType_t type, unsigned int *mhz)
{
    return clock_read(dev, "default_app_clock", type, mhz, 0);
}

/* ---- GPM (GPU performance monitoring, Hopper and newer) --------------------------------------
 *
 * A sample buffer snapshots the configured metric values of a GPU (gpu.<i>.gpm.<id>) or of a GPU
 * instance (gpu.<i>.mig.<j>.gpm.<id>, j the MIG device whose gi matches) when it is filled;
 * nvmlGpmMetricsGet answers the values of sample2 for two samples of the same device, each metric
 * with its own nvmlReturn (gpu.<i>.gpm_unsupported lists metric ids that answer NOT_SUPPORTED).
 * Buffers come from a fixed pool; allocations and frees are counted for leak tests.
 */
#define GPM_POOL 256
#define GPM_IDS 128
struct nvmlGpmSample_st {
    int used, filled, gpu;
    unsigned int gi; /* NOT_MIG for the whole GPU */
    double values[GPM_IDS];
    unsigned char unsupported[GPM_IDS];
};
static struct nvmlGpmSample_st gpm_pool[GPM_POOL];

static void gpm_reset(void)
{
    pthread_mutex_lock(&lock);
    memset(gpm_pool, 0, sizeof gpm_pool);
    pthread_mutex_unlock(&lock);
}

static int gpm_missing(void) /* Lock held. */
{
    const char *v = get("gpm_missing");
    return v && atoi(v);
}

static int gpm_sample_valid(nvmlGpmSample_t s)
{
    return s && s >= gpm_pool && s < gpm_pool + GPM_POOL && s->used;
}

nvmlReturn_t DECLDIR nvmlGpmSampleAlloc(nvmlGpmSample_t *sample)
{
    nvmlReturn_t r = system_enter();
    if (r) return r;
    if (gpm_missing()) LEAVE(NVML_ERROR_FUNCTION_NOT_FOUND);
    if (!sample) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < GPM_POOL; i++)
        if (!gpm_pool[i].used) {
            memset(&gpm_pool[i], 0, sizeof gpm_pool[i]);
            gpm_pool[i].used = 1;
            gpm_allocs++;
            *sample = &gpm_pool[i];
            LEAVE(NVML_SUCCESS);
        }
    LEAVE(NVML_ERROR_MEMORY);
}

nvmlReturn_t DECLDIR nvmlGpmSampleFree(nvmlGpmSample_t sample)
{
    pthread_mutex_lock(&lock); /* works after nvmlShutdown too: buffers belong to the caller */
    refresh();
    if (gpm_missing()) LEAVE(NVML_ERROR_FUNCTION_NOT_FOUND);
    if (!gpm_sample_valid(sample)) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    sample->used = 0;
    gpm_frees++;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlGpmQueryDeviceSupport(nvmlDevice_t dev, nvmlGpmSupport_t *support)
{
    ENTER(dev, "gpm", 0);
    if (gpm_missing()) LEAVE(NVML_ERROR_FUNCTION_NOT_FOUND);
    if (!support) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (support->version != NVML_GPM_SUPPORT_VERSION) LEAVE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    support->isSupportedDevice = (unsigned int)gnum(dev->gpu, "gpm_supported", 0);
    LEAVE(NVML_SUCCESS);
}

/* Fill `s` from the keys "<prefix>gpm.<id>". Lock held. */
static void gpm_fill(nvmlGpmSample_t s, int gpu, unsigned int gi, const char *prefix)
{
    s->filled = 1;
    s->gpu = gpu;
    s->gi = gi;
    for (int id = 0; id < GPM_IDS; id++) {
        char key[96], name[16];
        snprintf(key, sizeof key, "%sgpm.%d", prefix, id);
        const char *v = get(key);
        s->values[id] = v ? atof(v) : 0.0;
        snprintf(name, sizeof name, "%d", id);
        s->unsupported[id] = (unsigned char)in_list(gget(gpu, "gpm_unsupported"), name);
    }
}

nvmlReturn_t DECLDIR nvmlGpmSampleGet(nvmlDevice_t dev, nvmlGpmSample_t sample)
{
    ENTER(dev, "gpm_sample", 0);
    if (gpm_missing()) LEAVE(NVML_ERROR_FUNCTION_NOT_FOUND);
    if (!gpm_sample_valid(sample)) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (!gnum(dev->gpu, "gpm_supported", 0)) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    char prefix[32];
    snprintf(prefix, sizeof prefix, "gpu.%d.", dev->gpu);
    gpm_fill(sample, dev->gpu, NOT_MIG, prefix);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t DECLDIR nvmlGpmMigSampleGet(nvmlDevice_t dev, unsigned int gpuInstanceId, nvmlGpmSample_t sample)
{
    ENTER(dev, "gpm_sample", 0);
    if (gpm_missing()) LEAVE(NVML_ERROR_FUNCTION_NOT_FOUND);
    if (!gpm_sample_valid(sample)) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (!gnum(dev->gpu, "gpm_supported", 0)) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    if (!gnum(dev->gpu, "mig_mode", 0)) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    for (int j = 0; j < mig_count(dev->gpu); j++)
        if ((unsigned)mnum(dev->gpu, j, "gi", 1) == gpuInstanceId) {
            char prefix[48];
            snprintf(prefix, sizeof prefix, "gpu.%d.mig.%d.", dev->gpu, j);
            gpm_fill(sample, dev->gpu, gpuInstanceId, prefix);
            LEAVE(NVML_SUCCESS);
        }
    LEAVE(NVML_ERROR_NOT_FOUND);
}

nvmlReturn_t DECLDIR nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *m)
{
    if (!m)
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlGpmSample_t a = m->sample1, b = m->sample2;
    pthread_mutex_lock(&lock);
    int ok = gpm_sample_valid(a) && gpm_sample_valid(b) && a->filled && b->filled && a->gpu == b->gpu &&
             a->gi == b->gi && a != b;
    int gpu = ok ? a->gpu : 0;
    pthread_mutex_unlock(&lock);
    ENTER(&gpu_handles[gpu], "gpm_metrics", 0);
    if (gpm_missing()) LEAVE(NVML_ERROR_FUNCTION_NOT_FOUND);
    if (m->version != NVML_GPM_METRICS_GET_VERSION) LEAVE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (!ok || m->numMetrics > NVML_GPM_METRIC_MAX) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    for (unsigned int i = 0; i < m->numMetrics; i++) {
        nvmlGpmMetric_t *metric = &m->metrics[i];
        unsigned int id = metric->metricId;
        metric->metricInfo.shortName = metric->metricInfo.longName = metric->metricInfo.unit = NULL;
        if (id >= GPM_IDS || b->unsupported[id]) {
            metric->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
            metric->value = 0;
            continue;
        }
        metric->nvmlReturn = NVML_SUCCESS;
        metric->value = b->values[id];
    }
    LEAVE(NVML_SUCCESS);
}
