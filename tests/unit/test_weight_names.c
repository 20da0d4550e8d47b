/* test_weight_names.c - HF <-> reference DETR names: one table row per rule (both backbone namings),
 * names that must not map, and a round trip over every R50 reference key (generated here from the
 * architecture and, when docs/reference/detr-r50-keys.txt is reachable, compared with it). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "safetensors.h"
#include "weight_names.h"

typedef struct {
    const char *hf, *ref;
    int part;
} Case;

#define TB "model.backbone.conv_encoder.model."
static const Case CASES[] = {
    /* timm backbone */
    {TB "conv1.weight", "backbone.0.body.conv1.weight", -1},
    {TB "bn1.running_var", "backbone.0.body.bn1.running_var", -1},
    {TB "layer1.0.conv1.weight", "backbone.0.body.layer1.0.conv1.weight", -1},
    {TB "layer3.5.conv3.weight", "backbone.0.body.layer3.5.conv3.weight", -1},
    {TB "layer4.2.bn2.running_mean", "backbone.0.body.layer4.2.bn2.running_mean", -1},
    {TB "layer2.0.downsample.0.weight", "backbone.0.body.layer2.0.downsample.0.weight", -1},
    {TB "layer2.0.downsample.1.bias", "backbone.0.body.layer2.0.downsample.1.bias", -1},
    {TB "layer3.22.bn1.weight", "backbone.0.body.layer3.22.bn1.weight", -1}, /* R101 depth */
    /* native HF ResNet backbone */
    {TB "embedder.embedder.convolution.weight", "backbone.0.body.conv1.weight", -1},
    {TB "embedder.embedder.normalization.running_mean", "backbone.0.body.bn1.running_mean", -1},
    {TB "encoder.stages.0.layers.0.layer.0.convolution.weight", "backbone.0.body.layer1.0.conv1.weight", -1},
    {TB "encoder.stages.3.layers.2.layer.2.convolution.weight", "backbone.0.body.layer4.2.conv3.weight", -1},
    {TB "encoder.stages.1.layers.3.layer.1.normalization.bias", "backbone.0.body.layer2.3.bn2.bias", -1},
    {TB "encoder.stages.2.layers.0.shortcut.convolution.weight", "backbone.0.body.layer3.0.downsample.0.weight", -1},
    {TB "encoder.stages.2.layers.0.shortcut.normalization.running_var",
     "backbone.0.body.layer3.0.downsample.1.running_var", -1},
    /* projection, queries */
    {"model.input_projection.weight", "input_proj.weight", -1},
    {"model.input_projection.bias", "input_proj.bias", -1},
    {"model.query_position_embeddings.weight", "query_embed.weight", -1},
    /* encoder */
    {"model.encoder.layers.0.self_attn.q_proj.weight", "transformer.encoder.layers.0.self_attn.in_proj_weight", 0},
    {"model.encoder.layers.1.self_attn.k_proj.weight", "transformer.encoder.layers.1.self_attn.in_proj_weight", 1},
    {"model.encoder.layers.5.self_attn.v_proj.bias", "transformer.encoder.layers.5.self_attn.in_proj_bias", 2},
    {"model.encoder.layers.2.self_attn.out_proj.weight", "transformer.encoder.layers.2.self_attn.out_proj.weight", -1},
    {"model.encoder.layers.3.fc1.weight", "transformer.encoder.layers.3.linear1.weight", -1},
    {"model.encoder.layers.3.fc2.bias", "transformer.encoder.layers.3.linear2.bias", -1},
    {"model.encoder.layers.4.self_attn_layer_norm.weight", "transformer.encoder.layers.4.norm1.weight", -1},
    {"model.encoder.layers.4.final_layer_norm.bias", "transformer.encoder.layers.4.norm2.bias", -1},
    {"model.encoder.layers.12.fc1.bias", "transformer.encoder.layers.12.linear1.bias", -1},
    /* decoder */
    {"model.decoder.layers.0.self_attn.q_proj.bias", "transformer.decoder.layers.0.self_attn.in_proj_bias", 0},
    {"model.decoder.layers.0.self_attn.out_proj.bias", "transformer.decoder.layers.0.self_attn.out_proj.bias", -1},
    {"model.decoder.layers.5.encoder_attn.k_proj.weight", "transformer.decoder.layers.5.multihead_attn.in_proj_weight",
     1},
    {"model.decoder.layers.5.encoder_attn.v_proj.weight", "transformer.decoder.layers.5.multihead_attn.in_proj_weight",
     2},
    {"model.decoder.layers.1.encoder_attn.out_proj.weight",
     "transformer.decoder.layers.1.multihead_attn.out_proj.weight", -1},
    {"model.decoder.layers.2.fc1.weight", "transformer.decoder.layers.2.linear1.weight", -1},
    {"model.decoder.layers.2.fc2.weight", "transformer.decoder.layers.2.linear2.weight", -1},
    {"model.decoder.layers.3.self_attn_layer_norm.bias", "transformer.decoder.layers.3.norm1.bias", -1},
    {"model.decoder.layers.3.encoder_attn_layer_norm.weight", "transformer.decoder.layers.3.norm2.weight", -1},
    {"model.decoder.layers.3.final_layer_norm.weight", "transformer.decoder.layers.3.norm3.weight", -1},
    {"model.decoder.layernorm.weight", "transformer.decoder.norm.weight", -1},
    {"model.decoder.layernorm.bias", "transformer.decoder.norm.bias", -1},
    /* heads */
    {"class_labels_classifier.weight", "class_embed.weight", -1},
    {"class_labels_classifier.bias", "class_embed.bias", -1},
    {"bbox_predictor.layers.0.weight", "bbox_embed.layers.0.weight", -1},
    {"bbox_predictor.layers.2.bias", "bbox_embed.layers.2.bias", -1},
};

