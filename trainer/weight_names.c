/* weight_names.c - table of HF <-> reference name rules. See weight_names.h.
 *
 * Each rule is a pair of templates, one per naming, whose placeholders correspond by position:
 *   {#}     a decimal index (no leading zeros), printed as is
 *   {#N}    an index in [0, N)
 *   {#N+1}  the same index printed (and parsed) plus one, e.g. HF stage 0 <-> reference layer1
 *   {p}     "weight" or "bias"
 *   {bn}    "weight", "bias", "running_mean" or "running_var"
 * Matching one template captures the values; rendering the other prints them. */
#include "weight_names.h"

#include <stdio.h>
#include <string.h>

enum { FAMILY_ANY = 0 };

typedef struct {
    const char *hf, *ref;
    int qkv_part; /* -1, or 0/1/2: q/k/v slice of the reference in_proj */
    int family;   /* FAMILY_ANY or the WeightBackboneNaming the rule belongs to */
} NameRule;

#define HB "model.backbone.conv_encoder.model."
#define RB "backbone.0.body."
#define HENC "model.encoder.layers.{#}."
#define RENC "transformer.encoder.layers.{#}."
#define HDEC "model.decoder.layers.{#}."
#define RDEC "transformer.decoder.layers.{#}."

/* One attention block: q/k/v slices of in_proj, and out_proj. */
#define ATTN_RULES(H, R)                                                         \
    {H ".q_proj.{p}", R ".in_proj_{p}", 0, FAMILY_ANY},                          \
    {H ".k_proj.{p}", R ".in_proj_{p}", 1, FAMILY_ANY},                          \
    {H ".v_proj.{p}", R ".in_proj_{p}", 2, FAMILY_ANY},                          \
    {H ".out_proj.{p}", R ".out_proj.{p}", -1, FAMILY_ANY}

static const NameRule RULES[] = {
    /* ResNet body, timm naming: the reference sub-names unchanged */
    {HB "conv1.weight", RB "conv1.weight", -1, WN_BACKBONE_TIMM},
    {HB "bn1.{bn}", RB "bn1.{bn}", -1, WN_BACKBONE_TIMM},
    {HB "layer{#4+1}.{#}.conv{#3+1}.weight", RB "layer{#4+1}.{#}.conv{#3+1}.weight", -1, WN_BACKBONE_TIMM},
    {HB "layer{#4+1}.{#}.bn{#3+1}.{bn}", RB "layer{#4+1}.{#}.bn{#3+1}.{bn}", -1, WN_BACKBONE_TIMM},
    {HB "layer{#4+1}.{#}.downsample.0.weight", RB "layer{#4+1}.{#}.downsample.0.weight", -1, WN_BACKBONE_TIMM},
    {HB "layer{#4+1}.{#}.downsample.1.{bn}", RB "layer{#4+1}.{#}.downsample.1.{bn}", -1, WN_BACKBONE_TIMM},
    /* ResNet body, native HF ResNet naming (stage s = reference layer s+1, layer.k = conv/bn k+1) */
    {HB "embedder.embedder.convolution.weight", RB "conv1.weight", -1, WN_BACKBONE_NATIVE},
    {HB "embedder.embedder.normalization.{bn}", RB "bn1.{bn}", -1, WN_BACKBONE_NATIVE},
    {HB "encoder.stages.{#4}.layers.{#}.layer.{#3}.convolution.weight", RB "layer{#4+1}.{#}.conv{#3+1}.weight", -1,
     WN_BACKBONE_NATIVE},
    {HB "encoder.stages.{#4}.layers.{#}.layer.{#3}.normalization.{bn}", RB "layer{#4+1}.{#}.bn{#3+1}.{bn}", -1,
     WN_BACKBONE_NATIVE},
    {HB "encoder.stages.{#4}.layers.{#}.shortcut.convolution.weight", RB "layer{#4+1}.{#}.downsample.0.weight", -1,
     WN_BACKBONE_NATIVE},
    {HB "encoder.stages.{#4}.layers.{#}.shortcut.normalization.{bn}", RB "layer{#4+1}.{#}.downsample.1.{bn}", -1,
     WN_BACKBONE_NATIVE},
    /* projection and queries */
    {"model.input_projection.{p}", "input_proj.{p}", -1, FAMILY_ANY},
    {"model.query_position_embeddings.weight", "query_embed.weight", -1, FAMILY_ANY},
    /* encoder layer */
    ATTN_RULES(HENC "self_attn", RENC "self_attn"),
    {HENC "fc1.{p}", RENC "linear1.{p}", -1, FAMILY_ANY},
    {HENC "fc2.{p}", RENC "linear2.{p}", -1, FAMILY_ANY},
    {HENC "self_attn_layer_norm.{p}", RENC "norm1.{p}", -1, FAMILY_ANY},
    {HENC "final_layer_norm.{p}", RENC "norm2.{p}", -1, FAMILY_ANY},
    /* decoder layer */
    ATTN_RULES(HDEC "self_attn", RDEC "self_attn"),
    ATTN_RULES(HDEC "encoder_attn", RDEC "multihead_attn"),
    {HDEC "fc1.{p}", RDEC "linear1.{p}", -1, FAMILY_ANY},
    {HDEC "fc2.{p}", RDEC "linear2.{p}", -1, FAMILY_ANY},
    {HDEC "self_attn_layer_norm.{p}", RDEC "norm1.{p}", -1, FAMILY_ANY},
    {HDEC "encoder_attn_layer_norm.{p}", RDEC "norm2.{p}", -1, FAMILY_ANY},
    {HDEC "final_layer_norm.{p}", RDEC "norm3.{p}", -1, FAMILY_ANY},
    {"model.decoder.layernorm.{p}", "transformer.decoder.norm.{p}", -1, FAMILY_ANY},
    /* heads */
    {"class_labels_classifier.{p}", "class_embed.{p}", -1, FAMILY_ANY},
    {"bbox_predictor.layers.{#}.{p}", "bbox_embed.layers.{#}.{p}", -1, FAMILY_ANY},
};
#define N_RULES ((int)(sizeof RULES / sizeof RULES[0]))

