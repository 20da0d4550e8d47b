/* prof_sweep_child.c - runs one sweep trial as a child process: its own process group (so a
 * timeout or Ctrl-C can kill everything it started), stderr captured for the trial's message,
 * a wall-clock timeout, and the sweep's SIGINT/SIGTERM forwarded to it. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "prof_sweep_internal.h"

volatile sig_atomic_t g_sweep_stop;
static struct sigaction g_old_int, g_old_term;

static void on_stop_signal(int sig) { g_sweep_stop = sig; }

void sweep_install_signal_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal; /* no SA_RESTART: poll() returns EINTR at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &g_old_int);
    sigaction(SIGTERM, &sa, &g_old_term);
}

void sweep_restore_signal_handlers(void) {
    sigaction(SIGINT, &g_old_int, NULL);
    sigaction(SIGTERM, &g_old_term, NULL);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Keeps the last TAIL_BYTES bytes of the child's output; the last lines are cut at the end. */
#define TAIL_BYTES 16384
typedef struct {
    char buf[TAIL_BYTES];
    size_t len;
} Tail;

/* n <= TAIL_BYTES: the callers read in smaller chunks. */
static void tail_add(Tail *t, const char *s, size_t n) {
    if (t->len + n > TAIL_BYTES) {
        size_t drop = t->len + n - TAIL_BYTES;
        memmove(t->buf, t->buf + drop, t->len - drop);
        t->len -= drop;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
}

/* The last max_lines lines of the tail, without the trailing newline. */
static char *tail_lines(const Tail *t, int max_lines) {
    size_t end = t->len;
    while (end > 0 && (t->buf[end - 1] == '\n' || t->buf[end - 1] == '\r')) end--;
    size_t start = end;
    int lines = 0;
    while (start > 0) {
        if (t->buf[start - 1] == '\n' && ++lines == max_lines) break;
        start--;
    }
    char *s = malloc(end - start + 1);
    if (!s) return NULL;
    memcpy(s, t->buf + start, end - start);
    s[end - start] = 0;
    return s;
}

static int drain(int fd, Tail *t) {
    char chunk[4096];
    for (;;) {
        ssize_t got = read(fd, chunk, sizeof(chunk));
        if (got > 0) {
            tail_add(t, chunk, (size_t)got);
            continue;
        }
        if (got == 0) return 1; /* end of file */
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : 1;
    }
}

/* SIGTERM to the group (detr-train closes its run as 'interrupted'), SIGKILL after a grace. */
static void kill_group(int pid, int *status) {
    kill(-pid, SIGTERM);
    double deadline = now_s() + 3.0;
    while (now_s() < deadline) {
        if (waitpid(pid, status, WNOHANG) == pid) {
            kill(-pid, SIGKILL); /* anything it left behind in its group */
            return;
        }
        usleep(20000);
    }
    kill(-pid, SIGKILL);
    waitpid(pid, status, 0);
}

int sweep_run_child(char *const argv[], double timeout_s, int capture_stdout, ChildResult *r,
                    char *err, size_t errlen) {
    memset(r, 0, sizeof(*r));
    r->exit_code = -1;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "cannot create a pipe for the trial's stderr: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "cannot start %s: fork: %s", argv[0], strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) dup2(devnull, STDIN_FILENO);
        dup2(capture_stdout ? fds[1] : devnull, STDOUT_FILENO);
        dup2(fds[1], STDERR_FILENO);
        execv(argv[0], argv);
        fprintf(stderr, "error: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* also here: no race with the kill below */
    close(fds[1]);
    fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
    r->pid = pid;
    Tail *tail = calloc(1, sizeof(Tail));
    if (!tail) {
        snprintf(err, errlen, "out of memory");
        kill(-pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(fds[0]);
        return -1;
    }
    double deadline = now_s() + timeout_s;
    int status = 0, eof = 0, reaped = 0;
    while (!reaped) {
        if (!eof) {
            struct pollfd p = {.fd = fds[0], .events = POLLIN};
            if (poll(&p, 1, 100) > 0) eof = drain(fds[0], tail);
        } else {
            usleep(20000);
        }
        if (waitpid(pid, &status, WNOHANG) == pid) {
            reaped = 1;
            break;
        }
        if (g_sweep_stop) {
            r->interrupted = 1;
            kill_group(pid, &status);
            reaped = 1;
        } else if (now_s() > deadline) {
            r->timed_out = 1;
            kill_group(pid, &status);
            reaped = 1;
        }
    }
    if (!eof) drain(fds[0], tail); /* what it wrote just before exiting */
    close(fds[0]);
    if (WIFEXITED(status)) r->exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) r->term_signal = WTERMSIG(status);
    r->tail = tail_lines(tail, SWEEP_TAIL_LINES);
    free(tail);
    return 0;
}

void child_result_free(ChildResult *r) {
    free(r->tail);
    r->tail = NULL;
}
