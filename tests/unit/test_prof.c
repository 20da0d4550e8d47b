/* test_prof.c - the profiler (profiler/prof.h): schema creation and versioning, many runs in one
 * file, every record type round-tripping to its table, the nsys nvtx_sum report's SQL on our
 * file, queue overflow counted with a tiny queue, write failures reported by prof_close, ranges
 * from several threads, a writer killed with SIGKILL at random moments leaving a valid
 * database, unwritable paths refused by prof_open, and the cost per step of the recording calls.
 * Meant to pass under AddressSanitizer/UBSan and ThreadSanitizer too (the writer thread). */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "check.h"
#include "test_nsys_agg.h"
#include "prof.h"

static char g_dir[256];

static void path_in_dir(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", g_dir, name);
}

static void remove_db(const char *path) {
    char p[600];
    unlink(path);
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
}

static ProfRunInfo test_info(const char *cmd) {
    ProfRunInfo in = {0};
    in.command_line = cmd;
    in.git_revision = "0123456789abcdef0123456789abcdef01234567";
    in.device = "cpu";
    in.library_versions = "sqlite 3.x\nopenblas 0.3\n";
    in.config_json = "{\"preset\":\"tiny\",\"batch\":2}";
    in.peak_flops = 1e11;
    return in;
}

/* ---------------------------------------------------------------- sqlite helpers */

static sqlite3 *open_ro(const char *path) {
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

/* First column of the first row as int64; LLONG_MIN on error or no row, -1 for NULL. */
static int64_t q_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *s;
    int64_t v = INT64_MIN;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) {
        printf("  sql error: %s in %s\n", sqlite3_errmsg(db), sql);
        return v;
    }
    if (sqlite3_step(s) == SQLITE_ROW)
        v = sqlite3_column_type(s, 0) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

static double q_real(sqlite3 *db, const char *sql) {
    sqlite3_stmt *s;
    double v = NAN;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) {
        printf("  sql error: %s in %s\n", sqlite3_errmsg(db), sql);
        return v;
    }
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
        v = sqlite3_column_double(s, 0);
    sqlite3_finalize(s);
    return v;
}

