/*
 * test_engine.c — the engine through the public API: running workflows end to end, replay
 * after a restart (recorded values are never re-drawn), non-determinism detection, the
 * durable inbox, timers across a restart, cancellation, action errors, and bad input.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <uv.h>

#include "test_util.h"
#include "wfhost.h"

static char dir[64], wfdir[128], db[128];
static int64_t fake_now = 1700000000000; /* a virtual clock, so timers are exact */
static int64_t clock_fn(void *ud) {
  (void)ud;
  return fake_now;
}

static void write_file(const char *name, const char *src) { test_write_file(wfdir, name, src); }

static int before_wait_logged, replay_count;
static const char *replay_watch; /* count only this instance's rebuilds, if set */
static void log_fn(void *ud, wf_log_level lvl, const char *inst, const char *msg, const char *fields) {
  (void)ud, (void)lvl, (void)inst, (void)fields;
  if (!strcmp(msg, "before the wait")) before_wait_logged++;
  if (!strncmp(msg, "rebuilding by replay", 20) && (!replay_watch || (inst && !strcmp(inst, replay_watch))))
    replay_count++;
}

static wf_host *open_host(wf_config *extra) {
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.log_level = WF_LOG_DEBUG;
  if (extra) cfg = *extra;
  cfg.clock = clock_fn;
  cfg.log = log_fn;
  static uint64_t seed = 42;
  cfg.seed = seed++; /* each host draws other numbers: a value drawn again on replay shows */
  return test_open_host(db, &cfg, wfdir);
}

static const char *status_of(wf_host *h, const char *id) { return test_status_of(h, id); }

/* A C action that fails with a structured error. */
static void action_decline(wf_call *c, void *ud) {
  (void)ud;
  wf_call_fail(c, "declined", "card declined", WF_PERMANENT);
}

/* A C action that answers with malformed JSON. */
static void action_garbage(wf_call *c, void *ud) {
  (void)ud;
  wf_call_ok(c, "{\"x\":");
}

/* A C action that completes later, from a libuv timer, and counts its invocations. */
static int slow_calls;
static char slow_key[256];
static void slow_done(uv_timer_t *t) {
  wf_call *c = t->data;
  wf_call_ok(c, "{\"slow\":true}");
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}
static void action_slow(wf_call *c, void *ud) {
  (void)ud;
  slow_calls++;
  snprintf(slow_key, sizeof slow_key, "%s", wf_call_key(c));
  uv_timer_t *t = malloc(sizeof *t);
  uv_timer_init(wf_host_loop(wf_call_host(c)), t);
  t->data = c;
  uv_timer_start(t, slow_done, 5, 0);
}

static void test_sequence(void) {
  write_file("seq.lua",
             "return workflow.define { name = 'seq', version = 1, run = function(ctx, input)\n"
             "  local total = 0\n"
             "  for i = 1, 3 do local r = ctx.actions.echo { n = input.n + i }; total = total + r.n end\n"
             "  ctx:set_state('done')\n"
             "  ctx.data.total = total\n"
             "  return { total = total }\n"
             "end }\n");
  wf_host *h = open_host(NULL);
  test_start(h, "seq", "{\"n\":10}", "s1");
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = test_info_of(h, "s1");
  CHECK(!strcmp(i->status, "completed"));
  CHECK(i->output_json && !strcmp(i->output_json, "{\"total\":36}"));
  CHECK(i->state && !strcmp(i->state, "done"));
  CHECK(i->data_json && strstr(i->data_json, "\"total\":36"));
  CHECK(i->version == 1);
  wf_info_free(i);
  CHECK(test_count_history(h, "s1", "action", "echo") == 3);
  CHECK(test_count_history(h, "s1", "action_result", "echo") == 3);
  CHECK(test_count_history(h, "s1", "completed", NULL) == 1);
  CHECK(test_count_history(h, "s1", "state", "done") == 1);

  /* Starting the same id again returns the existing instance: nothing runs twice. */
  test_start(h, "seq", "{\"n\":99}", "s1");
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(test_count_history(h, "s1", "started", NULL) == 1);
  CHECK(test_count_history(h, "s1", "action", "echo") == 3);
  wf_host_close(h);
}

