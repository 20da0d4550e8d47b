/* detr_prof.h - the subcommands of detr-prof, the tool that reads the SQLite reports written by
 * `detr-train --profile` (schema: docs/profile-schema.md). Each takes argv with argv[0] = the
 * subcommand's name and returns the process exit code: 0 ok, 1 failure, 2 bad usage or input
 * (3 is reserved for out-of-memory, as detr-train). Every subcommand answers --help. */
#ifndef DETR_PROF_CMD_H
#define DETR_PROF_CMD_H

int prof_cmd_sweep(int argc, char **argv);   /* prof_sweep.c: trials in child detr-train processes */
int prof_cmd_report(int argc, char **argv);  /* prof_report.c: one self-contained HTML file */
int prof_cmd_serve(int argc, char **argv);   /* prof_serve.c: live dashboard over HTTP */
int prof_cmd_export(int argc, char **argv);  /* prof_export.c: Chrome trace JSON (Perfetto) */
int prof_cmd_summary(int argc, char **argv); /* prof_summary.c: terminal tables of one database */
int prof_cmd_compare(int argc, char **argv); /* prof_summary.c: two databases side by side */

#endif