static void q_text(sqlite3 *db, const char *sql, char *out, size_t n) {
    sqlite3_stmt *s;
    out[0] = 0;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) {
        printf("  sql error: %s in %s\n", sqlite3_errmsg(db), sql);
        return;
    }
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
        snprintf(out, n, "%s", (const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
}

static int64_t q_intf(sqlite3 *db, const char *fmt, long long a) {
    char sql[1024];
    snprintf(sql, sizeof(sql), fmt, a);
    return q_int(db, sql);
}

static double q_realf(sqlite3 *db, const char *fmt, long long a) {
    char sql[1024];
    snprintf(sql, sizeof(sql), fmt, a);
    return q_real(db, sql);
}

static int integrity_ok(sqlite3 *db) {
    char r[256];
    q_text(db, "PRAGMA integrity_check", r, sizeof(r));
    return strcmp(r, "ok") == 0;
}

/* ---------------------------------------------------------------- records used below */

static void fill_step(ProfStepRecord *r, int64_t step, int n_losses) {
    prof_step_record_init(r);
    r->step = step;
    r->images = 4;
    r->loss = 10.0 - 0.01 * (double)step;
    r->lr = 1e-4;
    r->lr_backbone = 1e-5;
    r->grad_norm = 0.5;
    r->flops = 2e9;
    r->data_wait_ns = 1000;
    r->h2d_ns = 0;
    r->padded_fraction = 0.25;
    char name[PROF_NAME_LEN];
    for (int i = 0; i < n_losses; i++) {
        snprintf(name, sizeof(name), "loss_term_%d", i);
        prof_step_add_loss(r, name, (double)i + 0.5);
    }
    prof_step_add_memory(r, "params", 1000, 1000);
    prof_step_add_memory(r, "acts", 5000, 9000);
}

/* Sleeps for ns nanoseconds. */
static void nap_ns(long ns) {
    struct timespec t = {ns / 1000000000L, ns % 1000000000L};
    nanosleep(&t, NULL);
}

/* ---------------------------------------------------------------- schema and versioning */

static const char *const expected_tables[] = {
    "StringIds", "META_DATA_EXPORT", "ENUM_NSYS_EVENT_TYPE", "NVTX_EVENTS",
    "TARGET_INFO_SYSTEM_ENV", "TARGET_INFO_SESSION_START_TIME", "ANALYSIS_DETAILS", "PROCESSES",
    "ThreadNames", "DETR_RUNS", "DETR_STEPS", "DETR_LOSSES", "DETR_PHASES", "DETR_MEMORY",
    "DETR_LOADER", "DETR_EVAL", "DETR_EVAL_CATEGORIES"};

static void test_schema_creation(void) {
    char path[512], err[1024];
    path_in_dir(path, sizeof(path), "schema.sqlite");
    ProfRunInfo in = test_info("detr-train --profile");
    Prof *p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
    CHECK("open creates a new database", p != NULL, "%s", err);
    if (!p) return;
    CHECK("first run id is 1", prof_run_id(p) == 1, "run id %lld", (long long)prof_run_id(p));
    CHECK("close", prof_close(p, 0, err, sizeof(err)) == 0, "%s", err);
    sqlite3 *db = open_ro(path);
    CHECK("user_version", q_int(db, "PRAGMA user_version") == PROF_SCHEMA_VERSION, "%lld",
          (long long)q_int(db, "PRAGMA user_version"));
    char mode[32];
    q_text(db, "PRAGMA journal_mode", mode, sizeof(mode));
    CHECK("WAL mode persists in the file", strcmp(mode, "wal") == 0, "journal_mode %s", mode);
    int missing = 0;
    for (size_t i = 0; i < sizeof(expected_tables) / sizeof(expected_tables[0]); i++) {
        char sql[256];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM sqlite_master WHERE type IN ('table', "
                 "'view') AND name='%s'", expected_tables[i]);
        if (q_int(db, sql) != 1) {
            printf("  missing table %s\n", expected_tables[i]);
            missing++;
        }
    }
    CHECK("every table (and the DETR_LOSSES view) exists", missing == 0, "%d missing", missing);
    CHECK("TARGET_INFO_GPU absent on a CPU run (nsys creates tables lazily)",
          q_int(db, "SELECT count(*) FROM sqlite_master WHERE name='TARGET_INFO_GPU'") == 0, "");
    CHECK("ENUM_NSYS_EVENT_TYPE 59", q_int(db, "SELECT count(*) FROM ENUM_NSYS_EVENT_TYPE WHERE "
                                               "id=59 AND name='NvtxPushPopRange'") == 1, "");
    char v[256];
    q_text(db, "SELECT value FROM META_DATA_EXPORT WHERE name='EXPORT_SCHEMA_VERSION'", v, sizeof(v));
    CHECK("META_DATA_EXPORT has EXPORT_SCHEMA_VERSION", v[0] != 0, "");
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    q_text(db, "SELECT value FROM TARGET_INFO_SYSTEM_ENV WHERE name='Hostname'", v, sizeof(v));
    CHECK("TARGET_INFO_SYSTEM_ENV Hostname", strncmp(v, host, sizeof(v) - 1) == 0, "'%s' vs '%s'", v, host);
    CHECK("TARGET_INFO_SYSTEM_ENV CpuCores",
          q_int(db, "SELECT CAST(value AS INTEGER) FROM TARGET_INFO_SYSTEM_ENV WHERE "
                    "name='CpuCores'") == sysconf(_SC_NPROCESSORS_ONLN), "");
    q_text(db, "SELECT git_revision || '|' || config_json || '|' || status || '|' || level FROM "
               "DETR_RUNS WHERE run_id=1", v, sizeof(v));
    CHECK("run row: revision, config, status, level",
          strcmp(v, "0123456789abcdef0123456789abcdef01234567|{\"preset\":\"tiny\",\"batch\":2}|ok|"
                    "basic") == 0, "%s", v);
    CHECK("run row: cpu model filled",
          q_int(db, "SELECT length(cpu_model) > 0 AND cpu_cores > 0 FROM DETR_RUNS") == 1, "");
    CHECK("domain-create row (eventType 75, text 'detr', domainId 1)",
          q_int(db, "SELECT count(*) FROM NVTX_EVENTS ne JOIN StringIds s ON ne.textId = s.id "
                    "WHERE eventType = 75 AND domainId = 1 AND s.value = 'detr' AND "
                    "text = 'detr'") == 1, "");
    CHECK("ANALYSIS_DETAILS window closed", q_int(db, "SELECT stopTime >= startTime AND duration "
                                                      "= stopTime - startTime FROM "
                                                      "ANALYSIS_DETAILS WHERE globalVid=1") == 1, "");
    CHECK("PROCESSES row with pid", q_intf(db, "SELECT count(*) FROM PROCESSES WHERE pid=%lld AND "
                                               "globalPid = pid << 24", getpid()) == 1, "");
    CHECK("integrity", integrity_ok(db), "");
    sqlite3_close(db);
}

static void make_db_with_version(const char *path, int version, int with_table) {
    remove_db(path);
    sqlite3 *db = NULL;
    sqlite3_open(path, &db);
    if (with_table) sqlite3_exec(db, "CREATE TABLE other (x)", NULL, NULL, NULL);
    char sql[64];
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", version);
    sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
}

static void test_versioning(void) {
    char path[512], err[1024] = "";
    ProfRunInfo in = test_info("detr-train");
    path_in_dir(path, sizeof(path), "newer.sqlite");
    make_db_with_version(path, PROF_SCHEMA_VERSION + 1, 1);
    Prof *p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
    CHECK("a newer schema version is refused", p == NULL && strstr(err, "newer") &&
          strstr(err, path) && strstr(err, "HINT"), "%s", err);
    prof_close(p, 0, err, sizeof(err));
    sqlite3 *db = open_ro(path);
    CHECK("... and the file is left as it was",
          q_int(db, "PRAGMA user_version") == PROF_SCHEMA_VERSION + 1 &&
          q_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'DETR_RUNS'") == 0, "");
    sqlite3_close(db);

    path_in_dir(path, sizeof(path), "foreign.sqlite");
    make_db_with_version(path, 0, 1);
    p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
    CHECK("a foreign database (tables, version 0) is refused",
          p == NULL && strstr(err, "not a detr profile"), "%s", err);
    prof_close(p, 0, err, sizeof(err));

    path_in_dir(path, sizeof(path), "notsqlite.sqlite");
    FILE *f = fopen(path, "w");
    fputs("this is not a database, just some text long enough to fill a header........\n", f);
    fclose(f);
    p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
    CHECK("a non-SQLite file is refused", p == NULL && strstr(err, path), "%s", err);
    prof_close(p, 0, err, sizeof(err));

    path_in_dir(path, sizeof(path), "same.sqlite");
    p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
    prof_close(p, 0, err, sizeof(err));
    p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
    CHECK("the same version opens again", p != NULL && prof_run_id(p) == 2, "%s", err);
    prof_close(p, 0, err, sizeof(err));
}

/* chattr +i / -i: even root cannot write an immutable file or create files in an immutable
 * folder. Returns -1 where the file system or the process's capabilities do not allow it. */
static int set_immutable(const char *path, int on) {
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) return -1;
    int flags = 0, rc = ioctl(fd, FS_IOC_GETFLAGS, &flags);
    if (rc == 0) {
        flags = on ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
        rc = ioctl(fd, FS_IOC_SETFLAGS, &flags);
    }
    close(fd);
    return rc == 0 ? 0 : -1;
}

static void test_unwritable_paths(void) {
    char err[1024] = "";
    ProfRunInfo in = test_info("detr-train");
    const char *bad[] = {"/proc/detr-prof-test.sqlite", "/etc/hostname/under-a-file.sqlite",
                         "/nonexistent-folder-detr/x.sqlite"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        Prof *p = prof_open(bad[i], &in, PROF_BASIC, err, sizeof(err));
        char name[128];
        snprintf(name, sizeof(name), "unwritable path refused: %s", bad[i]);
        CHECK(name, p == NULL && strstr(err, bad[i]) && strstr(err, "--db"), "%s", err);
        prof_close(p, 0, err, sizeof(err));
    }
    Prof *p = prof_open("", &in, PROF_BASIC, err, sizeof(err));
    CHECK("empty path refused", p == NULL && err[0], "%s", err);

    /* read-only file and folder: permission bits, or for root (whom they do not stop) the
     * immutable attribute */
    char path[512], dir[400];
    path_in_dir(path, sizeof(path), "readonly.sqlite");
    p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
    prof_close(p, 0, err, sizeof(err));
    path_in_dir(dir, sizeof(dir), "rodir");
    mkdir(dir, 0755);
    int root = geteuid() == 0;
    int locked = root ? set_immutable(path, 1) == 0 && set_immutable(dir, 1) == 0
                      : chmod(path, 0444) == 0 && chmod(dir, 0555) == 0;
    if (!locked) {
        test_skip("read-only file refused", "cannot make a file read-only here (root on a file "
                  "system without the immutable attribute)");
        test_skip("read-only folder refused", "same");
    } else {
        p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
        CHECK("read-only file refused", p == NULL && strstr(err, path) && strstr(err, "--db"),
              "%s", err);
        prof_close(p, 0, err, sizeof(err));
        char inside[512];
        snprintf(inside, sizeof(inside), "%s/x.sqlite", dir);
        p = prof_open(inside, &in, PROF_BASIC, err, sizeof(err));
        CHECK("read-only folder refused", p == NULL && strstr(err, inside) && strstr(err, "--db"),
              "%s", err);
        prof_close(p, 0, err, sizeof(err));
    }
    if (root) {
        set_immutable(path, 0);
        set_immutable(dir, 0);
    } else {
        chmod(path, 0644);
        chmod(dir, 0755);
    }
    rmdir(dir);
}

/* ---------------------------------------------------------------- round trip */

static void test_round_trip(void) {
    char path[512], err[1024];
    path_in_dir(path, sizeof(path), "roundtrip.sqlite");
    ProfRunInfo in = test_info("detr-train --profile=trace");
    in.gpu = "Test GPU";
    Prof *p = prof_open(path, &in, PROF_TRACE, err, sizeof(err));
    CHECK("open (trace)", p != NULL, "%s", err);
    if (!p) return;
    const int steps = 5, n_losses = 31;
    for (int s = 0; s < steps; s++) {
        prof_step_begin(p, s, s / 2);
        prof_range_push(p, PROF_PHASE_DATA_WAIT);
        prof_range_pop(p);
        prof_range_push(p, PROF_PHASE_BACKBONE);
        prof_range_push_text(p, "layer1");
        nap_ns(100000);
        prof_range_pop(p);
        prof_range_pop(p);
        prof_range_record(p, PROF_PHASE_MATCHER, 1000, 1000 + 5000 * (s + 1));
        ProfStepRecord r;
        fill_step(&r, -1, n_losses); /* step / epoch from prof_step_begin */
        r.step = -1;
        prof_step_end(p, &r);
        ProfLoaderRecord lr;
        prof_loader_record_init(&lr);
        lr.wait_ns = 111;
        lr.read_ns = 222;
        lr.decode_ns = 333;
        lr.augment_ns = 444;
        lr.collate_ns = 555;
        lr.bytes_read = 12345;
        lr.queue_depth = 2;
        lr.padded_fraction = 0.125;
        lr.skipped = 1;
        lr.dropped_boxes = 3;
        prof_loader(p, &lr);
    }
    ProfCategoryAP cats[3] = {{1, 0.5}, {2, 0.25}, {7, -1}};
    ProfEvalRecord ev = {.step = -1, .epoch = -1, .duration_ns = 5000000, .images = 10,
                         .n_categories = 3, .per_category = cats};
    for (int i = 0; i < 12; i++) ev.stats[i] = 0.01 * (i + 1);
    CHECK("prof_eval queued", prof_eval(p, &ev) == 0, "");
    ProfGpuInfo g;
    memset(&g, 0, sizeof(g));
    g.id = 0;
    snprintf(g.name, sizeof(g.name), "Test GPU");
    snprintf(g.uuid, sizeof(g.uuid), "GPU-1234");
    g.total_memory = 80LL << 30;
    g.sm_count = 132;
    g.compute_major = 9;
    g.compute_minor = 0;
    CHECK("prof_gpu_info queued", prof_gpu_info(p, &g) == 0, "");
    ProfCounters c = prof_counters(p);
    int64_t run = prof_run_id(p);
    CHECK("close", prof_close(p, 0, err, sizeof(err)) == 0, "%s", err);
    CHECK("nothing dropped", c.dropped == 0 && c.range_errors == 0, "dropped %lld errors %lld",
          (long long)c.dropped, (long long)c.range_errors);

    sqlite3 *db = open_ro(path);
    CHECK("steps", q_intf(db, "SELECT count(*) FROM DETR_STEPS WHERE run_id=%lld", run) == steps, "");
    CHECK("step numbers and epochs from prof_step_begin",
          q_intf(db, "SELECT sum(step) * 100 + sum(epoch) FROM DETR_STEPS WHERE run_id=%lld", run) ==
              (0 + 1 + 2 + 3 + 4) * 100 + (0 + 0 + 1 + 1 + 2), "");
    CHECK("step wall = end - start > 100 us",
          q_intf(db, "SELECT min(wall_ns = end_ns - start_ns AND wall_ns > 100000) FROM "
                     "DETR_STEPS WHERE run_id=%lld", run) == 1, "");
    double ips = q_realf(db, "SELECT avg(abs(images_per_s - images / (wall_ns * 1e-9)) / "
                             "images_per_s) FROM DETR_STEPS WHERE run_id=%lld", run);
    CHECK("images/s = images / wall", ips < 1e-9, "rel err %g", ips);
    double mfu = q_realf(db, "SELECT avg(abs(mfu - flops / (wall_ns * 1e-9) / 1e11) / mfu) FROM "
                             "DETR_STEPS WHERE run_id=%lld", run);
    CHECK("MFU = flops / wall / peak", mfu < 1e-9, "rel err %g", mfu);
    CHECK("step fields",
          q_intf(db, "SELECT count(*) FROM DETR_STEPS WHERE run_id=%lld AND images=4 AND "
                     "lr=1e-4 AND lr_backbone=1e-5 AND grad_norm=0.5 AND data_wait_ns=1000 AND "
                     "h2d_ns=0 AND padded_fraction=0.25 AND flops=2e9 AND loss > 9.9", run) ==
              steps, "");
    CHECK("every loss term", q_intf(db, "SELECT count(*) FROM DETR_LOSSES WHERE run_id=%lld", run) ==
                                 steps * n_losses, "");
    CHECK("loss value", q_realf(db, "SELECT value FROM DETR_LOSSES WHERE run_id=%lld AND step=3 "
                                    "AND name='loss_term_30'", run) == 30.5, "");
    CHECK("memory rows (2 categories + process_rss)",
          q_intf(db, "SELECT count(*) FROM DETR_MEMORY WHERE run_id=%lld", run) == steps * 3, "");
    CHECK("memory peak", q_intf(db, "SELECT peak_bytes FROM DETR_MEMORY WHERE run_id=%lld AND "
                                    "step=2 AND category='acts'", run) == 9000, "");
    CHECK("process RSS and peak RSS > 1 MiB",
          q_intf(db, "SELECT min(current_bytes > 1048576 AND peak_bytes >= current_bytes) FROM "
                     "DETR_MEMORY WHERE run_id=%lld AND category='process_rss'", run) == 1, "");
    CHECK("loader rows", q_intf(db, "SELECT count(*) FROM DETR_LOADER WHERE run_id=%lld AND "
                                    "wait_ns=111 AND read_ns=222 AND decode_ns=333 AND "
                                    "augment_ns=444 AND collate_ns=555 AND bytes_read=12345 AND "
                                    "queue_depth=2 AND padded_fraction=0.125 AND skipped=1 AND "
                                    "dropped_boxes=3", run) == steps, "");
    CHECK("eval row", q_intf(db, "SELECT count(*) FROM DETR_EVAL WHERE run_id=%lld AND step=4 AND "
                                 "epoch=2 AND images=10 AND duration_ns=5000000 AND ap=0.01 AND "
                                 "ar_large=0.12", run) == 1, "");
    CHECK("per-category AP", q_intf(db, "SELECT count(*) FROM DETR_EVAL_CATEGORIES c JOIN "
                                        "DETR_EVAL e USING (eval_id) WHERE e.run_id=%lld AND "
                                        "((category_id=1 AND c.ap=0.5) OR (category_id=2 AND "
                                        "c.ap=0.25) OR (category_id=7 AND c.ap=-1))", run) == 3, "");
    CHECK("TARGET_INFO_GPU row", q_intf(db, "SELECT count(*) FROM TARGET_INFO_GPU WHERE vmId=%lld "
                                            "AND name='Test GPU' AND smCount=132 AND "
                                            "computeMajor=9 AND totalMemory=85899345920", run) == 1,
          "");
    /* phases: per step data_wait, backbone, layer1 (trace level), matcher, step = 5 ranges */
    CHECK("phase rows", q_intf(db, "SELECT count(*) FROM DETR_PHASES WHERE run_id=%lld", run) ==
                            steps * 5, "%lld", (long long)q_intf(db, "SELECT count(*) FROM "
                                                                     "DETR_PHASES WHERE run_id=%lld", run));
    CHECK("text range recorded at trace level, nested under backbone (depth 2)",
          q_intf(db, "SELECT count(*) FROM DETR_PHASES ph JOIN StringIds s ON ph.name_id = s.id "
                     "WHERE run_id=%lld AND s.value='layer1' AND depth=2 AND duration_ns >= "
                     "100000", run) == steps, "");
    CHECK("explicit range kept its times", q_intf(db, "SELECT count(*) FROM DETR_PHASES ph JOIN "
                                                      "StringIds s ON ph.name_id = s.id WHERE "
                                                      "run_id=%lld AND s.value='matcher' AND "
                                                      "start_ns=1000 AND duration_ns=15000", run) ==
                                               1, "");
    CHECK("phase ranges lie inside their step",
          q_intf(db, "SELECT count(*) FROM DETR_PHASES ph JOIN DETR_STEPS st USING (run_id, step) "
                     "JOIN StringIds s ON ph.name_id = s.id WHERE run_id=%lld AND s.value IN "
                     "('data_wait','backbone','step') AND ph.start_ns >= st.start_ns AND "
                     "ph.start_ns + ph.duration_ns <= st.end_ns", run) == steps * 3, "");
    CHECK("one NVTX_EVENTS row (eventType 59, domain 1) per range",
          q_int(db, "SELECT count(*) FROM NVTX_EVENTS WHERE eventType=59 AND domainId=1 AND "
                    "textId IS NOT NULL AND \"end\" >= start") == steps * 5, "");
    CHECK("NVTX globalTid = (pid << 24) | tid of this thread",
          q_intf(db, "SELECT count(DISTINCT globalTid) = 1 AND min(globalTid >> 24) = %lld FROM "
                     "NVTX_EVENTS WHERE eventType=59", getpid()) == 1, "");
    CHECK("NVTX text and textId agree",
          q_int(db, "SELECT count(*) FROM NVTX_EVENTS ne JOIN StringIds s ON ne.textId = s.id "
                    "WHERE eventType = 59 AND ne.text <> s.value") == 0, "");
    CHECK("run counters", q_intf(db, "SELECT records_written = %lld AND dropped_records = 0 AND "
                                     "end_ns > start_ns AND status = 'ok' AND exit_code = 0 FROM "
                                     "DETR_RUNS", c.enqueued) == 1,
          "enqueued %lld", (long long)c.enqueued);
    sqlite3_close(db);
}

/* Basic level keeps phase ranges, drops free-text ones; NVTX-only calls on NULL are safe. */
static void test_levels_and_misuse(void) {
    char path[512], err[1024];
    path_in_dir(path, sizeof(path), "basic.sqlite");
    ProfRunInfo in = test_info("detr-train --profile");
    Prof *p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
    if (!p) {
        CHECK("open", 0, "%s", err);
        return;
    }
    prof_step_begin(p, 0, 0);
    prof_range_push(p, PROF_PHASE_ENCODER);
    prof_range_push_text(p, "not kept at basic");
    prof_range_pop(p);
    prof_range_pop(p);
    ProfStepRecord r;
    fill_step(&r, 0, 1);
    prof_step_end(p, &r);
    /* misuse, counted and harmless */
    prof_range_pop(p);                      /* nothing pushed */
    prof_step_end(p, &r);                   /* no prof_step_begin */
    prof_range_record(p, PROF_PHASE_LOSS, 10, 5); /* ends before it starts */
    for (int i = 0; i < 70; i++) prof_range_push(p, PROF_PHASE_HEADS); /* beyond the stack */
    for (int i = 0; i < 70; i++) prof_range_pop(p);
    /* a NULL profiler: only NVTX (compiled out here) */
    prof_step_begin(NULL, 1, 0);
    prof_range_push(NULL, PROF_PHASE_BACKWARD);
    prof_range_pop(NULL);
    prof_step_end(NULL, &r);
    prof_loader(NULL, NULL);
    CHECK("NULL profiler calls", prof_eval(NULL, NULL) == 0 && prof_close(NULL, 0, err, 1) == 0 &&
                                     prof_run_id(NULL) == -1, "");
    ProfCounters c = prof_counters(p);
    CHECK("misuse counted as range errors (pop, step_end, bad record, 6 overflowed pushes)",
          c.range_errors == 9, "range_errors %lld", (long long)c.range_errors);
    CHECK("close", prof_close(p, 143, err, sizeof(err)) == 0, "%s", err);
    sqlite3 *db = open_ro(path);
    CHECK("free-text range not recorded at basic",
          q_int(db, "SELECT count(*) FROM DETR_PHASES ph JOIN StringIds s ON ph.name_id = s.id "
                    "WHERE s.value = 'not kept at basic'") == 0, "");
    CHECK("phase range recorded at basic",
          q_int(db, "SELECT count(*) FROM DETR_PHASES ph JOIN StringIds s ON ph.name_id = s.id "
                    "WHERE s.value = 'encoder' AND depth = 1") == 1, "");
    CHECK("64 nested ranges recorded", q_int(db, "SELECT count(*) FROM DETR_PHASES ph JOIN "
                                                 "StringIds s ON ph.name_id = s.id WHERE s.value "
                                                 "= 'heads'") == 64, "");
    CHECK("exit 143 -> status interrupted, range errors stored",
          q_int(db, "SELECT status = 'interrupted' AND range_errors = 9 FROM DETR_RUNS") == 1, "");
    sqlite3_close(db);
}

/* ---------------------------------------------------------------- many runs, nvtx_sum */

/* The nvtx_sum report (nsys stats --report nvtx_sum) as SQL: push/pop (59, NVTXT 70) and
 * start/end (60, 71) ranges, named "<domain>:<range>" through the domain-create rows (75) of
 * the same process (globalTid's pid bits), unterminated ranges clipped to the last timestamp,
 * summed per (range, style) with the median/stdev aggregates the report registers. Columns and
 * unit suffixes as the report prints them. */
static const char *const nvtx_sum_sql =
    "WITH\n"
    "  domains AS (\n"
    "    SELECT min(ne.start), ne.domainId AS id, ne.globalTid AS globalTid,\n"
    "           coalesce(sid.value, ne.text) AS name\n"
    "    FROM NVTX_EVENTS AS ne LEFT JOIN StringIds AS sid ON ne.textId = sid.id\n"
    "    WHERE ne.eventType = 75\n"
    "    GROUP BY 2, 3),\n"
    "  maxts AS (SELECT max(max(start), max(end)) AS m FROM NVTX_EVENTS),\n"
    "  nvtx AS (\n"
    "    SELECT coalesce(ne.end, (SELECT m FROM maxts)) - ne.start AS duration,\n"
    "           CASE WHEN ne.eventType IN (59, 70) THEN 'PushPop' ELSE 'StartEnd' END AS style,\n"
    "           coalesce(d.name || ':', '') || coalesce(sid.value, ne.text, '') AS tag\n"
    "    FROM NVTX_EVENTS AS ne\n"
    "    LEFT JOIN domains AS d ON ne.domainId = d.id\n"
    "         AND (ne.globalTid & 0x0000FFFFFF000000) = (d.globalTid & 0x0000FFFFFF000000)\n"
    "    LEFT JOIN StringIds AS sid ON ne.textId = sid.id\n"
    "    WHERE ne.eventType IN (59, 60, 70, 71)),\n"
    "  summary AS (\n"
    "    SELECT tag AS name, style, sum(duration) AS total, count(*) AS num,\n"
    "           avg(duration) AS avg, median(duration) AS med, min(duration) AS min,\n"
    "           max(duration) AS max, stdev(duration) AS stddev\n"
    "    FROM nvtx GROUP BY 1, 2),\n"
    "  totals AS (SELECT sum(total) AS total FROM summary)\n"
    "SELECT round(total * 100.0 / (SELECT total FROM totals), 1) AS \"Time:ratio_%\",\n"
    "       total AS \"Total Time:dur_ns\", num AS \"Instances\", round(avg, 1) AS \"Avg:dur_ns\",\n"
    "       round(med, 1) AS \"Med:dur_ns\", min AS \"Min:dur_ns\", max AS \"Max:dur_ns\",\n"
    "       round(stddev, 1) AS \"StdDev:dur_ns\", style AS \"Style\", name AS \"Range\"\n"
    "FROM summary ORDER BY 2 DESC";

typedef struct {
    double ratio, total, instances, avg, med, min, max, stddev;
    char style[16], range[64];
} NvtxSumRow;

static int run_nvtx_sum(const char *path, NvtxSumRow *rows, int max_rows) {
    sqlite3 *db = open_ro(path);
    if (!db) return -1;
    db_register_median_stdev(db); /* as nsysstats does */
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, nvtx_sum_sql, -1, &s, NULL) != SQLITE_OK) {
        printf("  nvtx_sum: %s\n", sqlite3_errmsg(db));
        sqlite3_close(db);
        return -1;
    }
    int n = 0;
    printf("  nvtx_sum of %s:\n  %8s %12s %9s %12s %12s %12s %12s %12s  %-7s %s\n", path, "Time(%)",
           "Total(ns)", "Instances", "Avg(ns)", "Med(ns)", "Min(ns)", "Max(ns)", "StdDev(ns)",
           "Style", "Range");
    while (sqlite3_step(s) == SQLITE_ROW && n < max_rows) {
        NvtxSumRow *r = &rows[n++];
        double *num[] = {&r->ratio, &r->total, &r->instances, &r->avg, &r->med, &r->min, &r->max,
                         &r->stddev};
        for (int i = 0; i < 8; i++) *num[i] = sqlite3_column_double(s, i);
        snprintf(r->style, sizeof(r->style), "%s", (const char *)sqlite3_column_text(s, 8));
        snprintf(r->range, sizeof(r->range), "%s", (const char *)sqlite3_column_text(s, 9));
        printf("  %8.1f %12.0f %9.0f %12.1f %12.1f %12.0f %12.0f %12.1f  %-7s %s\n", r->ratio,
               r->total, r->instances, r->avg, r->med, r->min, r->max, r->stddev, r->style,
               r->range);
    }
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}