static const char *const NOT_HF[] = {
    TB "layer1.0.downsample.1.num_batches_tracked", /* stray hub keys: ignored by the caller */
    TB "bn1.num_batches_tracked",
    TB "layer5.0.conv1.weight",          /* ResNet has 4 stages */
    TB "layer0.0.conv1.weight",
    TB "layer1.0.conv4.weight",          /* 3 convs per bottleneck */
    TB "layer1.0.conv0.weight",
    TB "layer1.0.downsample.2.weight",
    TB "fc.weight",
    TB "encoder.stages.4.layers.0.layer.0.convolution.weight",
    TB "encoder.stages.0.layers.0.layer.3.convolution.weight",
    TB "encoder.stages.0.layers.0.layer.0.convolution.bias",
    "model.encoder.layers.01.fc1.weight", /* leading zero */
    "model.encoder.layers.x.fc1.weight",
    "model.encoder.layers.999999.fc1.weight",
    "model.encoder.layers.0.fc3.weight",
    "model.encoder.layers.0.self_attn.q_proj.weight.extra",
    "model.encoder.layers.0.self_attn.q_proj.",
    "model.encoder.layers.0.self_attn.q_proj.running_mean",
    "model.encoder.layers.0.encoder_attn.q_proj.weight", /* encoder layers have no cross-attention */
    "model.encoder.layers.0.self_attn.q_proj.weightt",
    "class_labels_classifier.weight2",
    "transformer.encoder.layers.0.linear1.weight", /* already a reference name */
    "backbone.0.body.conv1.weight",
    "model.",
    "",
};

