/* test_recompute.c - backbone activation recomputation (docs/recompute.md): a full DETR forward,
 * loss and backward with recomputation gives bitwise the losses, outputs and gradients of the run
 * without it, from the same weights and batch (ResNet-18, ResNet-50, ResNet-50 DC5, and a frozen
 * backbone); its MEM_ACTS and total peaks are lower; the step's arena and the recomputation
 * arenas settle to one allocation each after the first step; switching it off frees them. */
#include <string.h>
#include "check.h"
#include "detr.h"
#include "synth_batch.h"

#define NCLS 4
#define MAXOBJ 3
#define SEED 11

typedef struct {
    const char *name;
    DetrConfig cfg;
    int train_backbone, B, size;
} Case;

/* What one forward + loss + backward produced, and what it cost. */
typedef struct {
    DetrLosses losses;
    float *grads;   /* [n_train] */
    float *outputs; /* logits then boxes, host copies */
    size_t n_grads, n_outputs;
    size_t acts_peak, total_peak;      /* first step, from the model's creation on */
    double fwd_flops, bwd_flops;       /* backbone, analytic */
    size_t acts_after2, acts_after3;   /* MEM_ACTS current after steps 2 and 3 */
    size_t acts_peak23;                /* MEM_ACTS peak over steps 2 and 3 */
    int acts_chunks2, acts_chunks3;    /* the step arena's allocations after steps 2 and 3 */
    int rc_chunks2, rc_chunks3;        /* the recomputation arenas' allocations */
    size_t rc_bytes;                   /* and their size */
    int steps_equal;                   /* steps 2 and 3 reproduce step 1 bitwise */
    float bb_grad_absmax[3];           /* layer2, layer3, layer4 conv1 gradients: max |g| */
} Outcome;

static void outcome_free(Outcome *o) {
    free(o->grads);
    free(o->outputs);
}

static int losses_equal(const DetrLosses *a, const DetrLosses *b) {
    if (a->L != b->L || a->first != b->first || a->total != b->total) return 0;
    for (int l = a->first; l < a->L; l++) {
        const LayerLosses *x = &a->layer[l], *y = &b->layer[l];
        if (x->loss_ce != y->loss_ce || x->loss_bbox != y->loss_bbox || x->loss_giou != y->loss_giou ||
            x->class_error != y->class_error || x->cardinality_error != y->cardinality_error)
            return 0;
    }
    return 1;
}

static float grad_absmax(const Detr *m, const float *grads, const char *name) {
    for (int i = 0; i < m->ps.n; i++) {
        const Param *p = &m->ps.p[i];
        if (p->group == GROUP_FROZEN || strcmp(p->name, name) != 0) continue;
        float mx = 0;
        for (size_t k = 0; k < p->numel; k++) mx = fmaxf(mx, fabsf(grads[p->offset + k]));
        return mx;
    }
    return -1; /* not trainable or absent */
}

/* One forward + loss + backward from zero gradients; fills losses, grads and outputs. */
static int one_step(Detr *m, const SynthBatch *sb, DetrLosses *losses, float *grads, float *outputs) {
    LossWeights lw;
    loss_weights_default(&lw);
    char err[1024];
    params_zero_grad(&m->ps);
    detr_forward(m, sb->images, sb->mask, sb->B, sb->H, sb->W, 1, SEED);
    if (detr_loss_backward(m, sb->targets, &lw, 1, 1.0, losses, err, sizeof err) != 0) {
        printf("step failed: %s\n", err);
        return -1;
    }
    m->be->download(grads, m->ps.train_grad, m->ps.n_train * sizeof(float));
    size_t nl = (size_t)m->L * m->B * m->cfg.queries * m->C1;
    memcpy(outputs, m->logits_host, nl * sizeof(float));
    memcpy(outputs + nl, m->boxes_host, (size_t)m->L * m->B * m->cfg.queries * 4 * sizeof(float));
    return 0;
}

