/* box_ops.c - see box_ops.h. */
#include "box_ops.h"
#include <stddef.h>

/* ---- format conversion ---- */

void box_cxcywh_to_xyxy(const double c[4], double x[4]) {
    double cx = c[0], cy = c[1], w = c[2], h = c[3];
    x[0] = cx - 0.5 * w;
    x[1] = cy - 0.5 * h;
    x[2] = cx + 0.5 * w;
    x[3] = cy + 0.5 * h;
}

void box_xyxy_to_cxcywh(const double x[4], double c[4]) {
    double x0 = x[0], y0 = x[1], x1 = x[2], y1 = x[3];
    c[0] = (x0 + x1) / 2;
    c[1] = (y0 + y1) / 2;
    c[2] = x1 - x0;
    c[3] = y1 - y0;
}

void box_cxcywh_to_xyxy_backward(const double dx[4], double dc[4]) {
    dc[0] += dx[0] + dx[2];
    dc[1] += dx[1] + dx[3];
    dc[2] += 0.5 * (dx[2] - dx[0]);
    dc[3] += 0.5 * (dx[3] - dx[1]);
}

static void load_box(const float *src, double dst[4]) {
    for (int k = 0; k < 4; k++) dst[k] = src[k];
}

static void store_box(const double src[4], float *dst) {
    for (int k = 0; k < 4; k++) dst[k] = (float)src[k];
}

void boxes_cxcywh_to_xyxy(const float *in, float *out, int n) {
    for (int i = 0; i < n; i++) {
        double c[4], x[4];
        load_box(in + 4 * i, c);
        box_cxcywh_to_xyxy(c, x);
        store_box(x, out + 4 * i);
    }
}

void boxes_xyxy_to_cxcywh(const float *in, float *out, int n) {
    for (int i = 0; i < n; i++) {
        double x[4], c[4];
        load_box(in + 4 * i, x);
        box_xyxy_to_cxcywh(x, c);
        store_box(c, out + 4 * i);
    }
}

/* ---- IoU / GIoU ---- */

/* Every intermediate of the GIoU forward pass, kept for the backward. */
typedef struct {
    double area_a, area_b;
    double iw_raw, ih_raw;   /* min(x1) - max(x0), min(y1) - max(y0): the intersection's sides */
    double inter, uni, iou;
    double cw_raw, ch_raw;   /* max(x1) - min(x0), max(y1) - min(y0): the enclosing box's sides */
    double enclose, giou;
} GiouParts;

static double fmax2(double a, double b) { return a > b ? a : b; }
static double fmin2(double a, double b) { return a < b ? a : b; }
static double relu(double t) { return t > 0 ? t : 0; }

static void giou_forward(const double a[4], const double b[4], GiouParts *p) {
    p->area_a = (a[2] - a[0]) * (a[3] - a[1]);
    p->area_b = (b[2] - b[0]) * (b[3] - b[1]);
    p->iw_raw = fmin2(a[2], b[2]) - fmax2(a[0], b[0]);
    p->ih_raw = fmin2(a[3], b[3]) - fmax2(a[1], b[1]);
    p->inter = relu(p->iw_raw) * relu(p->ih_raw);
    p->uni = p->area_a + p->area_b - p->inter;
    p->iou = p->uni > 0 ? p->inter / p->uni : 0; /* union 0: both boxes have zero area */
    p->cw_raw = fmax2(a[2], b[2]) - fmin2(a[0], b[0]);
    p->ch_raw = fmax2(a[3], b[3]) - fmin2(a[1], b[1]);
    p->enclose = relu(p->cw_raw) * relu(p->ch_raw);
    double penalty = p->enclose > 0 ? (p->enclose - p->uni) / p->enclose : 0;
    p->giou = p->iou - penalty;
}

double box_iou(const double a[4], const double b[4]) {
    GiouParts p;
    giou_forward(a, b, &p);
    return p.iou;
}

double box_giou(const double a[4], const double b[4]) {
    GiouParts p;
    giou_forward(a, b, &p);
    return p.giou;
}

/* Gradient of max(u, v) (or min) to its arguments; ties split it in half as PyTorch does. */
static void max_backward(double u, double v, double g, double *du, double *dv) {
    if (u > v) *du += g;
    else if (u < v) *dv += g;
    else { *du += 0.5 * g; *dv += 0.5 * g; }
}

static void min_backward(double u, double v, double g, double *du, double *dv) {
    if (u < v) *du += g;
    else if (u > v) *dv += g;
    else { *du += 0.5 * g; *dv += 0.5 * g; }
}

/* Gradient through relu(t) = clamp(t, min=0): passes where t >= 0, as torch.clamp's backward. */
static double relu_backward(double t, double g) { return t >= 0 ? g : 0; }