static void test_table(void) {
    char out[256], back[256];
    int n_ok = 0, n = (int)(sizeof CASES / sizeof CASES[0]);
    for (int i = 0; i < n; i++) {
        int part = -7;
        int rc = weight_name_from_hf(CASES[i].hf, out, sizeof out, &part);
        int ok = rc == 1 && strcmp(out, CASES[i].ref) == 0 && part == CASES[i].part;
        int native = strstr(CASES[i].hf, "embedder") || strstr(CASES[i].hf, "stages");
        int rc2 = weight_name_to_hf(CASES[i].ref, CASES[i].part, native ? WN_BACKBONE_NATIVE : WN_BACKBONE_TIMM, back,
                                    sizeof back);
        ok = ok && rc2 == 1 && strcmp(back, CASES[i].hf) == 0 && weight_name_is_reference(CASES[i].ref);
        if (!ok) printf("  mismatch: %s -> '%s' part %d (rc %d), back '%s' (rc %d)\n", CASES[i].hf, out, part, rc, back, rc2);
        n_ok += ok;
    }
    CHECK("table: every HF pattern maps to its reference name and back", n_ok == n, "%d of %d", n_ok, n);

    int n_refused = 0, m = (int)(sizeof NOT_HF / sizeof NOT_HF[0]);
    for (int i = 0; i < m; i++) {
        int part = -7;
        int rc = weight_name_from_hf(NOT_HF[i], out, sizeof out, &part);
        if (rc == 0 && out[0] == 0 && part == -1)
            n_refused++;
        else
            printf("  wrongly mapped: '%s' -> '%s'\n", NOT_HF[i], out);
    }
    CHECK("table: names that are not HF DETR names return 0", n_refused == m, "%d of %d", n_refused, m);

    int part;
    CHECK("table: output too small returns -1",
          weight_name_from_hf("model.decoder.layernorm.weight", out, 10, &part) == -1 && out[0] == 0, "rc differs");
    CHECK("table: NULL input returns 0", weight_name_from_hf(NULL, out, sizeof out, &part) == 0, "rc differs");
    CHECK("to_hf: in_proj needs a part",
          weight_name_to_hf("transformer.encoder.layers.0.self_attn.in_proj_weight", -1, WN_BACKBONE_TIMM, out,
                            sizeof out) == 0,
          "mapped");
    CHECK("to_hf: only in_proj takes a part",
          weight_name_to_hf("transformer.encoder.layers.0.linear1.weight", 1, WN_BACKBONE_TIMM, out, sizeof out) == 0,
          "mapped");
    CHECK("to_hf: unknown reference name",
          weight_name_to_hf("backbone.0.body.bn1.num_batches_tracked", -1, WN_BACKBONE_TIMM, out, sizeof out) == 0 &&
              !weight_name_is_reference("backbone.0.body.bn1.num_batches_tracked"),
          "mapped");
}

/* ----------------------------------------------------------------------------------------------- */

typedef struct {
    char **names;
    int n, cap;
} NameList;

static void add_name(NameList *l, const char *fmt, ...) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 512;
        l->names = realloc(l->names, sizeof(char *) * (size_t)l->cap);
    }
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    l->names[l->n++] = strdup(buf);
}

