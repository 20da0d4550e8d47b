/* test_eval_input.c - evaluation through the uint8 data path (EvalOptions.uint8_input, what
 * --gpu-preprocess uses on a GPU) gives exactly the evaluation of the loader's float batches:
 * the same COCO statistics and a byte-identical detections file, on a small synthetic val split
 * with a randomly initialised tiny model (CPU backend; the normalisation then runs on the host
 * with the loader's operations, trainer/input_batch.h). Also: the model's input hook (training's)
 * is put back after the evaluation. The GPU copy path itself is checked by make gpu-check. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../../dataloader/dataset.h"
#include "../../dataloader/synth.h"
#include "check.h"
#include "config.h"
#include "detr.h"
#include "evaluate.h"
#include "test_util.h"

static float *dummy_hook(void *ctx, const Backend *be, Arena *acts, const uint8_t *mask, int B, int H,
                         int W) {
    (void)ctx, (void)be, (void)acts, (void)mask, (void)B, (void)H, (void)W;
    return NULL;
}

int main(void) {
    char dir[256], err[2048], ann[1024], img[1024];
    snprintf(dir, sizeof(dir), "/tmp/test_eval_input.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char ds_dir[300];
    snprintf(ds_dir, sizeof(ds_dir), "%s/ds", dir);
    SynthDatasetConfig sc;
    synth_config_default(&sc);
    sc.train_images = 4, sc.val_images = 10, sc.width = 72, sc.height = 56, sc.size_jitter = 0.3;
    sc.classes = 3, sc.max_objects = 3, sc.threads = 1;
    int rc = synth_dataset_write(ds_dir, &sc, NULL, err, sizeof(err));
    CHECK("setup: synthetic dataset", rc == 0, "%s", err);
    Dataset val;
    rc = rc == 0 ? dataset_find(ds_dir, "val", ann, sizeof(ann), img, sizeof(img), err, sizeof(err)) : -1;
    rc = rc == 0 ? dataset_open(ann, img, dir, &val, err, sizeof(err)) : -1;
    CHECK("setup: val split opens", rc == 0, "%s", err);
    if (rc != 0) return test_finish();

    DetrConfig cfg;
    detr_config_preset("tiny", &cfg);
    cfg.num_classes = val.num_classes;
    Detr *m = detr_create(&cfg, backend_cpu(), 1);
    detr_init(m, 7);
    detr_prepare(m);
    int ctx_marker = 0;
    detr_set_input_hook(m, dummy_hook, &ctx_marker); /* as the training loop does */

    EvalSummary es[2];
    char out[2][400];
    for (int k = 0; k < 2; k++) {
        CocoEval *gt = coco_eval_load_gt(ann, err, sizeof(err));
        if (!gt) {
            CHECK("setup: ground truth", 0, "%s", err);
            return test_finish();
        }
        snprintf(out[k], sizeof(out[k]), "%s/detections%d.json", dir, k);
        /* batch 3: the last batch is partial; val images differ in size, so batches are padded */
        EvalOptions eo = {.batch = 3, .workers = 2, .val_size = 64, .max_size = 80,
                          .detections_out = out[k], .uint8_input = k};
        rc = evaluate_dataset(m, &val, gt, &eo, &es[k], err, sizeof(err));
        CHECK(k ? "uint8 path: evaluation runs" : "float path: evaluation runs", rc == 0, "%s", err);
        coco_eval_free(gt);
        if (rc != 0) return test_finish();
    }
    int same_stats = es[0].images == es[1].images && es[0].images == sc.val_images;
    for (int i = 0; i < 12; i++) same_stats &= es[0].r.stats[i] == es[1].r.stats[i];
    CHECK("uint8 path: the same images and COCO statistics, exactly", same_stats,
          "images %d vs %d, AP %.9g vs %.9g", es[0].images, es[1].images, es[0].r.stats[0], es[1].r.stats[0]);
    char *a = read_text(out[0]), *b = read_text(out[1]);
    CHECK("uint8 path: the detections file is byte-identical (every score and box)",
          strlen(a) > 100 && strcmp(a, b) == 0, "%zu vs %zu bytes", strlen(a), strlen(b));
    free(a), free(b);
    CHECK("the model's input hook is put back after the evaluation",
          m->input_hook == dummy_hook && m->input_ctx == &ctx_marker, "hook changed");
    coco_eval_result_free(&es[0].r);
    coco_eval_result_free(&es[1].r);
    detr_destroy(m);
    dataset_close(&val);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return test_finish();
}
