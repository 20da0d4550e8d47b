/* matcher.c - see matcher.h. */
#include "matcher.h"
#include <math.h>
#include <string.h>
#include "box_ops.h"
#include "mem.h"

/* The solver works on the orientation with no more rows than columns ("short" x "long"); a tall
 * matrix is read transposed instead of copied. */
typedef struct {
    const double *cost; /* [rows, cols] as given */
    int cols;
    int transposed;     /* 1: short index = original column, long index = original row */
} CostView;

static inline double view_at(const CostView *v, int s, int l) {
    return v->transposed ? v->cost[(size_t)l * v->cols + s] : v->cost[(size_t)s * v->cols + l];
}

static int all_finite(const double *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* Scratch of the solver; arrays are 1-based, index 0 of the long side being a virtual column
 * that holds the row being inserted. */
typedef struct {
    double *u;        /* [n + 1] short-side potentials */
    double *v;        /* [m + 1] long-side potentials */
    double *minv;     /* [m + 1] least reduced cost reaching each column in this search */
    int *owner;       /* [m + 1] short row assigned to each column, 0 = free */
    int *way;         /* [m + 1] previous column on the shortest path */
    unsigned char *used; /* [m + 1] column already in the search tree */
} LsaScratch;

static void *scratch_alloc(int n, int m, LsaScratch *s) {
    size_t nd = (size_t)(n + 1) + 2 * (size_t)(m + 1), ni = 2 * (size_t)(m + 1);
    size_t bytes = nd * sizeof(double) + ni * sizeof(int) + (size_t)(m + 1);
    char *block = host_alloc(MEM_WORKSPACE, bytes);
    if (!block) return NULL;
    memset(block, 0, bytes);
    s->u = (double *)block;
    s->v = s->u + (n + 1);
    s->minv = s->v + (m + 1);
    s->owner = (int *)(s->minv + (m + 1));
    s->way = s->owner + (m + 1);
    s->used = (unsigned char *)(s->way + (m + 1));
    return block;
}

/* Inserts short row `row` (1-based) into the assignment along a shortest augmenting path
 * (Dijkstra on reduced costs), then updates the potentials. Returns 0, or -1 if no path was
 * found (cannot happen for finite costs with n <= m). */
static int augment_row(const CostView *cv, int m, int row, LsaScratch *s) {
    for (int j = 0; j <= m; j++) {
        s->minv[j] = INFINITY;
        s->used[j] = 0;
    }
    s->owner[0] = row;
    int j0 = 0; /* current column; 0 is the virtual start */
    do {
        s->used[j0] = 1;
        int i0 = s->owner[j0], j1 = -1;
        double delta = INFINITY;
        for (int j = 1; j <= m; j++) {
            if (s->used[j]) continue;
            double reduced = view_at(cv, i0 - 1, j - 1) - s->u[i0] - s->v[j];
            if (reduced < s->minv[j]) {
                s->minv[j] = reduced;
                s->way[j] = j0;
            }
            if (j1 < 0 || s->minv[j] < delta) {
                delta = s->minv[j];
                j1 = j;
            }
        }
        if (j1 < 0 || !isfinite(delta)) return -1;
        for (int j = 0; j <= m; j++) {
            if (s->used[j]) {
                s->u[s->owner[j]] += delta;
                s->v[j] -= delta;
            } else {
                s->minv[j] -= delta;
            }
        }
        j0 = j1;
    } while (s->owner[j0] != 0);
    do { /* flip the path back to the start */
        int j1 = s->way[j0];
        s->owner[j0] = s->owner[j1];
        j0 = j1;
    } while (j0 != 0);
    return 0;
}

double lsa_solve(const double *cost, int rows, int cols, int *row_to_col) {
    for (int i = 0; i < rows; i++) row_to_col[i] = -1;
    if (rows <= 0 || cols <= 0) return 0;
    if (!all_finite(cost, (size_t)rows * cols)) return NAN;

    CostView cv = {cost, cols, rows > cols};
    int n = cv.transposed ? cols : rows, m = cv.transposed ? rows : cols;
    LsaScratch s;
    void *block = scratch_alloc(n, m, &s);
    if (!block) return NAN;
    int ok = 1;
    for (int row = 1; row <= n && ok; row++) ok = augment_row(&cv, m, row, &s) == 0;
    if (ok) {
        for (int j = 1; j <= m; j++) {
            if (s.owner[j] == 0) continue;
            if (cv.transposed) row_to_col[j - 1] = s.owner[j] - 1;
            else row_to_col[s.owner[j] - 1] = j - 1;
        }
    }
    host_free(block);
    if (!ok) {
        for (int i = 0; i < rows; i++) row_to_col[i] = -1;
        return NAN;
    }
    double total = 0; /* summed from the input, not from the potentials, to avoid their rounding */
    for (int i = 0; i < rows; i++)
        if (row_to_col[i] >= 0) total += cost[(size_t)i * cols + row_to_col[i]];
    return total;
}

void matcher_cost(const double *probs, const float *boxes, int Q, int C1, const ImageTargets *t,
                  const LossWeights *w, double *cost) {
    int n = t->n;
    for (int q = 0; q < Q; q++) {
        const double *pq = probs + (size_t)q * C1; /* [C1] */
        const float *bq = boxes + 4 * (size_t)q;   /* [4] */
        for (int j = 0; j < n; j++) {
            const float *bj = t->boxes + 4 * (size_t)j;
            double c = (double)w->cost_bbox * box_l1(bq, bj)
                     - (double)w->cost_class * pq[t->labels[j]]
                     - (double)w->cost_giou * box_giou_cxcywh(bq, bj);
            cost[(size_t)q * n + j] = c;
        }
    }
}

int matcher_match_image(const double *probs, const float *boxes, int Q, int C1,
                        const ImageTargets *t, const LossWeights *w, int *query_to_target) {
    int n = t->n;
    for (int q = 0; q < Q; q++) query_to_target[q] = -1;
    if (Q <= 0 || n <= 0) return 0;
    double *cost = host_alloc(MEM_WORKSPACE, (size_t)Q * n * sizeof(double)); /* [Q, n] */
    if (!cost) return -1;
    matcher_cost(probs, boxes, Q, C1, t, w, cost);
    double total = lsa_solve(cost, Q, n, query_to_target);
    host_free(cost);
    if (isnan(total)) return -1;
    return Q < n ? Q : n;
}
