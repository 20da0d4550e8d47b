/* assets.h - front-end files embedded into detr-prof at build time (scripts/embed_assets.py
 * generates BUILD/assets.c from reports/, dashboards/ and the charting library from npm), so
 * reports and the dashboard work offline and need no file next to the program.
 * Names: "reports/<file>", "dashboards/<file>", "vendor/echarts.min.js". */
#ifndef DETR_ASSETS_H
#define DETR_ASSETS_H
#include <stddef.h>

typedef struct {
    const char *name;
    const unsigned char *data; /* NUL-terminated (text assets are C strings) */
    size_t size;               /* without the terminating NUL */
} Asset;

/* The asset of that name, or NULL. */
const Asset *asset_find(const char *name);
/* Every asset; the list ends with a {NULL, NULL, 0} entry. */
const Asset *asset_list(void);

#endif
