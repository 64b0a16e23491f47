/*
 * test_sandbox.c — the sandbox workflow code runs in and the limits that stop runaway code,
 * through the public API only, as a workflow author or an operator would notice them:
 *
 *   - what is not available (os, io, debug, package, load, dofile, collectgarbage, coroutine,
 *     rawset, math.random, string.dump), read-only globals and library tables, each failing
 *     the instance with its own message at the workflow's file:line;
 *   - text chunks only, deterministic `pairs`;
 *   - the instruction budget and the memory limit: the instance fails, pcall cannot swallow
 *     the kill, and the host goes on;
 *   - load errors (syntax, no definition, several problems at once, all-or-nothing);
 *   - runtime errors with a traceback into the workflow file;
 *   - the sandboxed require (helper modules, caching, bad names, loops);
 *   - durations, ctx:random bounds, structured log lines;
 *   - hostile code that must not hang or corrupt the host (metamethods run by the host,
 *     finalizers, the shared ctx metatable). Those run in a child process with an alarm, so
 *     a hang shows up as a failed check instead of a stuck test.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"
#include "wfhost.h"

static char root[64]; /* the test's temporary directory */
static int64_t fake_now = 1700000000000; /* a virtual clock, so timers are exact */
static int64_t clock_fn(void *ud) {
  (void)ud;
  return fake_now;
}

/* ---- captured log lines ------------------------------------------------------------- */

#define MAX_LOGS 4096
typedef struct {
  wf_log_level level;
  char *instance; /* NULL for host messages */
  char *msg;
  char *fields;   /* JSON or NULL */
} log_line;
static log_line logs[MAX_LOGS];
static int nlogs;

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static void log_fn(void *ud, wf_log_level lvl, const char *inst, const char *msg, const char *fields) {
  (void)ud;
  if (nlogs == MAX_LOGS) return;
  logs[nlogs++] = (log_line){lvl, dup_or_null(inst), dup_or_null(msg), dup_or_null(fields)};
}

static void logs_clear(void) {
  for (int i = 0; i < nlogs; i++) {
    free(logs[i].instance);
    free(logs[i].msg);
    free(logs[i].fields);
  }
  nlogs = 0;
}

/* The first captured line whose message equals msg (and whose instance is inst, if given). */
static const log_line *log_find(const char *inst, const char *msg) {
  for (int i = 0; i < nlogs; i++)
    if (logs[i].msg && !strcmp(logs[i].msg, msg) &&
        (!inst || (logs[i].instance && !strcmp(logs[i].instance, inst))))
      return &logs[i];
  return NULL;
}

static int log_count(const char *msg) {
  int n = 0;
  for (int i = 0; i < nlogs; i++)
    if (logs[i].msg && !strcmp(logs[i].msg, msg)) n++;
  return n;
}

/* ---- helpers ------------------------------------------------------------------------ */

/* Returns 1 if needle occurs in hay; otherwise prints both (so a failed CHECK says why). */
static int contains(const char *hay, const char *needle) {
  if (hay && strstr(hay, needle)) return 1;
  fprintf(stderr, "  expected to find: %s\n  in: %s\n", needle, hay ? hay : "(null)");
  return 0;
}

static int equals(const char *got, const char *want) {
  if (got && !strcmp(got, want)) return 1;
  fprintf(stderr, "  expected: %s\n  got:      %s\n", want, got ? got : "(null)");
  return 0;
}

/* Makes <root>/<name> (and <root>/<name>/lib) and returns its path in a static slot. */
static const char *make_dir(const char *name) {
  static char paths[32][160];
  static int n;
  char *p = paths[n++ % 32];
  snprintf(p, 160, "%s/%s", root, name);
  mkdir(p, 0755);
  char lib[200];
  snprintf(lib, sizeof lib, "%s/lib", p);
  mkdir(lib, 0755);
  return p;
}


/* Opens a host on <root>/<dbname> with the virtual clock and the capturing log, and loads
 * wfdir (if not NULL). cfg_in may set limits; the rest is filled in here. */
static wf_host *open_host(const char *dbname, const char *wfdir, const wf_config *cfg_in) {
  wf_config cfg;
  wf_config_init(&cfg);
  if (cfg_in) cfg = *cfg_in;
  cfg.clock = clock_fn;
  cfg.log = log_fn;
  cfg.seed = 7;
  char db[200];
  snprintf(db, sizeof db, "%s/%s", root, dbname);
  wf_host *h = NULL;
  int rc = wf_host_open(db, &cfg, &h);
  if (rc != WF_OK) fprintf(stderr, "open %s: %s\n", db, wf_errmsg(h));
  CHECK(rc == WF_OK);
  if (wfdir) {
    rc = wf_load_dir(h, wfdir);
    if (rc != WF_OK) fprintf(stderr, "load %s: %s\n", wfdir, wf_errmsg(h));
    CHECK(rc == WF_OK);
  }
  return h;
}

/* Checks that instance id completed with exactly this output. */
static void expect_output(wf_host *h, const char *id, const char *output) {
  wf_info *i = test_info_of(h, id);
  if (strcmp(i->status, "completed"))
    fprintf(stderr, "  %s is %s: %s\n", id, i->status, i->error ? i->error : "");
  CHECK(equals(i->status, "completed"));
  CHECK(equals(i->output_json, output));
  wf_info_free(i);
}

/* Checks that instance id failed and that its error contains every one of the strings. */
static void expect_failed(wf_host *h, const char *id, const char *s1, const char *s2) {
  wf_info *i = test_info_of(h, id);
  CHECK(equals(i->status, "failed"));
  CHECK(contains(i->error, s1));
  if (s2) CHECK(contains(i->error, s2));
  wf_info_free(i);
}

/* The data of the first history entry of this kind, copied into a static buffer. */
static const char *history_data(wf_host *h, const char *id, const char *kind) {
  static char buf[512];
  wf_history_entry *e;
  size_t n;
  buf[0] = 0;
  if (wf_history(h, id, &e, &n) != WF_OK) return NULL;
  const char *found = NULL;
  for (size_t i = 0; i < n && !found; i++)
    if (!strcmp(e[i].kind, kind)) {
      snprintf(buf, sizeof buf, "%s", e[i].data_json ? e[i].data_json : "");
      found = buf;
    }
  wf_history_free(e, n);
  return found;
}

/* Runs fn in a child process that is killed after `seconds`; returns 1 if it exited with 0.
 * A hang or a crash of the host is then reported as a failure instead of stopping the test. */
