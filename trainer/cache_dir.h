/* cache_dir.h - the project's cache folder (dataset indexes, the embedded synthetic dataset, the
 * sgemm peak used for MFU): $XDG_CACHE_HOME/detr when XDG_CACHE_HOME is an absolute path (as the
 * XDG spec requires), else $HOME/.cache/detr. */
#ifndef DETR_CACHE_DIR_H
#define DETR_CACHE_DIR_H
#include <stddef.h>

/* Writes the folder's path into out (it is not created). Returns 0; 1 when neither variable
 * gives one (callers choose: an error, a fallback, or no cache); -1 when it does not fit len. */
int cache_root_default(char *out, size_t len);

#endif
