/*
 * wf_cron.h — cron expressions and time zones, for schedules (wf_sched.c) and their checks
 * (the API, workflow.define). Pure computation: no host, no Lua, no store.
 *
 * An expression has five fields, minute hour day-of-month month day-of-week, each `*`, a
 * number, a range `a-b`, a step `*\/n`, `a-b/n` or `a/n` (a to the field's end), or a comma
 * list of those; months and days may be names (jan..dec, sun..sat, any case); day-of-week 7
 * is Sunday as 0 is. Macros: @yearly (@annually), @monthly, @weekly, @daily (@midnight),
 * @hourly. When both day fields are restricted (neither starts with `*`), a day matches if
 * either matches (Vixie cron); otherwise both must.
 *
 * Times are ms since the epoch. A zone is NULL or "UTC" for UTC, else an IANA name whose
 * file is in the zoneinfo directory ($TZDIR, else /usr/share/zoneinfo). Local times are
 * computed with glibc's localtime_r under a temporarily switched TZ (see wf_cron.c): call
 * these functions from one thread only (the host's loop thread), and do not use local-time
 * functions on other threads meanwhile.
 *
 * Daylight saving time: a local time that does not exist (skipped by a spring-forward) fires
 * at the first instant after the gap (02:30 in a 02:00->03:00 jump fires at 03:00, once, even
 * if 03:00 matches too); a local time that occurs twice (a fall-back) fires at its first
 * occurrence only.
 */
#ifndef WF_CRON_H
#define WF_CRON_H

#include <stddef.h>
#include <stdint.h>

typedef struct wf_cron {
  uint64_t minute; /* bit m: minute m (0-59) matches */
  uint32_t hour;   /* bits 0-23 */
  uint32_t dom;    /* bits 1-31 */
  uint32_t month;  /* bits 1-12 */
  uint32_t dow;    /* bits 0-6, Sunday 0 */
  int dom_star;    /* the day-of-month field starts with '*' */
  int dow_star;
} wf_cron;

/* Parses expr into *out. Returns 0, or -1 with a message naming the expression and the field
 * in err ("cron \"*\/0 * * * *\": minute: step must be >= 1"). */
int wf_cron_parse(const char *expr, wf_cron *out, char *err, size_t errlen);

/* Checks a zone name: 0 if NULL, "UTC" or a name with a TZif file in the zoneinfo directory,
 * else -1 with a message in err. */
int wf_tz_check(const char *tz, char *err, size_t errlen);

/* The first firing strictly after `after` in zone tz, or -1 if none within 30 years (cannot
 * happen for an expression wf_cron_parse accepted). */
int64_t wf_cron_next(const wf_cron *c, const char *tz, int64_t after);

/* Walks the firings from `first` (itself a firing) up to `now`: *count gets how many are <= now
 * (counting stops at 1,000,000: the rest are skipped uncounted), *last the latest of them (or 0
 * if none). Returns the first firing after now, or -1. */
int64_t wf_cron_walk(const wf_cron *c, const char *tz, int64_t first, int64_t now, int64_t *count,
                     int64_t *last);

/* Formats ms as "2026-03-29T01:00:00Z" (seconds precision: firings are whole minutes). */
void wf_cron_format(int64_t ms, char out[32]);

#endif /* WF_CRON_H */