static const NvtxSumRow *find_row(const NvtxSumRow *rows, int n, const char *range) {
    for (int i = 0; i < n; i++)
        if (strcmp(rows[i].range, range) == 0) return &rows[i];
    return NULL;
}

/* Ranges with known durations: backbone 10/20/30/40 ms, encoder 5 ms x 3, plus real push/pop
 * step ranges. */
static int record_known_ranges(const char *path, int64_t *step_total_ns) {
    char err[1024];
    ProfRunInfo in = test_info("detr-train");
    Prof *p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
    if (!p) {
        printf("  %s\n", err);
        return -1;
    }
    int64_t t0 = 1700000000000000000LL;
    for (int i = 0; i < 4; i++)
        prof_range_record(p, PROF_PHASE_BACKBONE, t0 + i * 100000000LL,
                          t0 + i * 100000000LL + (i + 1) * 10000000LL);
    for (int i = 0; i < 3; i++)
        prof_range_record(p, PROF_PHASE_ENCODER, t0 + i * 10000000LL, t0 + i * 10000000LL + 5000000);
    *step_total_ns = 0;
    for (int s = 0; s < 2; s++) {
        prof_step_begin(p, s, 0);
        nap_ns(200000);
        ProfStepRecord r;
        fill_step(&r, s, 0);
        prof_step_end(p, &r);
    }
    int rc = prof_close(p, 0, err, sizeof(err));
    sqlite3 *db = open_ro(path);
    *step_total_ns = q_int(db, "SELECT sum(wall_ns) FROM DETR_STEPS WHERE run_id = "
                               "(SELECT max(run_id) FROM DETR_RUNS)");
    sqlite3_close(db);
    return rc;
}

