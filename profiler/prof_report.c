/* prof_report.c - detr-prof report: one self-contained HTML file (no network access needed) from a
 * profile database. The document and the page come from prof_report_data.c; this file parses
 * the command line and writes the file atomically. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "detr_prof.h"
#include "prof_db.h"
#include "prof_report_data.h"

#define MAX_RUNS 16

static void usage(FILE *f) {
    fprintf(f,
            "usage: detr-prof report RUN.db [-o report.html] [--run ID ...] [--max-points N]\n"
            "Writes one self-contained HTML file (works offline) with the run summary, throughput,\n"
            "step-time breakdown by phase, memory, data loader, losses / learning rate / gradient norm,\n"
            "evaluation AP, batch-size sweeps and GPU kernels when the database has them.\n\n"
            "  -o, --output FILE   the HTML file (default: the database's name with .html)\n"
            "  --run ID            a run of DETR_RUNS (default: the newest); give it several times to\n"
            "                      compare runs side by side (at most %d)\n"
            "  --max-points N      points per series and run (default 1000): longer runs are averaged\n"
            "                      over buckets of consecutive steps, in SQL\n"
            "  -h, --help          this text\n\n"
            "Exit codes: 0 ok, 1 failure (cannot write the file), 2 bad usage or input.\n"
            "Details: docs/prof-report.md\n",
            MAX_RUNS);
}

/* RUN.db -> RUN.html (the database's extension replaced; added when it has none). */
static void default_output(const char *db_path, char *out, size_t n) {
    const char *slash = strrchr(db_path, '/');
    const char *dot = strrchr(db_path, '.');
    size_t stem = dot && (!slash || dot > slash + 1) ? (size_t)(dot - db_path) : strlen(db_path);
    snprintf(out, n, "%.*s.html", (int)stem, db_path);
}

/* Writes text to path through a temporary file in the same folder and a rename, so a reader
 * (a browser reloading the page) never sees half a file. Reports a failure on stderr. */
static int write_atomically(const char *path, const char *text) {
    size_t n = strlen(path) + 16;
    char *tmp = malloc(n);
    if (!tmp) {
        fprintf(stderr, "detr-prof report: out of memory\n");
        return -1;
    }
    snprintf(tmp, n, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        fprintf(stderr, "detr-prof report: cannot write %s: %s (choose another path with -o)\n", path, strerror(errno));
        free(tmp);
        return -1;
    }
    size_t len = strlen(text), done = 0;
    while (done < len) {
        ssize_t w = write(fd, text + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        done += (size_t)w;
    }
    int ok = done == len && fchmod(fd, 0644) == 0 && fsync(fd) == 0;
    int saved = errno;
    if (close(fd) != 0 && ok) ok = 0, saved = errno;
    if (ok && rename(tmp, path) != 0) ok = 0, saved = errno;
    if (!ok) {
        fprintf(stderr, "detr-prof report: cannot write %s: %s (choose another path with -o)\n", path, strerror(saved));
        unlink(tmp);
    }
    free(tmp);
    return ok ? 0 : -1;
}

static int parse_int64(const char *s, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

int prof_cmd_report(int argc, char **argv) {
    const char *db_path = NULL, *out_path = NULL;
    int64_t runs[MAX_RUNS];
    int n_runs = 0, max_points = 1000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            if (!has_value) goto missing_value;
            out_path = argv[++i];
        } else if (strcmp(a, "--run") == 0) {
            if (!has_value) goto missing_value;
            int64_t id;
            if (parse_int64(argv[++i], &id) != 0 || id <= 0) {
                fprintf(stderr, "detr-prof report: --run %s: expected a positive run id (DETR_RUNS.run_id)\n", argv[i]);
                return 2;
            }
            if (n_runs == MAX_RUNS) {
                fprintf(stderr, "detr-prof report: at most %d --run options\n", MAX_RUNS);
                return 2;
            }
            runs[n_runs++] = id;
        } else if (strcmp(a, "--max-points") == 0) {
            if (!has_value) goto missing_value;
            int64_t v;
            if (parse_int64(argv[++i], &v) != 0 || v < 10 || v > 1000000) {
                fprintf(stderr, "detr-prof report: --max-points %s: expected an integer from 10 to 1000000\n", argv[i]);
                return 2;
            }
            max_points = (int)v;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "detr-prof report: unknown option %s\n\n", a);
            usage(stderr);
            return 2;
        } else if (!db_path) {
            db_path = a;
        } else {
            fprintf(stderr, "detr-prof report: one database at a time (got %s and %s)\n", db_path, a);
            return 2;
        }
        continue;
    missing_value:
        fprintf(stderr, "detr-prof report: %s needs a value\n", a);
        return 2;
    }
    if (!db_path) {
        fprintf(stderr, "detr-prof report: which database? (detr-prof report RUN.db)\n\n");
        usage(stderr);
        return 2;
    }

    char err[512];
    sqlite3 *db = profdb_open_ro(db_path, err, sizeof(err));
    if (!db) {
        fprintf(stderr, "detr-prof report: %s\n", err);
        return 2;
    }
    for (int i = 0; i < n_runs; i++)
        if (!profdb_run_exists(db, runs[i])) {
            fprintf(stderr, "detr-prof report: %s: no run %lld (newest run: %lld; detr-prof summary %s lists them)\n",
                    db_path, (long long)runs[i], (long long)profdb_latest_run(db), db_path);
            sqlite3_close(db);
            return 2;
        }
    char *json = report_data_json(db, runs, n_runs, max_points, err, sizeof(err));
    sqlite3_close(db);
    if (!json) {
        fprintf(stderr, "detr-prof report: %s: %s\n", db_path, err);
        return 2;
    }
    char *html = report_html(json, NULL, err, sizeof(err));
    free(json);
    if (!html) {
        fprintf(stderr, "detr-prof report: %s\n", err);
        return 1;
    }
    char default_path[4096];
    if (!out_path) {
        default_output(db_path, default_path, sizeof(default_path));
        out_path = default_path;
    }
    int rc = write_atomically(out_path, html);
    size_t size = strlen(html);
    free(html);
    if (rc != 0) return 1;
    printf("report: %s (%.1f KiB)\n", out_path, (double)size / 1024.0);
    return 0;
}
