/* prof_db.c - opening a profile database for reading (see prof_db.h). */
#include "prof_db.h"
#include <stdio.h>
#include <sys/stat.h>
#include "prof.h"

static int query_int(sqlite3 *db, const char *sql, int64_t *out) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : -1;
}

sqlite3 *profdb_open_ro(const char *path, char *err, size_t errlen) {
    struct stat sb;
    if (stat(path, &sb) != 0) {
        snprintf(err, errlen, "%s: no such file (write one with detr-train --profile --db FILE)", path);
        return NULL;
    }
    if (!S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        return NULL;
    }
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: cannot open: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    int64_t version = -1, has_runs = 0;
    if (query_int(db, "PRAGMA user_version", &version) != 0) {
        snprintf(err, errlen, "%s: not a SQLite database (%s)", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return NULL;
    }
    query_int(db, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='DETR_RUNS'", &has_runs);
    if (!has_runs || version < 1) {
        snprintf(err, errlen, "%s: not a detr-train profile (no DETR_RUNS table or user_version %lld); "
                 "write one with detr-train --profile", path, (long long)version);
        sqlite3_close(db);
        return NULL;
    }
    if (version > PROF_SCHEMA_VERSION) {
        snprintf(err, errlen, "%s: schema version %lld is newer than this detr-prof understands (%d); "
                 "use a newer build", path, (long long)version, PROF_SCHEMA_VERSION);
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

int64_t profdb_latest_run(sqlite3 *db) {
    int64_t id = -1;
    if (query_int(db, "SELECT max(run_id) FROM DETR_RUNS", &id) != 0) return -1;
    return id > 0 ? id : -1;
}

int profdb_run_exists(sqlite3 *db, int64_t run_id) {
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM DETR_RUNS WHERE run_id = %lld", (long long)run_id);
    int64_t n = 0;
    return query_int(db, sql, &n) == 0 && n > 0;
}
