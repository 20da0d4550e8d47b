/* optim.c - see optim.h */
#include "optim.h"
#include <math.h>

void adamw_create(AdamW *opt, ParamSet *ps, const OptimConfig *cfg) {
    opt->cfg = *cfg;
    opt->step = 0;
    opt->m = ps->be->alloc(MEM_OPTIM, ps->n_train);
    opt->v = ps->be->alloc(MEM_OPTIM, ps->n_train);
    ps->be->fill(opt->m, 0.0f, ps->n_train);
    ps->be->fill(opt->v, 0.0f, ps->n_train);
}

void adamw_destroy(AdamW *opt, ParamSet *ps) {
    ps->be->free(opt->m);
    ps->be->free(opt->v);
    opt->m = opt->v = NULL;
}

double grad_global_norm(ParamSet *ps) {
    return sqrt(ps->be->sum_squares(ps->train_grad, ps->n_train));
}

void adamw_step(AdamW *opt, ParamSet *ps, float lr, float lr_backbone, double norm) {
    adamw_step_unscale(opt, ps, lr, lr_backbone, norm, 1.0f);
}

void adamw_step_unscale(AdamW *opt, ParamSet *ps, float lr, float lr_backbone, double norm,
                        float unscale) {
    const OptimConfig *c = &opt->cfg;
    float gscale = unscale;
    if (c->clip > 0) { /* torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), <= 1 */
        double coef = c->clip / (norm + 1e-6);
        if (coef < 1.0) gscale = (float)(coef * unscale);
    }
    opt->step++;
    size_t n_main = ps->n_train_group[GROUP_MAIN], n_bb = ps->n_train_group[GROUP_BACKBONE];
    if (n_main)
        ps->be->adamw(ps->train_data, ps->train_grad, opt->m, opt->v, n_main, lr, c->beta1, c->beta2,
                      c->eps, c->weight_decay, opt->step, gscale);
    if (n_bb)
        ps->be->adamw(ps->train_data + n_main, ps->train_grad + n_main, opt->m + n_main,
                      opt->v + n_main, n_bb, lr_backbone, c->beta1, c->beta2, c->eps,
                      c->weight_decay, opt->step, gscale);
}

float lr_at_epoch(float base_lr, int epoch, int lr_drop) {
    if (lr_drop <= 0) return base_lr;
    return base_lr * powf(0.1f, (float)(epoch / lr_drop));
}
