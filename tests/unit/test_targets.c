/* test_targets.c - T.json reader: good files load exactly, every kind of bad file is refused with a message
 * naming the file, the image and the field. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "targets.h"

static char g_path[64];

static void write_text(const char *text) {
    FILE *fp = fopen(g_path, "w");
    if (fp) {
        fputs(text, fp);
        fclose(fp);
    }
}

static void expect_bad(const char *name, const char *json, int expected_images, const char *want) {
    write_text(json);
    ImageTargetsOwned *t = (ImageTargetsOwned *)1; /* must be reset to NULL on failure */
    char err[512] = "";
    int count = -7;
    int rc = targets_load_json_n(g_path, expected_images, &t, &count, err, sizeof err);
    CHECK(name, rc == -1 && t == NULL && count == 0 && strstr(err, g_path) && strstr(err, want),
          "rc=%d err='%s' (wanted '%s')", rc, err, want);
    if (rc == 0) targets_free(t, count);
}

static void test_good(void) {
    write_text("[{\"labels\": [17, 0, 90], \"boxes\": [[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.05, 0.1], [0, 1, 1, 0]],"
               "  \"image_id\": 7},\n"
               " {\"labels\": [], \"boxes\": []},\n"
               " {\"boxes\": [[0.25, 0.75, 0.5, 0.125]], \"labels\": [3]}]\n");
    ImageTargetsOwned *t = NULL;
    char err[512] = "";
    int rc = targets_load_json(g_path, 3, &t, err, sizeof err);
    CHECK("good: three images load", rc == 0 && t, "rc=%d %s", rc, err);
    if (rc != 0) return;
    CHECK("good: counts", t[0].n == 3 && t[1].n == 0 && t[2].n == 1, "n=%d %d %d", t[0].n, t[1].n, t[2].n);
    CHECK("good: labels", t[0].labels[0] == 17 && t[0].labels[1] == 0 && t[0].labels[2] == 90 && t[2].labels[0] == 3,
          "labels differ");
    const float b0[12] = {0.5f, 0.5f, 0.2f, 0.4f, 0.1f, 0.9f, 0.05f, 0.1f, 0, 1, 1, 0};
    const float b2[4] = {0.25f, 0.75f, 0.5f, 0.125f};
    CHECK("good: boxes (integers accepted as numbers)",
          memcmp(t[0].boxes, b0, sizeof b0) == 0 && memcmp(t[2].boxes, b2, sizeof b2) == 0, "boxes differ");
    CHECK("good: empty image has no buffers", t[1].labels == NULL && t[1].boxes == NULL, "non-NULL");
    targets_free(t, 3);

    int count = 0;
    rc = targets_load_json_n(g_path, -1, &t, &count, err, sizeof err);
    CHECK("good: expected_images -1 accepts any count and reports it", rc == 0 && count == 3, "rc=%d count=%d %s", rc,
          count, err);
    if (rc == 0) targets_free(t, count);

    write_text("[]");
    rc = targets_load_json_n(g_path, 0, &t, &count, err, sizeof err);
    CHECK("good: empty list with expected 0", rc == 0 && count == 0, "rc=%d %s", rc, err);
    if (rc == 0) targets_free(t, count);
}

static void test_bad(void) {
    expect_bad("bad: image count mismatch", "[{\"labels\": [], \"boxes\": []}]", 2, "expected 2");
    expect_bad("bad: not JSON", "[{\"labels\": [1], \"boxes\": [[0.1, 0.1, 0.1, 0.1]]", -1, "JSON");
    expect_bad("bad: NaN is not JSON", "[{\"labels\": [1], \"boxes\": [[NaN, 0.1, 0.1, 0.1]]}]", -1, "JSON");
    expect_bad("bad: empty file", "", -1, "JSON");
    expect_bad("bad: top level is an object", "{\"labels\": [], \"boxes\": []}", -1, "expected a list");
    expect_bad("bad: entry not an object", "[{\"labels\": [], \"boxes\": []}, 5]", -1, "image 1: entry is not an object");
    expect_bad("bad: labels missing", "[{\"boxes\": []}]", -1, "image 0: \"labels\"");
    expect_bad("bad: boxes missing", "[{\"labels\": []}]", -1, "image 0: \"boxes\"");
    expect_bad("bad: labels not a list", "[{\"labels\": 3, \"boxes\": [[0.1, 0.1, 0.1, 0.1]]}]", -1, "\"labels\"");
    expect_bad("bad: count mismatch",
               "[{\"labels\": [1], \"boxes\": []}, {\"labels\": [1, 2], \"boxes\": [[0.1, 0.1, 0.1, 0.1]]}]", -1,
               "image 0: 1 labels but 0 boxes");
    expect_bad("bad: negative label", "[{\"labels\": [2, -1], \"boxes\": [[0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1]]}]",
               -1, "image 0: labels[1] is not a non-negative integer");
    expect_bad("bad: fractional label", "[{\"labels\": [2.5], \"boxes\": [[0.1, 0.1, 0.1, 0.1]]}]", -1, "labels[0]");
    expect_bad("bad: string label", "[{\"labels\": [\"cat\"], \"boxes\": [[0.1, 0.1, 0.1, 0.1]]}]", -1, "labels[0]");
    expect_bad("bad: huge label", "[{\"labels\": [4294967296], \"boxes\": [[0.1, 0.1, 0.1, 0.1]]}]", -1, "labels[0]");
    expect_bad("bad: box with 3 numbers",
               "[{\"labels\": [], \"boxes\": []}, {\"labels\": [1, 2, 3], \"boxes\": [[0.1, 0.1, 0.1, 0.1], "
               "[0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1]]}]",
               -1, "image 1: boxes[2] has 3 numbers, expected 4 (cx, cy, w, h)");
    expect_bad("bad: box not a list", "[{\"labels\": [1], \"boxes\": [0.5]}]", -1, "boxes[0] is not a list");
    expect_bad("bad: box with a string", "[{\"labels\": [1], \"boxes\": [[0.1, \"a\", 0.1, 0.1]]}]", -1,
               "boxes[0] cy is not a finite number");
    expect_bad("bad: box value overflows float", "[{\"labels\": [1], \"boxes\": [[1e300, 0.1, 0.1, 0.1]]}]", -1,
               "boxes[0] cx is not a finite number");
    expect_bad("bad: negative width", "[{\"labels\": [1], \"boxes\": [[0.5, 0.5, -0.1, 0.1]]}]", -1,
               "boxes[0] w = -0.1 is negative");
    expect_bad("bad: duplicate key", "[{\"labels\": [1], \"labels\": [2], \"boxes\": [[0.5, 0.5, 0.1, 0.1]]}]", -1,
               "duplicate");

    ImageTargetsOwned *t = NULL;
    char err[512] = "";
    int rc = targets_load_json("/nonexistent-detr/T.json", 2, &t, err, sizeof err);
    CHECK("bad: missing file", rc == -1 && strstr(err, "/nonexistent-detr/T.json"), "rc=%d %s", rc, err);
}

int main(void) {
    snprintf(g_path, sizeof g_path, "/tmp/test_targets.XXXXXX");
    int fd = mkstemp(g_path);
    if (fd < 0) {
        printf("FAIL cannot create a temporary file\n");
        return 1;
    }
    close(fd);
    test_good();
    test_bad();
    unlink(g_path);
    return test_finish();
}