static void free_names(NameList *l) {
    for (int i = 0; i < l->n; i++) free(l->names[i]);
    free(l->names);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void add_bn(NameList *l, const char *prefix) {
    static const char *f[4] = {"weight", "bias", "running_mean", "running_var"};
    for (int i = 0; i < 4; i++) add_name(l, "%s.%s", prefix, f[i]);
}

static void add_attn(NameList *l, const char *prefix) {
    add_name(l, "%s.in_proj_weight", prefix);
    add_name(l, "%s.in_proj_bias", prefix);
    add_name(l, "%s.out_proj.weight", prefix);
    add_name(l, "%s.out_proj.bias", prefix);
}

static void add_wb(NameList *l, const char *prefix) {
    add_name(l, "%s.weight", prefix);
    add_name(l, "%s.bias", prefix);
}

/* The R50 DETR state dict keys, from the architecture (detr.md section 7.1). */
static void r50_reference_keys(NameList *l) {
    static const int blocks[4] = {3, 4, 6, 3};
    char p[160];
    add_name(l, "backbone.0.body.conv1.weight");
    add_bn(l, "backbone.0.body.bn1");
    for (int L = 1; L <= 4; L++)
        for (int b = 0; b < blocks[L - 1]; b++) {
            for (int k = 1; k <= 3; k++) {
                add_name(l, "backbone.0.body.layer%d.%d.conv%d.weight", L, b, k);
                snprintf(p, sizeof p, "backbone.0.body.layer%d.%d.bn%d", L, b, k);
                add_bn(l, p);
            }
            if (b == 0) {
                add_name(l, "backbone.0.body.layer%d.0.downsample.0.weight", L);
                snprintf(p, sizeof p, "backbone.0.body.layer%d.0.downsample.1", L);
                add_bn(l, p);
            }
        }
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "transformer.encoder.layers.%d.self_attn", i);
        add_attn(l, p);
        static const char *enc[4] = {"linear1", "linear2", "norm1", "norm2"};
        for (int k = 0; k < 4; k++) {
            snprintf(p, sizeof p, "transformer.encoder.layers.%d.%s", i, enc[k]);
            add_wb(l, p);
        }
    }
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "transformer.decoder.layers.%d.self_attn", i);
        add_attn(l, p);
        snprintf(p, sizeof p, "transformer.decoder.layers.%d.multihead_attn", i);
        add_attn(l, p);
        static const char *dec[5] = {"linear1", "linear2", "norm1", "norm2", "norm3"};
        for (int k = 0; k < 5; k++) {
            snprintf(p, sizeof p, "transformer.decoder.layers.%d.%s", i, dec[k]);
            add_wb(l, p);
        }
    }
    add_wb(l, "transformer.decoder.norm");
    add_wb(l, "class_embed");
    for (int k = 0; k < 3; k++) {
        snprintf(p, sizeof p, "bbox_embed.layers.%d", k);
        add_wb(l, p);
    }
    add_name(l, "query_embed.weight");
    add_wb(l, "input_proj");
}

/* Names (first word of each line) from the keys file; 0 if no file was found. */
static const char *load_keys_file(NameList *l) {
    static const char *candidates[] = {NULL, "docs/reference/detr-r50-keys.txt",
                                       "../shared/docs/reference/detr-r50-keys.txt",
                                       "/work/shared/docs/reference/detr-r50-keys.txt"};
    candidates[0] = getenv("DETR_REF_KEYS");
    for (size_t c = 0; c < sizeof candidates / sizeof candidates[0]; c++) {
        if (!candidates[c]) continue;
        FILE *fp = fopen(candidates[c], "r");
        if (!fp) continue;
        char line[512], name[256];
        while (fgets(line, sizeof line, fp))
            if (sscanf(line, "%255s", name) == 1) add_name(l, "%s", name);
        fclose(fp);
        return candidates[c];
    }
    return NULL;
}

static int same_sets(NameList *a, NameList *b) {
    if (a->n != b->n) return 0;
    qsort(a->names, (size_t)a->n, sizeof(char *), cmp_str);
    qsort(b->names, (size_t)b->n, sizeof(char *), cmp_str);
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->names[i], b->names[i]) != 0) return 0;
    return 1;
}