/* Sends the gradient of one box's area (x1-x0)*(y1-y0) to its corners. */
static void area_backward(const double x[4], double g, double dx[4]) {
    double w = x[2] - x[0], h = x[3] - x[1];
    dx[0] -= g * h;
    dx[2] += g * h;
    dx[1] -= g * w;
    dx[3] += g * w;
}

void box_giou_backward(const double a[4], const double b[4], double dgiou, double da_out[4],
                       double db_out[4]) {
    GiouParts p;
    giou_forward(a, b, &p);
    double g_iou = dgiou, g_uni = 0, g_inter = 0, g_enclose = 0;
    if (p.enclose > 0) { /* giou = iou - 1 + union / enclose */
        g_uni += dgiou / p.enclose;
        g_enclose -= dgiou * p.uni / (p.enclose * p.enclose);
    }
    if (p.uni > 0) {
        g_inter += g_iou / p.uni;
        g_uni -= g_iou * p.inter / (p.uni * p.uni);
    }
    g_inter -= g_uni; /* union = area_a + area_b - inter */

    double da[4] = {0, 0, 0, 0}, db[4] = {0, 0, 0, 0};
    area_backward(a, g_uni, da);
    area_backward(b, g_uni, db);

    /* intersection: relu(min(x1) - max(x0)) * relu(min(y1) - max(y0)) */
    double g_iw = relu_backward(p.iw_raw, g_inter * relu(p.ih_raw));
    double g_ih = relu_backward(p.ih_raw, g_inter * relu(p.iw_raw));
    min_backward(a[2], b[2], g_iw, &da[2], &db[2]);
    max_backward(a[0], b[0], -g_iw, &da[0], &db[0]);
    min_backward(a[3], b[3], g_ih, &da[3], &db[3]);
    max_backward(a[1], b[1], -g_ih, &da[1], &db[1]);

    /* enclosing box: relu(max(x1) - min(x0)) * relu(max(y1) - min(y0)) */
    double g_cw = relu_backward(p.cw_raw, g_enclose * relu(p.ch_raw));
    double g_ch = relu_backward(p.ch_raw, g_enclose * relu(p.cw_raw));
    max_backward(a[2], b[2], g_cw, &da[2], &db[2]);
    min_backward(a[0], b[0], -g_cw, &da[0], &db[0]);
    max_backward(a[3], b[3], g_ch, &da[3], &db[3]);
    min_backward(a[1], b[1], -g_ch, &da[1], &db[1]);

    for (int k = 0; k < 4; k++) {
        if (da_out) da_out[k] += da[k];
        if (db_out) db_out[k] += db[k];
    }
}

static void pairwise(const float *a, int na, const float *b, int nb, double *out,
                     double (*fn)(const double *, const double *)) {
    for (int i = 0; i < na; i++) {
        double bi[4];
        load_box(a + 4 * i, bi);
        for (int j = 0; j < nb; j++) {
            double bj[4];
            load_box(b + 4 * j, bj);
            out[(size_t)i * nb + j] = fn(bi, bj);
        }
    }
}

void box_iou_matrix(const float *a, int na, const float *b, int nb, double *out) {
    pairwise(a, na, b, nb, out, box_iou);
}

void box_giou_matrix(const float *a, int na, const float *b, int nb, double *out) {
    pairwise(a, na, b, nb, out, box_giou);
}

/* ---- cxcywh losses ---- */

static void load_xyxy(const float c[4], double x[4]) {
    double cd[4];
    load_box(c, cd);
    box_cxcywh_to_xyxy(cd, x);
}

double box_giou_cxcywh(const float a[4], const float b[4]) {
    double ax[4], bx[4];
    load_xyxy(a, ax);
    load_xyxy(b, bx);
    return box_giou(ax, bx);
}

void box_giou_cxcywh_backward(const float a[4], const float b[4], double dgiou, double da[4],
                              double db[4]) {
    double ax[4], bx[4], dax[4] = {0, 0, 0, 0}, dbx[4] = {0, 0, 0, 0};
    load_xyxy(a, ax);
    load_xyxy(b, bx);
    box_giou_backward(ax, bx, dgiou, dax, dbx);
    if (da) box_cxcywh_to_xyxy_backward(dax, da);
    if (db) box_cxcywh_to_xyxy_backward(dbx, db);
}

double box_l1(const float a[4], const float b[4]) {
    double s = 0;
    for (int k = 0; k < 4; k++) {
        double d = (double)a[k] - (double)b[k];
        s += d < 0 ? -d : d;
    }
    return s;
}

void box_l1_backward(const float a[4], const float b[4], double dl1, double da[4]) {
    for (int k = 0; k < 4; k++) {
        double d = (double)a[k] - (double)b[k];
        da[k] += d > 0 ? dl1 : d < 0 ? -dl1 : 0; /* sign(0) = 0, as torch.sign */
    }
}
