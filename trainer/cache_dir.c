/* cache_dir.c - see cache_dir.h */
#include "cache_dir.h"
#include <stdio.h>
#include <stdlib.h>

int cache_root_default(char *out, size_t len) {
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (xdg && xdg[0] == '/') n = snprintf(out, len, "%s/detr", xdg);
    else if (home && *home) n = snprintf(out, len, "%s/.cache/detr", home);
    else return 1;
    return n < 0 || (size_t)n >= len ? -1 : 0;
}
