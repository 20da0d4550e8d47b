/* test_prof_schedule: the --trace-steps schedule (profiler/prof_schedule.c), against
 * torch.profiler.schedule's semantics written out by hand. */
#include <string.h>
#include "../../profiler/prof_schedule.h"
#include "check.h"

int main(void) {
    ProfSchedule s;
    char err[256];
    CHECK("parse 2:1:3:2", prof_schedule_parse("2:1:3:2", &s, err, sizeof(err)) == 0 && s.wait == 2 &&
          s.warmup == 1 && s.active == 3 && s.repeat == 2, "%s", err);
    /* cycle of 6: N N W R R S, twice, then nothing */
    const char *expect = "NNWRRSNNWRRSNNNNNN";
    char got[32] = "";
    for (int i = 0; i < 18; i++) {
        ProfScheduleAction a = prof_schedule_action(&s, i);
        got[i] = a == PROF_SCHED_NONE ? 'N' : a == PROF_SCHED_WARMUP ? 'W' : a == PROF_SCHED_RECORD ? 'R' : 'S';
    }
    CHECK("actions of 2:1:3:2", strcmp(got, expect) == 0, "got %s want %s", got, expect);
    CHECK("has_more before the end", prof_schedule_has_more(&s, 11), "");
    CHECK("no more after 2 cycles", !prof_schedule_has_more(&s, 12), "");
    CHECK("negative step untraced", prof_schedule_action(&s, -1) == PROF_SCHED_NONE, "");

    CHECK("parse 0:0:1 (repeat forever)", prof_schedule_parse("0:0:1", &s, err, sizeof(err)) == 0 &&
          s.repeat == 0, "%s", err);
    int all_saved = 1;
    for (int i = 0; i < 100; i++) all_saved &= prof_schedule_action(&s, i) == PROF_SCHED_RECORD_AND_SAVE;
    CHECK("0:0:1 saves every step", all_saved, "");
    CHECK("forever has more", prof_schedule_has_more(&s, 1000000), "");

    CHECK("default parses", prof_schedule_parse(PROF_SCHEDULE_DEFAULT, &s, err, sizeof(err)) == 0, "%s", err);
    CHECK("default: step 0 waits, 1 warms up, 2..6 recorded",
          prof_schedule_action(&s, 0) == PROF_SCHED_NONE && prof_schedule_action(&s, 1) == PROF_SCHED_WARMUP &&
          prof_schedule_action(&s, 2) == PROF_SCHED_RECORD && prof_schedule_action(&s, 6) == PROF_SCHED_RECORD_AND_SAVE &&
          prof_schedule_action(&s, 7) == PROF_SCHED_NONE, "");

    const struct {
        const char *text, *must_name;
    } bad[] = {{"", "wait"}, {"1:2", "active"}, {"1:1:0", "active"}, {"1:-1:3", "warmup"}, {"a:1:1", "wait"},
               {"1:1:1:x", "repeat"}, {"1:1:1:1:1", "more than 4"}, {"1:1:2x", "active"}, {NULL, "wait"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        int rc = prof_schedule_parse(bad[i].text, &s, err, sizeof(err));
        CHECK("refuses a bad schedule", rc == -1 && strstr(err, bad[i].must_name) && strstr(err, "--trace-steps"),
              "'%s': rc %d, %s", bad[i].text ? bad[i].text : "(null)", rc, err);
    }
    return test_finish();
}