static void test_nvtx_sum(void) {
    char path[512];
    path_in_dir(path, sizeof(path), "nvtx_sum.sqlite");
    int64_t step_ns = 0;
    if (record_known_ranges(path, &step_ns) != 0) {
        CHECK("record ranges", 0, "");
        return;
    }
    NvtxSumRow rows[16];
    int n = run_nvtx_sum(path, rows, 16);
    CHECK("nvtx_sum runs on our file: 3 ranges", n == 3, "%d rows", n);
    if (n < 0) return;
    const NvtxSumRow *bb = find_row(rows, n, "detr:backbone");
    CHECK("detr:backbone first (largest total), PushPop",
          bb == &rows[0] && strcmp(bb->style, "PushPop") == 0, "");
    if (bb)
        CHECK("detr:backbone total/instances/avg/med/min/max/stddev",
              bb->total == 100e6 && bb->instances == 4 && bb->avg == 25e6 && bb->med == 25e6 &&
                  bb->min == 10e6 && bb->max == 40e6 && fabs(bb->stddev - 12909944.5) < 1.0,
              "total %.0f n %.0f avg %.1f med %.1f min %.0f max %.0f sd %.1f", bb->total,
              bb->instances, bb->avg, bb->med, bb->min, bb->max, bb->stddev);
    const NvtxSumRow *enc = find_row(rows, n, "detr:encoder");
    CHECK("detr:encoder 3 x 5 ms, stddev 0", enc && enc->total == 15e6 && enc->instances == 3 &&
                                                 enc->med == 5e6 && enc->stddev == 0, "");
    const NvtxSumRow *st = find_row(rows, n, "detr:step");
    CHECK("detr:step = the steps' wall time", st && st->instances == 2 && st->total == step_ns,
          "%.0f vs %lld", st ? st->total : -1, (long long)step_ns);
    double pct = 0;
    for (int i = 0; i < n; i++) pct += rows[i].ratio;
    CHECK("Time(%) adds up to 100", fabs(pct - 100.0) <= 0.15, "%.2f", pct);

    /* a second run (same process) in the same file: counts double, nothing counted twice more */
    int64_t step_ns2 = 0;
    record_known_ranges(path, &step_ns2);
    n = run_nvtx_sum(path, rows, 16);
    bb = find_row(rows, n, "detr:backbone");
    CHECK("two runs in one file: 8 backbone instances (one domain row per process)",
          n == 3 && bb && bb->instances == 8 && bb->total == 200e6, "");
}

