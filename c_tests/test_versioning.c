/*
 * test_versioning.c — changing the code of running workflows, and long-lived instances:
 * versions side by side (NAME@VERSION.lua files, wf_workflows), an instance whose version is
 * gone, ctx:patched rolled out to running instances across restarts, ctx:progress in the
 * instance row, and the history size warning and hard limit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "test_util.h"
#include "wfhost.h"

static char dir[64], wfdir[128], db[128];
static int64_t fake_now = 1700000000000;
static int64_t clock_fn(void *ud) {
  (void)ud;
  return fake_now;
}

static void write_file(const char *name, const char *src) { test_write_file(wfdir, name, src); }
static void remove_file(const char *name) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", wfdir, name);
  remove(path);
}
/* Empties the workflows directory (its files, not lib/). */
static void clear_dir(void) {
  const char *names[] = {"order.lua", "order@1.lua", "order@2.lua", "order@3.lua", "ship.lua", "ship@2.lua",
                         "flow.lua", "prog.lua", "loop.lua", "short.lua", "labels.lua", "retry.lua", NULL};
  for (int i = 0; names[i]; i++) remove_file(names[i]);
}

/* History-size warnings logged for the instance watched. */
static int size_warnings;
static const char *watched = "w1";
static void log_fn(void *ud, wf_log_level lvl, const char *inst, const char *msg, const char *fields) {
  (void)ud, (void)fields;
  if (lvl == WF_LOG_WARN && inst && !strcmp(inst, watched) && strstr(msg, "consider ctx:continue_as_new"))
    size_warnings++;
}

static wf_host *open_cfg(wf_config *cfg) {
  cfg->clock = clock_fn;
  cfg->log = log_fn;
  cfg->seed = 7;
  return test_open_host(db, cfg, wfdir);
}

static wf_host *open_host(void) {
  wf_config cfg;
  wf_config_init(&cfg);
  return open_cfg(&cfg);
}

static size_t history_len(wf_host *h, const char *id) {
  wf_history_entry *e;
  size_t n = 0;
  if (wf_history(h, id, &e, &n) != WF_OK) return 0;
  wf_history_free(e, n);
  return n;
}

static int output_is(wf_host *h, const char *id, const char *json) {
  wf_info *i = test_info_of(h, id);
  int ok = i && !strcmp(i->status, "completed") && i->output_json && !strcmp(i->output_json, json);
  if (!ok && i) fprintf(stderr, "%s: %s %s %s\n", id, i->status, i->output_json ? i->output_json : "-", i->error ? i->error : "");
  wf_info_free(i);
  return ok;
}

static int error_has(wf_host *h, const char *id, const char *status, const char *text) {
  wf_info *i = test_info_of(h, id);
  int ok = i && !strcmp(i->status, status) && i->error && strstr(i->error, text);
  if (!ok && i) fprintf(stderr, "%s: %s: %s\n", id, i->status, i->error ? i->error : "(no error)");
  wf_info_free(i);
  return ok;
}

/* The workflow versions as "name@version:loaded/newest:active" joined by spaces. */
static const char *versions_of(wf_host *h) {
  static char buf[512];
  wf_workflow_info *w;
  size_t n;
  buf[0] = 0;
  if (wf_workflows(h, &w, &n) != WF_OK) return "error";
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(buf);
    snprintf(buf + len, sizeof buf - len, "%s%s@%d:%s:%lld", i ? " " : "", w[i].name, w[i].version,
             w[i].newest ? "newest" : w[i].loaded ? "loaded" : "missing", (long long)w[i].active);
  }
  wf_workflows_free(w, n);
  return buf;
}

#define ORDER(v, extra)                                                               \
  "local common = require 'lib.common'\n"                                            \
  "return workflow.define { name = 'order', version = " #v ", run = function(ctx)\n" \
  "  ctx:wait_for('go')\n" extra "  return common.tag(" #v ")\n"                        \
  "end }\n"

