/* golden.c - see golden.h */
#include "golden.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mem.h"

int golden_load_inputs(const char *path, GoldenInputs *in, char *err, size_t errlen) {
    memset(in, 0, sizeof(*in));
    StFile f;
    if (st_open(path, &f, err, errlen) != 0) return -1;
    int rc = -1;
    const StTensor *im = st_find(&f, "images"), *mk = st_find(&f, "mask");
    if (!im || !mk) {
        snprintf(err, errlen, "%s: missing tensor '%s' (expected images F32 [B,3,H,W] and mask U8 [B,H,W])",
                 path, im ? "mask" : "images");
        goto done;
    }
    if (im->ndim != 4 || im->shape[1] != 3 || im->shape[0] < 1 || im->shape[2] < 1 || im->shape[3] < 1) {
        snprintf(err, errlen, "%s: tensor 'images' must have shape [B,3,H,W] with B,H,W >= 1", path);
        goto done;
    }
    if (mk->ndim != 3 || mk->shape[0] != im->shape[0] || mk->shape[1] != im->shape[2] ||
        mk->shape[2] != im->shape[3] || (mk->dtype != ST_U8 && mk->dtype != ST_BOOL)) {
        snprintf(err, errlen, "%s: tensor 'mask' must be U8 (or BOOL) [B,H,W] matching images [%lld,3,%lld,%lld]",
                 path, (long long)im->shape[0], (long long)im->shape[2], (long long)im->shape[3]);
        goto done;
    }
    in->B = (int)im->shape[0];
    in->H = (int)im->shape[2];
    in->W = (int)im->shape[3];
    size_t n = st_numel(im), nm = st_numel(mk);
    in->images = host_alloc(MEM_INPUTS, n * sizeof(float));
    in->mask = host_alloc(MEM_INPUTS, nm);
    if (st_read_f32(&f, im, in->images, err, errlen) != 0) goto done;
    memcpy(in->mask, st_data(&f, mk), nm);
    for (size_t i = 0; i < nm; i++) in->mask[i] = in->mask[i] != 0;
    rc = 0;
done:
    if (rc != 0) golden_free_inputs(in);
    st_close(&f);
    return rc;
}

void golden_free_inputs(GoldenInputs *in) {
    host_free(in->images);
    host_free(in->mask);
    memset(in, 0, sizeof(*in));
}

void golden_add_predictions(StWriter *w, const Detr *m) {
    int B = m->B, Q = m->cfg.queries, L = m->L, C1 = m->C1;
    size_t per_l = (size_t)B * Q * C1, per_b = (size_t)B * Q * 4;
    int64_t sl[3] = {B, Q, C1}, sb[3] = {B, Q, 4};
    st_writer_add_f32(w, "pred_logits", 3, sl, m->logits_host + (L - 1) * per_l);
    st_writer_add_f32(w, "pred_boxes", 3, sb, m->boxes_host + (L - 1) * per_b);
    if (L > 1) {
        int64_t al[4] = {L - 1, B, Q, C1}, ab[4] = {L - 1, B, Q, 4};
        st_writer_add_f32(w, "aux_pred_logits", 4, al, m->logits_host);
        st_writer_add_f32(w, "aux_pred_boxes", 4, ab, m->boxes_host);
    }
}

void golden_add_losses(StWriter *w, const DetrLosses *l) {
    char name[64];
    for (int i = l->first; i < l->L; i++) {
        const LayerLosses *ll = &l->layer[i];
        detr_loss_name(l, i, "loss_ce", name, sizeof(name));
        st_writer_add_scalar(w, name, (float)ll->loss_ce);
        detr_loss_name(l, i, "loss_bbox", name, sizeof(name));
        st_writer_add_scalar(w, name, (float)ll->loss_bbox);
        detr_loss_name(l, i, "loss_giou", name, sizeof(name));
        st_writer_add_scalar(w, name, (float)ll->loss_giou);
        detr_loss_name(l, i, "cardinality_error", name, sizeof(name));
        st_writer_add_scalar(w, name, (float)ll->cardinality_error);
    }
    st_writer_add_scalar(w, "class_error", (float)l->layer[l->L - 1].class_error);
    st_writer_add_scalar(w, "loss", (float)l->total);
}