static void test_replay_after_restart(void) {
  write_file("rec.lua",
             "return workflow.define { name = 'rec', run = function(ctx, input)\n"
             "  local a = { now = ctx:now(), r = ctx:random(), d = ctx:random(1, 6), u = ctx:uuid() }\n"
             "  ctx.data.before = a\n"
             "  ctx.log:info('before the wait', { n = 1 })\n"
             "  ctx:set_state('drawn')\n"
             "  local ev = ctx:wait_for('go')\n"
             "  return { a = a, ev = ev.data }\n"
             "end }\n");
  wf_host *h = open_host(NULL);
  test_start(h, "rec", NULL, "r1");
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "r1"), "waiting"));
  wf_info *i = test_info_of(h, "r1");
  char before[512];
  snprintf(before, sizeof before, "%s", i->data_json);
  CHECK(i->waiting_for && strstr(i->waiting_for, "event go"));
  wf_info_free(i);
  wf_host_close(h);

  /* A new host: a fresh Lua state rebuilds the instance by replay. */
  fake_now += 60000;
  before_wait_logged = 0;
  h = open_host(NULL);
  CHECK(wf_signal(h, "r1", "go", "{\"x\":1}", NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  i = test_info_of(h, "r1");
  CHECK(!strcmp(i->status, "completed"));
  /* The output holds the values drawn before the restart, not new ones. */
  CHECK(i->output_json != NULL);
  static const char *const keys[] = {"\"u\":", "\"r\":", "\"now\":", "\"d\":"};
  for (int k = 0; k < 4 && i->output_json; k++) {
    const char *p = strstr(before, keys[k]);
    CHECK(p != NULL);
    if (!p) continue;
    char val[128];
    size_t n = strcspn(p, ",}");
    snprintf(val, sizeof val, "%.*s", (int)n, p);
    CHECK(strstr(i->output_json, val) != NULL);
  }
  CHECK(strstr(i->output_json, "\"ev\":{\"x\":1}") != NULL);
  wf_info_free(i);
  /* The log line written before the wait is not written again during replay. */
  CHECK(before_wait_logged == 0);
  CHECK(test_count_history(h, "r1", "now", NULL) == 1);
  CHECK(test_count_history(h, "r1", "random", NULL) == 2);
  CHECK(test_count_history(h, "r1", "state", "drawn") == 1); /* not journaled again by the replay */
  wf_host_close(h);
}

/* An instance rebuilt before its timer is due (here by an event it does not wait for) keeps
 * the recorded deadline: it neither fires early nor starts the wait over. */
static void test_timer_rebuilt_early(void) {
  write_file("early.lua",
             "return workflow.define { name = 'early', run = function(ctx)\n"
             "  local ev, why = ctx:wait_for('go', { timeout = '1h' })\n"
             "  return why or 'event'\n"
             "end }\n");
  wf_host *h = open_host(NULL);
  test_start(h, "early", NULL, "e1");
  CHECK(wf_host_drain(h) == WF_OK);
  wf_host_close(h);
  fake_now += 30 * 60000;
  h = open_host(NULL);
  replay_count = 0;
  replay_watch = "e1";
  CHECK(wf_signal(h, "e1", "unrelated", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(replay_count == 1);
  replay_watch = NULL;
  CHECK(!strcmp(status_of(h, "e1"), "waiting"));
  fake_now += 29 * 60000;
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "e1"), "waiting"));
  fake_now += 60000;
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = test_info_of(h, "e1");
  CHECK(!strcmp(i->status, "completed") && i->output_json && !strcmp(i->output_json, "\"timeout\""));
  wf_info_free(i);
  wf_host_close(h);
}

