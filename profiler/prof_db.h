/* prof_db.h - opening a profile database for reading (detr-prof's subcommands). */
#ifndef DETR_PROF_DB_H
#define DETR_PROF_DB_H
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

/* Opens path read-only (a training run may be writing it: WAL lets both work; a busy timeout
 * covers checkpoints). Checks that it is a profile database this build understands
 * (PRAGMA user_version 1..PROF_SCHEMA_VERSION, DETR_RUNS present). Returns the handle, or NULL
 * with err naming the file and the problem. */
sqlite3 *profdb_open_ro(const char *path, char *err, size_t errlen);

/* The newest run's id, or -1 when the database holds no run. */
int64_t profdb_latest_run(sqlite3 *db);

/* 1 if run_id exists in DETR_RUNS, else 0. */
int profdb_run_exists(sqlite3 *db, int64_t run_id);

#endif
