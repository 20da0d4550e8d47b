/* prof_sysinfo.c - facts about the host and the process: thread ids in nsys's globalTid layout,
 * CPU model, architecture, resident memory, and capturing a print function's text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include "prof_internal.h"

int64_t prof_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Process and thread ids, cached (getpid and gettid are system calls, and a range asks for them
 * at every pop). A forked child starts with its parent's cache: the atfork handler clears it
 * (the forking thread is the only thread of the child). */
static _Thread_local int64_t tl_tid;
static _Atomic int64_t g_pid;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

static void forget_ids_in_child(void) {
    tl_tid = 0;
    atomic_store(&g_pid, 0);
}

static void register_atfork(void) { pthread_atfork(NULL, NULL, forget_ids_in_child); }

int64_t prof_thread_id(void) {
    if (!tl_tid) {
        pthread_once(&g_atfork_once, register_atfork);
        tl_tid = (int64_t)gettid();
    }
    return tl_tid;
}

int64_t prof_process_id(void) {
    int64_t pid = atomic_load_explicit(&g_pid, memory_order_relaxed);
    if (!pid) {
        pthread_once(&g_atfork_once, register_atfork);
        pid = (int64_t)getpid();
        atomic_store_explicit(&g_pid, pid, memory_order_relaxed);
    }
    return pid;
}

/* nsys's serialized GlobalId for a thread of this host: the reports decode PID as
 * (globalTid >> 24) & 0xFFFFFF and TID as globalTid & 0xFFFFFF. Linux pids fit 22 bits by
 * default (pid_max 4194304), so nothing is lost unless pid_max was raised above 2^24. */
int64_t prof_global_tid(void) {
    return (prof_process_id() << 24) | (prof_thread_id() & 0xFFFFFF);
}

void prof_cpu_model(char *out, size_t n) {
    out[0] = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        const char *colon = strchr(line, ':');
        if (!colon) continue;
        colon++;
        while (*colon == ' ' || *colon == '\t') colon++;
        snprintf(out, n, "%s", colon);
        out[strcspn(out, "\n")] = 0;
        break;
    }
    fclose(f);
}

void prof_os_arch(char *out, size_t n) {
    struct utsname u;
    if (uname(&u) == 0) snprintf(out, n, "%s", u.machine);
    else snprintf(out, n, "unknown");
}

/* /proc/self/statm: "size resident shared ..." in pages. pread at offset 0 re-reads the file,
 * so producers share one descriptor without seeking. */
int64_t prof_rss_from_statm(int fd) {
    if (fd < 0) return -1;
    char buf[128];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0) return -1;
    buf[n] = 0;
    long long size = 0, resident = 0;
    if (sscanf(buf, "%lld %lld", &size, &resident) != 2) return -1;
    return (int64_t)resident * sysconf(_SC_PAGESIZE);
}

int64_t prof_process_rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    long long size = 0, resident = 0;
    int ok = fscanf(f, "%lld %lld", &size, &resident) == 2;
    fclose(f);
    return ok ? (int64_t)resident * sysconf(_SC_PAGESIZE) : -1;
}

/* getrusage's high-water mark (kilobytes on Linux). The kernel updates it lazily (when memory
 * is unmapped), so it can lag below the current RSS: callers take the max with it. */
int64_t prof_peak_rss_hiwater(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return (int64_t)ru.ru_maxrss * 1024;
}

int64_t prof_process_peak_rss_bytes(void) {
    int64_t hi = prof_peak_rss_hiwater(), cur = prof_process_rss_bytes();
    return hi > cur ? hi : cur;
}

char *prof_capture_print(void (*print)(FILE *f)) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return NULL;
    print(f);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

void prof_copy_name(char *dst, size_t n, const char *s) {
    if (!s) s = "";
    size_t len = strnlen(s, n - 1);
    memcpy(dst, s, len);
    dst[len] = 0;
}