static void test_nondeterminism(void) {
  write_file("nd.lua",
             "return workflow.define { name = 'nd', run = function(ctx)\n"
             "  ctx.actions.echo { step = 1 }\n"
             "  ctx:wait_for('go')\n"
             "  return 'ok'\n"
             "end }\n");
  wf_host *h = open_host(NULL);
  test_start(h, "nd", NULL, "n1");
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "n1"), "waiting"));
  wf_host_close(h);

  /* Deploy code that calls another action at the same step. */
  write_file("nd.lua",
             "return workflow.define { name = 'nd', run = function(ctx)\n"
             "  ctx.actions.log { message = 'changed' }\n"
             "  ctx:wait_for('go')\n"
             "  return 'ok'\n"
             "end }\n");
  h = open_host(NULL);
  CHECK(wf_signal(h, "n1", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = test_info_of(h, "n1");
  CHECK(!strcmp(i->status, "suspended"));
  CHECK(i->error && strstr(i->error, "history has action `echo`"));
  CHECK(i->error && strstr(i->error, "calls action `log`"));
  CHECK(i->error && strstr(i->error, "step 1"));
  wf_info_free(i);
  CHECK(wf_signal(h, "n1", "go", NULL, NULL, NULL) == WF_OK); /* suspended still takes events */
  wf_host_close(h);

  /* Restore the code and retry: it resumes where it was and takes the buffered event. */
  write_file("nd.lua",
             "return workflow.define { name = 'nd', run = function(ctx)\n"
             "  ctx.actions.echo { step = 1 }\n"
             "  ctx:wait_for('go')\n"
             "  return 'ok'\n"
             "end }\n");
  h = open_host(NULL);
  CHECK(wf_retry(h, "n1", NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "n1"), "completed"));
  CHECK(test_count_history(h, "n1", "action", "echo") == 1);
  CHECK(wf_retry(h, "n1", NULL, NULL) == WF_STATE);
  wf_host_close(h);
}

static void test_inbox(void) {
  write_file("inbox.lua",
             "return workflow.define { name = 'inbox', run = function(ctx)\n"
             "  ctx.actions.echo {}\n"
             "  local a = ctx:wait_for({ 'A', 'B' })\n"
             "  local b = ctx:wait_for({ 'A', 'B' })\n"
             "  local c, why = ctx:wait_for('C', { timeout = '10s' })\n"
             "  return { a.name, a.data, b.name, b.data, why }\n"
             "end }\n");
  wf_host *h = open_host(NULL);
  test_start(h, "inbox", NULL, "i1");
  /* Both events arrive before the instance waits; the oldest is taken first, once. */
  CHECK(wf_host_drain(h) == WF_OK);
  test_start(h, "inbox", NULL, "i2");
  CHECK(wf_signal(h, "i2", "B", "1", NULL, NULL) == WF_OK); /* i2 not yet started: buffered */
  CHECK(wf_signal(h, "i2", "A", "2", NULL, NULL) == WF_OK);
  CHECK(wf_signal(h, "i1", "A", "3", NULL, NULL) == WF_OK);
  CHECK(wf_signal(h, "i1", "A", "4", NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "i2"), "waiting"));
  fake_now += 10000;
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = test_info_of(h, "i2");
  CHECK(!strcmp(i->status, "completed"));
  CHECK(i->output_json && !strcmp(i->output_json, "[\"B\",1,\"A\",2,\"timeout\"]"));
  wf_info_free(i);
  i = test_info_of(h, "i1");
  CHECK(i->output_json && !strcmp(i->output_json, "[\"A\",3,\"A\",4,\"timeout\"]"));
  wf_info_free(i);
  CHECK(test_count_history(h, "i1", "event", "A") == 2);
  CHECK(test_count_history(h, "i1", "timeout", NULL) == 1);
  wf_host_close(h);
}

static void test_timer_across_restart(void) {
  write_file("nap.lua",
             "return workflow.define { name = 'nap', run = function(ctx)\n"
             "  local t0 = ctx:now()\n"
             "  ctx:sleep('5m')\n"
             "  return ctx:now() - t0\n"
             "end }\n");
  wf_host *h = open_host(NULL);
  test_start(h, "nap", NULL, "t1");
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "t1"), "waiting"));
  fake_now += 299000;
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "t1"), "waiting"));
  wf_host_close(h);
  /* The timer falls due while no host runs; the next host fires it at once. */
  fake_now += 3600000;
  h = open_host(NULL);
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = test_info_of(h, "t1");
  CHECK(!strcmp(i->status, "completed"));
  CHECK(i->output_json && !strcmp(i->output_json, "3899"));
  wf_info_free(i);
  CHECK(test_count_history(h, "t1", "timer_fired", NULL) == 1);

  /* A zero timeout does not wait: no event buffered means an immediate timeout. */
  write_file("zero.lua",
             "return workflow.define { name = 'zero', run = function(ctx)\n"
             "  local ev, why = ctx:wait_for('x', { timeout = 0 })\n"
             "  ctx:sleep(0)\n"
             "  return why\n"
             "end }\n");
  CHECK(wf_load_dir(h, wfdir) == WF_OK);
  test_start(h, "zero", NULL, "z1");
  CHECK(wf_host_drain(h) == WF_OK);
  i = test_info_of(h, "z1");
  CHECK(i->output_json && !strcmp(i->output_json, "\"timeout\""));
  wf_info_free(i);
  wf_host_close(h);
}