/* Every reference key -> HF name(s) -> back; the HF names are distinct. */
static void round_trip_all(const NameList *ref, WeightBackboneNaming naming, const char *label) {
    NameList hf = {0};
    int bad = 0;
    char h[256], back[256], msg[160];
    for (int i = 0; i < ref->n; i++) {
        const char *r = ref->names[i];
        int packed = strstr(r, ".in_proj_") != NULL;
        for (int part = packed ? 0 : -1; part <= (packed ? 2 : -1); part++) {
            int got = -7;
            h[0] = back[0] = 0;
            if (weight_name_to_hf(r, part, naming, h, sizeof h) != 1 ||
                weight_name_from_hf(h, back, sizeof back, &got) != 1 || strcmp(back, r) != 0 || got != part) {
                if (bad++ < 5) printf("  round trip failed: %s part %d -> '%s' -> '%s'\n", r, part, h, back);
                continue;
            }
            add_name(&hf, "%s", h);
        }
    }
    qsort(hf.names, (size_t)hf.n, sizeof(char *), cmp_str);
    int dups = 0;
    for (int i = 1; i < hf.n; i++) dups += strcmp(hf.names[i - 1], hf.names[i]) == 0;
    snprintf(msg, sizeof msg, "R50 keys, %s backbone: every key maps to HF and back", label);
    CHECK(msg, bad == 0, "%d failures", bad);
    snprintf(msg, sizeof msg, "R50 keys, %s backbone: 530 distinct HF names (in_proj split in 3)", label);
    CHECK(msg, hf.n == 530 && dups == 0, "%d names, %d duplicates", hf.n, dups);
    free_names(&hf);
}

static void test_r50_keys(void) {
    NameList ref = {0}, file = {0};
    r50_reference_keys(&ref);
    CHECK("R50 keys: 458 generated", ref.n == 458, "n=%d", ref.n);
    int wf = 0;
    for (int i = 0; i < ref.n; i++) wf += weight_name_is_reference(ref.names[i]);
    CHECK("R50 keys: every key is a well-formed reference name", wf == ref.n, "%d of %d", wf, ref.n);
    const char *src = load_keys_file(&file);
    if (src) {
        int wff = 0;
        for (int i = 0; i < file.n; i++) wff += weight_name_is_reference(file.names[i]);
        CHECK("R50 keys file: every key is a well-formed reference name", wff == file.n && file.n == 458,
              "%d of %d", wff, file.n);
        CHECK("R50 keys file: same set as the generated keys", same_sets(&ref, &file), "sets differ (%s)", src);
    } else {
        test_skip("R50 keys file", "detr-r50-keys.txt not found (set DETR_REF_KEYS to its path)");
    }
    round_trip_all(&ref, WN_BACKBONE_TIMM, "timm");
    round_trip_all(&ref, WN_BACKBONE_NATIVE, "native");
    free_names(&ref);
    free_names(&file);
}

/* weight_names_are_hf on small files with HF, reference and mixed names. */
static int are_hf_of(const char *const *names, int n) {
    char path[] = "/tmp/test_weight_names.XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    close(fd);
    float x = 1;
    StWriter *w = st_writer_new();
    for (int i = 0; i < n; i++) st_writer_add_f32(w, names[i], 0, NULL, &x);
    char err[256];
    int rc = st_writer_save(w, path, err, sizeof err);
    st_writer_free(w);
    StFile f;
    if (rc == 0) rc = st_open(path, &f, err, sizeof err);
    int result = rc == 0 ? weight_names_are_hf(&f) : -1;
    if (rc == 0) st_close(&f);
    unlink(path);
    return result;
}

static void test_are_hf(void) {
    const char *hf[] = {"model.decoder.layernorm.weight", "class_labels_classifier.bias",
                        TB "layer1.0.downsample.1.num_batches_tracked"};
    const char *ref[] = {"transformer.decoder.norm.weight", "class_embed.bias"};
    const char *mixed[] = {"model.decoder.layernorm.weight", "class_embed.bias"};
    const char *other[] = {"foo.weight"};
    CHECK("are_hf: HF names (with a stray num_batches_tracked)", are_hf_of(hf, 3) == 1, "not 1");
    CHECK("are_hf: reference names", are_hf_of(ref, 2) == 0, "not 0");
    CHECK("are_hf: mixed names", are_hf_of(mixed, 2) == 0, "not 0");
    CHECK("are_hf: unrelated names", are_hf_of(other, 1) == 0, "not 0");
    CHECK("are_hf: NULL file", weight_names_are_hf(NULL) == 0, "not 0");
}

int main(void) {
    test_table();
    test_r50_keys();
    test_are_hf();
    return test_finish();
}
