/* detr_prof_main.c - detr-prof: turns the SQLite reports of `detr-train --profile` into decisions
 * (sweeps and recommendations), reports (HTML, live dashboard, Chrome trace) and tables. */
#include <stdio.h>
#include <string.h>
#include "detr_prof.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *synopsis;
} Command;

static const Command COMMANDS[] = {
    {"sweep", prof_cmd_sweep, "batch size / precision / accumulation / worker trials with a recommendation"},
    {"report", prof_cmd_report, "one self-contained HTML report of a database"},
    {"serve", prof_cmd_serve, "live dashboard over HTTP while a run writes the database"},
    {"export", prof_cmd_export, "Chrome trace JSON (opens in Perfetto)"},
    {"summary", prof_cmd_summary, "terminal tables of a database"},
    {"compare", prof_cmd_compare, "two databases side by side, differences beyond run-to-run noise flagged"},
};
#define N_COMMANDS (sizeof(COMMANDS) / sizeof(COMMANDS[0]))

static void usage(FILE *f) {
    fprintf(f, "usage: detr-prof COMMAND [options]   (detr-prof COMMAND --help for its options)\n"
               "Reads the SQLite profiles written by detr-train --profile (docs/profile-schema.md).\n\n"
               "Commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-9s %s\n", COMMANDS[i].name, COMMANDS[i].synopsis);
    fprintf(f, "\nExit codes: 0 ok, 1 failure, 2 bad usage or input.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(argv[1], COMMANDS[i].name) == 0) return COMMANDS[i].run(argc - 1, argv + 1);
    fprintf(stderr, "detr-prof: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
