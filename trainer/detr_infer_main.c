/* detr-infer: inference on a golden inputs file.
 *   detr-infer --weights W.safetensors --inputs X.safetensors --out Y.safetensors
 * X holds images F32 [B,3,H,W] (normalised, padded) and mask U8 [B,H,W] (1 = padding);
 * Y receives pred_logits, pred_boxes, aux_pred_logits, aux_pred_boxes. No dropout. */
#include <stdio.h>
#include <stdlib.h>
#include "cli.h"
#include "detr.h"
#include "golden.h"
#include "runtime.h"
#include "weights.h"

static const char *USAGE =
    "usage: detr-infer --weights W.safetensors --inputs X.safetensors --out Y.safetensors\n"
    "Runs DETR (eval mode, no dropout) on X and writes pred_logits [B,Q,C+1], pred_boxes [B,Q,4],\n"
    "aux_pred_logits [L-1,B,Q,C+1], aux_pred_boxes [L-1,B,Q,4] to Y. The model shape is\n"
    "inferred from W (nheads and dilation from its __metadata__).";

int main(int argc, char **argv) {
    runtime_configure_openmp(argv);
    const char *weights = NULL, *inputs = NULL, *out = NULL;
    int threads = 0, version = 0;
    CliOption opts[32] = {
        {"weights", OPT_STR, &weights, "FILE", "model weights (safetensors, reference or HF names)", NULL},
        {"inputs", OPT_STR, &inputs, "FILE", "images F32 [B,3,H,W] and mask U8 [B,H,W]", NULL},
        {"out", OPT_STR, &out, "FILE", "output safetensors (written atomically)", NULL},
        {"threads", OPT_INT, &threads, "N", "CPU threads (default: all cores)", NULL},
        {"version", OPT_FLAG, &version, NULL, "print versions and exit", NULL},
    };
    int n = 5;
    ModelOptions mo;
    n = cli_model_options(opts, n, &mo);
    int rc = cli_parse(argc, argv, opts, n, USAGE);
    if (rc) return rc > 0 ? 0 : 2;
    if (version) {
        runtime_print_versions(stdout);
        return 0;
    }
    if (!weights || !inputs || !out) {
        fprintf(stderr, "error: --weights, --inputs and --out are required (see --help)\n");
        return 2;
    }
    if (runtime_init(threads) != 0) return 2;
    DetrConfig cfg;
    if (cli_model_resolve(&mo, weights, &cfg) != 0) return 2;
    char err[16384];
    GoldenInputs in;
    if (golden_load_inputs(inputs, &in, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return 2;
    }
    Detr *m = detr_create(&cfg, backend_cpu(), 1);
    if (weights_load(m, weights, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        detr_destroy(m);
        golden_free_inputs(&in);
        return 2;
    }
    detr_forward(m, in.images, in.mask, in.B, in.H, in.W, 0, 0);
    StWriter *w = st_writer_new();
    golden_add_predictions(w, m);
    rc = st_writer_save(w, out, err, sizeof(err));
    st_writer_free(w);
    if (rc != 0) fprintf(stderr, "error: %s\n", err);
    detr_destroy(m);
    golden_free_inputs(&in);
    return rc ? 1 : 0;
}