static int run_case(const Case *c, const SynthBatch *sb, int recompute, Outcome *o) {
    memset(o, 0, sizeof(*o));
    Detr *m = detr_create(&c->cfg, backend_cpu(), c->train_backbone);
    detr_init(m, 7);
    backbone_set_recompute(m->bb, recompute);
    o->n_grads = m->ps.n_train;
    o->n_outputs = (size_t)c->cfg.dec_layers * c->B * c->cfg.queries * (m->C1 + 4);
    o->grads = malloc((o->n_grads ? o->n_grads : 1) * sizeof(float));
    o->outputs = malloc(o->n_outputs * sizeof(float));
    float *g2 = malloc((o->n_grads ? o->n_grads : 1) * sizeof(float)), *out2 = malloc(o->n_outputs * sizeof(float));
    mem_reset_peaks();
    MemStats s0 = mem_stats();
    int rc = one_step(m, sb, &o->losses, o->grads, o->outputs);
    MemStats s1 = mem_stats();
    o->acts_peak = s1.peak[MEM_ACTS] - s0.current[MEM_ACTS];
    o->total_peak = s1.total_peak - s0.total_current;
    o->fwd_flops = backbone_forward_flops(m->bb);
    o->bwd_flops = backbone_backward_flops(m->bb);
    const char *conv1[3] = {"backbone.0.body.layer2.0.conv1.weight", "backbone.0.body.layer3.0.conv1.weight",
                            "backbone.0.body.layer4.0.conv1.weight"};
    for (int k = 0; k < 3; k++) o->bb_grad_absmax[k] = grad_absmax(m, o->grads, conv1[k]);
    o->steps_equal = 1;
    for (int step = 2; step <= 3 && rc == 0; step++) {
        DetrLosses l;
        if (step == 3) mem_reset_peaks();
        rc = one_step(m, sb, &l, g2, out2);
        o->steps_equal &= losses_equal(&l, &o->losses) &&
                          !memcmp(g2, o->grads, o->n_grads * sizeof(float)) &&
                          !memcmp(out2, o->outputs, o->n_outputs * sizeof(float));
        size_t bytes;
        int chunks;
        backbone_recompute_memory(m->bb, &bytes, &chunks);
        MemStats s = mem_stats();
        if (step == 2) {
            o->acts_after2 = s.current[MEM_ACTS];
            o->acts_chunks2 = arena_chunk_count(m->acts);
            o->rc_chunks2 = chunks;
            o->rc_bytes = bytes;
        } else {
            o->acts_after3 = s.current[MEM_ACTS];
            o->acts_peak23 = s.peak[MEM_ACTS];
            o->acts_chunks3 = arena_chunk_count(m->acts);
            o->rc_chunks3 = chunks;
        }
    }
    free(g2);
    free(out2);
    detr_destroy(m);
    return rc;
}

