/* prof_schedule.c - see prof_schedule.h. */
#include "prof_schedule.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

static const char *const field_names[] = {"wait", "warmup", "active", "repeat"};

int prof_schedule_parse(const char *text, ProfSchedule *out, char *err, size_t errlen) {
    int64_t v[4] = {0, 0, 0, 0};
    int n = 0;
    const char *p = text ? text : "";
    for (;;) {
        if (n == 4) {
            snprintf(err, errlen, "--trace-steps '%s': more than 4 fields; use wait:warmup:active[:repeat], "
                     "e.g. %s", text, "1:1:5:1");
            return -1;
        }
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (end == p || errno || x < 0 || (*end && *end != ':')) {
            snprintf(err, errlen, "--trace-steps '%s': %s must be a non-negative integer; use "
                     "wait:warmup:active[:repeat], e.g. 1:1:5:1", text ? text : "", field_names[n]);
            return -1;
        }
        v[n++] = x;
        if (!*end) break;
        p = end + 1;
    }
    if (n < 3) {
        snprintf(err, errlen, "--trace-steps '%s': %s is missing; use wait:warmup:active[:repeat], "
                 "e.g. 1:1:5:1", text, field_names[n]);
        return -1;
    }
    if (v[2] < 1) {
        snprintf(err, errlen, "--trace-steps '%s': active must be at least 1 (the steps recorded)", text);
        return -1;
    }
    if (v[0] > INT32_MAX || v[1] > INT32_MAX || v[2] > INT32_MAX || v[3] > INT32_MAX) {
        snprintf(err, errlen, "--trace-steps '%s': values above %d are not meaningful", text, INT32_MAX);
        return -1;
    }
    *out = (ProfSchedule){v[0], v[1], v[2], v[3]};
    return 0;
}

ProfScheduleAction prof_schedule_action(const ProfSchedule *s, int64_t step_index) {
    if (step_index < 0 || s->active < 1) return PROF_SCHED_NONE;
    int64_t cycle = s->wait + s->warmup + s->active;
    if (s->repeat > 0 && step_index / cycle >= s->repeat) return PROF_SCHED_NONE;
    int64_t pos = step_index % cycle;
    if (pos < s->wait) return PROF_SCHED_NONE;
    if (pos < s->wait + s->warmup) return PROF_SCHED_WARMUP;
    return pos == cycle - 1 ? PROF_SCHED_RECORD_AND_SAVE : PROF_SCHED_RECORD;
}

int prof_schedule_has_more(const ProfSchedule *s, int64_t step_index) {
    if (s->active < 1) return 0;
    if (s->repeat == 0) return 1;
    int64_t cycle = s->wait + s->warmup + s->active;
    if (step_index < 0) step_index = 0;
    return step_index < s->repeat * cycle;
}
