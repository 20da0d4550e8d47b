/* cli.c - see cli.h */
#include "cli.h"
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "mem.h"
#include "weights.h"

void cli_print_help(FILE *f, const CliOption *opts, int nopts, const char *usage) {
    fprintf(f, "%s\n\nOptions:\n", usage);
    for (int i = 0; i < nopts; i++) {
        char left[64];
        snprintf(left, sizeof(left), "--%s%s%s", opts[i].name, opts[i].arg ? " " : "",
                 opts[i].arg ? opts[i].arg : "");
        fprintf(f, "  %-26s %s\n", left, opts[i].help);
    }
    fprintf(f, "  %-26s %s\n", "--help", "show this help");
}

static int set_value(const CliOption *o, const char *v) {
    char *end = NULL;
    errno = 0;
    switch (o->kind) {
    case OPT_INT: {
        long x = strtol(v, &end, 10);
        if (*v == 0 || *end || errno || x < -2147483647L || x > 2147483647L) goto bad;
        *(int *)o->dst = (int)x;
        break;
    }
    case OPT_U64: {
        unsigned long long x = strtoull(v, &end, 10);
        if (*v == 0 || *end || errno) goto bad;
        *(uint64_t *)o->dst = x;
        break;
    }
    case OPT_FLOAT: {
        float x = strtof(v, &end);
        if (*v == 0 || *end || errno) goto bad;
        *(float *)o->dst = x;
        break;
    }
    case OPT_STR:
    case OPT_OPTSTR: *(const char **)o->dst = v; break;
    case OPT_SIZE:
        if (mem_parse_size(v, (size_t *)o->dst) != 0) goto bad;
        break;
    case OPT_FLAG: break;
    }
    if (o->was_set) *o->was_set = 1;
    return 0;
bad:
    fprintf(stderr, "error: --%s: '%s' is not a valid %s\n", o->name, v,
            o->kind == OPT_SIZE ? "size (e.g. 512M, 2G, or bytes)"
            : o->kind == OPT_FLOAT ? "number" : "integer");
    return -1;
}

int cli_parse(int argc, char **argv, const CliOption *opts, int nopts, const char *usage) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            cli_print_help(stdout, opts, nopts, usage);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "error: unexpected argument '%s' (see --help)\n", a);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const CliOption *o = NULL;
        for (int k = 0; k < nopts; k++)
            if (strlen(opts[k].name) == len && !strncmp(opts[k].name, name, len)) o = &opts[k];
        if (!o) {
            fprintf(stderr, "error: unknown option '%s' (see --help)\n", a);
            return -1;
        }
        if (o->kind == OPT_FLAG) {
            if (eq) {
                fprintf(stderr, "error: --%s takes no value\n", o->name);
                return -1;
            }
            *(int *)o->dst = 1;
            if (o->was_set) *o->was_set = 1;
            continue;
        }
        if (o->kind == OPT_OPTSTR && !eq && (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)) {
            *(const char **)o->dst = "";
            if (o->was_set) *o->was_set = 1;
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) {
            fprintf(stderr, "error: --%s needs a value (%s)\n", o->name, o->arg ? o->arg : "value");
            return -1;
        }
        if (set_value(o, v) != 0) return -1;
    }
    return 0;
}

