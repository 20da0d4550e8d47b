/* prof_schedule.h - which steps --profile=trace traces: `--trace-steps wait:warmup:active[:repeat]`,
 * the schedule of torch.profiler.schedule. Steps are counted from the first step of the run
 * (index 0). A cycle is `wait` steps untraced, `warmup` steps traced and discarded (the tracer
 * settles), then `active` steps recorded; the last active step of a cycle ends a traced window
 * (the tracer flushes). `repeat` cycles, then nothing (0 = cycles forever). */
#ifndef DETR_PROF_SCHEDULE_H
#define DETR_PROF_SCHEDULE_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int64_t wait, warmup, active, repeat;
} ProfSchedule;

typedef enum {
    PROF_SCHED_NONE = 0,        /* not traced */
    PROF_SCHED_WARMUP,          /* traced, records discarded */
    PROF_SCHED_RECORD,          /* traced and kept */
    PROF_SCHED_RECORD_AND_SAVE  /* traced and kept; the window ends after this step */
} ProfScheduleAction;

/* The default of --profile=trace without --trace-steps: skip 1 step (first-step allocations),
 * warm up 1, record 5, once. */
#define PROF_SCHEDULE_DEFAULT "1:1:5:1"

/* Parses "wait:warmup:active[:repeat]" (non-negative integers, active >= 1). Returns 0, or -1
 * with a message naming the field and the fix. */
int prof_schedule_parse(const char *text, ProfSchedule *out, char *err, size_t errlen);
ProfScheduleAction prof_schedule_action(const ProfSchedule *s, int64_t step_index);
/* Whether any step at or after step_index is still traced (0 once the repeats are over). */
int prof_schedule_has_more(const ProfSchedule *s, int64_t step_index);

#endif
