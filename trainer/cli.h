/* cli.h - a small table-driven command-line parser shared by the programs: each option has a
 * name, a kind, a destination and a help line; "--name value" and "--name=value" both work;
 * --help prints the table. Errors name the option and what was expected. */
#ifndef DETR_CLI_H
#define DETR_CLI_H
#include <stddef.h>
#include <stdio.h>
#include "config.h"

/* OPT_OPTSTR: a string whose value may be left out ("--resume" alone sets ""); a value is taken
 * from "--name=value" or from the next argument unless that starts with "--". */
typedef enum { OPT_INT, OPT_FLOAT, OPT_STR, OPT_FLAG, OPT_SIZE, OPT_U64, OPT_OPTSTR } OptKind;

typedef struct {
    const char *name;   /* without the leading "--" */
    OptKind kind;
    void *dst;          /* int*, float*, const char**, int* (flag: set to 1), size_t*, uint64_t* */
    const char *arg;    /* placeholder for the help text, e.g. "N" */
    const char *help;
    int *was_set;       /* optional: set to 1 when given */
} CliOption;

/* Parses argv. Returns 0; 1 if --help was printed; -1 on error (message printed). */
int cli_parse(int argc, char **argv, const CliOption *opts, int nopts, const char *usage);
void cli_print_help(FILE *f, const CliOption *opts, int nopts, const char *usage);

/* Model-shape options shared by detr-train and detr-infer: --preset and one override per
 * DetrConfig field. cli_model_options() appends them to opts (returns the new count);
 * cli_model_resolve() builds the config: from the weights file when given (shape inferred),
 * else from the preset; explicit overrides win. Returns 0 or -1 (message printed). */
typedef struct {
    const char *preset, *backbone;
    int hidden, nheads, enc_layers, dec_layers, ffn, queries, num_classes, pre_norm, dilation,
        no_aux_loss;
    float dropout;
    int set_hidden, set_nheads, set_enc, set_dec, set_ffn, set_queries, set_classes, set_dropout;
} ModelOptions;

int cli_model_options(CliOption *opts, int n, ModelOptions *mo);
int cli_model_resolve(const ModelOptions *mo, const char *weights_path, DetrConfig *cfg);

#endif
