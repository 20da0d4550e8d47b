/* prof_report_data.h - what the HTML report and the live dashboard show, as one JSON document
 * built from a profile database (layout of the document: docs/prof-report.md), and the
 * self-contained page that renders it (reports/: template, styles, script; the charting library
 * is embedded, see assets.h). Shared by `detr-prof report` (a file) and `detr-prof serve`
 * (the same page, refreshed from /api/data). */
#ifndef DETR_PROF_REPORT_DATA_H
#define DETR_PROF_REPORT_DATA_H
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

/* The JSON document of the runs run_ids[0..n_runs) (n_runs 0 = the newest run), plus every sweep
 * of the database. Series over steps are downsampled IN SQL to at most max_points points per
 * run (bucketed means, with min/max where a spike matters), so a 100k-step run stays small.
 * Returns a malloc'd NUL-terminated string, or NULL with err (unknown run id, unreadable db). */
char *report_data_json(sqlite3 *db, const int64_t *run_ids, int n_runs, int max_points, char *err,
                       size_t errlen);

/* The whole HTML page: reports/report.html with the styles, the charting library and
 * reports/report.js inlined, data_json inlined (safely: "</" escaped) as the page's data, and
 * extra_js (may be NULL) appended in a last <script> (the dashboard's polling code).
 * The page's script exposes window.detrReport.render(data), which can be called again with a
 * newer document to update every chart in place. Returns a malloc'd string or NULL with err. */
char *report_html(const char *data_json, const char *extra_js, char *err, size_t errlen);

#endif
