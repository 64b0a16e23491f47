/*
 * test_schedule.c — schedules through the public API, on a virtual clock: firing times and
 * deterministic instance ids with the firing in the input, catch-up `skip` and `once` across a
 * host closed and reopened with the clock moved, a restart within the grace period, overlap
 * `skip` and `allow`, no double start when a firing is evaluated again, schedules declared by
 * definitions (written at start, protected from the operator, removed with the field), time
 * zones, clients changing schedules under a running host, bad crons, zones and inputs; and a
 * host process killed with SIGKILL at random moments while a schedule fires every (virtual)
 * minute: every firing is either one instance or counted as missed, never both, never lost.
 */
#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "test_util.h"
#include "wfhost.h"

static char dir[64], wfdir[128], db[128];
static int64_t fake_now;
static int64_t clock_fn(void *ud) {
  (void)ud;
  return fake_now;
}

/* "2024-01-01T00:15:00Z" -> ms */
static int64_t ms_of(const char *iso) {
  struct tm tm = {0};
  if (!strptime(iso, "%Y-%m-%dT%H:%M:%SZ", &tm)) exit(2);
  return (int64_t)timegm(&tm) * 1000;
}

static int missed_logs, overlap_logs;
static void log_fn(void *ud, wf_log_level lvl, const char *inst, const char *msg, const char *fields) {
  (void)ud, (void)lvl, (void)inst, (void)fields;
  if (strstr(msg, "missed")) missed_logs++;
  if (strstr(msg, "(overlap skip)")) overlap_logs++;
}

static wf_config base_cfg(wf_mode mode) {
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.mode = mode;
  cfg.clock = clock_fn;
  cfg.log = log_fn;
  return cfg;
}

static wf_host *open_host(void) {
  wf_config cfg = base_cfg(WF_MODE_HOST);
  wf_host *h = test_open_host(db, &cfg, wfdir);
  CHECK(wf_host_drain(h) == WF_OK);
  return h;
}

static wf_host *open_client(void) {
  wf_config cfg = base_cfg(WF_MODE_CLIENT);
  wf_host *c;
  CHECK(wf_host_open(db, &cfg, &c) == WF_OK);
  return c;
}

/* A fresh database for each test. */
static void fresh_db(const char *name) {
  snprintf(db, sizeof db, "%s/%s.db", dir, name);
}

static void at(wf_host *h, const char *iso) {
  fake_now = ms_of(iso);
  CHECK(wf_host_drain(h) == WF_OK);
}

/* The schedule's row, or an entry with id NULL (free with wf_schedules_free(s, 1) unless NULL). */
static wf_schedule_info *schedule_of(wf_host *h, const char *id) {
  wf_schedule_info *list;
  size_t n;
  CHECK(wf_schedules(h, &list, &n) == WF_OK);
  wf_schedule_info *found = NULL;
  for (size_t i = 0; i < n && !found; i++) {
    if (strcmp(list[i].id, id)) continue;
    found = malloc(sizeof *found);
    *found = list[i];
    memset(&list[i], 0, sizeof list[i]); /* now owned by found */
  }
  wf_schedules_free(list, n);
  return found;
}

/* Instances of workflow wf, counted. */
static size_t count_of(wf_host *h, const char *wf) {
  wf_info *list;
  size_t n;
  CHECK(wf_list(h, NULL, wf, 0, &list, &n) == WF_OK);
  wf_info_list_free(list, n);
  return n;
}

static void add(wf_host *h, const char *id, const char *wf, const char *cron, const char *input, const char *tz,
                wf_catch_up cu, wf_overlap ov) {
  wf_schedule_opts o;
  wf_schedule_opts_init(&o);
  o.timezone = tz;
  o.catch_up = cu;
  o.overlap = ov;
  int rc = wf_schedule_add(h, id, wf, cron, input, &o);
  if (rc != WF_OK) fprintf(stderr, "schedule add %s: %s\n", id, wf_errmsg(h));
  CHECK(rc == WF_OK);
}