static void test_action_errors_and_async(void) {
  write_file("pay.lua",
             "return workflow.define { name = 'pay', run = function(ctx)\n"
             "  local ok, err = pcall(ctx.actions.decline, { amount = 5 })\n"
             "  local s = ctx.actions.slow { }\n"
             "  local gok, gerr = pcall(ctx.actions.garbage, {})\n"
             "  return { ok = ok, code = err.code, msg = err.message, retryable = err.retryable, slow = s.slow,\n"
             "           garbage = gerr.code, garbage_msg = gerr.message }\n"
             "end }\n");
  write_file("boom.lua",
             "return workflow.define { name = 'boom', run = function(ctx)\n"
             "  ctx.actions.decline {}\n"
             "end }\n");
  wf_host *h = open_host(NULL);
  CHECK(wf_register_action(h, "decline", action_decline, NULL, NULL) == WF_OK);
  CHECK(wf_register_action(h, "slow", action_slow, NULL, NULL) == WF_OK);
  CHECK(wf_register_action(h, "garbage", action_garbage, NULL, NULL) == WF_OK);
  test_start(h, "pay", NULL, "p1");
  test_start(h, "boom", NULL, "b1");
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = test_info_of(h, "p1");
  CHECK(!strcmp(i->status, "completed"));
  CHECK(i->output_json && strstr(i->output_json, "\"code\":\"declined\""));
  CHECK(i->output_json && strstr(i->output_json, "\"slow\":true"));
  CHECK(i->output_json && strstr(i->output_json, "\"retryable\":false"));
  CHECK(i->output_json && strstr(i->output_json, "\"garbage\":\"bad_result\""));
  CHECK(i->output_json && strstr(i->output_json, "the action returned malformed JSON"));
  wf_info_free(i);
  CHECK(slow_calls == 1);
  CHECK(!strcmp(slow_key, "p1:2"));
  i = test_info_of(h, "b1");
  CHECK(!strcmp(i->status, "failed"));
  /* The message names the action and the error, and the traceback the workflow line. */
  CHECK(i->error && strstr(i->error, "action 'decline' failed: declined: card declined"));
  CHECK(i->error && strstr(i->error, "boom.lua:2"));
  wf_info_free(i);
  wf_host_close(h);
}