static void test_many_runs(void) {
    char path[512], err[1024];
    path_in_dir(path, sizeof(path), "many.sqlite");
    const int runs = 4;
    for (int k = 0; k < runs; k++) {
        ProfRunInfo in = test_info("detr-train");
        Prof *p = prof_open(path, &in, k % 2 ? PROF_TRACE : PROF_BASIC, err, sizeof(err));
        if (!p) {
            CHECK("open run", 0, "%s", err);
            return;
        }
        for (int s = 0; s <= k; s++) {
            prof_step_begin(p, s, 0);
            prof_range_push(p, PROF_PHASE_OPTIMIZER);
            prof_range_pop(p);
            ProfStepRecord r;
            fill_step(&r, s, 2);
            prof_step_end(p, &r);
        }
        prof_close(p, 0, err, sizeof(err));
    }
    sqlite3 *db = open_ro(path);
    CHECK("one run row per run, ids 1..4",
          q_int(db, "SELECT count(*) * 100 + sum(run_id) FROM DETR_RUNS") == runs * 100 + 10, "");
    CHECK("steps per run = run id", q_int(db, "SELECT count(*) FROM (SELECT run_id, count(*) AS n "
                                              "FROM DETR_STEPS GROUP BY run_id) WHERE n = "
                                              "run_id") == runs, "");
    CHECK("losses carry their run id", q_int(db, "SELECT count(*) FROM DETR_LOSSES l LEFT JOIN "
                                                 "DETR_STEPS s USING (run_id, step) WHERE "
                                                 "s.step IS NULL") == 0, "");
    CHECK("phase names interned once", q_int(db, "SELECT count(*) FROM StringIds WHERE value = "
                                                 "'optimizer'") == 1, "");
    CHECK("one ANALYSIS_DETAILS and session row per run",
          q_int(db, "SELECT count(*) FROM ANALYSIS_DETAILS") == runs &&
              q_int(db, "SELECT count(*) FROM TARGET_INFO_SESSION_START_TIME") == runs, "");
    CHECK("levels stored", q_int(db, "SELECT count(*) FROM DETR_RUNS WHERE level = 'trace'") == 2, "");
    sqlite3_close(db);
}