#define MAX_CAPS 8
#define MAX_INDEX 99999

typedef struct {
    int value;       /* canonical index (numeric placeholders) */
    const char *str; /* chosen word (word placeholders) */
} Capture;

static const char *const WORDS_P[] = {"weight", "bias", NULL};
static const char *const WORDS_BN[] = {"weight", "bias", "running_mean", "running_var", NULL};

/* A placeholder's meaning, parsed from the text between '{' and '}'. */
typedef struct {
    const char *const *words; /* non-NULL for a word placeholder */
    int bound;                /* numeric: value < bound, 0 = no bound */
    int plus_one;             /* numeric: printed as value + 1 */
} Placeholder;

/* Parses the placeholder starting at t (which points at '{'); returns the text after '}'. */
static const char *parse_placeholder(const char *t, Placeholder *ph) {
    memset(ph, 0, sizeof *ph);
    t++;
    if (t[0] == '#') {
        t++;
        if (*t >= '1' && *t <= '9') ph->bound = *t++ - '0';
        if (strncmp(t, "+1", 2) == 0) {
            ph->plus_one = 1;
            t += 2;
        }
    } else if (strncmp(t, "bn", 2) == 0) {
        ph->words = WORDS_BN;
        t += 2;
    } else if (t[0] == 'p') {
        ph->words = WORDS_P;
        t++;
    }
    return *t == '}' ? t + 1 : t; /* the rule table is fixed; tests cover every rule */
}

/* Reads a decimal index without leading zeros; returns the text after it, or NULL. */
static const char *parse_index(const char *s, int *v) {
    if (*s < '0' || *s > '9') return NULL;
    if (s[0] == '0' && s[1] >= '0' && s[1] <= '9') return NULL;
    long x = 0;
    while (*s >= '0' && *s <= '9') {
        x = x * 10 + (*s++ - '0');
        if (x > MAX_INDEX) return NULL;
    }
    *v = (int)x;
    return s;
}

