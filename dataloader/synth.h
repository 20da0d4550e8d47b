/* synth.h (dataloader) - a synthetic COCO-format detection dataset written to disk: coloured
 * shapes (rectangles, ellipses, triangles, diamonds, crosses, rings) on textured, noisy,
 * photo-like backgrounds, with EXACT boxes (the tight bounding box of each shape's drawn pixels)
 * and JPEGs written by TurboJPEG. It is the embedded default dataset (`make run`, the tests)
 * and what `detr-data synth` writes.
 *
 * Layout of a dataset folder (what dataset_find() discovers):
 *   annotations/instances_train.json, annotations/instances_val.json,
 *   train/000000000001.jpg ..., val/...
 * COCO fields: images {id, file_name, width, height}; annotations {id, image_id, category_id,
 * bbox [x, y, w, h] in pixels, area (drawn pixel count), iscrowd 0}; categories {id, name}.
 * Category ids are 1..classes (so the reference's num_classes is classes + 1). Image ids run
 * 1..train_images in train, then on in val, so they are unique over both splits.
 *
 * Classes: class k (0-based) is shape k % 6 and, when there are more than 6 classes, hue band
 * k / 6 of ceil(classes / 6) bands; within its band every object gets a random colour, so each
 * class shows several colours and the shape is what identifies it. With class_hues, class k
 * has hue band k of `classes` bands instead, so colour identifies it too (the embedded default).
 *
 * Everything is a pure function of the seed: image i of a split is drawn from
 * rng_hash64(seed, split, i), so the output is byte-identical whatever the number of threads.
 *
 * Not to be confused with trainer/synth_batch.h (in-memory batches used before the loader existed):
 * include this one as "../../dataloader/synth.h" from outside dataloader/. */
#ifndef DETR_DATALOADER_SYNTH_H
#define DETR_DATALOADER_SYNTH_H
#include <stddef.h>
#include <stdint.h>

#define SYNTH_NUM_SHAPES 6
#define SYNTH_MAX_OBJECTS 64
#define SYNTH_MAX_CLASSES 1000
#define SYNTH_MAX_SIDE 8192

typedef struct {
    int train_images;      /* images in train/ */
    int val_images;        /* images in val/ */
    int width, height;     /* image size (the largest, with jitter) */
    double size_jitter;    /* 0..0.5: each side drawn from [side * (1 - jitter), side] */
    int classes;           /* category ids 1..classes */
    int min_objects, max_objects; /* per image, 1..SYNTH_MAX_OBJECTS (fewer if they do not fit) */
    int quality;           /* JPEG quality 1..100 (4:2:0 chroma subsampling, as PIL saves) */
    double min_object, max_object; /* object side range, fractions of the image's short side
                                    * (default 0.12..0.45; 0 < min <= max <= 0.9) */
    int class_hues;        /* 1: every class its own hue band (colour and shape identify it);
                            * 0 (default): bands only beyond 6 classes, as described above */
    uint64_t seed;
    int threads;           /* generator threads, 0 = one per online CPU */
} SynthDatasetConfig;

/* `detr-data synth` defaults: 100 train + 25 val images of 640x480, 3 classes, 1..4 objects,
 * quality 90, seed 0. */
void synth_config_default(SynthDatasetConfig *c);

/* The embedded default dataset (see synth.c for why these numbers): 2048 train + 128 val images
 * of 64x64, 3 classes (category ids 1..3, so num_classes = 4) each with its own hue band, one
 * object of 25%..60% of the side per image, quality 90, seed 42. */
void synth_config_embedded(SynthDatasetConfig *c);

/* Checks the fields; returns 0 or -1 with err naming the field and its valid range. */
int synth_config_validate(const SynthDatasetConfig *c, char *err, size_t errlen);

typedef struct {
    int64_t images;        /* JPEG files written (both splits) */
    int64_t objects;       /* annotations written */
    int64_t jpeg_bytes;    /* total size of the JPEG files */
    double seconds;        /* wall time of the whole write */
} SynthStats;

/* Writes the dataset to out_dir, atomically: everything is built in a hidden temporary folder
 * next to out_dir and renamed into place at the end, so a dataset folder is either complete or
 * absent. out_dir must not exist or be an empty folder. stats may be NULL.
 * Returns 0 or -1 with err. */
int synth_dataset_write(const char *out_dir, const SynthDatasetConfig *c, SynthStats *stats,
                        char *err, size_t errlen);

/* The embedded default dataset: generated on first use into
 * $XDG_CACHE_HOME/detr/synth-default-v2 (or ~/.cache/detr/synth-default-v2), reused afterwards;
 * safe when several processes race to create it. Writes the folder's path into dir_out.
 * Returns 0 or -1 with err. */
int synth_dataset_default(char *dir_out, size_t len, char *err, size_t errlen);

/* The same under cache_root (NULL = the default cache folder, $XDG_CACHE_HOME/detr or
 * ~/.cache/detr): the dataset is cache_root/synth-default-v2. *generated (may be NULL) is set
 * to 1 when this call generated it, 0 when it was already there. */
int synth_dataset_default_in(const char *cache_root, char *dir_out, size_t len, int *generated,
                             char *err, size_t errlen);

/* One object of a rendered image. */
typedef struct {
    float bbox[4];         /* x, y, w, h: the tight box of the drawn pixels (pixel edges) */
    int64_t area;          /* drawn pixel count */
    int category;          /* 1..classes */
} SynthObject;

/* Renders image `index` of split (0 = train, 1 = val) exactly as synth_dataset_write would.
 * Sets *w, *h to its size; rgb must hold width*height*3 bytes ([h, w, 3]); object_map (may be
 * NULL) of width*height bytes receives 0 on background and 1 + object number on object pixels.
 * Writes at most SYNTH_MAX_OBJECTS objects; returns their number. */
int synth_render_image(const SynthDatasetConfig *c, int split, int64_t index, int *w, int *h,
                       uint8_t *rgb, uint8_t *object_map, SynthObject *objects);

/* Name of category id (1..classes), e.g. "ellipse" or "ellipse-band2" when classes > 6. */
void synth_category_name(int category, int classes, char *buf, size_t len);

#endif