/* Versions load side by side; new instances start on the newest, running ones keep theirs;
 * both versions share a module through require. */
static void test_side_by_side(void) {
  clear_dir();
  write_file("lib/common.lua", "return { tag = function(v) return 'v' .. v end }\n");
  write_file("order@1.lua", ORDER(1, ""));
  wf_host *h = open_host();
  test_start(h, "order", NULL, "o1");
  CHECK(wf_host_drain(h) == WF_OK);
  wf_host_close(h);

  /* Version 2 is deployed next to version 1 (in a plain file naming its version inside). */
  write_file("order.lua", ORDER(2, "  ctx.actions.echo { v = 2 }\n"));
  h = open_host();
  CHECK(!strcmp(versions_of(h), "order@1:loaded:1 order@2:newest:0"));
  test_start(h, "order", NULL, "o2");
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = test_info_of(h, "o2");
  CHECK(i && i->version == 2);
  wf_info_free(i);
  i = test_info_of(h, "o1");
  CHECK(i && i->version == 1);
  wf_info_free(i);
  CHECK(!strcmp(versions_of(h), "order@1:loaded:1 order@2:newest:1"));
  CHECK(wf_signal(h, "o1", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_signal(h, "o2", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(output_is(h, "o1", "\"v1\""));
  CHECK(output_is(h, "o2", "\"v2\""));
  CHECK(test_count_history(h, "o1", "action", "echo") == 0);
  CHECK(test_count_history(h, "o2", "action", "echo") == 1);
  CHECK(!strcmp(versions_of(h), "order@1:loaded:0 order@2:newest:0"));
  wf_host_close(h);

  /* A client sees the same, with the files from the catalog. */
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.mode = WF_MODE_CLIENT;
  CHECK(wf_host_open(db, &cfg, &h) == WF_OK);
  wf_workflow_info *w;
  size_t n;
  CHECK(wf_workflows(h, &w, &n) == WF_OK && n == 2);
  if (n == 2) {
    CHECK(w[0].version == 1 && w[0].loaded && !w[0].newest && w[0].source && strstr(w[0].source, "/order@1.lua"));
    CHECK(w[1].version == 2 && w[1].newest && w[1].source && strstr(w[1].source, "/order.lua"));
  }
  wf_workflows_free(w, n);
  wf_host_close(h);
  remove_file("order.lua");
}

/* An instance whose version is no longer loaded is suspended with a message, and resumes
 * with a retry once a host loads that version again. */
static void test_version_gone(void) {
  clear_dir();
  write_file("order@1.lua", ORDER(1, ""));
  wf_host *h = open_host();
  test_start(h, "order", NULL, "g1");
  CHECK(wf_host_drain(h) == WF_OK);
  wf_host_close(h);

  remove_file("order@1.lua");
  write_file("order@2.lua", ORDER(2, ""));
  h = open_host();
  CHECK(!strcmp(versions_of(h), "order@1:missing:1 order@2:newest:0"));
  CHECK(wf_signal(h, "g1", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(error_has(h, "g1", "suspended", "workflow 'order' version 1 is not loaded on this host: load it, then run "
                                         "`wfhost retry g1`"));
  CHECK(wf_retry(h, "g1", NULL, NULL) == WF_OK); /* still not loaded: suspended again */
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(error_has(h, "g1", "suspended", "version 1 is not loaded"));
  wf_host_close(h);

  write_file("order@1.lua", ORDER(1, ""));
  h = open_host();
  CHECK(!strcmp(test_status_of(h, "g1"), "suspended"));
  CHECK(wf_retry(h, "g1", NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(output_is(h, "g1", "\"v1\"")); /* the event sent while suspended was kept */
  wf_host_close(h);
}

/* File names and definitions must agree; duplicates name both files. */
static void test_file_names(void) {
  clear_dir();
  wf_host *h;
  wf_config cfg;
  wf_config_init(&cfg);
  CHECK(wf_host_open(db, &cfg, &h) == WF_OK);
  write_file("order@3.lua", ORDER(2, ""));
  CHECK(wf_load_dir(h, wfdir) == WF_LUA);
  CHECK(strstr(wf_errmsg(h), "order@3.lua:2: the file name says version 3, but the definition has version = 2: "
                             "rename the file order@2.lua, or set version = 3") != NULL);
  remove_file("order@3.lua");

  write_file("ship@2.lua", ORDER(2, ""));
  CHECK(wf_load_dir(h, wfdir) == WF_LUA);
  CHECK(strstr(wf_errmsg(h), "ship@2.lua:2: the file name says workflow 'ship', but the file defines 'order'") != NULL);
  remove_file("ship@2.lua");

  write_file("order@x.lua", ORDER(1, ""));
  CHECK(wf_load_dir(h, wfdir) == WF_LUA);
  CHECK(strstr(wf_errmsg(h), "order@x.lua: a versioned workflow file is named NAME@VERSION.lua") != NULL);
  remove_file("order@x.lua");
  write_file("order@01.lua", ORDER(1, ""));
  CHECK(wf_load_dir(h, wfdir) == WF_LUA);
  remove_file("order@01.lua");

  write_file("order.lua", ORDER(1, ""));
  write_file("order@1.lua", ORDER(1, ""));
  CHECK(wf_load_dir(h, wfdir) == WF_LUA);
  CHECK(strstr(wf_errmsg(h), "duplicate workflow 'order' version 1") != NULL);
  CHECK(strstr(wf_errmsg(h), "order.lua:2") != NULL && strstr(wf_errmsg(h), "order@1.lua:2") != NULL);
  remove_file("order.lua");
  CHECK(wf_load_dir(h, wfdir) == WF_OK);
  wf_host_close(h);
  remove_file("order@1.lua");
}

/* The flow of a change rolled out with ctx:patched. Version A: a, wait go, b, wait done.
 * Version B replaces b with c where the instance takes the new path. */
static const char *flow_a =
    "return workflow.define { name = 'flow', run = function(ctx)\n"
    "  ctx.actions.echo { step = 'a' }\n"
    "  ctx:wait_for('go')\n"
    "  ctx.actions.echo { step = 'b' }\n"
    "  ctx:wait_for('done')\n"
    "  return 'old'\n"
    "end }\n";
static const char *flow_b =
    "return workflow.define { name = 'flow', run = function(ctx)\n"
    "  ctx.actions.echo { step = 'a' }\n"
    "  ctx:wait_for('go')\n"
    "  local new = ctx:patched('use-c')\n"
    "  if new then ctx.actions.log { message = 'c' } else ctx.actions.echo { step = 'b' } end\n"
    "  ctx:wait_for('done')\n"
    "  for _ = 1, 3 do assert(ctx:patched('use-c') == new) end -- the same answer all run long\n"
    "  return new and 'new' or 'old'\n"
    "end }\n";

static void test_patched(void) {
  clear_dir();
  write_file("flow.lua", flow_a);
  wf_host *h = open_host();
  test_start(h, "flow", NULL, "p-old"); /* will be past the change when B arrives */
  test_start(h, "flow", NULL, "p-mid"); /* will be before it */
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(wf_signal(h, "p-old", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  wf_host_close(h);

  write_file("flow.lua", flow_b);
  h = open_host();
  char *report = NULL;
  CHECK(wf_replay_check(h, "p-old", &report) == WF_OK && report == NULL);
  free(report);
  test_start(h, "flow", NULL, "p-new");
  CHECK(wf_signal(h, "p-mid", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(test_status_of(h, "p-mid"), "waiting"));
  CHECK(test_count_history(h, "p-mid", "patch", "use-c") == 1);
  CHECK(test_count_history(h, "p-mid", "action", "log") == 1);
  wf_host_close(h);

  /* Every instance is rebuilt by replay from here on, and keeps its path. */
  h = open_host();
  CHECK(wf_signal(h, "p-new", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  wf_host_close(h);
  h = open_host();
  const char *ids[] = {"p-old", "p-mid", "p-new"};
  for (int k = 0; k < 3; k++) {
    report = NULL;
    CHECK(wf_replay_check(h, ids[k], &report) == WF_OK && report == NULL);
    if (report) fprintf(stderr, "%s: %s\n", ids[k], report);
    free(report);
    CHECK(wf_signal(h, ids[k], "done", NULL, NULL, NULL) == WF_OK);
  }
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(output_is(h, "p-old", "\"old\""));
  CHECK(output_is(h, "p-mid", "\"new\""));
  CHECK(output_is(h, "p-new", "\"new\""));
  CHECK(test_count_history(h, "p-old", "patch", NULL) == 0);
  CHECK(test_count_history(h, "p-old", "action", "echo") == 2);
  CHECK(test_count_history(h, "p-mid", "patch", NULL) == 1); /* one entry, however often it was asked */
  CHECK(test_count_history(h, "p-new", "patch", NULL) == 1);
  CHECK(test_count_history(h, "p-new", "action", "echo") == 1);
  for (int k = 0; k < 3; k++) { /* and finished histories replay the same */
    report = NULL;
    CHECK(wf_replay_check(h, ids[k], &report) == WF_OK && report == NULL);
    free(report);
  }

  /* A bad change id is an error in the workflow. */
  write_file("short.lua",
             "return workflow.define { name = 'short', run = function(ctx, input)\n"
             "  local use = ctx:patched(input)\n"
             "  return use\n"
             "end }\n");
  CHECK(wf_load_dir(h, wfdir) == WF_OK);
  test_start(h, "short", "\"\"", "bad-1");
  test_start(h, "short", "7", "bad-2");
  test_start(h, "short", "\"a\\nb\"", "bad-3");
  test_start(h, "short", "\"ok\"", "good");
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(error_has(h, "bad-1", "failed", "short.lua:2: ctx:patched(change_id): the change id must be a non-empty string "
                                        "of at most 128 bytes without control characters, got \"\""));
  CHECK(error_has(h, "bad-2", "failed", "got number"));
  CHECK(error_has(h, "bad-3", "failed", "without control characters"));
  CHECK(output_is(h, "good", "true"));
  wf_host_close(h);
}

/* ctx:progress is kept in the instance row, restored by replay, not journaled. */
static void test_progress(void) {
  clear_dir();
  write_file("prog.lua",
             "return workflow.define { name = 'prog', run = function(ctx, input)\n"
             "  if input == 'bad' then ctx:progress(101) end\n"
             "  if input == 'nan' then ctx:progress(0/0) end\n"
             "  if input == 'str' then ctx:progress('10') end\n"
             "  if input == 'long' then ctx:progress(5, string.rep('x', 257)) end\n"
             "  if input == 'msgtype' then ctx:progress(5, {}) end\n"
             "  for i = 1, 4 do ctx:progress(i * 10, 'batch ' .. i) end\n"
             "  ctx:wait_for('go')\n"
             "  ctx:progress(62.5)\n"
             "  ctx:wait_for('go')\n"
             "  ctx:progress(100, 'done')\n"
             "end }\n");
  wf_host *h = open_host();
  test_start(h, "prog", NULL, "pr");
  test_start(h, "prog", NULL, "none");
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = test_info_of(h, "pr");
  CHECK(i && i->progress == 40 && i->progress_message && !strcmp(i->progress_message, "batch 4"));
  wf_info_free(i);
  CHECK(history_len(h, "pr") == 2); /* started, wait: no entry per progress report */
  CHECK(wf_signal(h, "pr", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  i = test_info_of(h, "pr");
  CHECK(i && i->progress == 62.5 && i->progress_message == NULL);
  wf_info_free(i);
  wf_host_close(h);

  /* Rebuilt by replay after a restart: the progress stays, then moves on. */
  h = open_host();
  CHECK(wf_signal(h, "pr", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  i = test_info_of(h, "pr");
  CHECK(i && !strcmp(i->status, "completed") && i->progress == 100 && i->progress_message &&
        !strcmp(i->progress_message, "done"));
  wf_info_free(i);
  wf_info *list;
  size_t n;
  CHECK(wf_list(h, NULL, "prog", 0, &list, &n) == WF_OK && n == 2);
  for (size_t k = 0; k < n; k++)
    if (!strcmp(list[k].id, "none")) CHECK(list[k].progress == 40);
  wf_info_list_free(list, n);

  const char *bad[][2] = {{"bad", "percent must be a number from 0 to 100, got 101"},
                          {"nan", "percent must be a number from 0 to 100, got "},
                          {"str", "percent must be a number from 0 to 100, got string"},
                          {"long", "message must be a string of at most 256 bytes, got 257 bytes"},
                          {"msgtype", "message must be a string of at most 256 bytes, got table"}};
  for (int k = 0; k < 5; k++) {
    char input[32], id[32];
    snprintf(input, sizeof input, "\"%s\"", bad[k][0]);
    snprintf(id, sizeof id, "bad-%s", bad[k][0]);
    test_start(h, "prog", input, id);
  }
  CHECK(wf_host_drain(h) == WF_OK);
  for (int k = 0; k < 5; k++) {
    char id[32];
    snprintf(id, sizeof id, "bad-%s", bad[k][0]);
    CHECK(error_has(h, id, "failed", bad[k][1]));
    CHECK(error_has(h, id, "failed", "prog.lua:"));
    wf_info *b = test_info_of(h, id);
    CHECK(b && b->progress == -1);
    wf_info_free(b);
  }
  wf_host_close(h);
}

/* The history size: a warning once per instance per host run, and a hard limit that fails
 * the instance while the host goes on. */
static void test_history_size(void) {
  clear_dir();
  write_file("loop.lua",
             "return workflow.define { name = 'loop', run = function(ctx, input)\n"
             "  for i = 1, input do ctx:sleep(1) end\n"
             "  return 'done'\n"
             "end }\n");
  write_file("labels.lua",
             "return workflow.define { name = 'labels', run = function(ctx)\n"
             "  for i = 1, 1000 do pcall(ctx.set_state, ctx, 's' .. i) end\n"
             "  ctx:now()\n"
             "  return 'unreachable'\n"
             "end }\n");
  write_file("retry.lua",
             "return workflow.define { name = 'retry', run = function(ctx)\n"
             "  return ctx.actions.flaky {}\n"
             "end }\n");
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.history_warn = 10;
  cfg.history_limit = 30;
  size_warnings = 0;
  wf_host *h = open_cfg(&cfg);
  /* w1: each sleep is 2 entries (sleep, timer_fired); 6 sleeps pass the warning size. */
  test_start(h, "loop", "6", "w1");
  test_start(h, "loop", "100", "big");
  test_start(h, "labels", NULL, "lab");
  CHECK(wf_host_drain(h) == WF_OK);
  for (int k = 0; k < 120; k++) {
    fake_now += 1000;
    CHECK(wf_host_drain(h) == WF_OK);
  }
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(test_status_of(h, "w1"), "completed"));
  CHECK(size_warnings == 1);
  CHECK(test_count_history(h, "w1", "history_warning", NULL) == 1);
  CHECK(error_has(h, "big", "failed", "history of instance big reached 30 entries (config history_limit); use "
                                      "ctx:continue_as_new to keep a long-running workflow's history bounded"));
  CHECK(history_len(h, "big") >= 30 && history_len(h, "big") <= 32); /* and the failed entry */
  CHECK(error_has(h, "lab", "failed", "history of instance lab reached 30 entries"));
  CHECK(history_len(h, "lab") <= 32);

  /* The host goes on: a fresh instance runs to its end. */
  test_start(h, "loop", "2", "after");
  CHECK(wf_host_drain(h) == WF_OK);
  fake_now += 1000;
  CHECK(wf_host_drain(h) == WF_OK);
  fake_now += 1000;
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(test_status_of(h, "after"), "completed"));
  wf_host_close(h);

}

/* A failing action for the retry case. */
static void action_flaky(wf_call *c, void *ud) {
  (void)ud;
  wf_call_fail(c, "down", "the service is down", WF_TRANSIENT);
}

static void test_history_limit_retrying(void) {
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.history_warn = 1000;
  cfg.history_limit = 30;
  wf_host *h = open_cfg(&cfg);
  wf_action_opts o;
  wf_action_opts_init(&o);
  o.retry.max_attempts = 0;
  o.retry.total_timeout_ms = 1000000000;
  o.retry.backoff = WF_BACKOFF_CONSTANT;
  o.retry.jitter = WF_JITTER_NONE;
  o.retry.initial_delay_ms = 1000;
  o.breaker.enabled = 0;
  CHECK(wf_register_action(h, "flaky", action_flaky, NULL, &o) == WF_OK);
  test_start(h, "retry", NULL, "r1");
  CHECK(wf_host_drain(h) == WF_OK);
  for (int k = 0; k < 40 && strcmp(test_status_of(h, "r1"), "failed"); k++) {
    fake_now += 1000;
    CHECK(wf_host_drain(h) == WF_OK);
  }
  CHECK(error_has(h, "r1", "failed", "history of instance r1 reached 30 entries"));
  size_t len = history_len(h, "r1");
  CHECK(len >= 30 && len <= 34);
  fake_now += 5000; /* no retry is left armed to journal more */
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(history_len(h, "r1") == len);
  wf_host_close(h);
}

/* A warning is given again by the next host run, once. */
static void test_history_warning_next_run(void) {
  clear_dir();
  write_file("loop.lua",
             "return workflow.define { name = 'loop', run = function(ctx, input)\n"
             "  for i = 1, input do ctx:sleep(1) end\n"
             "  return 'done'\n"
             "end }\n");
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.history_warn = 6;
  size_warnings = 0;
  watched = "w2";
  wf_host *h = open_cfg(&cfg);
  test_start(h, "loop", "10", "w2");
  for (int k = 0; k < 5; k++) {
    CHECK(wf_host_drain(h) == WF_OK);
    fake_now += 1000;
  }
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(size_warnings == 1);
  wf_host_close(h);
  h = open_cfg(&cfg);
  for (int k = 0; k < 8; k++) {
    CHECK(wf_host_drain(h) == WF_OK);
    fake_now += 1000;
  }
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(test_status_of(h, "w2"), "completed"));
  CHECK(size_warnings == 2);
  CHECK(test_count_history(h, "w2", "history_warning", NULL) == 2);
  wf_host_close(h);

  wf_config_init(&cfg);
  cfg.history_limit = -1;
  wf_host *bad = NULL;
  CHECK(wf_host_open(db, &cfg, &bad) == WF_INVALID && strstr(wf_errmsg(bad), "history_limit"));
  wf_host_close(bad);
}

int main(void) {
  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(wfdir, sizeof wfdir, "%s/workflows", dir);
  snprintf(db, sizeof db, "%s/test.db", dir);
  mkdir(wfdir, 0755);
  char lib[160];
  snprintf(lib, sizeof lib, "%s/lib", wfdir);
  mkdir(lib, 0755);
  test_side_by_side();
  test_version_gone();
  test_file_names();
  test_patched();
  test_progress();
  test_history_size();
  test_history_limit_retrying();
  test_history_warning_next_run();
  TEST_MAIN_END();
}