int cli_model_options(CliOption *o, int n, ModelOptions *mo) {
    memset(mo, 0, sizeof(*mo));
    mo->preset = "tiny";
#define ADD(nm, k, d, a, h, s) o[n++] = (CliOption){nm, k, d, a, h, s}
    ADD("preset", OPT_STR, &mo->preset, "tiny|r50", "model preset (default tiny; shape overrides below)", NULL);
    ADD("backbone", OPT_STR, &mo->backbone, "resnetN", "resnet18, resnet34, resnet50 or resnet101", NULL);
    ADD("hidden", OPT_INT, &mo->hidden, "N", "transformer width", &mo->set_hidden);
    ADD("nheads", OPT_INT, &mo->nheads, "N", "attention heads", &mo->set_nheads);
    ADD("enc-layers", OPT_INT, &mo->enc_layers, "N", "encoder layers", &mo->set_enc);
    ADD("dec-layers", OPT_INT, &mo->dec_layers, "N", "decoder layers", &mo->set_dec);
    ADD("ffn", OPT_INT, &mo->ffn, "N", "feed-forward width", &mo->set_ffn);
    ADD("queries", OPT_INT, &mo->queries, "N", "object queries", &mo->set_queries);
    ADD("num-classes", OPT_INT, &mo->num_classes, "N", "classes = max category id + 1 (head has N+1 outputs)", &mo->set_classes);
    ADD("dropout", OPT_FLOAT, &mo->dropout, "P", "dropout probability (default 0.1; the tiny preset: 0)", &mo->set_dropout);
    ADD("pre-norm", OPT_FLAG, &mo->pre_norm, NULL, "pre-norm transformer (default post-norm)", NULL);
    ADD("dilation", OPT_FLAG, &mo->dilation, NULL, "DC5: dilated layer4 (ResNet-50/101)", NULL);
    ADD("no-aux-loss", OPT_FLAG, &mo->no_aux_loss, NULL, "loss on the last decoder layer only", NULL);
#undef ADD
    return n;
}

int cli_model_resolve(const ModelOptions *mo, const char *weights_path, DetrConfig *cfg) {
    char err[4096];
    if (weights_path) {
        if (weights_infer_config(weights_path, cfg, err, sizeof(err)) != 0) {
            fprintf(stderr, "error: %s\n", err);
            return -1;
        }
    } else if (detr_config_preset(mo->preset, cfg) != 0) {
        fprintf(stderr, "error: --preset '%s' is unknown (use tiny or r50)\n", mo->preset);
        return -1;
    }
    if (mo->backbone) {
        int d = 0;
        if (sscanf(mo->backbone, "resnet%d", &d) != 1 || (d != 18 && d != 34 && d != 50 && d != 101)) {
            fprintf(stderr, "error: --backbone '%s': use resnet18, resnet34, resnet50 or resnet101\n",
                    mo->backbone);
            return -1;
        }
        cfg->depth = d;
    }
    if (mo->set_hidden) cfg->hidden = mo->hidden;
    if (mo->set_nheads) cfg->nheads = mo->nheads;
    if (mo->set_enc) cfg->enc_layers = mo->enc_layers;
    if (mo->set_dec) cfg->dec_layers = mo->dec_layers;
    if (mo->set_ffn) cfg->ffn = mo->ffn;
    if (mo->set_queries) cfg->queries = mo->queries;
    if (mo->set_classes) cfg->num_classes = mo->num_classes;
    if (mo->set_dropout) cfg->dropout = mo->dropout;
    if (mo->pre_norm) cfg->pre_norm = 1;
    if (mo->dilation) cfg->dilation = 1;
    if (mo->no_aux_loss) cfg->aux_loss = 0;
    const char *bad = cfg->hidden <= 0 ? "--hidden" : cfg->nheads <= 0 ? "--nheads"
                    : cfg->enc_layers < 0 ? "--enc-layers" : cfg->dec_layers <= 0 ? "--dec-layers"
                    : cfg->ffn <= 0 ? "--ffn" : cfg->queries <= 0 ? "--queries"
                    : cfg->num_classes <= 0 ? "--num-classes"
                    : (cfg->dropout < 0 || cfg->dropout >= 1) ? "--dropout" : NULL;
    if (bad) {
        fprintf(stderr, "error: %s is out of range\n", bad);
        return -1;
    }
    if (cfg->hidden % cfg->nheads || cfg->hidden % 2) {
        fprintf(stderr, "error: --hidden %d must be even and divisible by --nheads %d\n", cfg->hidden,
                cfg->nheads);
        return -1;
    }
    return 0;
}
