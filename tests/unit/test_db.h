/* test_db.h - reading a profile database in tests: open it read-only, and one value of a query.
 * SQL errors are printed and give the "no value" result, so a broken query fails its check. */
#ifndef DETR_TEST_DB_H
#define DETR_TEST_DB_H
#include <math.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>

/* The database read-only, or NULL (missing, not SQLite). */
static inline sqlite3 *db_open_ro(const char *path) {
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

/* The first column of the first row as an integer; -1 when there is no row or the SQL fails. */
static inline int64_t q_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        printf("   SQL error: %s in %s\n", sqlite3_errmsg(db), sql);
        return -1;
    }
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* The same as a double; NaN when there is no row, the value is NULL or the SQL fails. */
static inline double q_real(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st;
    double v = NAN;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        printf("   SQL error: %s in %s\n", sqlite3_errmsg(db), sql);
        return NAN;
    }
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    return v;
}

#endif