/* Matches the whole of s against template t; fills caps. Returns 1 on a match. */
static int template_match(const char *t, const char *s, Capture *caps, int *ncap) {
    *ncap = 0;
    while (*t) {
        if (*t != '{') {
            if (*s++ != *t++) return 0;
            continue;
        }
        Placeholder ph;
        t = parse_placeholder(t, &ph);
        if (*ncap >= MAX_CAPS) return 0;
        Capture *c = &caps[(*ncap)++];
        c->str = NULL;
        if (ph.words) {
            size_t len = 0;
            for (int i = 0; ph.words[i]; i++) {
                size_t l = strlen(ph.words[i]);
                /* a word must be followed by the template's next literal char (or the end) */
                if (strncmp(s, ph.words[i], l) == 0 && s[l] == *t) {
                    c->str = ph.words[i];
                    len = l;
                    break;
                }
            }
            if (!c->str) return 0;
            s += len;
        } else {
            int x;
            s = parse_index(s, &x);
            if (!s) return 0;
            c->value = ph.plus_one ? x - 1 : x;
            if (c->value < 0 || (ph.bound && c->value >= ph.bound)) return 0;
        }
    }
    return *s == 0;
}

/* Prints template t with caps into out. Returns 1, or -1 if out is too small. */
static int template_render(const char *t, const Capture *caps, int ncap, char *out, size_t outlen) {
    size_t o = 0;
    int k = 0;
    char piece[32];
    while (*t) {
        const char *text = piece;
        if (*t != '{') {
            piece[0] = *t++;
            piece[1] = 0;
        } else {
            Placeholder ph;
            t = parse_placeholder(t, &ph);
            if (k >= ncap) return -1;
            const Capture *c = &caps[k++];
            if (ph.words)
                text = c->str;
            else
                snprintf(piece, sizeof piece, "%d", c->value + (ph.plus_one ? 1 : 0));
        }
        size_t l = strlen(text);
        if (o + l + 1 > outlen) return -1;
        memcpy(out + o, text, l);
        o += l;
    }
    out[o] = 0;
    return 1;
}

int weight_name_from_hf(const char *hf_name, char *out, size_t outlen, int *qkv_part) {
    if (qkv_part) *qkv_part = -1;
    if (out && outlen) out[0] = 0;
    if (!hf_name || !out || outlen == 0) return 0;
    Capture caps[MAX_CAPS];
    int ncap;
    for (int r = 0; r < N_RULES; r++) {
        if (!template_match(RULES[r].hf, hf_name, caps, &ncap)) continue;
        int rc = template_render(RULES[r].ref, caps, ncap, out, outlen);
        if (rc != 1) {
            out[0] = 0;
            return -1;
        }
        if (qkv_part) *qkv_part = RULES[r].qkv_part;
        return 1;
    }
    return 0;
}

int weight_name_to_hf(const char *ref_name, int qkv_part, WeightBackboneNaming naming, char *out, size_t outlen) {
    if (out && outlen) out[0] = 0;
    if (!ref_name || !out || outlen == 0) return 0;
    Capture caps[MAX_CAPS];
    int ncap;
    for (int r = 0; r < N_RULES; r++) {
        const NameRule *rule = &RULES[r];
        if (rule->qkv_part != qkv_part || (rule->family != FAMILY_ANY && rule->family != (int)naming)) continue;
        if (!template_match(rule->ref, ref_name, caps, &ncap)) continue;
        int rc = template_render(rule->hf, caps, ncap, out, outlen);
        if (rc != 1) out[0] = 0;
        return rc;
    }
    return 0;
}

int weight_name_is_reference(const char *name) {
    if (!name) return 0;
    Capture caps[MAX_CAPS];
    int ncap;
    for (int r = 0; r < N_RULES; r++)
        if (template_match(RULES[r].ref, name, caps, &ncap)) return 1;
    return 0;
}

int weight_names_are_hf(const StFile *f) {
    if (!f) return 0;
    int hf = 0;
    char buf[256];
    for (int i = 0; i < f->n; i++) {
        const char *name = f->tensors[i].name;
        if (weight_name_is_reference(name)) return 0;
        if (weight_name_from_hf(name, buf, sizeof buf, NULL) == 1) hf = 1;
    }
    return hf;
}
