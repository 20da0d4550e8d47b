/* cuda_kernels_common.cu - the host-side helpers every own-kernel file shares: the grow-only
 * device workspace and the shape-error exit (see cuda_kernels_internal.h). */
#include <stdio.h>
#include <stdlib.h>
#include "cuda_kernels_internal.h"

static float *g_workspace;      /* device [g_workspace_floats] */
static size_t g_workspace_floats;

float *cuda_kernels_workspace(size_t nfloats) {
    if (nfloats <= g_workspace_floats) return g_workspace;
    if (g_workspace) {
        /* kernels issued earlier may still read or write the old buffer */
        cudaCheck(cudaStreamSynchronize(cuda_stream()));
        cuda_free(g_workspace);
        g_workspace = NULL;
        g_workspace_floats = 0;
    }
    g_workspace = cuda_alloc(MEM_WORKSPACE, nfloats);
    if (!g_workspace) { /* the --mem-limit budget refused it (exit_on_oom off) */
        fprintf(stderr,
                "error: backend_cuda: a kernel workspace of %zu floats was refused by the memory "
                "budget\nHINT: raise --mem-limit or lower --batch / the image size.\n",
                nfloats);
        exit(EXIT_OOM);
    }
    g_workspace_floats = nfloats;
    return g_workspace;
}

void cuda_kernels_shape_error(const char *op, const char *what) {
    fprintf(stderr, "error: backend_cuda: %s: %s (a bug in the calling code)\n", op, what);
    exit(2);
}