static void test_cancel(void) {
  write_file("cx.lua",
             "return workflow.define { name = 'cx', run = function(ctx)\n"
             "  local ok, err = pcall(ctx.wait_for, ctx, 'never')\n"
             "  ctx.data.cleanup = err.code\n"
             "  ctx.actions.echo { cleanup = true }\n"
             "  error(err)\n"
             "end }\n");
  /* Calls an action no host registered: suspended until an operator acts. */
  write_file("boom2.lua",
             "return workflow.define { name = 'boom2', run = function(ctx)\n"
             "  ctx.actions.not_registered {}\n"
             "end }\n");
  wf_host *h = open_host(NULL);
  test_start(h, "cx", NULL, "c1");
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(wf_cancel(h, "c1", NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = test_info_of(h, "c1");
  CHECK(!strcmp(i->status, "cancelled"));
  CHECK(i->data_json && strstr(i->data_json, "\"cleanup\":\"cancelled\""));
  wf_info_free(i);
  CHECK(test_count_history(h, "c1", "action", "echo") == 1);
  CHECK(wf_cancel(h, "c1", NULL, NULL) == WF_STATE);
  CHECK(strstr(wf_errmsg(h), "cancelled") != NULL);

  /* Cancelled before it ever ran: it ends at once and runs nothing. */
  test_start(h, "cx", NULL, "c2");
  CHECK(wf_cancel(h, "c2", NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "c2"), "cancelled"));
  CHECK(test_count_history(h, "c2", "wait", NULL) == 0);

  /* A suspended instance can be cancelled by an operator. */
  test_start(h, "boom2", NULL, "c3");
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "c3"), "suspended"));
  CHECK(wf_cancel(h, "c3", NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *j = test_info_of(h, "c3");
  CHECK(!strcmp(j->status, "cancelled"));
  CHECK(j->error && strstr(j->error, "cancelled while suspended"));
  wf_info_free(j);
  wf_host_close(h);
}

static void test_bad_input(void) {
  wf_host *h = open_host(NULL);
  CHECK(wf_start(h, "nope", NULL, NULL, NULL, NULL, NULL) == WF_NOTFOUND);
  CHECK(strstr(wf_errmsg(h), "unknown workflow 'nope'") != NULL);
  CHECK(wf_start(h, "seq", "{\"n\":", NULL, NULL, NULL, NULL) == WF_INVALID);
  CHECK(strstr(wf_errmsg(h), "not valid JSON") != NULL);
  CHECK(wf_start(h, "seq", "{}", "has space", NULL, NULL, NULL) == WF_INVALID);
  CHECK(wf_signal(h, "ghost", "go", NULL, NULL, NULL) == WF_NOTFOUND);
  CHECK(strstr(wf_errmsg(h), "no instance 'ghost'") != NULL);
  CHECK(wf_signal(h, "s1", "go", NULL, NULL, NULL) == WF_STATE);
  CHECK(strstr(wf_errmsg(h), "completed") != NULL);
  char *big = malloc(2 << 20);
  memset(big, ' ', 2 << 20);
  big[0] = '"';
  big[(2 << 20) - 2] = '"';
  big[(2 << 20) - 1] = 0;
  CHECK(wf_start(h, "seq", big, NULL, NULL, NULL, NULL) == WF_INVALID);
  CHECK(strstr(wf_errmsg(h), "max_payload") != NULL);
  free(big);
  /* A second host on the same database is refused. */
  wf_host *h2;
  wf_config cfg;
  wf_config_init(&cfg);
  CHECK(wf_host_open(db, &cfg, &h2) == WF_BUSY);
  CHECK(strstr(wf_errmsg(h2), "another wfhost host") != NULL);
  wf_host_close(h2);
  wf_host_close(h);
  wf_host_close(NULL);
}

/* With a cache of 5 live coroutines, 40 parked instances are evicted and rebuilt by replay
 * when their event arrives; none runs a step twice. */
static void test_cache_eviction(void) {
  write_file("park.lua",
             "return workflow.define { name = 'park', run = function(ctx, input)\n"
             "  local r = ctx.actions.echo { i = input.i }\n"
             "  local ev = ctx:wait_for('go')\n"
             "  return r.i * 100 + ev.data\n"
             "end }\n");
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.log_level = WF_LOG_DEBUG;
  cfg.cache_size = 5;
  wf_host *h = open_host(&cfg);
  char id[32], input[32];
  for (int i = 0; i < 40; i++) {
    snprintf(id, sizeof id, "park-%d", i);
    snprintf(input, sizeof input, "{\"i\":%d}", i);
    test_start(h, "park", input, id);
  }
  CHECK(wf_host_drain(h) == WF_OK);
  replay_count = 0;
  for (int i = 0; i < 40; i++) {
    snprintf(id, sizeof id, "park-%d", i);
    snprintf(input, sizeof input, "%d", i);
    CHECK(wf_signal(h, id, "go", input, NULL, NULL) == WF_OK);
  }
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(replay_count >= 35);
  int ok = 0;
  for (int i = 0; i < 40; i++) {
    snprintf(id, sizeof id, "park-%d", i);
    wf_info *in = test_info_of(h, id);
    char want[32];
    snprintf(want, sizeof want, "%d", i * 101);
    ok += !strcmp(in->status, "completed") && in->output_json && !strcmp(in->output_json, want);
    wf_info_free(in);
    CHECK(test_count_history(h, id, "action", "echo") == 1);
  }
  CHECK(ok == 40);
  wf_host_close(h);
}

static int done_count, done_failed;
static void count_done(wf_host *h, int rc, const char *id, void *ud) {
  (void)h, (void)id, (void)ud;
  done_count++;
  if (rc != WF_OK) done_failed++;
}

/* A full disk: the batch is rolled back, callers are told, the host goes on, and once space
 * is back the work that was acknowledged completes. */
static void test_disk_full(void) {
  write_file("fill.lua",
             "return workflow.define { name = 'fill', run = function(ctx, input)\n"
             "  ctx.actions.echo { pad = input.pad }\n"
             "  ctx:wait_for('go')\n"
             "  return #input.pad\n"
             "end }\n");
  wf_host *h = open_host(NULL);
  static char input[8200];
  snprintf(input, sizeof input, "{\"pad\":\"%08000d\"}", 0);
  done_count = done_failed = 0;
  CHECK(wf_start(h, "fill", input, "fill-ok", NULL, count_done, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(done_count == 1 && done_failed == 0);
  CHECK(!strcmp(status_of(h, "fill-ok"), "waiting"));

  /* No more room: every write past the end of the log fails (EFBIG). */
  signal(SIGXFSZ, SIG_IGN);
  struct rlimit old, lim;
  getrlimit(RLIMIT_FSIZE, &old);
  lim.rlim_cur = (rlim_t)test_wal_log_end(db) + 4096;
  lim.rlim_max = old.rlim_max;
  setrlimit(RLIMIT_FSIZE, &lim);
  done_count = done_failed = 0;
  char id[32];
  for (int i = 0; i < 20; i++) {
    snprintf(id, sizeof id, "fill-%d", i);
    CHECK(wf_start(h, "fill", input, id, NULL, count_done, NULL) == WF_OK);
  }
  CHECK(wf_signal(h, "fill-ok", "go", NULL, count_done, NULL) == WF_OK);
  for (int i = 0; i < 200 && done_count < 21; i++) uv_run(wf_host_loop(h), UV_RUN_ONCE);
  CHECK(done_count == 21);
  CHECK(done_failed == 21);
  CHECK(strstr(wf_errmsg(h), "not stored") != NULL);
  CHECK(!strcmp(status_of(h, "fill-ok"), "waiting"));
  CHECK(!strcmp(status_of(h, "fill-3"), "absent"));

  /* Space again: the host recovers by itself, and retried requests go through. */
  setrlimit(RLIMIT_FSIZE, &old);
  done_count = done_failed = 0;
  CHECK(wf_signal(h, "fill-ok", "go", NULL, count_done, NULL) == WF_OK);
  CHECK(wf_start(h, "fill", input, "fill-3", NULL, count_done, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(done_count == 2 && done_failed == 0);
  CHECK(!strcmp(status_of(h, "fill-ok"), "completed"));
  CHECK(!strcmp(status_of(h, "fill-3"), "waiting"));
  CHECK(test_count_history(h, "fill-ok", "action", "echo") == 1);
  wf_host_close(h);
}

/* Requests accepted before wf_host_close are committed and answered, not dropped; a drain
 * sees what a client handle (as another process would) wrote; generated ids never repeat
 * across restarts, even with a fixed seed. */
static void test_close_and_clients(void) {
  wf_host *h = open_host(NULL);
  done_count = done_failed = 0;
  CHECK(wf_start(h, "seq", "{\"n\":1}", "late-1", NULL, count_done, NULL) == WF_OK);
  wf_host_close(h);
  CHECK(done_count == 1 && done_failed == 0);

  h = open_host(NULL);
  char gen1[WF_ID_MAX + 1], gen2[WF_ID_MAX + 1];
  CHECK(wf_start(h, "seq", "{\"n\":1}", NULL, gen1, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "late-1"), "completed"));

  wf_config cc;
  wf_config_init(&cc);
  cc.mode = WF_MODE_CLIENT;
  wf_host *client;
  CHECK(wf_host_open(db, &cc, &client) == WF_OK);
  CHECK(wf_start(client, "seq", "{\"n\":2}", "from-client", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_start(client, "nope", NULL, NULL, NULL, NULL, NULL) == WF_NOTFOUND);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "from-client"), "completed"));
  wf_host_close(client);
  wf_host_close(h);

  h = open_host(NULL); /* the same seed as before */
  CHECK(wf_start(h, "seq", "{\"n\":1}", NULL, gen2, NULL, NULL) == WF_OK);
  CHECK(strcmp(gen1, gen2) != 0);
  wf_host_close(h);
}

static int fallback_calls;
static void action_any(wf_call *c, void *ud) {
  (void)ud;
  fallback_calls++;
  char buf[160];
  snprintf(buf, sizeof buf, "{\"handled_by\":\"fallback\",\"action\":\"%s\"}", wf_call_action(c));
  wf_call_ok(c, buf);
}

/* wf_replay_check replays without effects and reports the first divergence; the fallback
 * action "*" serves any name without its own function; wf_next_timer shows what is armed. */
static void test_replay_check(void) {
  write_file("rc.lua",
             "return workflow.define { name = 'rc', run = function(ctx, input)\n"
             "  local a = ctx.actions.anything { x = 1 }\n"
             "  if input.wait then ctx:wait_for('go', { timeout = '1h' }) end\n"
             "  return a.action\n"
             "end }\n");
  wf_host *h = open_host(NULL);
  CHECK(wf_register_action(h, "*", action_any, NULL, NULL) == WF_OK);
  test_start(h, "rc", "{\"wait\":false}", "rc-done");
  test_start(h, "rc", "{\"wait\":true}", "rc-wait");
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(fallback_calls == 2);
  wf_info *i = test_info_of(h, "rc-done");
  CHECK(i->output_json && !strcmp(i->output_json, "\"anything\""));
  wf_info_free(i);
  int64_t due = 0;
  CHECK(wf_next_timer(h, &due) == WF_OK && due == fake_now + 3600000);

  char *report = (char *)"unset";
  CHECK(wf_replay_check(h, "rc-done", &report) == WF_OK && report == NULL);
  CHECK(wf_replay_check(h, "rc-wait", &report) == WF_OK && report == NULL);
  CHECK(fallback_calls == 2); /* nothing was invoked */
  CHECK(test_count_history(h, "rc-done", "action", NULL) == 1);

  /* New code calls another action first: both instances diverge at step 1. */
  write_file("rc.lua",
             "return workflow.define { name = 'rc', run = function(ctx, input)\n"
             "  local a = ctx.actions.other { x = 1 }\n"
             "  if input.wait then ctx:wait_for('go', { timeout = '1h' }) end\n"
             "  return a.action\n"
             "end }\n");
  CHECK(wf_load_dir(h, wfdir) == WF_OK);
  CHECK(wf_replay_check(h, "rc-done", &report) == WF_OK && report != NULL);
  CHECK(report && strstr(report, "step 1: history has action `anything`, the code now calls action `other`"));
  free(report);
  /* Code that ends where the history went on. */
  write_file("rc.lua",
             "return workflow.define { name = 'rc', run = function(ctx, input)\n"
             "  return 'early'\n"
             "end }\n");
  CHECK(wf_load_dir(h, wfdir) == WF_OK);
  CHECK(wf_replay_check(h, "rc-wait", &report) == WF_OK && report != NULL);
  CHECK(report && strstr(report, "the code now returns"));
  free(report);
  /* Code that goes on where the history completed. */
  write_file("rc.lua",
             "return workflow.define { name = 'rc', run = function(ctx, input)\n"
             "  local a = ctx.actions.anything { x = 1 }\n"
             "  ctx:sleep(1)\n"
             "  return a.action\n"
             "end }\n");
  CHECK(wf_load_dir(h, wfdir) == WF_OK);
  CHECK(wf_replay_check(h, "rc-done", &report) == WF_OK && report != NULL);
  CHECK(report && strstr(report, "history ends with the instance completed after step 1, the code now calls sleep"));
  free(report);
  /* Nothing was written by any check, and the live instance is untouched. */
  CHECK(!strcmp(status_of(h, "rc-done"), "completed"));
  CHECK(!strcmp(status_of(h, "rc-wait"), "waiting"));
  CHECK(test_count_history(h, "rc-done", "suspended", NULL) == 0);
  CHECK(wf_replay_check(h, "ghost", &report) == WF_NOTFOUND);

  char snap[200];
  snprintf(snap, sizeof snap, "%s/snap.db", dir);
  CHECK(wf_snapshot(h, snap) == WF_OK);
  CHECK(wf_snapshot(h, snap) != WF_OK); /* it exists */
  wf_host_close(h);
}

/* A cancellation survives a rebuild: the workflow caught it, cleaned up across a timer, and
 * re-raised it after a restart, so it ends cancelled, not failed. A cancel sent to an evicted
 * instance together with an event is delivered first: nothing runs after it was asked. */
static void test_cancel_across_rebuild(void) {
  write_file("cc.lua",
             "return workflow.define { name = 'cc', run = function(ctx)\n"
             "  local ok, err = pcall(ctx.wait_for, ctx, 'go')\n"
             "  if ok then ctx.actions.echo { after = 'go' } return 'went' end\n"
             "  ctx:sleep(10)\n"
             "  error(err)\n"
             "end }\n");
  wf_host *h = open_host(NULL);
  test_start(h, "cc", NULL, "cc1");
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(wf_cancel(h, "cc1", NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "cc1"), "waiting")); /* sleeping in its cleanup */
  wf_host_close(h);
  fake_now += 10000;
  h = open_host(NULL);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(status_of(h, "cc1"), "cancelled"));
  char *report = NULL;
  CHECK(wf_replay_check(h, "cc1", &report) == WF_OK && report == NULL);
  free(report);
  wf_host_close(h);

  wf_config cfg;
  wf_config_init(&cfg);
  cfg.log_level = WF_LOG_DEBUG;
  cfg.cache_size = 1;
  h = open_host(&cfg);
  test_start(h, "cc", NULL, "cc2");
  test_start(h, "cc", NULL, "cc3"); /* evicts cc2 */
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(wf_signal(h, "cc2", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_cancel(h, "cc2", NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(test_count_history(h, "cc2", "event", "go") == 0);
  CHECK(test_count_history(h, "cc2", "action", "echo") == 0);
  CHECK(test_count_history(h, "cc2", "cancel", NULL) == 1);
  CHECK(test_count_history(h, "cc2", "withdrawn", NULL) == 1);
  wf_host_close(h);
}

/* A started instance's row is written once, at the end of its first batch, with what its
 * first step made of it: progress, state and status; a continue-as-new in that step; and an
 * id taken in the same batch is taken for a child too. */
static void test_first_batch_row(void) {
  write_file("first.lua",
             "return workflow.define { name = 'first', run = function(ctx, input)\n"
             "  ctx:progress(50, 'half')\n"
             "  ctx:set_state('parked')\n"
             "  return ctx:wait_for('go').data\n"
             "end }\n");
  write_file("spawn.lua",
             "return workflow.define { name = 'spawn', run = function(ctx, input)\n"
             "  local ok, err = pcall(ctx.start_child, ctx, 'first', {}, { id = input.id })\n"
             "  return { ok = ok, err = tostring(err) }\n"
             "end }\n");
  write_file("again.lua",
             "return workflow.define { name = 'again', run = function(ctx, input)\n"
             "  if input.n < 3 then ctx:continue_as_new { n = input.n + 1 } end\n"
             "  return input.n\n"
             "end }\n");
  wf_host *h = open_host(NULL);
  test_start(h, "first", "{}", "fb-first");
  test_start(h, "spawn", "{\"id\":\"fb-first\"}", "fb-spawn");
  test_start(h, "again", "{\"n\":1}", "fb-again");
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = test_info_of(h, "fb-first");
  CHECK(!strcmp(i->status, "waiting") && i->progress == 50 && i->progress_message &&
        !strcmp(i->progress_message, "half") && i->state && !strcmp(i->state, "parked"));
  wf_info_free(i);
  i = test_info_of(h, "fb-spawn");
  CHECK(!strcmp(i->status, "completed") && i->output_json && strstr(i->output_json, "\"ok\":false") &&
        strstr(i->output_json, "exists already"));
  wf_info_free(i);
  i = test_info_of(h, "fb-again");
  CHECK(!strcmp(i->status, "completed") && i->output_json && !strcmp(i->output_json, "3") && i->run == 3);
  wf_info_free(i);
  wf_host_close(h);
}

int main(void) {
  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(wfdir, sizeof wfdir, "%s/workflows", dir);
  snprintf(db, sizeof db, "%s/test.db", dir);
  mkdir(wfdir, 0755);
  test_sequence();
  test_replay_after_restart();
  test_nondeterminism();
  test_inbox();
  test_timer_across_restart();
  test_action_errors_and_async();
  test_cancel();
  test_bad_input();
  test_cache_eviction();
  test_disk_full();
  test_close_and_clients();
  test_replay_check();
  test_cancel_across_rebuild();
  test_timer_rebuilt_early();
  test_first_batch_row();
  TEST_MAIN_END();
}