static int in_child(const char *what, void (*fn)(void), unsigned seconds) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    return 0;
  }
  if (pid == 0) {
    alarm(seconds);
    test_failures = 0;
    fn();
    _exit(test_failures ? 1 : 0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 1;
  if (WIFSIGNALED(status))
    fprintf(stderr, "  %s: the child died of signal %d%s\n", what, WTERMSIG(status),
            WTERMSIG(status) == SIGALRM ? " (the host hung)" : "");
  else
    fprintf(stderr, "  %s: the child's checks failed (exit %d)\n", what, WEXITSTATUS(status));
  return 0;
}

/* ---- what is not available, read-only globals -------------------------------------- */

/* Each case is a workflow whose line 2 is `code`; it must fail with `msg` at sb_<name>.lua:2. */
typedef struct {
  const char *name;
  const char *code;
  const char *msg;
  int positioned; /* the message itself starts with file:line (raised from Lua, not from C) */
} deny_case;

static const deny_case deny_cases[] = {
    {"os", "local t = os.time()", "os is not available in workflows: use ctx:now()", 1},
    {"io", "local f = io.open('/etc/passwd')", "io is not available in workflows: do I/O in an action", 1},
    {"debug", "local s = debug.traceback()", "debug is not available in workflows", 1},
    {"package", "local p = package.path", "package is not available in workflows", 1},
    {"load", "local f = load('x')", "load is not available in workflows", 1},
    {"loadfile", "local f = loadfile('/etc/passwd')", "loadfile is not available in workflows", 1},
    {"dofile", "dofile('/etc/passwd')", "dofile is not available in workflows: use require", 1},
    {"collectgarbage", "collectgarbage()", "collectgarbage is not available in workflows", 1},
    {"coroutine", "local co = coroutine.create(print)",
     "coroutine is not available in workflows: a workflow already runs as one", 1},
    {"rawset", "rawset(_ENV, 'x', 1)", "rawset is not available in workflows", 1},
    {"global", "x = 1", "cannot assign global 'x' in workflow code: use a local", 1},
    {"global_fn", "function helper() end", "cannot assign global 'helper'", 1},
    {"string_upper", "string.upper = nil", "string.upper cannot be changed in workflow code", 1},
    {"math_pi", "math.pi = 3", "math.pi cannot be changed in workflow code", 1},
    {"table_insert", "table.insert = print", "table.insert cannot be changed in workflow code", 1},
    {"math_random", "local r = math.random()",
     "math.random is not deterministic under replay: use ctx:random()", 1},
    {"math_random_n", "local r = math.random(1, 6)",
     "math.random is not deterministic under replay: use ctx:random()", 1},
    {"randomseed", "math.randomseed(1)", "math.randomseed is not available: ctx:random() is seeded and recorded by the host", 1},
    {"string_dump", "local b = string.dump(print)", "attempt to call a nil value (field 'dump')", 1},
    {"string_mt", "local i = getmetatable('').__index", "attempt to index a nil value", 1},
    {"protected_mt", "setmetatable(string, nil)", "cannot change a protected metatable", 0},
    {"env_mt", "setmetatable(_ENV, nil)", "cannot change a protected metatable", 0},
};

static void test_denied(void) {
  const char *wfdir = make_dir("deny");
  size_t ncases = sizeof deny_cases / sizeof deny_cases[0];
  for (size_t i = 0; i < ncases; i++) {
    char file[64], src[512];
    snprintf(file, sizeof file, "sb_%s.lua", deny_cases[i].name);
    snprintf(src, sizeof src,
             "return workflow.define { name = 'sb_%s', run = function(ctx)\n"
             "  %s\n"
             "  return 'unreachable'\n"
             "end }\n",
             deny_cases[i].name, deny_cases[i].code);
    test_write_file(wfdir, file, src);
  }
  /* What stays available, and what the sandbox hides, seen from inside. */
  test_write_file(wfdir, "sb_allowed.lua",
             "return workflow.define { name = 'sb_allowed', run = function(ctx)\n"
             "  return {\n"
             "    getmetatable('') == nil,         -- the host's string table is not exposed\n"
             "    string.dump == nil,\n"
             "    getmetatable(string) == false,   -- library tables are protected\n"
             "    string.upper('abc'), ('x'):rep(3), math.floor(math.pi * 100),\n"
             "    select('#', table.unpack({1, 2, 3})), utf8.char(72, 105),\n"
             "  }\n"
             "end }\n");
  test_write_file(wfdir, "sb_method_dump.lua",
             "return workflow.define { name = 'sb_method_dump', run = function(ctx)\n"
             "  return ('').dump == nil\n"
             "end }\n");

  wf_host *h = open_host("deny.db", wfdir, NULL);
  for (size_t i = 0; i < ncases; i++) {
    char wf[64];
    snprintf(wf, sizeof wf, "sb_%s", deny_cases[i].name);
    test_start(h, wf, NULL, wf);
  }
  test_start(h, "sb_allowed", NULL, "allowed");
  test_start(h, "sb_method_dump", NULL, "method_dump");
  CHECK(wf_host_drain(h) == WF_OK);

  for (size_t i = 0; i < ncases; i++) {
    char id[64], at[96], want[400];
    snprintf(id, sizeof id, "sb_%s", deny_cases[i].name);
    snprintf(at, sizeof at, "/sb_%s.lua:2:", deny_cases[i].name);
    if (deny_cases[i].positioned)
      snprintf(want, sizeof want, "sb_%s.lua:2: %s", deny_cases[i].name, deny_cases[i].msg);
    else
      snprintf(want, sizeof want, "%s", deny_cases[i].msg);
    wf_info *inf = test_info_of(h, id);
    if (strcmp(inf->status, "failed") || !inf->error || !strstr(inf->error, want) || !strstr(inf->error, at))
      fprintf(stderr, "  case %s:\n", deny_cases[i].name);
    CHECK(equals(inf->status, "failed"));
    CHECK(contains(inf->error, want));
    CHECK(contains(inf->error, at)); /* the traceback, at least, names the workflow line */
    wf_info_free(inf);
  }
  expect_output(h, "allowed", "[true,true,true,\"ABC\",\"xxx\",314,3,\"Hi\"]");
  /* string.dump is absent from `string`, and must not come back through the string
   * metatable's __index (the host's own string library) either. */
  expect_output(h, "method_dump", "true");
  wf_host_close(h);
}

/* ---- deterministic pairs ------------------------------------------------------------ */

static void test_pairs_order(void) {
  const char *wfdir = make_dir("pairs");
  test_write_file(wfdir, "order.lua",
             "return workflow.define { name = 'order', run = function(ctx)\n"
             "  local t = { b = 1, a = 2, c = 3, [1] = 'x', [2] = 'y', [10] = 'z', zz = 4,\n"
             "              [-1] = 'n', [2.5] = 'f', B = 5, [true] = 't' }\n"
             "  local keys, values = {}, {}\n"
             "  for k, v in pairs(t) do keys[#keys + 1] = k; values[#values + 1] = v end\n"
             "  local lib = {}\n"
             "  for k in pairs(string) do lib[#lib + 1] = k; if #lib == 3 then break end end\n"
             "  return { keys, values, lib }\n"
             "end }\n");
  wf_host *h = open_host("pairs.db", wfdir, NULL);
  test_start(h, "order", NULL, "o1");
  CHECK(wf_host_drain(h) == WF_OK);
  /* Numbers first (ascending), then strings (byte order), then booleans. */
  expect_output(h, "o1",
                "[[-1,1,2,2.5,10,\"B\",\"a\",\"b\",\"c\",\"zz\",true],"
                "[\"n\",\"x\",\"y\",\"f\",\"z\",5,2,1,3,4,\"t\"],"
                "[\"byte\",\"char\",\"find\"]]");
  wf_host_close(h);
}

/* ---- the instruction budget -------------------------------------------------------- */

static void test_instruction_budget(void) {
  const char *wfdir = make_dir("budget");
  test_write_file(wfdir, "spin.lua",
             "return workflow.define { name = 'spin', run = function(ctx)\n"
             "  while true do end\n"
             "end }\n");
  test_write_file(wfdir, "spin_pcall.lua",
             "return workflow.define { name = 'spin_pcall', run = function(ctx)\n"
             "  local caught = 0\n"
             "  while true do\n"
             "    local ok = pcall(function() while true do end end)\n"
             "    caught = caught + 1\n"
             "  end\n"
             "end }\n");
  test_write_file(wfdir, "spin_xpcall.lua",
             "return workflow.define { name = 'spin_xpcall', run = function(ctx)\n"
             "  while true do\n"
             "    xpcall(function() while true do end end, function(m) return m end)\n"
             "  end\n"
             "end }\n");
  test_write_file(wfdir, "spin_later.lua",
             "return workflow.define { name = 'spin_later', run = function(ctx)\n"
             "  ctx.actions.echo { }\n"
             "  while true do end\n"
             "end }\n");
  /* About 600,000 instructions per step, three steps: more than the budget in total, but
   * the budget is per step, so this completes. */
  test_write_file(wfdir, "steps.lua",
             "return workflow.define { name = 'steps', run = function(ctx)\n"
             "  local s = 0\n"
             "  for step = 1, 3 do\n"
             "    for i = 1, 300000 do s = s + 1 end\n"
             "    ctx:sleep(0)\n"
             "  end\n"
             "  return s\n"
             "end }\n");
  /* The same with ctx:now() between the loops: commands that answer at once do not end the
   * step, so the budget counts all three loops (else `while true do ctx:random() end` would
   * never be stopped, and would grow the open transaction without end). */
  test_write_file(wfdir, "steps_now.lua",
             "return workflow.define { name = 'steps_now', run = function(ctx)\n"
             "  local s = 0\n"
             "  for step = 1, 3 do\n"
             "    for i = 1, 300000 do s = s + 1 end\n"
             "    ctx:now()\n"
             "  end\n"
             "  return s\n"
             "end }\n");
  test_write_file(wfdir, "spin_random.lua",
             "return workflow.define { name = 'spin_random', run = function(ctx)\n"
             "  while true do ctx:random() end\n"
             "end }\n");
  /* Three steps of work, then a wait: rebuilt by replay after a restart, it must not be
   * killed for the work of all its past steps added together. */
  test_write_file(wfdir, "steps_wait.lua",
             "return workflow.define { name = 'steps_wait', run = function(ctx)\n"
             "  local s = 0\n"
             "  for step = 1, 3 do\n"
             "    for i = 1, 300000 do s = s + 1 end\n"
             "    ctx:sleep(0)\n"
             "  end\n"
             "  ctx:wait_for('go')\n"
             "  return s\n"
             "end }\n");
  test_write_file(wfdir, "ok.lua",
             "return workflow.define { name = 'ok', run = function(ctx, input)\n"
             "  return { fine = input }\n"
             "end }\n");
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.instruction_budget = 1000000;
  wf_host *h = open_host("budget.db", wfdir, &cfg);
  test_start(h, "spin", NULL, "spin");
  test_start(h, "ok", "1", "ok1"); /* in the same drain, after the runaway */
  test_start(h, "spin_pcall", NULL, "spin_pcall");
  test_start(h, "spin_xpcall", NULL, "spin_xpcall");
  test_start(h, "spin_later", NULL, "spin_later");
  test_start(h, "steps", NULL, "steps");
  test_start(h, "steps_now", NULL, "steps_now");
  test_start(h, "spin_random", NULL, "spin_random");
  test_start(h, "steps_wait", NULL, "steps_wait");
  test_start(h, "ok", "2", "ok2");
  CHECK(wf_host_drain(h) == WF_OK);

  const char *budget = "instruction budget exceeded: more than 1000000 Lua instructions without waiting";
  expect_failed(h, "spin", "spin.lua:2: instruction budget exceeded", budget);
  expect_failed(h, "spin_pcall", budget, "spin_pcall.lua:");
  expect_failed(h, "spin_xpcall", budget, "spin_xpcall.lua:");
  expect_failed(h, "spin_later", "spin_later.lua:3: instruction budget exceeded", NULL);
  expect_output(h, "ok1", "{\"fine\":1}");
  expect_output(h, "ok2", "{\"fine\":2}");
  expect_output(h, "steps", "900000");
  expect_failed(h, "steps_now", "steps_now.lua:4: instruction budget exceeded", budget);
  expect_failed(h, "spin_random", "spin_random.lua:2: instruction budget exceeded", budget);
  wf_info *w = test_info_of(h, "steps_wait");
  CHECK(equals(w->status, "waiting"));
  wf_info_free(w);
  /* The failure is logged with the instance's id. */
  int logged = 0;
  for (int i = 0; i < nlogs; i++)
    if (logs[i].instance && !strcmp(logs[i].instance, "spin") && logs[i].level == WF_LOG_ERROR &&
        strstr(logs[i].msg, "instruction budget exceeded"))
      logged = 1;
  CHECK(logged);

  /* The host goes on: a new instance after the runaways runs normally. */
  test_start(h, "ok", "3", "ok3");
  CHECK(wf_host_drain(h) == WF_OK);
  expect_output(h, "ok3", "{\"fine\":3}");
  wf_host_close(h);

  /* A new host rebuilds steps_wait by replaying its three steps, then delivers the event. */
  h = open_host("budget.db", wfdir, &cfg);
  CHECK(wf_signal(h, "steps_wait", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  expect_output(h, "steps_wait", "900000");
  wf_host_close(h);

  /* A runaway at the top level of a workflow file is stopped at load time. */
  const char *loaddir = make_dir("budget_load");
  test_write_file(loaddir, "loops.lua",
             "local n = 0\n"
             "while true do n = n + 1 end\n"
             "return workflow.define { name = 'loops', run = function(ctx) end }\n");
  h = open_host("budget_load.db", NULL, &cfg);
  CHECK(wf_load_dir(h, loaddir) == WF_LUA);
  CHECK(contains(wf_errmsg(h), "loops.lua:2: instruction budget exceeded"));
  CHECK(wf_load_dir(h, wfdir) == WF_OK); /* the host can still load code */
  test_start(h, "ok", "4", "ok4");
  CHECK(wf_host_drain(h) == WF_OK);
  expect_output(h, "ok4", "{\"fine\":4}");
  wf_host_close(h);
}

/* ---- the memory limit -------------------------------------------------------------- */

static void test_memory_limit(void) {
  const char *wfdir = make_dir("memory");
  test_write_file(wfdir, "hog.lua",
             "return workflow.define { name = 'hog', run = function(ctx)\n"
             "  local t = {}\n"
             "  for i = 1, 1e9 do t[i] = ('x'):rep(100) .. i end\n"
             "end }\n");
  test_write_file(wfdir, "hog_pcall.lua",
             "return workflow.define { name = 'hog_pcall', run = function(ctx)\n"
             "  local ok, err = pcall(function()\n"
             "    local t = {}\n"
             "    for i = 1, 1e9 do t[i] = ('x'):rep(100) .. i end\n"
             "  end)\n"
             "  return { swallowed = tostring(err) }\n"
             "end }\n");
  test_write_file(wfdir, "hog_str.lua",
             "return workflow.define { name = 'hog_str', run = function(ctx)\n"
             "  local s = ('x'):rep(1 << 30)\n"
             "  return #s\n"
             "end }\n");
  /* Allocates a few megabytes: fine under the limit, whatever ran before. */
  test_write_file(wfdir, "modest.lua",
             "return workflow.define { name = 'modest', run = function(ctx, input)\n"
             "  local t = {}\n"
             "  for i = 1, 20000 do t[i] = ('y'):rep(100) .. i end\n"
             "  return { #t, input }\n"
             "end }\n");
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.memory_limit = (size_t)64 << 20;
  wf_host *h = open_host("memory.db", wfdir, &cfg);
  test_start(h, "hog", NULL, "hog");
  test_start(h, "modest", "1", "modest1"); /* in the same drain, right after the hog */
  test_start(h, "hog_pcall", NULL, "hog_pcall");
  test_start(h, "hog_str", NULL, "hog_str");
  CHECK(wf_host_drain(h) == WF_OK);

  const char *limit = "memory limit exceeded: the workflow Lua state reached its limit of 67108864 bytes";
  expect_failed(h, "hog", limit, NULL);
  expect_failed(h, "hog_pcall", limit, NULL);
  expect_failed(h, "hog_str", limit, NULL);
  expect_output(h, "modest1", "[20000,1]");

  /* The host goes on: new instances afterwards complete. */
  test_start(h, "modest", "2", "modest2");
  CHECK(wf_host_drain(h) == WF_OK);
  expect_output(h, "modest2", "[20000,2]");
  test_start(h, "hog", NULL, "hog2");
  test_start(h, "modest", "3", "modest3");
  CHECK(wf_host_drain(h) == WF_OK);
  expect_failed(h, "hog2", limit, NULL);
  expect_output(h, "modest3", "[20000,3]");
  wf_host_close(h);
}

/* ---- load errors -------------------------------------------------------------------- */

static int count_lines(const char *s) {
  int n = *s ? 1 : 0;
  for (; *s; s++)
    if (*s == '\n') n++;
  return n;
}

/* Returns 1 if one line of text contains both a and b; otherwise prints the text. */
static int line_with(const char *text, const char *a, const char *b) {
  for (const char *p = text; p && *p;) {
    const char *eol = strchr(p, '\n');
    size_t len = eol ? (size_t)(eol - p) : strlen(p);
    char line[2048];
    snprintf(line, sizeof line, "%.*s", (int)len, p);
    if (strstr(line, a) && strstr(line, b)) return 1;
    p = eol ? eol + 1 : NULL;
  }
  fprintf(stderr, "  expected a line with \"%s\" and \"%s\" in:\n%s\n", a, b, text ? text : "(null)");
  return 0;
}

static void test_load_errors(void) {
  /* A syntax error: nothing from the directory is loaded. */
  const char *d1 = make_dir("syntax");
  test_write_file(d1, "good.lua",
             "return workflow.define { name = 'good', run = function(ctx) return 1 end }\n");
  test_write_file(d1, "bad.lua",
             "return workflow.define { name = 'bad', run = function(ctx)\n"
             "  local x = 1\n"
             "  if x then return end end\n" /* one `end` too many: closes the function early */
             "end }\n");
  wf_host *h = open_host("load.db", NULL, NULL);
  CHECK(wf_load_dir(h, d1) == WF_LUA);
  CHECK(contains(wf_errmsg(h), "/syntax/bad.lua:4:"));
  CHECK(count_lines(wf_errmsg(h)) == 1);
  CHECK(wf_start(h, "good", NULL, NULL, NULL, NULL, NULL) == WF_NOTFOUND);
  CHECK(contains(wf_errmsg(h), "unknown workflow 'good'"));

  /* A file that does not return a definition. */
  const char *d2 = make_dir("nodef");
  test_write_file(d2, "nodef.lua", "local x = 1\nreturn x + 41\n");
  CHECK(wf_load_dir(h, d2) == WF_LUA);
  CHECK(contains(wf_errmsg(h), "/nodef/nodef.lua: does not return a workflow definition"));

  /* Several problems: each on its own line, naming its file (and line where there is one). */
  const char *d3 = make_dir("several");
  test_write_file(d3, "a_syntax.lua", "return workflow.define { name = 'a' run = 1 }\n");
  test_write_file(d3, "b_nodef.lua", "return { name = 'b' }\n");
  test_write_file(d3, "c_dup1.lua", "return workflow.define { name = 'dup', run = function() end }\n");
  test_write_file(d3, "d_dup2.lua", "\nreturn workflow.define { name = 'dup', run = function() end }\n");
  test_write_file(d3, "e_raises.lua", "local t = nil\nlocal y = t.field\nreturn workflow.define { name = 'e', run = print }\n");
  test_write_file(d3, "f_badname.lua", "return workflow.define { name = 'has space', run = function() end }\n");
  test_write_file(d3, "g_ok.lua", "return workflow.define { name = 'fine', run = function() return 1 end }\n");
  CHECK(wf_check_dir(h, d3) == WF_LUA);
  const char *m = wf_errmsg(h);
  CHECK(count_lines(m) == 5);
  CHECK(contains(m, "a_syntax.lua:1:"));
  CHECK(contains(m, "b_nodef.lua: does not return a workflow definition"));
  CHECK(contains(m, "d_dup2.lua:2: duplicate workflow 'dup' version 1 (also defined at "));
  CHECK(contains(m, "c_dup1.lua:1)"));
  CHECK(contains(m, "e_raises.lua:2: attempt to index a nil value"));
  CHECK(line_with(m, "f_badname.lua", "workflow.define: name must be a string"));
  /* wf_load_dir reports the same problems and loads nothing, not even the good file. */
  CHECK(wf_load_dir(h, d3) == WF_LUA);
  CHECK(count_lines(wf_errmsg(h)) == 5);
  CHECK(wf_start(h, "fine", NULL, NULL, NULL, NULL, NULL) == WF_NOTFOUND);

  /* A binary (precompiled) chunk is refused: text only. */
  const char *d4 = make_dir("binary");
  char src[300], cmd[800], bin[300];
  snprintf(src, sizeof src, "%s/compiled_src.lua.txt", root);
  snprintf(bin, sizeof bin, "%s/compiled.lua", d4);
  FILE *f = fopen(src, "w");
  fputs("return workflow.define { name = 'compiled', run = function(ctx) return 1 end }\n", f);
  fclose(f);
  snprintf(cmd, sizeof cmd, "luac5.4 -o '%s' '%s' 2>/dev/null", bin, src);
  if (system(cmd) != 0) {
    /* No luac: the signature is enough for the loader to see a binary chunk. */
    f = fopen(bin, "wb");
    fwrite("\x1bLua\x54\x00\x19\x93\r\n\x1a\n\x04\x08\x08", 1, 15, f);
    fclose(f);
  }
  CHECK(wf_check_dir(h, d4) == WF_LUA);
  CHECK(contains(wf_errmsg(h), "binary chunk"));
  CHECK(contains(wf_errmsg(h), "compiled.lua")); /* the message says which file */
  CHECK(wf_load_dir(h, d4) == WF_LUA);
  CHECK(contains(wf_errmsg(h), "binary chunk"));
  CHECK(contains(wf_errmsg(h), "compiled.lua"));
  CHECK(wf_start(h, "compiled", NULL, NULL, NULL, NULL, NULL) == WF_NOTFOUND);

  /* After all that, a good directory loads and runs. */
  const char *d5 = make_dir("fixed");
  test_write_file(d5, "good.lua",
             "return workflow.define { name = 'good', run = function(ctx) return 1 end }\n");
  CHECK(wf_check_dir(h, d5) == WF_OK);
  CHECK(wf_load_dir(h, d5) == WF_OK);
  test_start(h, "good", NULL, "g1");
  CHECK(wf_host_drain(h) == WF_OK);
  expect_output(h, "g1", "1");
  wf_host_close(h);
}

/* ---- runtime errors ----------------------------------------------------------------- */

static void test_runtime_error(void) {
  const char *wfdir = make_dir("workflows");
  test_write_file(wfdir, "x.lua",
             "local function lookup(t)\n"
             "  return t.field\n"
             "end\n"
             "return workflow.define { name = 'x', run = function(ctx, input)\n"
             "  local order = nil\n"
             "  if input == 1 then return order.id end\n"
             "  if input == 2 then local v = lookup(nil); return v end\n"
             "  if input == 3 then error('custom failure') end\n"
             "  if input == 4 then error({ code = 'E42', message = 'structured' }) end\n"
             "  return 'fine'\n"
             "end }\n");
  wf_host *h = open_host("runtime.db", wfdir, NULL);
  test_start(h, "x", "1", "x1");
  test_start(h, "x", "2", "x2");
  test_start(h, "x", "3", "x3");
  test_start(h, "x", "4", "x4");
  test_start(h, "x", "0", "x0");
  CHECK(wf_host_drain(h) == WF_OK);
  expect_failed(h, "x1", "workflows/x.lua:6: attempt to index a nil value (local 'order')",
                "stack traceback:");
  wf_info *i = test_info_of(h, "x1");
  CHECK(contains(i->error, "workflows/x.lua:6: in ")); /* the traceback's workflow frame */
  CHECK(i->error && !strstr(i->error, "[wfhost]"));     /* not the host's own frames */
  wf_info_free(i);
  expect_failed(h, "x2", "workflows/x.lua:2: attempt to index a nil value (local 't')",
                "workflows/x.lua:7: in ");
  expect_failed(h, "x3", "workflows/x.lua:8: custom failure", NULL);
  expect_failed(h, "x4", "E42: structured", "workflows/x.lua:9: in ");
  expect_output(h, "x0", "\"fine\""); /* only the failing instances failed */
  wf_host_close(h);
}

/* ---- the sandboxed require ---------------------------------------------------------- */

static void test_require(void) {
  const char *wfdir = make_dir("req");
  test_write_file(wfdir, "lib/helper.lua",
             "print('helper loaded')\n"
             "local M = {}\n"
             "function M.double(x) return 2 * x end\n"
             "return M\n");
  test_write_file(wfdir, "lib/usesos.lua",
             "local M = {}\n"
             "M.started = os.time()\n"
             "return M\n");
  test_write_file(wfdir, "lib/global.lua", "shared = 1\nreturn {}\n");
  test_write_file(wfdir, "lib/loop.lua", "return require 'lib.loop'\n");
  test_write_file(wfdir, "lib/ping.lua", "return require 'lib.pong'\n");
  test_write_file(wfdir, "lib/pong.lua", "return require 'lib.ping'\n");
  test_write_file(wfdir, "lib/nothing.lua", "local x = 1\n");
  test_write_file(wfdir, "req_ok.lua",
             "return workflow.define { name = 'req_ok', run = function(ctx)\n"
             "  local h1 = require 'lib.helper'\n"
             "  local h2 = require 'lib.helper'\n"
             "  return { h1 == h2, h1.double(21), require 'lib.nothing' }\n"
             "end }\n");
  /* `code` is line 2 of a workflow named after the file. */
  static const struct {
    const char *name, *code, *msg1, *msg2;
  } cases[] = {
      {"req_os_module", "require 'lib.usesos'", "/lib/usesos.lua:2: os is not available in workflows", NULL},
      {"req_global", "require 'lib.global'", "/lib/global.lua:1: cannot assign global 'shared'", NULL},
      {"req_dotdot", "require '../etc/passwd'", "require: bad module name '../etc/passwd'",
       "req_dotdot.lua:2:"},
      {"req_abs", "require '/etc/passwd'", "require: bad module name '/etc/passwd'", NULL},
      {"req_slash", "require 'lib/helper'", "require: bad module name 'lib/helper'", NULL},
      {"req_updots", "require 'lib..helper'", "require: bad module name 'lib..helper'", NULL},
      {"req_missing", "require 'os'", "os.lua", "No such file or directory"},
      {"req_loop", "require 'lib.loop'", "require: module 'lib.loop' requires itself (a loop)", NULL},
      {"req_loop2", "require 'lib.ping'", "require: module 'lib.ping' requires itself (a loop)", NULL},
      {"req_number", "require(42)", "/42.lua: cannot read", NULL},
  };
  size_t ncases = sizeof cases / sizeof cases[0];
  for (size_t i = 0; i < ncases; i++) {
    char file[64], src[512];
    snprintf(file, sizeof file, "%s.lua", cases[i].name);
    snprintf(src, sizeof src,
             "return workflow.define { name = '%s', run = function(ctx)\n"
             "  %s\n"
             "  return 'unreachable'\n"
             "end }\n",
             cases[i].name, cases[i].code);
    test_write_file(wfdir, file, src);
  }
  /* A failed require is not cached as a success: trying again fails again. */
  test_write_file(wfdir, "req_twice.lua",
             "return workflow.define { name = 'req_twice', run = function(ctx)\n"
             "  local ok1, e1 = pcall(require, 'lib.usesos')\n"
             "  local ok2, e2 = pcall(require, 'lib.usesos')\n"
             "  return { ok1, ok2, e2 == e1 }\n"
             "end }\n");

  wf_host *h = open_host("req.db", wfdir, NULL);
  logs_clear();
  test_start(h, "req_ok", NULL, "ok1");
  test_start(h, "req_ok", NULL, "ok2");
  for (size_t i = 0; i < ncases; i++) test_start(h, cases[i].name, NULL, cases[i].name);
  test_start(h, "req_twice", NULL, "twice");
  CHECK(wf_host_drain(h) == WF_OK);
  /* Two requires in each of two instances: the module's top level ran once. */
  expect_output(h, "ok1", "[true,42,true]");
  expect_output(h, "ok2", "[true,42,true]");
  CHECK(log_count("helper loaded") == 1);
  const log_line *l = log_find(NULL, "helper loaded");
  CHECK(l && l->instance && !strcmp(l->instance, "ok1"));
  for (size_t i = 0; i < ncases; i++) {
    wf_info *inf = test_info_of(h, cases[i].name);
    if (strcmp(inf->status, "failed") || !inf->error || !strstr(inf->error, cases[i].msg1))
      fprintf(stderr, "  case %s:\n", cases[i].name);
    CHECK(equals(inf->status, "failed"));
    CHECK(contains(inf->error, cases[i].msg1));
    if (cases[i].msg2) CHECK(contains(inf->error, cases[i].msg2));
    wf_info_free(inf);
  }
  expect_output(h, "twice", "[false,false,true]");
  wf_host_close(h);
}

/* ---- durations ---------------------------------------------------------------------- */

static void test_durations(void) {
  const char *wfdir = make_dir("durations");
  test_write_file(wfdir, "nap.lua",
             "return workflow.define { name = 'nap', run = function(ctx, input)\n"
             "  ctx:sleep(input)\n"
             "  return 'woke'\n"
             "end }\n");
  test_write_file(wfdir, "nap_bad.lua",
             "return workflow.define { name = 'nap_bad', run = function(ctx, input)\n"
             "  ctx:sleep(input)\n"
             "end }\n");
  test_write_file(wfdir, "wait_bad.lua",
             "return workflow.define { name = 'wait_bad', run = function(ctx, input)\n"
             "  ctx:wait_for('go', { timeout = input })\n"
             "end }\n");
  wf_host *h = open_host("durations.db", wfdir, NULL);
  static const struct {
    const char *input;
    int64_t ms;
  } good[] = {
      {"\"250ms\"", 250}, {"\"1h30m\"", 5400000}, {"90", 90000},     {"0.5", 500},
      {"\"1.5s\"", 1500}, {"\"2d\"", 172800000},  {"\"1m 30s\"", 90000},
  };
  size_t ngood = sizeof good / sizeof good[0];
  for (size_t i = 0; i < ngood; i++) {
    char id[32];
    snprintf(id, sizeof id, "nap%zu", i);
    test_start(h, "nap", good[i].input, id);
  }
  CHECK(wf_host_drain(h) == WF_OK);
  for (size_t i = 0; i < ngood; i++) {
    char id[32], want[128];
    snprintf(id, sizeof id, "nap%zu", i);
    snprintf(want, sizeof want, "{\"due\":%" PRId64 ",\"ms\":%" PRId64 "}", fake_now + good[i].ms, good[i].ms);
    wf_info *inf = test_info_of(h, id);
    CHECK(equals(inf->status, "waiting"));
    wf_info_free(inf);
    if (!equals(history_data(h, id, "sleep"), want)) {
      fprintf(stderr, "  duration %s\n", good[i].input);
      CHECK(0);
    }
  }
  /* "1h30m" (nap1) wakes exactly at its due time, not a millisecond before. */
  int64_t t0 = fake_now;
  fake_now = t0 + 5400000 - 1;
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *inf = test_info_of(h, "nap1");
  CHECK(equals(inf->status, "waiting"));
  wf_info_free(inf);
  expect_output(h, "nap0", "\"woke\""); /* 250ms and 90s are long past */
  expect_output(h, "nap2", "\"woke\"");
  fake_now = t0 + 5400000;
  CHECK(wf_host_drain(h) == WF_OK);
  expect_output(h, "nap1", "\"woke\"");
  fake_now = t0 + 172800000;
  CHECK(wf_host_drain(h) == WF_OK);
  expect_output(h, "nap5", "\"woke\"");

  /* Invalid durations fail with the accepted forms, at the workflow's line. */
  const char *forms = "use a number of seconds or a string like \"250ms\", \"10s\", \"5m\", \"72h\", \"7d\"";
  static const char *const bad[] = {"\"5x\"", "\"\"", "-1", "\"ms\"", "true", "\"10s5\""};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char id[32];
    snprintf(id, sizeof id, "bad%zu", i);
    test_start(h, "nap_bad", bad[i], id);
  }
  test_start(h, "wait_bad", "\"5x\"", "wbad");
  CHECK(wf_host_drain(h) == WF_OK);
  expect_failed(h, "bad0", "nap_bad.lua:2: invalid duration \"5x\": ", forms);
  for (size_t i = 1; i < sizeof bad / sizeof bad[0]; i++) {
    char id[32];
    snprintf(id, sizeof id, "bad%zu", i);
    expect_failed(h, id, "nap_bad.lua:2: invalid duration ", forms);
  }
  expect_failed(h, "wbad", "wait_bad.lua:2: invalid duration \"5x\": ", forms);
  wf_host_close(h);
}

/* ---- ctx:random --------------------------------------------------------------------- */

static void test_random(void) {
  const char *wfdir = make_dir("random");
  test_write_file(wfdir, "dice.lua",
             "return workflow.define { name = 'dice', run = function(ctx)\n"
             "  local seen = {}\n"
             "  for i = 1, 300 do\n"
             "    local r = ctx:random(1, 6)\n"
             "    if math.type(r) ~= 'integer' or r < 1 or r > 6 then error('out of range: ' .. tostring(r)) end\n"
             "    seen[r] = true\n"
             "    local s = ctx:random(3)\n"
             "    if math.type(s) ~= 'integer' or s < 1 or s > 3 then error('out of range: ' .. tostring(s)) end\n"
             "    local u = ctx:random()\n"
             "    if u < 0 or u >= 1 then error('out of range: ' .. tostring(u)) end\n"
             "  end\n"
             "  return seen\n"
             "end }\n");
  test_write_file(wfdir, "empty.lua",
             "return workflow.define { name = 'empty', run = function(ctx)\n"
             "  local r = ctx:random(6, 1)\n"
             "  return r\n"
             "end }\n");
  /* The same as a tail call: no workflow frame is left, but the message must survive. */
  test_write_file(wfdir, "empty_tail.lua",
             "return workflow.define { name = 'empty_tail', run = function(ctx)\n"
             "  return ctx:random(6, 1)\n"
             "end }\n");
  test_write_file(wfdir, "fraction.lua",
             "return workflow.define { name = 'fraction', run = function(ctx)\n"
             "  local r = ctx:random(1.5, 3)\n"
             "  return r\n"
             "end }\n");
  wf_host *h = open_host("random.db", wfdir, NULL);
  test_start(h, "dice", NULL, "dice");
  test_start(h, "empty", NULL, "empty");
  test_start(h, "fraction", NULL, "fraction");
  test_start(h, "empty_tail", NULL, "empty_tail");
  CHECK(wf_host_drain(h) == WF_OK);
  expect_output(h, "dice", "[true,true,true,true,true,true]"); /* every face, nothing else */
  expect_failed(h, "empty", "empty.lua:2: ctx:random(m, n): interval is empty", NULL);
  expect_failed(h, "fraction", "fraction.lua:2: ctx:random(m, n): bounds must be integers", NULL);
  expect_failed(h, "empty_tail", "ctx:random(m, n): interval is empty", NULL);
  wf_host_close(h);
}

/* ---- log lines ---------------------------------------------------------------------- */

static void test_logging(void) {
  const char *wfdir = make_dir("logging");
  test_write_file(wfdir, "chatty.lua",
             "return workflow.define { name = 'chatty', run = function(ctx)\n"
             "  ctx.log:info('order received', { k = 1 })\n"
             "  ctx.log:warn('stock low', { sku = 'A-1', left = { 2, 3 } })\n"
             "  ctx.log:error('plain')\n"
             "  ctx.log:debug('not shown at the default level')\n"
             "  print('a', 1, nil, true)\n"
             "  ctx.log:info('unencodable', { f = print })\n"
             "  return 'done'\n"
             "end }\n");
  wf_host *h = open_host("logging.db", wfdir, NULL);
  logs_clear();
  test_start(h, "chatty", NULL, "c1");
  CHECK(wf_host_drain(h) == WF_OK);
  expect_output(h, "c1", "\"done\"");
  const log_line *l = log_find("c1", "order received");
  CHECK(l != NULL);
  if (l) {
    CHECK(l->level == WF_LOG_INFO);
    CHECK(equals(l->fields, "{\"k\":1}"));
  }
  l = log_find("c1", "stock low");
  CHECK(l != NULL);
  if (l) {
    CHECK(l->level == WF_LOG_WARN);
    CHECK(contains(l->fields, "\"sku\":\"A-1\""));
    CHECK(contains(l->fields, "\"left\":[2,3]"));
  }
  l = log_find("c1", "plain");
  CHECK(l && l->level == WF_LOG_ERROR && l->fields == NULL);
  CHECK(log_find(NULL, "not shown at the default level") == NULL);
  l = log_find("c1", "a\t1\tnil\ttrue");
  CHECK(l && l->level == WF_LOG_INFO && l->fields == NULL);
  l = log_find("c1", "unencodable");
  CHECK(l && contains(l->fields, "unencodable"));
  wf_host_close(h);
}

/* ---- hostile code: the host must neither hang nor let one instance change another --- */

static const char *hostile_dir;

/* An error value whose __tostring (or __index) loops forever. The host turns error values
 * into text; if it does so outside the instance's budget, the whole host hangs. */
static void hostile_error_object(void) {
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.instruction_budget = 1000000;
  wf_host *h = open_host("hostile_err.db", hostile_dir, &cfg);
  test_start(h, "evil_tostring", NULL, "evil1");
  test_start(h, "evil_index", NULL, "evil2");
  test_start(h, "kind", NULL, "kind1");
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = test_info_of(h, "evil1");
  CHECK(equals(i->status, "failed"));
  wf_info_free(i);
  i = test_info_of(h, "evil2");
  CHECK(equals(i->status, "failed"));
  wf_info_free(i);
  expect_output(h, "kind1", "\"kind\"");
  wf_host_close(h);
}

/* A finalizer that loops forever: it must not hang the host when the garbage collector runs
 * it (during another instance's step, or in wf_host_close), nor fail an innocent instance. */
static void hostile_finalizer(void) {
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.instruction_budget = 1000000;
  wf_host *h = open_host("hostile_gc.db", hostile_dir, &cfg);
  test_start(h, "evil_gc", NULL, "evil");
  CHECK(wf_host_drain(h) == WF_OK);
  /* Instances that allocate enough for the collector to run the finalizer. */
  for (int k = 0; k < 4; k++) {
    char id[16];
    snprintf(id, sizeof id, "busy%d", k);
    test_start(h, "busy", NULL, id);
  }
  CHECK(wf_host_drain(h) == WF_OK);
  for (int k = 0; k < 4; k++) {
    char id[16];
    snprintf(id, sizeof id, "busy%d", k);
    expect_output(h, id, "200000");
  }
  wf_host_close(h);
}

/* ctx's methods are shared by every instance; one instance must not be able to replace
 * them for the others. */
static void hostile_ctx_metatable(void) {
  wf_host *h = open_host("hostile_ctx.db", hostile_dir, NULL);
  test_start(h, "meddle", NULL, "meddle");
  CHECK(wf_host_drain(h) == WF_OK);
  test_start(h, "victim", NULL, "victim");
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = test_info_of(h, "victim");
  CHECK(equals(i->status, "completed"));
  CHECK(i->output_json && strcmp(i->output_json, "42") != 0); /* the real ctx:now() ran */
  wf_info_free(i);
  CHECK(history_data(h, "victim", "now") != NULL);
  wf_host_close(h);
}

/* Ways one instance could reach what every instance shares: the tables behind read-only
 * views (through pairs), the ctx and ctx.actions metatables, a module's tables. Each attempt
 * is made; a second instance must see the host unchanged, and the host must not hang. */
static const char *shared_dir;
static void hostile_shared_state(void) {
  wf_host *h = open_host("shared.db", shared_dir, NULL);
  test_start(h, "meddle2", NULL, "meddle2");
  CHECK(wf_host_drain(h) == WF_OK);
  test_start(h, "victim2", NULL, "victim2");
  CHECK(wf_host_drain(h) == WF_OK);
  expect_output(h, "victim2", "[\"A\",1,true,0.25,3]");
  wf_info *i = test_info_of(h, "meddle2");
  CHECK(equals(i->status, "completed"));
  CHECK(i->output_json && !strstr(i->output_json, "changed")); /* every attempt failed */
  wf_info_free(i);
  test_start(h, "bad_name", NULL, "bad_name");
  CHECK(wf_host_drain(h) == WF_OK);
  expect_failed(h, "bad_name", "bad_name.lua:2: ctx.actions: bad action name", NULL);
  wf_host_close(h);
}

/* A require at a file's top level must not switch the limits off for the rest of the load. */
static void hostile_require_at_load(void) {
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.instruction_budget = 1000000;
  wf_host *h = open_host("loadloop.db", NULL, &cfg);
  CHECK(wf_check_dir(h, make_dir("loadloop")) == WF_LUA);
  CHECK(contains(wf_errmsg(h), "spin_after_require.lua:2: instruction budget exceeded"));
  wf_host_close(h);
}

static void test_shared_state(void) {
  shared_dir = make_dir("shared");
  test_write_file(shared_dir, "lib/rates.lua", "return { vat = { rate = 0.25 } }\n");
  test_write_file(shared_dir, "meddle2.lua",
             "local rates = require 'lib.rates'\n"
             "return workflow.define { name = 'meddle2', run = function(ctx)\n"
             "  local changed = {}\n"
             "  local function try(what, f) if pcall(f) then changed[#changed + 1] = what end end\n"
             "  try('string', function() local _, raw = pairs(string); raw.upper = function() return 'X' end end)\n"
             "  try('math', function() local _, raw = pairs(math); raw.floor = function() return 42 end end)\n"
             "  try('module', function() local _, raw = pairs(rates.vat); raw.rate = 9 end)\n"
             "  try('module2', function() rates.vat.rate = 9 end)\n"
             "  try('ctx', function() ctx.__index.uuid = function() return 'x' end end)\n"
             "  try('actions', function() getmetatable(ctx.actions).__index = function() end end)\n"
             "  try('log', function() ctx.log.info = nil end)\n"
             "  return #changed > 0 and ('changed: ' .. table.concat(changed, ',')) or 'held'\n"
             "end }\n");
  test_write_file(shared_dir, "victim2.lua",
             "local rates = require 'lib.rates'\n"
             "return workflow.define { name = 'victim2', run = function(ctx)\n"
             "  return { string.upper('a'), math.floor(1.5), #ctx:uuid() == 36, rates.vat.rate, #('abc') }\n"
             "end }\n");
  test_write_file(shared_dir, "bad_name.lua",
             "return workflow.define { name = 'bad_name', run = function(ctx)\n"
             "  return ctx.actions['no spaces please'] {}\n"
             "end }\n");
  const char *loop_dir = make_dir("loadloop");
  test_write_file(loop_dir, "lib/m.lua", "return {}\n");
  test_write_file(loop_dir, "spin_after_require.lua",
             "local m = require 'lib.m'\n"
             "while true do end\n");
  CHECK(in_child("an instance reaching shared tables", hostile_shared_state, 20));
  CHECK(in_child("a loop after a require at load time", hostile_require_at_load, 20));
}

static void test_hostile(void) {
  hostile_dir = make_dir("hostile");
  test_write_file(hostile_dir, "evil_tostring.lua",
             "return workflow.define { name = 'evil_tostring', run = function(ctx)\n"
             "  error(setmetatable({}, { __tostring = function() while true do end end }))\n"
             "end }\n");
  test_write_file(hostile_dir, "evil_index.lua",
             "return workflow.define { name = 'evil_index', run = function(ctx)\n"
             "  error(setmetatable({}, { __index = function() while true do end end }))\n"
             "end }\n");
  test_write_file(hostile_dir, "evil_gc.lua",
             "return workflow.define { name = 'evil_gc', run = function(ctx)\n"
             "  setmetatable({}, { __gc = function() while true do end end })\n"
             "  return 'planted'\n"
             "end }\n");
  test_write_file(hostile_dir, "busy.lua",
             "return workflow.define { name = 'busy', run = function(ctx)\n"
             "  local t = {}\n"
             "  for i = 1, 200000 do t[i] = {} end\n"
             "  return #t\n"
             "end }\n");
  test_write_file(hostile_dir, "kind.lua",
             "return workflow.define { name = 'kind', run = function(ctx) return 'kind' end }\n");
  test_write_file(hostile_dir, "meddle.lua",
             "return workflow.define { name = 'meddle', run = function(ctx)\n"
             "  pcall(function() getmetatable(ctx).now = function() return 42 end end)\n"
             "  pcall(function() getmetatable(ctx).__index.now = function() return 42 end end)\n"
             "  return 'tried'\n"
             "end }\n");
  test_write_file(hostile_dir, "victim.lua",
             "return workflow.define { name = 'victim', run = function(ctx)\n"
             "  return ctx:now()\n"
             "end }\n");
  CHECK(in_child("an error object with a looping __tostring/__index", hostile_error_object, 10));
  CHECK(in_child("a looping __gc finalizer", hostile_finalizer, 10));
  CHECK(in_child("one instance replacing ctx methods", hostile_ctx_metatable, 10));
}

int main(void) {
  snprintf(root, sizeof root, "%s", test_tmpdir());
  test_denied();
  test_pairs_order();
  test_instruction_budget();
  test_memory_limit();
  test_load_errors();
  test_runtime_error();
  test_require();
  test_durations();
  test_random();
  test_logging();
  test_hostile();
  test_shared_state();
  logs_clear();
  TEST_MAIN_END();
}