static void write_workflows(void) {
  test_write_file(wfdir, "job.lua",
                  "return workflow.define { name = 'job', run = function(ctx, input)\n"
                  "  if input.hold then ctx:wait_for('Done') end\n"
                  "  return { at = input.schedule.at, at_ms = input.schedule.at_ms, id = input.schedule.id, n = input.n }\n"
                  "end }\n");
}

/* Firings at their times, with deterministic ids and the firing in the input. */
static void test_firing_times(void) {
  fresh_db("firing");
  fake_now = ms_of("2024-01-01T00:00:00Z");
  wf_host *h = open_host();
  add(h, "every15", "job", "*/15 * * * *", "{\"n\": 7}", NULL, WF_CATCH_UP_SKIP, WF_OVERLAP_SKIP);
  int64_t due = 0;
  CHECK(wf_next_timer(h, &due) == WF_OK && due == ms_of("2024-01-01T00:15:00Z"));
  at(h, "2024-01-01T00:14:59Z");
  CHECK(count_of(h, "job") == 0);
  at(h, "2024-01-01T00:15:00Z");
  CHECK(!strcmp(test_status_of(h, "every15@2024-01-01T00:15:00Z"), "completed"));
  wf_info *i = NULL;
  CHECK(wf_get(h, "every15@2024-01-01T00:15:00Z", &i) == WF_OK);
  CHECK(i && i->output_json && strstr(i->output_json, "\"at\":\"2024-01-01T00:15:00Z\"") &&
        strstr(i->output_json, "\"at_ms\":1704068100000") && strstr(i->output_json, "\"id\":\"every15\"") &&
        strstr(i->output_json, "\"n\":7"));
  CHECK(i && i->input_json &&
        !strcmp(i->input_json, "{\"schedule\":{\"id\":\"every15\",\"at\":\"2024-01-01T00:15:00Z\",\"at_ms\":"
                               "1704068100000},\"n\": 7}"));
  wf_info_free(i);
  /* Late by less than the grace period: it still runs. */
  at(h, "2024-01-01T00:30:40Z");
  CHECK(!strcmp(test_status_of(h, "every15@2024-01-01T00:30:00Z"), "completed"));
  wf_schedule_info *s = schedule_of(h, "every15");
  CHECK(s && s->next_at == ms_of("2024-01-01T00:45:00Z") && s->last_at == ms_of("2024-01-01T00:30:00Z"));
  CHECK(s && !strcmp(s->last_instance, "every15@2024-01-01T00:30:00Z") && s->missed == 0 && s->overlapped == 0);
  CHECK(s && !strcmp(s->origin, "operator") && !strcmp(s->timezone, "UTC") && !strcmp(s->catch_up, "skip"));
  wf_schedules_free(s, 1);
  CHECK(count_of(h, "job") == 2);

  /* Replacing the schedule with the same cron keeps its next firing; another cron moves it. */
  add(h, "every15", "job", "*/15 * * * *", "{\"n\": 8}", NULL, WF_CATCH_UP_SKIP, WF_OVERLAP_SKIP);
  s = schedule_of(h, "every15");
  CHECK(s && s->next_at == ms_of("2024-01-01T00:45:00Z") && !strcmp(s->input_json, "{\"n\": 8}"));
  wf_schedules_free(s, 1);
  add(h, "every15", "job", "0 * * * *", NULL, NULL, WF_CATCH_UP_SKIP, WF_OVERLAP_SKIP);
  s = schedule_of(h, "every15");
  CHECK(s && s->next_at == ms_of("2024-01-01T01:00:00Z") && s->last_at == ms_of("2024-01-01T00:30:00Z"));
  wf_schedules_free(s, 1);
  CHECK(wf_next_timer(h, &due) == WF_OK && due == ms_of("2024-01-01T01:00:00Z"));

  /* Removed: it fires no more. */
  CHECK(wf_schedule_remove(h, "every15") == WF_OK);
  CHECK(wf_schedule_remove(h, "every15") == WF_NOTFOUND);
  at(h, "2024-01-01T01:00:00Z");
  CHECK(count_of(h, "job") == 2);
  CHECK(wf_next_timer(h, &due) == WF_NOTFOUND);
  wf_host_close(h);
}