/* ---------------------------------------------------------------- overflow and failures */

static void test_queue_overflow(void) {
    char path[512], err[1024];
    path_in_dir(path, sizeof(path), "overflow.sqlite");
    ProfRunInfo in = test_info("detr-train");
    ProfOptions o;
    prof_options_default(&o, PROF_BASIC);
    o.queue_capacity = 8;
    Prof *p = prof_open_opts(path, &in, &o, err, sizeof(err));
    if (!p) {
        CHECK("open", 0, "%s", err);
        return;
    }
    /* another connection holds the write lock: the writer waits on it (its busy timeout), the
     * producer must neither wait nor lose count */
    sqlite3 *locker = open_ro(path);
    sqlite3_exec(locker, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    const int ranges = 200, steps = 20;
    int64_t t0 = prof_now_ns();
    for (int i = 0; i < ranges; i++) {
        prof_range_push(p, PROF_PHASE_LOSS);
        prof_range_pop(p);
    }
    for (int s = 0; s < steps; s++) {
        prof_step_begin(p, s, 0);
        ProfStepRecord r;
        fill_step(&r, s, 3);
        prof_step_end(p, &r);
    }
    double produce_ms = (double)(prof_now_ns() - t0) * 1e-6;
    ProfCounters c = prof_counters(p);
    CHECK("producer never waited on the locked database", produce_ms < 100, "%.1f ms", produce_ms);
    CHECK("tiny queue: records dropped and counted", c.dropped > 0 && c.dropped_steps > 0 &&
                                                         c.dropped_ranges > 0,
          "dropped %lld (steps %lld, ranges %lld)", (long long)c.dropped,
          (long long)c.dropped_steps, (long long)c.dropped_ranges);
    CHECK("accepted + dropped = produced", c.enqueued + c.dropped == ranges + steps * 2,
          "%lld + %lld", (long long)c.enqueued, (long long)c.dropped);
    nap_ns(200000000);
    sqlite3_exec(locker, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(locker);
    int64_t run = prof_run_id(p);
    int rc = prof_close(p, 0, err, sizeof(err));
    CHECK("close after the lock is released", rc == 0, "%s", err);
    sqlite3 *db = open_ro(path);
    int64_t rows = q_intf(db, "SELECT (SELECT count(*) FROM DETR_PHASES WHERE run_id=%1$lld) + "
                              "(SELECT count(*) FROM DETR_STEPS WHERE run_id=%1$lld)", run);
    CHECK("rows written = records accepted", rows == c.enqueued, "%lld rows, %lld accepted",
          (long long)rows, (long long)c.enqueued);
    CHECK("DETR_RUNS.dropped_records = dropped",
          q_intf(db, "SELECT dropped_records FROM DETR_RUNS WHERE run_id=%lld", run) == c.dropped &&
              q_intf(db, "SELECT dropped_steps + dropped_ranges FROM DETR_RUNS WHERE run_id=%lld",
                     run) == c.dropped, "");
    sqlite3_close(db);
}

static void test_write_failure_reported(void) {
    char path[512], err[1024] = "";
    path_in_dir(path, sizeof(path), "locked.sqlite");
    ProfRunInfo in = test_info("detr-train");
    ProfOptions o;
    prof_options_default(&o, PROF_BASIC);
    o.busy_timeout_ms = 20;
    o.flush_interval_ms = 10;
    Prof *p = prof_open_opts(path, &in, &o, err, sizeof(err));
    if (!p) {
        CHECK("open", 0, "%s", err);
        return;
    }
    sqlite3 *locker = open_ro(path);
    sqlite3_exec(locker, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    for (int s = 0; s < 5; s++) {
        prof_step_begin(p, s, 0);
        ProfStepRecord r;
        fill_step(&r, s, 1);
        prof_step_end(p, &r);
    }
    nap_ns(300000000); /* the writer gives up on the lock after 20 ms */
    ProfCounters c = prof_counters(p);
    sqlite3_exec(locker, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(locker);
    int64_t run = prof_run_id(p);
    int rc = prof_close(p, 0, err, sizeof(err));
    CHECK("lost writes counted", c.write_failed == 10, "write_failed %lld", (long long)c.write_failed);
    CHECK("prof_close reports them", rc == -1 && strstr(err, "could not be written") &&
                                          strstr(err, "locked"), "%s", err);
    sqlite3 *db = open_ro(path);
    CHECK("DETR_RUNS records write_failed_records and writer_error",
          q_intf(db, "SELECT write_failed_records = 10 AND writer_error LIKE '%%locked%%' FROM "
                     "DETR_RUNS WHERE run_id=%lld", run) == 1, "");
    CHECK("integrity after failed transactions", integrity_ok(db), "");
    sqlite3_close(db);
}

/* ---------------------------------------------------------------- threads */

typedef struct {
    Prof *p;
    int n;
} ThreadArg;

static void *range_thread(void *arg) {
    ThreadArg *a = arg;
    for (int i = 0; i < a->n; i++) {
        prof_range_push(a->p, PROF_PHASE_MATCHER);
        prof_range_push_text(a->p, "inner");
        prof_range_pop(a->p);
        prof_range_pop(a->p);
        if (i % 50 == 0) nap_ns(100000);
    }
    return NULL;
}

static void test_threads(void) {
    char path[512], err[1024];
    path_in_dir(path, sizeof(path), "threads.sqlite");
    ProfRunInfo in = test_info("detr-train");
    ProfOptions o;
    prof_options_default(&o, PROF_TRACE);
    o.flush_interval_ms = 5;
    Prof *p = prof_open_opts(path, &in, &o, err, sizeof(err));
    if (!p) {
        CHECK("open", 0, "%s", err);
        return;
    }
    enum { T = 4, N = 500 };
    pthread_t th[T];
    ThreadArg a = {p, N};
    for (int i = 0; i < T; i++) pthread_create(&th[i], NULL, range_thread, &a);
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
    ProfCounters c = prof_counters(p);
    int64_t run = prof_run_id(p);
    CHECK("close", prof_close(p, 0, err, sizeof(err)) == 0, "%s", err);
    CHECK("4 threads: accepted + dropped = produced, no range errors",
          c.enqueued + c.dropped == T * N * 2 && c.range_errors == 0,
          "%lld + %lld, errors %lld", (long long)c.enqueued, (long long)c.dropped,
          (long long)c.range_errors);
    sqlite3 *db = open_ro(path);
    CHECK("rows = accepted", q_intf(db, "SELECT count(*) FROM DETR_PHASES WHERE run_id=%lld", run) ==
                                 c.enqueued, "");
    CHECK("one globalTid per thread", q_intf(db, "SELECT count(DISTINCT global_tid) FROM DETR_PHASES "
                                                 "WHERE run_id=%lld", run) == T, "");
    CHECK("nesting per thread: inner at depth 1",
          q_intf(db, "SELECT count(*) FROM DETR_PHASES ph JOIN StringIds s ON ph.name_id = s.id "
                     "WHERE run_id=%lld AND s.value = 'inner' AND depth <> 1", run) == 0, "");
    sqlite3_close(db);
}

/* ---------------------------------------------------------------- kill -9 */

#define KILL_LOSSES 10

/* The child: opens a run, tells the parent (one byte on ready_fd), then writes steps (10 losses
 * each, 3 memory rows) and ranges until it is killed. */
static void kill_child(const char *path, int ready_fd) {
    char err[1024];
    ProfRunInfo in = test_info("detr-train (killed)");
    ProfOptions o;
    prof_options_default(&o, PROF_BASIC);
    o.flush_interval_ms = 2;
    Prof *p = prof_open_opts(path, &in, &o, err, sizeof(err));
    if (!p) _exit(3);
    if (write(ready_fd, "r", 1) != 1) _exit(4);
    for (int64_t s = 0;; s++) {
        prof_step_begin(p, s, 0);
        for (int ph = PROF_PHASE_DATA_WAIT; ph <= PROF_PHASE_OPTIMIZER; ph++) {
            prof_range_push(p, (ProfPhase)ph);
            prof_range_pop(p);
        }
        ProfStepRecord r;
        fill_step(&r, s, KILL_LOSSES);
        prof_step_end(p, &r);
        nap_ns(50000);
    }
}

static void test_kill9(void) {
    char path[512], err[1024];
    path_in_dir(path, sizeof(path), "killed.sqlite");
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    const int kills = 10;
    int all_ok = 1, consistent = 1;
    int64_t steps_seen = 0;
    for (int k = 0; k < kills; k++) {
        /* the kill lands 0-200 ms after the run is open: in the middle of batches, commits,
         * WAL checkpoints (the open itself is atomic: one transaction) */
        int delay_ms = rand() % 200;
        int pipefd[2];
        if (pipe(pipefd) != 0) {
            CHECK("pipe", 0, "%s", strerror(errno));
            return;
        }
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            close(pipefd[0]);
            kill_child(path, pipefd[1]);
        }
        close(pipefd[1]);
        char ready = 0;
        ssize_t got = read(pipefd[0], &ready, 1); /* EOF (0) if the child died first */
        close(pipefd[0]);
        if (got == 1) nap_ns((long)delay_ms * 1000000L);
        kill(pid, SIGKILL);
        int status = 0;
        waitpid(pid, &status, 0);
        int killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
        sqlite3 *db = open_ro(path);
        int ok = db && integrity_ok(db);
        int64_t run = db ? q_int(db, "SELECT max(run_id) FROM DETR_RUNS") : -1;
        int64_t steps = q_intf(db, "SELECT count(*) FROM DETR_STEPS WHERE run_id=%lld", run);
        /* a batch is one transaction: every stored step has all its losses and memory rows */
        int64_t partial = q_intf(db, "SELECT count(*) FROM DETR_STEPS s WHERE run_id=%1$lld AND "
                                     "((SELECT count(*) FROM DETR_LOSSES l WHERE l.run_id=%1$lld "
                                     "AND l.step=s.step) <> 10 OR (SELECT count(*) FROM "
                                     "DETR_MEMORY m WHERE m.run_id=%1$lld AND m.step=s.step) <> 3)",
                                 run);
        int64_t open_run = q_intf(db, "SELECT status = 'running' AND end_ns IS NULL FROM "
                                      "DETR_RUNS WHERE run_id=%lld", run);
        /* the child's ranges carry its own pid and thread (its main thread: tid = pid), not the
         * parent's cached ids */
        int64_t foreign = q_intf(db, "SELECT count(*) FROM DETR_PHASES ph JOIN DETR_RUNS r USING "
                                     "(run_id) WHERE run_id=%lld AND (ph.global_tid <> "
                                     "((r.pid << 24) | r.pid) OR r.pid = 0)", run);
        int64_t child_pid = q_intf(db, "SELECT pid FROM DETR_RUNS WHERE run_id=%lld", run);
        printf("  kill %d %d ms after the open: %s, integrity %s, run %lld, %lld steps, %lld "
               "incomplete, %lld ranges of another thread\n", k, delay_ms,
               killed && got == 1 ? "SIGKILL" : "child failed", ok ? "ok" : "FAILED",
               (long long)run, (long long)steps, (long long)partial, (long long)foreign);
        all_ok = all_ok && killed && got == 1 && ok;
        consistent = consistent && partial == 0 && open_run == 1 && run == k + 1 &&
                     foreign == 0 && child_pid == pid;
        steps_seen += steps > 0 ? steps : 0;
        sqlite3_close(db);
    }
    CHECK("kill -9 at random moments: database valid every time (integrity_check)", all_ok, "");
    CHECK("killed runs: whole steps only, run left 'running' with no end, child's own pid/tid",
          consistent, "");
    CHECK("killed runs had committed steps", steps_seen > 0, "%lld", (long long)steps_seen);
    ProfRunInfo in = test_info("detr-train");
    Prof *p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
    CHECK("the file takes a new run after the kills", p && prof_run_id(p) == kills + 1, "%s", err);
    CHECK("and closes cleanly", prof_close(p, 0, err, sizeof(err)) == 0, "%s", err);
}

/* ---------------------------------------------------------------- overhead */

static void spin_ns(int64_t ns) {
    int64_t end = prof_now_ns() + ns;
    while (prof_now_ns() < end) {
    }
}

static int cmp_i64(const void *x, const void *y) {
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

/* Cost of the recording calls of one step, measured around them on the training thread, with
 * 1 ms of busy work between steps. The median is the calls' own cost; the mean and p99 also
 * hold preemptions (by the writer thread or other processes on a loaded machine). The writer's
 * CPU time per step is the rest of the profiler's cost. */
static void test_overhead(void) {
    char path[512], err[1024];
    path_in_dir(path, sizeof(path), "overhead.sqlite");
    ProfRunInfo in = test_info("detr-train");
    Prof *p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
    if (!p) {
        CHECK("open", 0, "%s", err);
        return;
    }
    enum { STEPS = 1000 };
    static int64_t dt[STEPS];
    for (int pass = 0; pass < 2; pass++) { /* pass 0: profiler, pass 1: NULL (NVTX only) */
        Prof *q = pass == 0 ? p : NULL;
        for (int s = 0; s < STEPS; s++) {
            ProfStepRecord r;
            int64_t t0 = prof_now_ns();
            prof_step_begin(q, s, 0);
            for (int ph = PROF_PHASE_DATA_WAIT; ph <= PROF_PHASE_OPTIMIZER; ph++) {
                prof_range_push(q, (ProfPhase)ph);
                prof_range_pop(q);
            }
            prof_step_record_init(&r);
            r.images = 2;
            r.loss = 1.0;
            for (int i = 0; i < 31; i++) prof_step_add_loss(&r, "loss_bbox_5", 0.1);
            for (int i = 0; i < 6; i++) prof_step_add_memory(&r, "activations", 1 << 20, 1 << 21);
            prof_step_end(q, &r);
            ProfLoaderRecord lr;
            prof_loader_record_init(&lr);
            prof_loader(q, &lr);
            dt[s] = prof_now_ns() - t0;
            spin_ns(1000000); /* the step's work */
        }
        double mean = 0;
        for (int s = 0; s < STEPS; s++) mean += (double)dt[s] / STEPS;
        qsort(dt, STEPS, sizeof(dt[0]), cmp_i64);
        double median_us = dt[STEPS / 2] * 1e-3;
        printf("  %s: per step (step range + 12 phase ranges + record with 31 losses, 6 memory "
               "categories + loader record): median %.2f us, mean %.2f us, p99 %.1f us\n",
               pass == 0 ? "profiler (basic)" : "profiler NULL (NVTX only)", median_us,
               mean * 1e-3, dt[STEPS * 99 / 100] * 1e-3);
        if (pass == 0) {
            CHECK("per-step recording cost is microseconds (median)", median_us < 50.0,
                  "%.1f us per step", median_us);
            nap_ns(300000000); /* let the writer finish what it has */
            ProfCounters c = prof_counters(p);
            printf("  writer thread CPU: %.1f us per step (%lld records, %.2f us each)\n",
                   (double)c.writer_cpu_ns / STEPS * 1e-3, (long long)c.written,
                   c.written ? (double)c.writer_cpu_ns / (double)c.written * 1e-3 : 0.0);
#ifdef __SANITIZE_THREAD__
            (void)c;
            test_skip("no drops at 1 ms per step", "ThreadSanitizer makes the writer ~5x slower "
                      "than it is; checked in the normal and ASan builds");
#else
            CHECK("no drops at 1 ms per step", c.dropped == 0, "%lld dropped", (long long)c.dropped);
#endif
        }
    }
    int64_t run = prof_run_id(p);
    ProfCounters c_end = prof_counters(p);
    (void)c_end;
    CHECK("close", prof_close(p, 0, err, sizeof(err)) == 0, "%s", err);
    sqlite3 *db = open_ro(path);
    int64_t stored = q_intf(db, "SELECT count(*) FROM DETR_STEPS WHERE run_id=%lld", run);
#ifdef __SANITIZE_THREAD__
    CHECK("steps stored + steps dropped = steps", stored + c_end.dropped_steps == STEPS, "");
#else
    CHECK("every step stored", stored == STEPS, "%lld", (long long)stored);
#endif
    CHECK("writer CPU time stored", q_intf(db, "SELECT writer_cpu_ns > 0 FROM DETR_RUNS WHERE "
                                               "run_id=%lld", run) == 1, "");
    sqlite3_close(db);
}

static void print_hello(FILE *f) { fprintf(f, "hello %d\n", 42); }

static void test_helpers(void) {
    char *t = prof_capture_print(print_hello);
    CHECK("prof_capture_print", t && strcmp(t, "hello 42\n") == 0, "%s", t ? t : "(null)");
    free(t);
    CHECK("process RSS", prof_process_rss_bytes() > (1 << 20) &&
                             prof_process_peak_rss_bytes() >= prof_process_rss_bytes() / 2, "");
    CHECK("phase names", strcmp(prof_phase_name(PROF_PHASE_DATA_WAIT), "data_wait") == 0 &&
                             strcmp(prof_phase_name(PROF_PHASE_OPTIMIZER), "optimizer") == 0 &&
                             strcmp(prof_phase_name(PROF_PHASE_COUNT), "unknown") == 0, "");
}

static void remove_dir_files(void) {
    const char *names[] = {"schema.sqlite", "newer.sqlite", "foreign.sqlite", "notsqlite.sqlite",
                           "same.sqlite", "readonly.sqlite", "roundtrip.sqlite", "basic.sqlite",
                           "nvtx_sum.sqlite", "many.sqlite", "overflow.sqlite", "locked.sqlite",
                           "threads.sqlite", "killed.sqlite", "overhead.sqlite"};
    char path[512];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        path_in_dir(path, sizeof(path), names[i]);
        remove_db(path);
    }
    rmdir(g_dir);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof(g_dir), "%s/detr-test-prof-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) {
        CHECK("temp folder", 0, "mkdtemp: %s", strerror(errno));
        return test_finish();
    }
    test_helpers();
    test_schema_creation();
    test_versioning();
    test_unwritable_paths();
    test_round_trip();
    test_levels_and_misuse();
    test_many_runs();
    test_nvtx_sum();
    test_queue_overflow();
    test_write_failure_reported();
    test_threads();
    test_kill9();
    test_overhead();
    remove_dir_files();
    return test_finish();
}