static void check_case(const Case *c) {
    SynthBatch sb;
    synth_batch_alloc(&sb, c->B, c->size, c->size, MAXOBJ);
    synth_batch_fill(&sb, 2025, 0, NCLS, MAXOBJ, 0);
    Outcome plain, rec;
    /* recomputation first: process-wide grow-only buffers (the CPU backend's workspace) are then
     * charged to its peak, not to the run it is compared with */
    int rc = run_case(c, &sb, 1, &rec);
    rc |= run_case(c, &sb, 0, &plain);
    char name[160];
#define NAME(what) (snprintf(name, sizeof name, "%s: %s", c->name, what), name)
    CHECK(NAME("both runs complete"), rc == 0, "a step failed");
    if (rc == 0) {
        CHECK(NAME("losses bitwise equal"), losses_equal(&rec.losses, &plain.losses),
              "total %.17g vs %.17g", rec.losses.total, plain.losses.total);
        CHECK(NAME("logits and boxes bitwise equal"),
              !memcmp(rec.outputs, plain.outputs, plain.n_outputs * sizeof(float)), "relative %.3g",
              rel_err(rec.outputs, plain.outputs, plain.n_outputs));
        size_t first_diff = plain.n_grads;
        for (size_t i = 0; i < plain.n_grads && first_diff == plain.n_grads; i++)
            if (memcmp(&rec.grads[i], &plain.grads[i], sizeof(float))) first_diff = i;
        CHECK(NAME("every gradient bitwise equal"), first_diff == plain.n_grads,
              "first difference at flat index %zu of %zu (relative %.3g)", first_diff, plain.n_grads,
              rel_err(rec.grads, plain.grads, plain.n_grads));
        if (c->train_backbone) {
            /* the comparison covers the recomputed blocks: their gradients are not all zero */
            CHECK(NAME("layer2-4 gradients are non-zero"),
                  plain.bb_grad_absmax[0] > 0 && plain.bb_grad_absmax[1] > 0 && plain.bb_grad_absmax[2] > 0,
                  "max |grad| of layer2/3/4.0.conv1: %g %g %g", plain.bb_grad_absmax[0],
                  plain.bb_grad_absmax[1], plain.bb_grad_absmax[2]);
            CHECK(NAME("backward FLOPs count the recomputed convs"),
                  rec.fwd_flops == plain.fwd_flops && rec.bwd_flops > plain.bwd_flops,
                  "forward %.6g vs %.6g, backward %.6g vs %.6g", rec.fwd_flops, plain.fwd_flops,
                  rec.bwd_flops, plain.bwd_flops);
        } else {
            CHECK(NAME("frozen backbone: no recomputation FLOPs"), rec.bwd_flops == plain.bwd_flops,
                  "backward %.6g vs %.6g", rec.bwd_flops, plain.bwd_flops);
        }
        CHECK(NAME("MEM_ACTS peak of the first step lower with recomputation"),
              rec.acts_peak < plain.acts_peak, "%zu vs %zu bytes", rec.acts_peak, plain.acts_peak);
        CHECK(NAME("total peak of the first step lower with recomputation"),
              rec.total_peak < plain.total_peak, "%zu vs %zu bytes", rec.total_peak, plain.total_peak);
        CHECK(NAME("MEM_ACTS held in the steady state lower with recomputation"),
              rec.acts_after2 < plain.acts_after2, "%zu vs %zu bytes", rec.acts_after2, plain.acts_after2);
        printf("   %s: MEM_ACTS peak %.2f -> %.2f MiB (%.0f%%), steady %.2f -> %.2f MiB (recompute "
               "arenas %.2f MiB of it), total peak %.2f -> %.2f MiB, backbone backward %.3g -> %.3g "
               "GFLOP\n", c->name, plain.acts_peak / 1048576.0, rec.acts_peak / 1048576.0,
               100.0 * rec.acts_peak / plain.acts_peak, plain.acts_after2 / 1048576.0,
               rec.acts_after2 / 1048576.0, rec.rc_bytes / 1048576.0, plain.total_peak / 1048576.0,
               rec.total_peak / 1048576.0, plain.bwd_flops * 1e-9, rec.bwd_flops * 1e-9);
        const Outcome *both[2] = {&plain, &rec};
        for (int k = 0; k < 2; k++) {
            const Outcome *o = both[k];
            const char *mode = k ? "with recomputation" : "without recomputation";
            char what[128];
            snprintf(what, sizeof what, "%s: steps 2 and 3 reproduce step 1 bitwise", mode);
            CHECK(NAME(what), o->steps_equal, "a later step differs");
            snprintf(what, sizeof what, "%s: activation arena is one allocation after the first step", mode);
            CHECK(NAME(what), o->acts_chunks2 == 1 && o->acts_chunks3 == 1, "%d then %d chunks",
                  o->acts_chunks2, o->acts_chunks3);
            snprintf(what, sizeof what, "%s: no MEM_ACTS growth after the first step", mode);
            CHECK(NAME(what), o->acts_after3 == o->acts_after2 && o->acts_peak23 == o->acts_after2,
                  "current %zu then %zu, peak of step 3 %zu", o->acts_after2, o->acts_after3,
                  o->acts_peak23);
        }
        /* scratch + two carries, one allocation each (no recomputation: none at all) */
        const int want = 3;
        CHECK(NAME("recomputation arenas are one allocation each after the first step"),
              rec.rc_chunks2 == want && rec.rc_chunks3 == want && plain.rc_chunks2 == 0,
              "%d then %d chunks (without: %d)", rec.rc_chunks2, rec.rc_chunks3, plain.rc_chunks2);
    }
#undef NAME
    outcome_free(&plain);
    outcome_free(&rec);
    synth_batch_free(&sb);
}