/* After downtime: skip counts what was missed and goes on; once runs the latest; a host back
 * within the grace period runs the firing it was about to run. */
static void test_catch_up(void) {
  fresh_db("catchup");
  fake_now = ms_of("2024-01-01T00:00:00Z");
  wf_host *h = open_host();
  add(h, "skipper", "job", "*/15 * * * *", NULL, NULL, WF_CATCH_UP_SKIP, WF_OVERLAP_ALLOW);
  add(h, "oncer", "job", "*/15 * * * *", NULL, NULL, WF_CATCH_UP_ONCE, WF_OVERLAP_ALLOW);
  wf_host_close(h);

  missed_logs = 0;
  fake_now = ms_of("2024-01-01T03:05:00Z"); /* down for 00:15 .. 03:00: twelve firings */
  h = open_host();
  wf_schedule_info *s = schedule_of(h, "skipper");
  CHECK(s && s->missed == 12 && s->last_at == 0 && s->last_instance == NULL);
  CHECK(s && s->next_at == ms_of("2024-01-01T03:15:00Z"));
  wf_schedules_free(s, 1);
  s = schedule_of(h, "oncer");
  CHECK(s && s->missed == 11 && s->last_at == ms_of("2024-01-01T03:00:00Z"));
  CHECK(s && s->next_at == ms_of("2024-01-01T03:15:00Z"));
  wf_schedules_free(s, 1);
  CHECK(count_of(h, "job") == 1);
  CHECK(!strcmp(test_status_of(h, "oncer@2024-01-01T03:00:00Z"), "completed"));
  CHECK(missed_logs == 2);
  /* Then on as usual. */
  at(h, "2024-01-01T03:15:00Z");
  CHECK(!strcmp(test_status_of(h, "skipper@2024-01-01T03:15:00Z"), "completed"));
  CHECK(!strcmp(test_status_of(h, "oncer@2024-01-01T03:15:00Z"), "completed"));
  wf_host_close(h);

  /* Closed just before a firing, back 50 s after it: the firing is not missed. */
  fake_now = ms_of("2024-01-01T03:29:59Z");
  h = open_host();
  wf_host_close(h);
  fake_now = ms_of("2024-01-01T03:30:50Z");
  h = open_host();
  CHECK(!strcmp(test_status_of(h, "skipper@2024-01-01T03:30:00Z"), "completed"));
  s = schedule_of(h, "skipper");
  CHECK(s && s->missed == 12);
  wf_schedules_free(s, 1);
  wf_host_close(h);
}

/* overlap skip: a firing while the previous instance waits is skipped and counted. */
static void test_overlap(void) {
  fresh_db("overlap");
  fake_now = ms_of("2024-01-01T00:00:00Z");
  wf_host *h = open_host();
  add(h, "held", "job", "*/15 * * * *", "{\"hold\":true}", NULL, WF_CATCH_UP_SKIP, WF_OVERLAP_SKIP);
  add(h, "free", "job", "*/15 * * * *", "{\"hold\":true}", NULL, WF_CATCH_UP_SKIP, WF_OVERLAP_ALLOW);
  overlap_logs = 0;
  at(h, "2024-01-01T00:15:00Z");
  CHECK(!strcmp(test_status_of(h, "held@2024-01-01T00:15:00Z"), "waiting"));
  at(h, "2024-01-01T00:30:00Z");
  CHECK(!strcmp(test_status_of(h, "held@2024-01-01T00:30:00Z"), "absent"));
  CHECK(!strcmp(test_status_of(h, "free@2024-01-01T00:30:00Z"), "waiting")); /* allow: both run */
  CHECK(!strcmp(test_status_of(h, "free@2024-01-01T00:15:00Z"), "waiting"));
  CHECK(overlap_logs == 1);
  wf_host_close(h);
  /* The previous instance is only in the store now: still unfinished, still skipped. */
  fake_now = ms_of("2024-01-01T00:45:00Z");
  h = open_host();
  CHECK(!strcmp(test_status_of(h, "held@2024-01-01T00:45:00Z"), "absent"));
  wf_schedule_info *s = schedule_of(h, "held");
  CHECK(s && s->overlapped == 2 && s->missed == 0 && !strcmp(s->last_instance, "held@2024-01-01T00:15:00Z"));
  wf_schedules_free(s, 1);
  CHECK(wf_signal(h, "held@2024-01-01T00:15:00Z", "Done", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(test_status_of(h, "held@2024-01-01T00:15:00Z"), "completed"));
  at(h, "2024-01-01T01:00:00Z");
  CHECK(!strcmp(test_status_of(h, "held@2024-01-01T01:00:00Z"), "waiting"));
  s = schedule_of(h, "held");
  CHECK(s && s->overlapped == 2 && s->last_at == ms_of("2024-01-01T01:00:00Z"));
  wf_schedules_free(s, 1);
  wf_host_close(h);
}

static int raw_sql(const char *sql) {
  sqlite3 *d;
  if (sqlite3_open(db, &d) != SQLITE_OK) return -1;
  int rc = sqlite3_exec(d, sql, NULL, NULL, NULL);
  sqlite3_close(d);
  return rc == SQLITE_OK ? 0 : -1;
}

/* A firing evaluated again (its next time put back by hand, as if the advance had been lost)
 * finds its instance: the deterministic id starts nothing twice. */
static void test_no_double_start(void) {
  fresh_db("double");
  fake_now = ms_of("2024-01-01T00:00:00Z");
  wf_host *h = open_host();
  add(h, "d", "job", "*/15 * * * *", NULL, NULL, WF_CATCH_UP_SKIP, WF_OVERLAP_ALLOW);
  at(h, "2024-01-01T00:15:00Z");
  wf_host_close(h);
  CHECK(raw_sql("UPDATE schedules SET next_at = 1704068100000") == 0); /* 00:15 again */
  fake_now = ms_of("2024-01-01T00:15:30Z");
  h = open_host();
  CHECK(count_of(h, "job") == 1);
  wf_history_entry *e;
  size_t n, started = 0;
  CHECK(wf_history(h, "d@2024-01-01T00:15:00Z", &e, &n) == WF_OK);
  for (size_t i = 0; i < n; i++) started += !strcmp(e[i].kind, "started");
  wf_history_free(e, n);
  CHECK(started == 1);
  wf_schedule_info *s = schedule_of(h, "d");
  CHECK(s && s->next_at == ms_of("2024-01-01T00:30:00Z"));
  wf_schedules_free(s, 1);
  wf_host_close(h);
}

/* Schedules declared by definitions: written at start, fire, belong to the definition, and
 * go when the definition drops the field. */
static void test_definitions(void) {
  fresh_db("defs");
  test_write_file(wfdir, "tick.lua",
                  "return workflow.define { name = 'tick', schedule = '*/15 * * * *',\n"
                  "  run = function(ctx, input) return input.schedule.at end }\n");
  test_write_file(wfdir, "berlin.lua",
                  "return workflow.define { name = 'berlin',\n"
                  "  schedule = { cron = '30 2 * * *', timezone = 'Europe/Berlin', catch_up = 'once',\n"
                  "               overlap = 'allow', input = { region = 'eu' } },\n"
                  "  run = function(ctx, input) return input end }\n");
  fake_now = ms_of("2024-03-30T12:00:00Z");
  wf_host *h = open_host();
  wf_schedule_info *s = schedule_of(h, "tick");
  CHECK(s && !strcmp(s->origin, "definition") && !strcmp(s->cron, "*/15 * * * *") && !strcmp(s->workflow, "tick"));
  CHECK(s && s->next_at == ms_of("2024-03-30T12:15:00Z"));
  wf_schedules_free(s, 1);
  s = schedule_of(h, "berlin");
  CHECK(s && !strcmp(s->timezone, "Europe/Berlin") && !strcmp(s->catch_up, "once") && !strcmp(s->overlap, "allow"));
  CHECK(s && s->next_at == ms_of("2024-03-31T01:00:00Z")); /* 02:30 does not exist that night: 03:00 CEST */
  CHECK(s && !strcmp(s->input_json, "{\"region\":\"eu\"}"));
  wf_schedules_free(s, 1);
  at(h, "2024-03-30T12:15:00Z");
  CHECK(!strcmp(test_status_of(h, "tick@2024-03-30T12:15:00Z"), "completed"));
  /* The operator cannot change or remove them. */
  CHECK(wf_schedule_remove(h, "tick") == WF_STATE);
  CHECK(strstr(wf_errmsg(h), "remove its `schedule` field") != NULL);
  CHECK(wf_schedule_add(h, "tick", "tick", "* * * * *", NULL, NULL) == WF_STATE);
  wf_host_close(h);

  /* Down over the night: catch-up once runs the firing that fell in the DST gap. */
  fake_now = ms_of("2024-03-31T09:00:00Z");
  h = open_host();
  wf_info *i = NULL;
  CHECK(wf_get(h, "berlin@2024-03-31T01:00:00Z", &i) == WF_OK);
  CHECK(i && !strcmp(i->status, "completed") && strstr(i->output_json, "\"region\":\"eu\""));
  wf_info_free(i);
  s = schedule_of(h, "berlin");
  CHECK(s && s->next_at == ms_of("2024-04-01T00:30:00Z") && s->missed == 0);
  wf_schedules_free(s, 1);
  s = schedule_of(h, "tick");
  CHECK(s && s->missed > 0 && s->next_at == ms_of("2024-03-31T09:15:00Z"));
  CHECK(!strcmp(test_status_of(h, "tick@2024-03-31T09:00:00Z"), "completed")); /* due right now: not missed */
  wf_schedules_free(s, 1);
  wf_host_close(h);

  /* The field dropped: the schedule goes (the instances stay). */
  test_write_file(wfdir, "tick.lua",
                  "return workflow.define { name = 'tick', run = function(ctx, input) return 1 end }\n");
  h = open_host();
  s = schedule_of(h, "tick");
  CHECK(s == NULL);
  CHECK(count_of(h, "tick") == 2);
  wf_host_close(h);
  char path[256];
  snprintf(path, sizeof path, "%s/tick.lua", wfdir);
  remove(path);
  snprintf(path, sizeof path, "%s/berlin.lua", wfdir);
  remove(path);
}

/* A client changes the schedules of a running host (as `wfhost schedule` does). */
static void test_clients(void) {
  fresh_db("clients");
  fake_now = ms_of("2024-01-01T00:00:00Z");
  wf_host *h = open_host();
  wf_host *c = open_client();
  add(c, "c1", "job", "@hourly", "{\"n\":1}", NULL, WF_CATCH_UP_SKIP, WF_OVERLAP_SKIP);
  CHECK(wf_host_drain(h) == WF_OK); /* the host reads the change */
  int64_t due;
  CHECK(wf_next_timer(h, &due) == WF_OK && due == ms_of("2024-01-01T01:00:00Z"));
  at(h, "2024-01-01T01:00:00Z");
  CHECK(!strcmp(test_status_of(h, "c1@2024-01-01T01:00:00Z"), "completed"));
  /* The client reads what the host wrote. */
  wf_schedule_info *s = schedule_of(c, "c1");
  CHECK(s && s->last_at == ms_of("2024-01-01T01:00:00Z") && s->next_at == ms_of("2024-01-01T02:00:00Z"));
  wf_schedules_free(s, 1);
  CHECK(wf_schedule_remove(c, "c1") == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(wf_next_timer(h, &due) == WF_NOTFOUND);
  at(h, "2024-01-01T02:00:00Z");
  CHECK(count_of(h, "job") == 1);
  /* Unknown to the host's catalog. */
  CHECK(wf_schedule_add(c, NULL, "nope", "@daily", NULL, NULL) == WF_NOTFOUND);
  wf_host_close(c);
  wf_host_close(h);
  /* Added while no host runs: the next host fires it. */
  c = open_client();
  add(c, NULL, "job", "*/5 * * * *", NULL, NULL, WF_CATCH_UP_SKIP, WF_OVERLAP_SKIP);
  wf_host_close(c);
  h = open_host();
  at(h, "2024-01-01T02:05:00Z");
  CHECK(!strcmp(test_status_of(h, "job@2024-01-01T02:05:00Z"), "completed"));
  wf_host_close(h);
}

static void expect_invalid(wf_host *h, const char *id, const char *wf, const char *cron, const char *input,
                           const char *tz, int want_rc, const char *want_msg) {
  wf_schedule_opts o;
  wf_schedule_opts_init(&o);
  o.timezone = tz;
  int rc = wf_schedule_add(h, id, wf, cron, input, &o);
  CHECK(rc == want_rc);
  if (!strstr(wf_errmsg(h), want_msg)) fprintf(stderr, "got: %s\nwant: %s\n", wf_errmsg(h), want_msg);
  CHECK(strstr(wf_errmsg(h), want_msg) != NULL);
}

static void test_bad_input(void) {
  fresh_db("bad");
  fake_now = ms_of("2024-01-01T00:00:00Z");
  wf_host *h = open_host();
  expect_invalid(h, "x", "job", "*/0 * * * *", NULL, NULL, WF_INVALID, "cron \"*/0 * * * *\": minute: step must be >= 1");
  expect_invalid(h, "x", "job", "0 0 * * * *", NULL, NULL, WF_INVALID, "expected 5 fields");
  expect_invalid(h, "x", "job", "@daily", NULL, "Mars/Olympus", WF_INVALID, "unknown time zone \"Mars/Olympus\"");
  expect_invalid(h, "x", "job", "@daily", "[1,2]", NULL, WF_INVALID, "bad schedule input: it must be a JSON object");
  expect_invalid(h, "x", "job", "@daily", "{\"a\":", NULL, WF_INVALID, "bad schedule input");
  expect_invalid(h, "x", "job", "@daily", "{\"schedule\":null}", NULL, WF_INVALID, "field \"schedule\" is reserved");
  expect_invalid(h, "x y", "job", "@daily", NULL, NULL, WF_INVALID, "bad schedule id 'x y'");
  expect_invalid(h, "x", "nope", "@daily", NULL, NULL, WF_NOTFOUND, "unknown workflow 'nope'");
  wf_schedule_info *list;
  size_t n;
  CHECK(wf_schedules(h, &list, &n) == WF_OK && n == 0);
  wf_schedules_free(list, n);
  CHECK(wf_schedule_remove(h, "x") == WF_NOTFOUND);
  wf_host_close(h);

  /* In definitions: the loader refuses the file with the field named. */
  static const char *const bad[][2] = {
      {"schedule = '*/0 * * * *'", "workflow.define: schedule: cron \"*/0 * * * *\": minute: step must be >= 1"},
      {"schedule = { cron = '@daily', timezone = 'Europe/Nowhere' }", "unknown time zone \"Europe/Nowhere\""},
      {"schedule = { cron = '@daily', catch_up = 'all' }", "schedule.catch_up must be \"skip\" or \"once\", got all"},
      {"schedule = { cron = '@daily', overlap = 'queue' }", "schedule.overlap must be \"skip\" or \"allow\", got queue"},
      {"schedule = { cron = '@daily', every = 5 }", "schedule: unknown option \"every\""},
      {"schedule = { timezone = 'UTC' }", "schedule.cron must be a cron expression"},
      {"schedule = { cron = '@daily', input = { schedule = 1 } }", "the field \"schedule\" is reserved"},
      {"schedule = { cron = '@daily', input = { 1, 2 } }", "schedule.input must be a table of named fields"},
      {"schedule = 5", "schedule must be a cron expression"},
  };
  char bad_dir[160];
  snprintf(bad_dir, sizeof bad_dir, "%s/badwf", dir);
  mkdir(bad_dir, 0700);
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    char src[512];
    snprintf(src, sizeof src, "return workflow.define { name = 'b', %s,\n  run = function() end }\n", bad[k][0]);
    test_write_file(bad_dir, "b.lua", src);
    wf_config cfg = base_cfg(WF_MODE_HOST);
    snprintf(db, sizeof db, "%s/bad%zu.db", dir, k);
    CHECK(wf_host_open(db, &cfg, &h) == WF_OK);
    CHECK(wf_load_dir(h, bad_dir) == WF_LUA);
    if (!strstr(wf_errmsg(h), bad[k][1]) || !strstr(wf_errmsg(h), "b.lua:1:"))
      fprintf(stderr, "got: %s\nwant: b.lua:1: ... %s\n", wf_errmsg(h), bad[k][1]);
    CHECK(strstr(wf_errmsg(h), bad[k][1]) != NULL && strstr(wf_errmsg(h), "b.lua:1:") != NULL);
    wf_host_close(h);
  }
}

/* ---- the wake-up on the loop -------------------------------------------------------------- */

/* A clock at real speed, put 1 s before a minute: the host, left to its own loop
 * (wf_host_run), must wake up for the firing by itself. */
static int64_t clock_offset;
static int64_t real_ms(void);
static int64_t offset_clock(void *ud) {
  (void)ud;
  return real_ms() + clock_offset;
}

typedef struct watch {
  wf_host *h;
  const char *id;
  int64_t until; /* real time */
} watch;

/* Stops the host once the instance completed, or after 30 s (then the check fails). */
static void on_watch(uv_timer_t *t) {
  watch *w = t->data;
  if (!strcmp(test_status_of(w->h, w->id), "completed") || real_ms() > w->until) {
    uv_timer_stop(t);
    wf_host_stop(w->h);
  }
}

static void test_wakeup(void) {
  fresh_db("wakeup");
  clock_offset = 0;
  wf_config cfg = base_cfg(WF_MODE_HOST);
  cfg.clock = offset_clock;
  wf_host *h = test_open_host(db, &cfg, wfdir);
  /* Now (the host is open, which may take a while under a sanitizer) 1 s before a minute:
   * the clock only moves forward. */
  int64_t r = real_ms();
  clock_offset = ((r + 1000) / 60000 + 1) * 60000 - 1000 - r;
  CHECK(wf_schedule_add(h, "w", "job", "* * * * *", NULL, NULL) == WF_OK);
  wf_schedule_info *s = schedule_of(h, "w");
  char id[64] = "w@", iso[32];
  time_t sec = (time_t)((s ? s->next_at : 0) / 1000);
  strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", gmtime(&sec));
  strcat(id, iso);
  wf_schedules_free(s, 1);
  watch w = {h, id, real_ms() + 30000};
  uv_timer_t t;
  uv_timer_init(wf_host_loop(h), &t);
  t.data = &w;
  uv_timer_start(&t, on_watch, 50, 50);
  CHECK(wf_host_run(h) == WF_OK);
  uv_close((uv_handle_t *)&t, NULL);
  if (strcmp(test_status_of(h, id), "completed"))
    fprintf(stderr, "wakeup: %s is %s at %lld\n", id, test_status_of(h, id), (long long)offset_clock(NULL));
  CHECK(!strcmp(test_status_of(h, id), "completed"));
  wf_host_close(h);
}

/* ---- kill -9 --------------------------------------------------------------------------- */

/* In the kill test, one real millisecond is one virtual second: a schedule of every minute
 * fires every 60 ms, and a host killed and restarted within 60 ms misses nothing. */
#define KILL_EPOCH 1704067200000LL /* 2024-01-01T00:00:00Z */
static int64_t real_start;
static int64_t real_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
static int64_t fast_clock(void *ud) {
  (void)ud;
  return KILL_EPOCH + (real_ms() - real_start) * 1000;
}

/* The child: a host driven by hand (a libuv timer would wait in real milliseconds). */
static void run_child(void) {
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.clock = fast_clock;
  cfg.log_level = WF_LOG_ERROR;
  wf_host *h;
  if (wf_host_open(db, &cfg, &h) != WF_OK || wf_load_dir(h, wfdir) != WF_OK) _exit(3);
  for (;;) {
    if (wf_host_drain(h) != WF_OK) _exit(4);
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
}

static void test_kill9(void) {
  fresh_db("kill");
  real_start = real_ms();
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.clock = fast_clock;
  cfg.log_level = WF_LOG_ERROR;
  wf_host *h = test_open_host(db, &cfg, wfdir);
  CHECK(wf_host_drain(h) == WF_OK);
  wf_schedule_opts o;
  wf_schedule_opts_init(&o);
  o.overlap = WF_OVERLAP_ALLOW;
  CHECK(wf_schedule_add(h, "k", "job", "* * * * *", "{\"n\":1}", &o) == WF_OK);
  wf_schedule_info *s = schedule_of(h, "k");
  int64_t first = s ? s->next_at : 0;
  wf_schedules_free(s, 1);
  wf_host_close(h);

  unsigned seed = (unsigned)real_ms();
  if (getenv("WF_CRASH_SEED")) seed = (unsigned)atoi(getenv("WF_CRASH_SEED"));
  srand(seed);
  for (int round = 0; round < 12; round++) {
    pid_t pid = fork();
    if (pid == 0) run_child();
    CHECK(pid > 0);
    struct timespec ts = {0, (long)(40 + rand() % 260) * 1000000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL); /* it ran until killed */
  }

  /* A last host finishes what was started, then the books must balance: every firing from the
   * first to the one before next_at is exactly one instance or one missed count. */
  h = test_open_host(db, &cfg, wfdir);
  CHECK(wf_host_drain(h) == WF_OK);
  s = schedule_of(h, "k");
  CHECK(s != NULL);
  if (!s) return;
  int64_t firings = (s->next_at - first) / 60000;
  wf_info *list;
  size_t n;
  CHECK(wf_list(h, NULL, "job", 0, &list, &n) == WF_OK);
  size_t completed = 0, valid_ids = 0;
  for (size_t i = 0; i < n; i++) {
    completed += !strcmp(list[i].status, "completed");
    char want[64];
    /* the id names a firing between the first and the next */
    const char *atp = strchr(list[i].id, '@');
    if (atp) {
      int64_t t = ms_of(atp + 1);
      valid_ids += t >= first && t < s->next_at && (t - first) % 60000 == 0;
      snprintf(want, sizeof want, "\"at_ms\":%lld", (long long)t);
      CHECK(list[i].output_json == NULL || strstr(list[i].output_json, want));
    }
  }
  printf("kill test (seed %u): %lld firings, %zu instances (%zu completed, %zu valid ids), %lld missed\n", seed,
         (long long)firings, n, completed, valid_ids, (long long)s->missed);
  if ((int64_t)n + s->missed != firings || completed != n || valid_ids != n)
    fprintf(stderr, "kill test (seed %u): %lld firings, %zu instances (%zu completed, %zu valid ids), %lld missed\n",
            seed, (long long)firings, n, completed, valid_ids, (long long)s->missed);
  CHECK((int64_t)n + s->missed == firings);
  CHECK(completed == n && valid_ids == n);
  CHECK(firings >= 12); /* the hosts ran long enough to fire */
  wf_info_list_free(list, n);
  wf_schedules_free(s, 1);
  wf_host_close(h);
}

int main(void) {
  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(wfdir, sizeof wfdir, "%s/workflows", dir);
  mkdir(wfdir, 0700);
  write_workflows();
  test_firing_times();
  test_catch_up();
  test_overlap();
  test_no_double_start();
  test_definitions();
  test_clients();
  test_bad_input();
  test_wakeup();
  test_kill9();
  TEST_MAIN_END();
}