/* One model: recomputation on for a step, then off: the arenas go at the next forward, and the
 * results stay those of the run without. */
static void check_switch_off(const Case *c) {
    SynthBatch sb;
    synth_batch_alloc(&sb, c->B, c->size, c->size, MAXOBJ);
    synth_batch_fill(&sb, 2025, 0, NCLS, MAXOBJ, 0);
    Detr *m = detr_create(&c->cfg, backend_cpu(), c->train_backbone);
    detr_init(m, 7);
    size_t ng = m->ps.n_train, no = (size_t)c->cfg.dec_layers * c->B * c->cfg.queries * (m->C1 + 4);
    float *g_on = malloc(ng * sizeof(float)), *g_off = malloc(ng * sizeof(float));
    float *o_on = malloc(no * sizeof(float)), *o_off = malloc(no * sizeof(float));
    DetrLosses l_on, l_off;
    backbone_set_recompute(m->bb, 1);
    int rc = one_step(m, &sb, &l_on, g_on, o_on);
    size_t bytes_on, bytes_off;
    int chunks_on, chunks_off;
    backbone_recompute_memory(m->bb, &bytes_on, &chunks_on);
    backbone_set_recompute(m->bb, 0);
    rc |= one_step(m, &sb, &l_off, g_off, o_off);
    backbone_recompute_memory(m->bb, &bytes_off, &chunks_off);
    CHECK("switch off: the recomputation arenas are freed at the next forward",
          rc == 0 && bytes_on > 0 && chunks_on > 0 && bytes_off == 0 && chunks_off == 0,
          "rc %d, on: %zu bytes in %d chunks, off: %zu bytes in %d chunks", rc, bytes_on, chunks_on,
          bytes_off, chunks_off);
    CHECK("switch off: same losses and gradients as with it on",
          rc == 0 && losses_equal(&l_on, &l_off) && !memcmp(g_on, g_off, ng * sizeof(float)) &&
              !memcmp(o_on, o_off, no * sizeof(float)),
          "loss %.17g vs %.17g", l_on.total, l_off.total);
    CHECK("backbone_recompute reports the setting", backbone_recompute(m->bb) == 0, "still on");
    free(g_on), free(g_off), free(o_on), free(o_off);
    detr_destroy(m);
    synth_batch_free(&sb);
}

int main(void) {
    DetrConfig r18 = {.depth = 18, .hidden = 32, .nheads = 4, .enc_layers = 1, .dec_layers = 2,
                      .ffn = 64, .queries = 5, .num_classes = NCLS, .dropout = 0.1f, .aux_loss = 1};
    DetrConfig r50 = r18;
    r50.depth = 50;
    DetrConfig r50dc5 = r50;
    r50dc5.dilation = 1;
    const Case cases[] = {
        {"tiny (ResNet-18) 2x128x128", r18, 1, 2, 128},
        {"ResNet-50 2x96x96", r50, 1, 2, 96},
        {"ResNet-50 DC5 1x64x64", r50dc5, 1, 1, 64},
        {"ResNet-18 frozen backbone 2x128x128", r18, 0, 2, 128},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i]);
    check_switch_off(&cases[0]);
    return test_finish();
}
