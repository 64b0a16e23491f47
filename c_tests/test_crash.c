/*
 * test_crash.c — crashes with real processes. The host runs as a child process
 * (`wfhost run --plugin crash_plugin.so`), is killed with SIGKILL at chosen moments and
 * restarted; the test drives it from this process through the public API in client mode
 * and checks what the durability rules promise:
 *
 *   1. a kill between an action's intent and its result: the step is invoked again after
 *      the restart, with the same idempotency key and a higher attempt, and `action_lost`
 *      in the history; steps whose result was committed are never invoked again;
 *   2. a kill while hundreds of instances wait for an event: all of them are rebuilt by
 *      replay, take their event and complete; no step is invoked twice;
 *   3. kills at random moments while the host is busy (starting instances, running their
 *      steps, recovering from the previous kill): every instance completes, none is lost
 *      or duplicated, each step has exactly one result, and only steps that were in flight
 *      at a kill were invoked again;
 *   4. an event sent and an instance started while no host runs are taken by the next
 *      host, a timer that fell due while no host ran fires promptly after the restart, and
 *      one not yet due fires on time;
 *   5. a kill while hundreds of events are being delivered (to instances mostly evicted
 *      from the cache): each event is taken exactly once, by its instance;
 *   6. a kill while action steps back off before their next attempt: the persisted retry
 *      time is kept (not re-drawn) and the attempt runs once, at that time, or promptly
 *      after the restart if it fell due while no host ran;
 *   7. a kill right after instances took the new path of a ctx:patched change (its patch
 *      entry and progress committed with the next step's intent): rebuilt by replay, they
 *      find the entry and keep the new path; none ever takes the old one;
 *   8. the outbox: a kill while a subscriber has the first of three committed messages in
 *      hand: after the restart that one is delivered again (at least once), the two the killed
 *      host never delivered are delivered once, all in emit order, and nothing is delivered
 *      before its emit is committed;
 *   9. child workflows: kills at random moments while a parent's six children run; at every
 *      kill the parent's journaled `child` commands and the children in the store agree (a
 *      child exists exactly when its start is committed), and in the end each child was
 *      started once and the parent has all their results.
 *
 * Every invocation of the `record` action leaves a line "<key> <attempt> <params>" in a log
 * file (fsync'ed by the plugin before the action completes), so the test sees exactly which
 * steps were invoked how often, whatever the host committed. The plugin also checks the
 * journal at the moment of each call (crash_plugin.c): the intent is committed, the outcome
 * is not, and attempt N follows N-1 `action_lost` entries; a broken rule fails the scenario.
 *
 *   test_crash WFHOST_BINARY CRASH_PLUGIN.so WORKFLOWS_DIR
 *
 * WF_CRASH_SEED=N repeats the random kill moments of scenarios 3 and 5 (the timing of the
 * host still varies). The files of a failed run are kept in the directory printed first.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"
#include "wfhost.h"

/* Every wait has a deadline; generous, since the test also runs under AddressSanitizer. */
#define DEADLINE_MS 30000

static const char *wfhost_bin, *plugin_path, *workflows_dir;
static char tmp[64];

/* ---- small helpers ------------------------------------------------------------------- */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Reads a whole file (from offset) into a NUL-terminated buffer; NULL if it does not exist. */
static char *read_file(const char *path, long offset) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  if (offset > n) offset = n;
  fseek(f, offset, SEEK_SET);
  char *buf = malloc((size_t)(n - offset) + 1);
  size_t got = fread(buf, 1, (size_t)(n - offset), f);
  buf[got] = 0;
  fclose(f);
  return buf;
}

static long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* ---- the host child ------------------------------------------------------------------ */

typedef struct scen {
  const char *name;
  char db[128], reclog[128], hostlog[128];
  pid_t pid;            /* the running host, 0 if none */
  int64_t spawned_wall; /* wall_ms() when the last host was started */
  int cache_size;       /* --cache-size for the host, 0: the default */
  wf_host *cl;          /* client handle on db */
  int failures0;        /* test_failures when the scenario began */
  long reclog_checked;  /* bytes of the record log already checked for malformed lines */
  int64_t t0;           /* mono_ms() when the scenario began */
} scen;

static void fail_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail_msg(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "test_crash: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  test_checks++;
  test_failures++;
}

/* Prints the last lines of the host's log, for a failure's diagnosis. */
static void dump_host_log(scen *s) {
  char *log = read_file(s->hostlog, 0);
  if (!log) return;
  size_t n = strlen(log);
  const char *p = log + n;
  for (int lines = 0; p > log && !(p[-1] == '\n' && ++lines > 40);) p--;
  fprintf(stderr, "---- tail of %s ----\n%s---- end ----\n", s->hostlog, p);
  free(log);
}

/* 1 if the host child runs; otherwise reports how it ended, once. */
static int host_alive(scen *s) {
  if (!s->pid) return 0;
  int st;
  pid_t r = waitpid(s->pid, &st, WNOHANG);
  if (r == 0) return 1;
  if (WIFEXITED(st)) fail_msg("[%s] the host exited by itself with status %d", s->name, WEXITSTATUS(st));
  else if (WIFSIGNALED(st)) fail_msg("[%s] the host died of signal %d", s->name, WTERMSIG(st));
  else fail_msg("[%s] the host is gone (waitpid %d)", s->name, (int)r);
  s->pid = 0;
  return 0;
}

/* Starts `wfhost run` on the scenario's database with the record action completing after
 * delay_ms; returns 1 once it has said it is running. */
static int host_spawn(scen *s, int delay_ms) {
  long off = file_size(s->hostlog);
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    fail_msg("fork: %s", strerror(errno));
    return 0;
  }
  if (pid == 0) {
    int fd = open(s->hostlog, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    long maxfd = sysconf(_SC_OPEN_MAX);
    for (int i = 3; i < (maxfd > 0 && maxfd < 65536 ? maxfd : 1024); i++) close(i);
    char d[16];
    snprintf(d, sizeof d, "%d", delay_ms);
    setenv("WF_CRASH_LOG", s->reclog, 1);
    setenv("WF_CRASH_DELAY_MS", d, 1);
    setenv("WF_CRASH_DB", s->db, 1);
    char cache[16];
    snprintf(cache, sizeof cache, "%d", s->cache_size);
    if (s->cache_size > 0)
      execl(wfhost_bin, "wfhost", "run", "--db", s->db, "--workflows", workflows_dir, "--plugin", plugin_path,
            "--cache-size", cache, (char *)NULL);
    else
      execl(wfhost_bin, "wfhost", "run", "--db", s->db, "--workflows", workflows_dir, "--plugin", plugin_path,
            (char *)NULL);
    dprintf(2, "test_crash: exec %s: %s\n", wfhost_bin, strerror(errno));
    _exit(127);
  }
  s->pid = pid;
  s->spawned_wall = wall_ms();
  int64_t deadline = mono_ms() + DEADLINE_MS;
  for (;;) {
    char *log = read_file(s->hostlog, off);
    int ready = log && strstr(log, "wfhost: running workflows from");
    free(log);
    if (ready) return 1;
    if (!host_alive(s)) return 0;
    if (mono_ms() > deadline) {
      fail_msg("[%s] the host did not say it was running within %d ms", s->name, DEADLINE_MS);
      return 0;
    }
    sleep_ms(2);
  }
}

/* SIGKILL: no chance to commit, flush or clean up anything. */
static void host_kill(scen *s) {
  if (!host_alive(s)) return;
  kill(s->pid, SIGKILL);
  int st = 0;
  while (waitpid(s->pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) {
    fail_msg("[%s] the host ended before the kill (status %#x)", s->name, st);
  }
  s->pid = 0;
}

/* SIGTERM: the graceful stop, which must exit 0. */
static void host_stop(scen *s) {
  if (!host_alive(s)) return;
  kill(s->pid, SIGTERM);
  int64_t deadline = mono_ms() + DEADLINE_MS;
  int st = 0;
  pid_t r;
  while ((r = waitpid(s->pid, &st, WNOHANG)) == 0 && mono_ms() < deadline) sleep_ms(5);
  if (r == 0) {
    fail_msg("[%s] the host did not stop within %d ms of SIGTERM", s->name, DEADLINE_MS);
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &st, 0);
  } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fail_msg("[%s] the host's graceful stop ended with status %#x", s->name, st);
  }
  s->pid = 0;
}

/* Polls pred until it is true (1), the host dies or the deadline passes (0, reported). */
typedef int (*pred_fn)(scen *s, void *arg);
static int wait_until(scen *s, pred_fn pred, void *arg, int timeout_ms, const char *what) {
  int64_t start = mono_ms(), deadline = start + timeout_ms;
  int failures = test_failures;
  for (;;) {
    if (pred(s, arg)) return 1;
    if (test_failures > failures) {
      fail_msg("[%s] gave up waiting for %s after the failure above", s->name, what);
      return 0;
    }
    if (s->pid && !host_alive(s)) {
      fail_msg("[%s] the host died while waiting for %s", s->name, what);
      return 0;
    }
    if (mono_ms() > deadline) {
      fail_msg("[%s] timed out after %d ms waiting for %s", s->name, timeout_ms, what);
      return 0;
    }
    sleep_ms(5);
  }
}

/* slug names the scenario's files in the temporary directory. */
static void scen_begin(scen *s, const char *slug, const char *name) {
  memset(s, 0, sizeof *s);
  s->name = name;
  snprintf(s->db, sizeof s->db, "%s/%s.db", tmp, slug);
  snprintf(s->reclog, sizeof s->reclog, "%s/%s.record.log", tmp, slug);
  snprintf(s->hostlog, sizeof s->hostlog, "%s/%s.host.log", tmp, slug);
  s->failures0 = test_failures;
  s->t0 = mono_ms();
}

/* Opens the client handle (the host has created the database by now). */
static int client_open(scen *s) {
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.mode = WF_MODE_CLIENT;
  int rc = wf_host_open(s->db, &cfg, &s->cl);
  if (rc != WF_OK) {
    fail_msg("[%s] client open: %s", s->name, wf_errmsg(s->cl));
    wf_host_close(s->cl);
    s->cl = NULL;
    return 0;
  }
  return 1;
}

static void scen_end(scen *s, const char *summary) {
  if (s->pid) host_kill(s);
  /* What the plugin saw in the journal at the moment of each call (crash_plugin.c). */
  char path[160];
  snprintf(path, sizeof path, "%s.violations", s->reclog);
  char *v = read_file(path, 0);
  if (v) {
    int lines = 0;
    char *cut = v;
    for (; *cut && lines < 20; cut++)
      if (*cut == '\n') lines++;
    int more = 0;
    for (char *p = cut; *p; p++)
      if (*p == '\n') more++;
    *cut = 0;
    fail_msg("[%s] the record action was invoked against the rules:\n%s", s->name, v);
    if (more) fprintf(stderr, " ... and %d more lines in %s\n", more, path);
    free(v);
  }
  wf_host_close(s->cl);
  s->cl = NULL;
  int failed = test_failures - s->failures0;
  printf("%-28s %s (%.1f s)%s\n", s->name, failed ? "FAILED" : "ok", (double)(mono_ms() - s->t0) / 1000.0,
         summary);
  if (failed) dump_host_log(s);
  fflush(stdout);
}

/* ---- reading what happened ----------------------------------------------------------- */

/* One invocation of `record`, from its log line. */
typedef struct rec {
  char id[WF_ID_MAX + 1];
  int64_t seq;
  int attempt;
  char *params;
} rec;

typedef struct recs {
  rec *v;
  size_t n;
} recs;

static void recs_free(recs *r) {
  for (size_t i = 0; i < r->n; i++) free(r->v[i].params);
  free(r->v);
  r->v = NULL;
  r->n = 0;
}

/* Parses the record log. A malformed line is a failure: the plugin writes each line with
 * one write() and fsyncs it, so even a kill cannot tear one. */
static void recs_load(scen *s, recs *r) {
  recs_free(r);
  char *log = read_file(s->reclog, 0);
  if (!log) return;
  size_t cap = 0;
  for (char *line = log, *nl; *line; line = nl + 1) {
    nl = strchr(line, '\n');
    int report = line - log >= s->reclog_checked; /* each problem once */
    if (!nl) {
      /* With a host running this may be a write under way; with none, a torn line. */
      if (report && !s->pid) {
        fail_msg("[%s] torn last line in the record log: '%s'", s->name, line);
        s->reclog_checked = (long)(line - log) + 1;
      }
      break;
    }
    *nl = 0;
    if (report) s->reclog_checked = (long)(nl - log) + 1;
    char *sp1 = strchr(line, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    char *colon = sp1 ? memrchr(line, ':', (size_t)(sp1 - line)) : NULL;
    /* The key must be exactly "<instance id>:<seq>"; an attempt-dependent key would not be idempotent. */
    if (!sp2 || !colon || colon - line > WF_ID_MAX || colon + 1 == sp1 ||
        strspn(colon + 1, "0123456789") != (size_t)(sp1 - colon - 1) ||
        strspn(sp1 + 1, "0123456789") != (size_t)(sp2 - sp1 - 1) || sp2 == sp1 + 1) {
      if (report) fail_msg("[%s] malformed record log line '%s'", s->name, line);
      continue;
    }
    if (r->n == cap) {
      cap = cap ? cap * 2 : 256;
      r->v = realloc(r->v, cap * sizeof *r->v);
    }
    rec *e = &r->v[r->n++];
    snprintf(e->id, sizeof e->id, "%.*s", (int)(colon - line), line);
    e->seq = strtoll(colon + 1, NULL, 10);
    e->attempt = atoi(sp1 + 1);
    e->params = strdup(sp2 + 1);
  }
  free(log);
}

/* The invocations of one step, in log order: their indexes in r (up to max), returns count. */
static int recs_of(const recs *r, const char *id, int64_t seq, size_t *idx, int max) {
  int n = 0;
  for (size_t i = 0; i < r->n; i++)
    if (r->v[i].seq == seq && !strcmp(r->v[i].id, id)) {
      if (n < max) idx[n] = i;
      n++;
    }
  return n;
}

/* Per-step facts from an instance's history (seq 1..MAXSEQ-1). */
#define MAXSEQ 16
typedef struct steps_hist {
  int action[MAXSEQ], result[MAXSEQ], error[MAXSEQ], lost[MAXSEQ], event[MAXSEQ], sleep[MAXSEQ],
      fired[MAXSEQ];
  int lost_after_result[MAXSEQ]; /* an action_lost journaled after the step's result */
  int beyond;                    /* entries with seq >= MAXSEQ */
  int completed;
  int64_t sleep_due[MAXSEQ], fired_at[MAXSEQ];
  char event_data[MAXSEQ][128];
} steps_hist;

static int hist_load(scen *s, const char *id, steps_hist *sh) {
  memset(sh, 0, sizeof *sh);
  wf_history_entry *e;
  size_t n;
  int rc = wf_history(s->cl, id, &e, &n);
  if (rc != WF_OK) {
    fail_msg("[%s] history of %s: %s", s->name, id, wf_errmsg(s->cl));
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    int64_t q = e[i].seq;
    const char *k = e[i].kind;
    if (!strcmp(k, "completed")) sh->completed++;
    if (q < 0 || q >= MAXSEQ) {
      sh->beyond++;
      continue;
    }
    if (!strcmp(k, "action")) sh->action[q]++;
    else if (!strcmp(k, "action_result")) sh->result[q]++;
    else if (!strcmp(k, "action_error")) sh->error[q]++;
    else if (!strcmp(k, "action_lost")) {
      sh->lost[q]++;
      if (sh->result[q]) sh->lost_after_result[q]++;
    } else if (!strcmp(k, "event")) {
      sh->event[q]++;
      snprintf(sh->event_data[q], sizeof sh->event_data[q], "%s", e[i].data_json ? e[i].data_json : "");
    } else if (!strcmp(k, "sleep")) {
      sh->sleep[q]++;
      const char *d = e[i].data_json ? strstr(e[i].data_json, "\"due\":") : NULL;
      sh->sleep_due[q] = d ? strtoll(d + 6, NULL, 10) : 0;
    } else if (!strcmp(k, "timer_fired")) {
      sh->fired[q]++;
      sh->fired_at[q] = e[i].at;
    }
  }
  wf_history_free(e, n);
  return 1;
}

static char *status_of(scen *s, const char *id, char *buf, size_t cap) {
  wf_info *i;
  if (wf_get(s->cl, id, &i) != WF_OK) {
    snprintf(buf, cap, "absent");
    return buf;
  }
  snprintf(buf, cap, "%s", i->status);
  wf_info_free(i);
  return buf;
}

static int count_status(scen *s, const char *status, const char *workflow) {
  wf_info *list;
  size_t n;
  if (wf_list(s->cl, status, workflow, 0, &list, &n) != WF_OK) return -1;
  wf_info_list_free(list, n);
  return (int)n;
}

/* 0 after reporting it if an instance (of workflow, or any) has failed or is suspended:
 * waiting for it to complete would be pointless. */
static int none_broken(scen *s, const char *workflow) {
  static const char *const bad[] = {"failed", "suspended"};
  for (int k = 0; k < 2; k++) {
    wf_info *list;
    size_t n;
    if (wf_list(s->cl, bad[k], workflow, 1, &list, &n) != WF_OK) continue;
    if (n) fail_msg("[%s] instance %s is %s: %s", s->name, list[0].id, bad[k], list[0].error ? list[0].error : "");
    wf_info_list_free(list, n);
    if (n) return 0;
  }
  return 1;
}

typedef struct count_arg {
  const char *status, *workflow;
  int want;
} count_arg;

static int pred_count(scen *s, void *arg) {
  count_arg *a = arg;
  return none_broken(s, a->workflow) && count_status(s, a->status, a->workflow) == a->want;
}

typedef struct status_arg {
  const char *id, *status;
} status_arg;

static int pred_status(scen *s, void *arg) {
  status_arg *a = arg;
  char buf[32];
  return none_broken(s, NULL) && !strcmp(status_of(s, a->id, buf, sizeof buf), a->status);
}

static void client_start(scen *s, const char *wf, const char *input, const char *id) {
  int rc = wf_start(s->cl, wf, input, id, NULL, NULL, NULL);
  if (rc != WF_OK) fail_msg("[%s] start %s %s: %s", s->name, wf, id, wf_errmsg(s->cl));
}

/* Checks that the instance completed with an output object made of exactly the members
 * given as JSON text (`"n":6`, ...), in any order: cjson writes an object's members in the
 * Lua table's hash order, which differs between processes. */
static void check_output_members(scen *s, const char *id, const char *const *members, int nmembers) {
  wf_info *i;
  if (wf_get(s->cl, id, &i) != WF_OK) {
    fail_msg("[%s] instance %s is missing", s->name, id);
    return;
  }
  size_t len = 2 + (size_t)(nmembers - 1);
  int ok = !strcmp(i->status, "completed") && i->output_json && i->output_json[0] == '{';
  for (int k = 0; k < nmembers && ok; k++) {
    len += strlen(members[k]);
    ok = strstr(i->output_json, members[k]) != NULL;
  }
  if (ok) ok = strlen(i->output_json) == len;
  if (!ok) {
    fail_msg("[%s] %s: status %s, output %s; expected completed with {%s%s%s}", s->name, id, i->status,
             i->output_json ? i->output_json : "(none)", members[0], nmembers > 1 ? "," : "",
             nmembers > 1 ? members[1] : "");
  } else {
    test_checks++;
  }
  wf_info_free(i);
}

static void check_output(scen *s, const char *id, const char *member) {
  check_output_members(s, id, &member, 1);
}

/* `steps` with n steps returns { n = n, keys = { "<id>:1", ..., "<id>:n" } }: the key each
 * step's result carried, so a result delivered to the wrong step shows. */
static void check_steps_output(scen *s, const char *id, int n) {
  char nm[32], keys[1024];
  snprintf(nm, sizeof nm, "\"n\":%d", n);
  size_t len = (size_t)snprintf(keys, sizeof keys, "\"keys\":[");
  for (int k = 1; k <= n && len < sizeof keys; k++)
    len += (size_t)snprintf(keys + len, sizeof keys - len, "%s\"%s:%d\"", k > 1 ? "," : "", id, k);
  if (len < sizeof keys) snprintf(keys + len, sizeof keys - len, "]");
  const char *members[] = {nm, keys};
  check_output_members(s, id, members, 2);
}

/* The params of `record` in a log line: the same members as given, in any order. */
static int params_are(const char *params, const char *m1, const char *m2) {
  return params[0] == '{' && strstr(params, m1) && strstr(params, m2) &&
         strlen(params) == strlen(m1) + strlen(m2) + 3;
}

/* 1 if an `event` history entry's data ({"at":...,"data":...}) carries {"v":i}. */
static int event_is(const char *event_data, int i) {
  char want[48];
  snprintf(want, sizeof want, "\"data\":{\"v\":%d}", i);
  return strstr(event_data, want) != NULL;
}

/* ---- scenario 1: a kill between an action's intent and its result --------------------- */

typedef struct inflight_arg {
  const char *id;
  int64_t seq;
  int calls;
} inflight_arg;

/* The step's intent is committed, its result is not, and the plugin has logged `calls`
 * invocations of it: the last call is out. */
static int pred_inflight(scen *s, void *arg) {
  inflight_arg *a = arg;
  steps_hist sh;
  if (!none_broken(s, NULL)) return 0;
  if (!hist_load(s, a->id, &sh)) return 0;
  if (!sh.action[a->seq] || sh.result[a->seq]) return 0;
  for (int64_t q = a->seq + 1; q < MAXSEQ; q++)
    if (sh.action[q]) return 0;
  recs r = {0};
  recs_load(s, &r);
  size_t idx[1];
  int calls = recs_of(&r, a->id, a->seq, idx, 1);
  recs_free(&r);
  return calls >= a->calls;
}

static void scenario_intent(void) {
  scen s;
  scen_begin(&s, "intent", "1 intent/result kill");
  const char *id = "c1";
  const int n = 4;
  if (!host_spawn(&s, 1000) || !client_open(&s)) goto out;
  client_start(&s, "steps", "{\"n\":4}", id);

  /* Step 1 completes after 1 s; kill while step 2's call is out. */
  inflight_arg a = {id, 2, 1};
  if (!wait_until(&s, pred_inflight, &a, DEADLINE_MS, "step 2 of c1 in flight")) goto out;
  host_kill(&s);

  /* What the killed host had committed: step 1's result, step 2's intent, nothing more. */
  steps_hist sh;
  hist_load(&s, id, &sh);
  CHECK(sh.action[1] == 1 && sh.result[1] == 1);
  CHECK(sh.action[2] == 1 && sh.result[2] == 0 && sh.lost[2] == 0);
  CHECK(sh.action[3] == 0);

  /* Restart, still slow: step 2 is invoked again; kill again while that call is out. */
  if (!host_spawn(&s, 1000)) goto out;
  a.calls = 2;
  if (!wait_until(&s, pred_inflight, &a, DEADLINE_MS, "step 2 of c1 invoked again and in flight")) goto out;
  host_kill(&s);
  hist_load(&s, id, &sh);
  CHECK(sh.result[2] == 0 && sh.lost[2] == 1);

  /* Restart fast: attempt 3 completes, and so do steps 3 and 4. */
  if (!host_spawn(&s, 0)) goto out;
  status_arg done = {id, "completed"};
  if (!wait_until(&s, pred_status, &done, DEADLINE_MS, "c1 completed")) goto out;

  check_steps_output(&s, id, n);

  hist_load(&s, id, &sh);
  for (int q = 1; q <= n; q++) {
    CHECK(sh.action[q] == 1);
    CHECK(sh.result[q] == 1);
    CHECK(sh.error[q] == 0);
    CHECK(sh.lost[q] == (q == 2 ? 2 : 0));
    CHECK(sh.lost_after_result[q] == 0);
  }
  CHECK(sh.action[n + 1] == 0);
  CHECK(sh.completed == 1);

  recs r = {0};
  recs_load(&s, &r);
  size_t idx[8];
  /* The step in flight at both kills: three invocations, one key, attempts 1, 2, 3, the same params. */
  CHECK(recs_of(&r, id, 2, idx, 8) == 3);
  if (recs_of(&r, id, 2, idx, 8) == 3) {
    /* The params are the intent's, byte for byte (not computed again). */
    CHECK(params_are(r.v[idx[0]].params, "\"step\":2", "\"wf\":\"steps\""));
    for (int k = 0; k < 3; k++) {
      CHECK(r.v[idx[k]].attempt == k + 1);
      CHECK(!strcmp(r.v[idx[k]].params, r.v[idx[0]].params));
    }
  }
  /* Steps whose result was committed (1) or that began after the restart (3, 4): once. */
  for (int q = 1; q <= n; q++) {
    if (q == 2) continue;
    int c = recs_of(&r, id, q, idx, 8);
    CHECK(c == 1);
    if (c == 1) CHECK(r.v[idx[0]].attempt == 1);
  }
  CHECK(r.n == (size_t)n + 2);
  recs_free(&r);
  host_stop(&s);
out:
  scen_end(&s, "");
}

/* ---- scenario 2: hundreds of instances waiting ---------------------------------------- */

#define NWAIT 300

static void scenario_waiting(void) {
  scen s;
  scen_begin(&s, "waiting", "2 kill with 300 waiting");
  char id[32], data[64], summary[128] = "";
  int64_t t_signal = 0;
  recs r = {0};
  if (!host_spawn(&s, 0) || !client_open(&s)) goto out;
  for (int i = 0; i < NWAIT; i++) {
    snprintf(id, sizeof id, "w%d", i);
    client_start(&s, "waiter", "null", id);
  }
  count_arg waiting = {"waiting", "waiter", NWAIT};
  if (!wait_until(&s, pred_count, &waiting, DEADLINE_MS * 2, "300 waiters waiting")) goto out;
  host_kill(&s);

  /* Nothing was in flight: every waiter had committed its first result and its wait. */
  CHECK(count_status(&s, "waiting", "waiter") == NWAIT);
  recs_load(&s, &r);
  CHECK(r.n == NWAIT);

  if (!host_spawn(&s, 0)) goto out;
  /* Signal at once, while the new host may still be recovering. */
  t_signal = mono_ms();
  for (int i = 0; i < NWAIT; i++) {
    snprintf(id, sizeof id, "w%d", i);
    snprintf(data, sizeof data, "{\"v\":%d}", i);
    int rc = wf_signal(s.cl, id, "go", data, NULL, NULL);
    if (rc != WF_OK) fail_msg("[%s] signal %s: %s", s.name, id, wf_errmsg(s.cl));
  }
  count_arg done = {"completed", "waiter", NWAIT};
  if (!wait_until(&s, pred_count, &done, DEADLINE_MS * 2, "300 waiters completed")) goto out;
  snprintf(summary, sizeof summary, ": signalled and completed in %.2f s after the restart",
           (double)(mono_ms() - t_signal) / 1000.0);
  CHECK(count_status(&s, NULL, "waiter") == NWAIT);

  recs_load(&s, &r);
  CHECK(r.n == 2 * NWAIT);
  int bad_hist = 0, bad_log = 0;
  for (int i = 0; i < NWAIT; i++) {
    snprintf(id, sizeof id, "w%d", i);
    snprintf(data, sizeof data, "\"v\":%d", i);
    check_output(&s, id, data);
    steps_hist sh;
    if (!hist_load(&s, id, &sh)) continue;
    if (sh.action[1] != 1 || sh.result[1] != 1 || sh.event[2] != 1 || sh.action[3] != 1 || sh.result[3] != 1 ||
        sh.lost[1] || sh.lost[3] || sh.completed != 1 || !event_is(sh.event_data[2], i)) {
      if (!bad_hist++) fail_msg("[%s] %s: wrong history", s.name, id);
    }
    size_t idx[4];
    for (int q = 1; q <= 3; q += 2) {
      int c = recs_of(&r, id, q, idx, 4);
      const char *phase = q == 1 ? "\"phase\":1" : "\"phase\":2";
      if (c != 1 || r.v[idx[0]].attempt != 1 || !params_are(r.v[idx[0]].params, phase, "\"wf\":\"waiter\"")) {
        if (!bad_log++)
          fail_msg("[%s] %s step %d invoked %d times (expected once, attempt 1)", s.name, id, q, c);
      }
    }
  }
  CHECK(bad_hist == 0);
  CHECK(bad_log == 0);
  host_stop(&s);
out:
  recs_free(&r);
  scen_end(&s, summary);
}

/* ---- scenario 5: a kill while hundreds of events are being delivered ----------------- */

/* 300 waiters wait (on hosts that keep only 100 live coroutines, so most are evicted and
 * rebuilt by replay); half of their events are sent while no host runs, the other half to
 * the next host, which is killed once a random number of waiters have taken their event
 * and invoked their second step; a last host delivers the rest. Each event must be taken
 * exactly once, by its instance, and no step committed before a kill may be invoked after
 * it. */
static uint8_t done_at_kill[NWAIT];

/* How many second steps (seq 3) of waiters have been invoked. */
static int second_steps(scen *s) {
  recs r = {0};
  recs_load(s, &r);
  int n = 0;
  for (size_t i = 0; i < r.n; i++) n += r.v[i].seq == 3;
  recs_free(&r);
  return n;
}

static void scenario_deliver(unsigned seed) {
  scen s;
  scen_begin(&s, "deliver", "5 kill while delivering");
  s.cache_size = 100; /* most waiters are evicted: their events wake them by replay */
  char id[32], data[64], summary[160] = "";
  recs r = {0};
  size_t loglen_kill = 0;
  int unfinished = 0, inflight = 0, repeats = 0;
  srand(seed + 5);
  if (!host_spawn(&s, 0) || !client_open(&s)) goto out;
  for (int i = 0; i < NWAIT; i++) {
    snprintf(id, sizeof id, "d%d", i);
    client_start(&s, "waiter", "null", id);
  }
  count_arg waiting = {"waiting", "waiter", NWAIT};
  if (!wait_until(&s, pred_count, &waiting, DEADLINE_MS * 2, "300 waiters waiting")) goto out;
  host_kill(&s);

  /* The first half while no host runs; then a host, killed once kill_after instances have
   * taken their event and invoked their second step (whose call is out 30 ms); the events
   * not sent by then are sent while no host runs again. */
  int kill_after = 20 + rand() % (NWAIT - 40);
  for (int i = 0; i < NWAIT; i++) {
    if (i == NWAIT / 2 && !host_spawn(&s, 30)) goto out;
    snprintf(id, sizeof id, "d%d", i);
    snprintf(data, sizeof data, "{\"v\":%d}", i);
    int rc = wf_signal(s.cl, id, "go", data, NULL, NULL);
    if (rc != WF_OK) fail_msg("[%s] signal %s: %s", s.name, id, wf_errmsg(s.cl));
    if (s.pid && i % 4 == 0 && second_steps(&s) >= kill_after) host_kill(&s);
  }
  int64_t deadline = mono_ms() + DEADLINE_MS * 2;
  while (s.pid && second_steps(&s) < kill_after && mono_ms() < deadline && host_alive(&s)) sleep_ms(1);
  if (s.pid) host_kill(&s);
  recs_load(&s, &r);
  loglen_kill = r.n;
  for (int i = 0; i < NWAIT; i++) {
    snprintf(id, sizeof id, "d%d", i);
    steps_hist sh;
    if (!hist_load(&s, id, &sh)) continue;
    done_at_kill[i] = sh.result[3] > 0;
    if (!sh.completed) unfinished++;
    if (sh.action[3] && !sh.result[3]) inflight++;
  }
  printf("  killed after %d second steps: %d of %d instances unfinished, %d second steps in flight\n", kill_after,
         unfinished, NWAIT, inflight);
  CHECK(unfinished > 0); /* the kill landed while events were being delivered */

  if (!host_spawn(&s, 0)) goto out;
  count_arg done = {"completed", "waiter", NWAIT};
  if (!wait_until(&s, pred_count, &done, DEADLINE_MS * 2, "300 waiters completed")) goto out;
  CHECK(count_status(&s, NULL, "waiter") == NWAIT);

  recs_load(&s, &r);
  int bad = 0;
  for (int i = 0; i < NWAIT; i++) {
    snprintf(id, sizeof id, "d%d", i);
    snprintf(data, sizeof data, "\"v\":%d", i);
    check_output(&s, id, data);
    steps_hist sh;
    if (!hist_load(&s, id, &sh)) continue;
    /* The event taken exactly once, by the wait it was meant for; one result per step. */
    if (sh.action[1] != 1 || sh.result[1] != 1 || sh.lost[1] || sh.event[2] != 1 ||
        !event_is(sh.event_data[2], i) || sh.action[3] != 1 || sh.result[3] != 1 || sh.lost_after_result[3] ||
        sh.completed != 1) {
      if (!bad++) fail_msg("[%s] %s: wrong history", s.name, id);
    }
    size_t idx[8];
    int c1 = recs_of(&r, id, 1, idx, 8);
    if (c1 != 1 || r.v[idx[0]].attempt != 1) {
      if (!bad++) fail_msg("[%s] %s step 1 was invoked %d times (it was committed before any kill)", s.name, id, c1);
    }
    int c3 = recs_of(&r, id, 3, idx, 8);
    if (c3 < 1 || c3 > 8 || c3 > 1 + sh.lost[3]) {
      if (!bad++) fail_msg("[%s] %s step 3 invoked %d times with %d action_lost", s.name, id, c3, sh.lost[3]);
      continue;
    }
    repeats += c3 - 1;
    for (int j = 0; j < c3; j++) {
      const rec *e = &r.v[idx[j]];
      if (done_at_kill[i] && idx[j] >= loglen_kill && !bad++)
        fail_msg("[%s] %s step 3 invoked after the kill although its result was committed", s.name, id);
      if (j > 0 && (e->attempt <= r.v[idx[j - 1]].attempt || strcmp(e->params, r.v[idx[0]].params)) && !bad++)
        fail_msg("[%s] %s step 3 invocation %d: attempt %d, params %s", s.name, id, j + 1, e->attempt, e->params);
    }
  }
  CHECK(bad == 0);
  snprintf(summary, sizeof summary, ": %d calls repeated after the kill", repeats);
  host_stop(&s);
out:
  recs_free(&r);
  scen_end(&s, summary);
}

/* ---- scenario 3: kills at random moments while busy ----------------------------------- */

#define NBUSY 200
#define NCYCLES 7
#define BUSY_STEPS 8
/* The kill cycles. Each host's `record` calls take delay_ms: long calls (a kill finds many
 * in flight), or calls completing at once (a kill lands in the engine's own work:
 * committing an intent, dispatching, committing a result). The test starts `starts` new
 * instances spread over a random window of window_min + [0, window_span) ms and kills the
 * host at its end; the last cycles start nothing and kill within 30 ms of the host saying
 * it runs: during recovery, while it re-dispatches the calls lost by the previous kill. */
static const struct {
  int delay_ms, starts, window_min, window_span;
} cycles[NCYCLES] = {
    {20, 50, 50, 251}, {0, 50, 50, 251}, {2, 50, 50, 251}, {20, 50, 50, 251},
    {0, 0, 0, 31},     {20, 0, 0, 31},   {2, 0, 0, 31},
};

/* What was committed when kill k happened: per instance, bit q set if step q's intent
 * (resp. result) was in the history. */
static uint32_t intent_at[NCYCLES][NBUSY], result_at[NCYCLES][NBUSY];
static size_t loglen_at[NCYCLES];

/* Each cycle (see `cycles`): a host runs while the test starts instances, and is killed at a
 * random moment, so every kill finds work under way (at least the instances just started, or
 * the recovery of those the previous kill interrupted). Instances a kill interrupted go on
 * under the next host, which may be killed too. Then a last host finishes everything. */
static void scenario_busy(unsigned seed) {
  scen s;
  scen_begin(&s, "busy", "3 random kills while busy");
  char id[32], summary[256] = "";
  int started = 0, inflight_total = 0, unfinished_total = 0, repeats = 0;
  srand(seed);
  if (!host_spawn(&s, cycles[0].delay_ms) || !client_open(&s)) goto out;
  char input[32];
  snprintf(input, sizeof input, "{\"n\":%d}", BUSY_STEPS);
  for (int k = 0; k < NCYCLES; k++) {
    if (k > 0 && !host_spawn(&s, cycles[k].delay_ms)) goto out;
    int window = cycles[k].window_min + rand() % cycles[k].window_span;
    int64_t t0 = mono_ms();
    for (int j = 0; j < cycles[k].starts; j++, started++) {
      int64_t at = t0 + (int64_t)window * j / cycles[k].starts;
      if (mono_ms() < at) sleep_ms((int)(at - mono_ms()));
      snprintf(id, sizeof id, "b%d", started);
      client_start(&s, "steps", input, id);
    }
    if (mono_ms() < t0 + window) sleep_ms((int)(t0 + window - mono_ms()));
    int took = (int)(mono_ms() - t0);
    if (!host_alive(&s)) goto out;
    host_kill(&s);

    /* Snapshot what is durable now. */
    recs r = {0};
    recs_load(&s, &r);
    loglen_at[k] = r.n;
    recs_free(&r);
    int inflight = 0, unfinished = 0;
    for (int i = 0; i < started; i++) {
      snprintf(id, sizeof id, "b%d", i);
      steps_hist sh;
      if (!hist_load(&s, id, &sh)) continue;
      for (int q = 1; q <= BUSY_STEPS; q++) {
        if (sh.action[q]) intent_at[k][i] |= 1u << q;
        if (sh.result[q]) result_at[k][i] |= 1u << q;
        if (sh.action[q] && !sh.result[q]) inflight++;
      }
      if (!sh.completed) unfinished++;
    }
    inflight_total += inflight;
    unfinished_total += unfinished;
    printf("  kill %d (calls take %2d ms) after %3d ms: %3d of %3d instances unfinished, %3d steps in flight\n",
           k + 1, cycles[k].delay_ms, took, unfinished, started, inflight);
  }
  CHECK(started == NBUSY);
  /* The kills must have hit work in progress, or this scenario proves nothing. */
  CHECK(unfinished_total > 0);
  CHECK(inflight_total > 0);

  int64_t t_restart = mono_ms();
  if (!host_spawn(&s, 2)) goto out;
  count_arg done = {"completed", "steps", NBUSY};
  if (!wait_until(&s, pred_count, &done, DEADLINE_MS * 2, "200 busy instances completed")) goto out;
  double finish = (double)(mono_ms() - t_restart) / 1000.0;

  /* None lost, none duplicated. */
  wf_info *list;
  size_t nlist;
  if (wf_list(s.cl, NULL, NULL, 0, &list, &nlist) == WF_OK) {
    CHECK(nlist == NBUSY);
    static char seen[NBUSY];
    memset(seen, 0, sizeof seen);
    for (size_t i = 0; i < nlist; i++) {
      int k = -1;
      if (sscanf(list[i].id, "b%d", &k) == 1 && k >= 0 && k < NBUSY && !seen[k]) seen[k] = 1;
      else fail_msg("[%s] unexpected or duplicated instance '%s'", s.name, list[i].id);
    }
    wf_info_list_free(list, nlist);
  } else {
    fail_msg("[%s] list: %s", s.name, wf_errmsg(s.cl));
  }

  recs r = {0};
  recs_load(&s, &r);
  /* Every log line is a step of a started instance. */
  for (size_t i = 0; i < r.n; i++) {
    int k = -1;
    if (sscanf(r.v[i].id, "b%d", &k) != 1 || k < 0 || k >= NBUSY || r.v[i].seq < 1 || r.v[i].seq > BUSY_STEPS)
      fail_msg("[%s] log line for an unknown step %s:%" PRId64, s.name, r.v[i].id, r.v[i].seq);
  }
  /* No step whose result was committed at a kill was invoked after that kill. */
  int repeated_committed = 0;
  for (int k = 0; k < NCYCLES; k++) {
    for (size_t i = loglen_at[k]; i < r.n; i++) {
      int b = atoi(r.v[i].id + 1);
      if (b >= 0 && b < NBUSY && (result_at[k][b] >> r.v[i].seq & 1) && repeated_committed++ < 10)
        fail_msg("[%s] %s:%" PRId64 " was invoked again (attempt %d) after kill %d although its result was committed",
                 s.name, r.v[i].id, r.v[i].seq, r.v[i].attempt, k + 1);
    }
  }
  CHECK(repeated_committed == 0);
  int bad = 0;
  for (int i = 0; i < NBUSY; i++) {
    snprintf(id, sizeof id, "b%d", i);
    check_steps_output(&s, id, BUSY_STEPS);
    steps_hist sh;
    if (!hist_load(&s, id, &sh)) continue;
    if (sh.completed != 1 || sh.action[BUSY_STEPS + 1] || sh.beyond) {
      if (!bad++) fail_msg("[%s] %s: wrong history", s.name, id);
    }
    for (int q = 1; q <= BUSY_STEPS; q++) {
      /* Exactly one intent and one result per step; lost calls only before the result. */
      if (sh.action[q] != 1 || sh.result[q] != 1 || sh.error[q] || sh.lost_after_result[q]) {
        if (!bad++)
          fail_msg("[%s] %s step %d: %d action, %d action_result, %d action_error, %d action_lost after the result",
                   s.name, id, q, sh.action[q], sh.result[q], sh.error[q], sh.lost_after_result[q]);
      }
      size_t idx[16];
      int c = recs_of(&r, id, q, idx, 16);
      char step[32];
      snprintf(step, sizeof step, "\"step\":%d", q);
      if (c < 1 || c > 16) {
        if (!bad++) fail_msg("[%s] %s step %d was invoked %d times", s.name, id, q, c);
        continue;
      }
      /* Invoked at most once per host that had the call out: the first time, then once per
       * recorded action_lost; each repeat with the same key (it is the same log key), the
       * same params and a higher attempt. */
      if (c > 1 + sh.lost[q]) {
        if (!bad++)
          fail_msg("[%s] %s step %d invoked %d times but only %d action_lost", s.name, id, q, c, sh.lost[q]);
      }
      for (int j = 0; j < c; j++) {
        const rec *e = &r.v[idx[j]];
        int ok = params_are(e->params, step, "\"wf\":\"steps\"") && !strcmp(e->params, r.v[idx[0]].params) &&
                 e->attempt >= 1 && e->attempt <= 1 + sh.lost[q] &&
                 (j == 0 || e->attempt > r.v[idx[j - 1]].attempt);
        if (!ok && !bad++)
          fail_msg("[%s] %s step %d invocation %d: attempt %d, params %s", s.name, id, q, j + 1, e->attempt,
                   e->params);
      }
      if (c > 1) {
        repeats += c - 1;
        /* A repeated step was in flight (intent committed, no result) at some kill. */
        int was_inflight = 0;
        for (int k = 0; k < NCYCLES; k++)
          if ((intent_at[k][i] >> q & 1) && !(result_at[k][i] >> q & 1)) was_inflight = 1;
        if (!was_inflight && !bad++)
          fail_msg("[%s] %s step %d was repeated but was not in flight at any kill", s.name, id, q);
      }
    }
  }
  CHECK(bad == 0);
  recs_free(&r);
  snprintf(summary, sizeof summary, ": seed %u, %d steps repeated after kills, finished %.2f s after the last restart",
           seed, repeats, finish);
  host_stop(&s);
out:
  scen_end(&s, summary);
}

/* ---- scenario 4: an event and timers while no host runs ------------------------------- */

static int pred_parked(scen *s, void *arg) {
  (void)arg;
  char b1[32], b2[32], b3[32];
  return !strcmp(status_of(s, "e1", b1, sizeof b1), "waiting") &&
         !strcmp(status_of(s, "t1", b2, sizeof b2), "waiting") &&
         !strcmp(status_of(s, "t2", b3, sizeof b3), "waiting");
}

static void scenario_down(void) {
  scen s;
  scen_begin(&s, "down", "4 event/timer while down");
  char summary[160] = "";
  if (!host_spawn(&s, 0) || !client_open(&s)) goto out;
  client_start(&s, "waiter", "null", "e1");
  client_start(&s, "sleeper", "{\"ms\":600}", "t1");  /* falls due while no host runs */
  client_start(&s, "sleeper", "{\"ms\":1800}", "t2"); /* still ahead at the restart */
  if (!wait_until(&s, pred_parked, NULL, DEADLINE_MS, "e1, t1 and t2 waiting")) goto out;
  host_kill(&s);

  steps_hist t1, t2;
  hist_load(&s, "t1", &t1);
  hist_load(&s, "t2", &t2);
  CHECK(t1.sleep[2] == 1 && t1.sleep_due[2] > 0 && t1.fired[2] == 0);
  CHECK(t2.sleep[2] == 1 && t2.sleep_due[2] > 0 && t2.fired[2] == 0);

  /* Sent while no host runs: durable at once, delivered by the next host. */
  int rc = wf_signal(s.cl, "e1", "go", "{\"v\":\"sent while down\"}", NULL, NULL);
  if (rc != WF_OK) fail_msg("[%s] signal e1 while down: %s", s.name, wf_errmsg(s.cl));
  CHECK(rc == WF_OK);
  /* Started while no host runs: run by the next host. */
  client_start(&s, "steps", "{\"n\":2}", "p1");
  char st[32];
  CHECK(!strcmp(status_of(&s, "p1", st, sizeof st), "pending"));

  /* Stay down until t1 is overdue (but t2 is not). */
  while (wall_ms() < t1.sleep_due[2] + 300) sleep_ms(10);
  CHECK(wall_ms() < t2.sleep_due[2] - 200);

  if (!host_spawn(&s, 0)) goto out;
  int64_t restart_wall = s.spawned_wall;
  status_arg e1done = {"e1", "completed"}, t1done = {"t1", "completed"}, t2done = {"t2", "completed"};
  /* Each wait on its own, so that one failing does not hide the others. */
  int t1_ok = wait_until(&s, pred_status, &t1done, DEADLINE_MS, "t1 completed");
  int64_t t1_ms = wall_ms() - restart_wall;
  int e1_ok = wait_until(&s, pred_status, &e1done, DEADLINE_MS, "e1 completed");
  status_arg p1done = {"p1", "completed"};
  int p1_ok = wait_until(&s, pred_status, &p1done, DEADLINE_MS, "p1 completed");
  int t2_ok = wait_until(&s, pred_status, &t2done, DEADLINE_MS, "t2 completed");
  if (!t1_ok || !e1_ok || !p1_ok || !t2_ok) goto out;
  check_steps_output(&s, "p1", 2);

  check_output(&s, "e1", "\"v\":\"sent while down\"");
  check_output(&s, "t1", "\"slept\":600");
  check_output(&s, "t2", "\"slept\":1800");
  steps_hist e1;
  hist_load(&s, "e1", &e1);
  CHECK(e1.event[2] == 1 && strstr(e1.event_data[2], "\"data\":{\"v\":\"sent while down\"}"));
  hist_load(&s, "t1", &t1);
  hist_load(&s, "t2", &t2);
  int64_t t1_late = t1.fired_at[2] - restart_wall, t2_late = t2.fired_at[2] - t2.sleep_due[2];
  /* The overdue timer fires promptly after the restart; the other one on time, not early. */
  CHECK(t1.sleep[2] == 1 && t1.fired[2] == 1);
  CHECK(t1_late < 2000);
  CHECK(t2.sleep[2] == 1 && t2.fired[2] == 1);
  CHECK(t2_late >= 0 && t2_late < 2000);
  if (t1_late >= 2000 || t2_late < 0 || t2_late >= 2000)
    fail_msg("[%s] t1 fired %" PRId64 " ms after the restart; t2 %" PRId64 " ms after its due time", s.name,
             t1_late, t2_late);

  recs r = {0};
  recs_load(&s, &r);
  size_t idx[4];
  const char *ids[] = {"e1", "t1", "t2"};
  for (int i = 0; i < 3; i++)
    for (int q = 1; q <= 3; q += 2) CHECK(recs_of(&r, ids[i], q, idx, 4) == 1);
  CHECK(recs_of(&r, "p1", 1, idx, 4) == 1 && r.v[idx[0]].attempt == 1);
  CHECK(recs_of(&r, "p1", 2, idx, 4) == 1 && r.v[idx[0]].attempt == 1);
  CHECK(r.n == 8);
  recs_free(&r);
  snprintf(summary, sizeof summary, ": overdue timer fired %" PRId64 " ms after the restart (t1 done in %" PRId64
           " ms), the other %" PRId64 " ms after its due time", t1_late, t1_ms, t2_late);
  host_stop(&s);
out:
  scen_end(&s, summary);
}

/* ---- 6: a kill during a backoff ------------------------------------------------------- */

/* The `at` of the instance's retry_scheduled entries (their count in *n), or 0. */
static int64_t retry_at(scen *s, const char *id, int *n, int *attempts) {
  wf_history_entry *e;
  size_t ne;
  int64_t at = 0;
  *n = *attempts = 0;
  if (wf_history(s->cl, id, &e, &ne) != WF_OK) return 0;
  for (size_t i = 0; i < ne; i++) {
    if (!strcmp(e[i].kind, "retry_scheduled")) {
      const char *p = e[i].data_json ? strstr(e[i].data_json, "\"at\":") : NULL;
      if (p) at = strtoll(p + 5, NULL, 10);
      (*n)++;
    } else if (!strcmp(e[i].kind, "attempt")) {
      (*attempts)++;
    } else if (!strcmp(e[i].kind, "action_lost")) {
      fail_msg("[%s] %s has an action_lost entry: no attempt was in flight at the kill", s->name, id);
    }
  }
  wf_history_free(e, ne);
  return at;
}

static int pred_backing_off(scen *s, void *arg) {
  (void)arg;
  int n1, n2, a;
  return retry_at(s, "b1", &n1, &a) && retry_at(s, "b2", &n2, &a);
}

/* The wall times of instance id's flaky attempts 1 and 2 (0 if absent); the count of lines. */
static int flaky_runs(scen *s, const char *id, int64_t when[3]) {
  char path[160];
  snprintf(path, sizeof path, "%s.flaky", s->reclog);
  char *log = read_file(path, 0);
  int n = 0;
  when[1] = when[2] = 0;
  size_t idlen = strlen(id);
  for (char *line = log; line && *line;) {
    char *nl = strchr(line, '\n');
    if (!strncmp(line, id, idlen) && line[idlen] == ':') {
      int attempt = 0;
      long long ms = 0;
      if (sscanf(strchr(line, ' ') ? strchr(line, ' ') : line, " %d %lld", &attempt, &ms) == 2 && attempt >= 1 &&
          attempt <= 2)
        when[attempt] = ms;
      n++;
    }
    line = nl ? nl + 1 : NULL;
  }
  free(log);
  return n;
}

static void scenario_backoff(void) {
  scen s;
  scen_begin(&s, "backoff", "6 kill during backoff");
  char summary[200] = "";
  if (!host_spawn(&s, 0) || !client_open(&s)) goto out;
  client_start(&s, "backoff", "{\"delay_ms\":3000}", "b1"); /* still ahead at the restart */
  client_start(&s, "backoff", "{\"delay_ms\":400}", "b2");  /* falls due while no host runs */
  if (!wait_until(&s, pred_backing_off, NULL, DEADLINE_MS, "b1 and b2 backing off")) goto out;
  host_kill(&s);
  int n1, n2, a1, a2;
  int64_t at1 = retry_at(&s, "b1", &n1, &a1), at2 = retry_at(&s, "b2", &n2, &a2);
  while (wall_ms() < at2 + 300) sleep_ms(10);
  CHECK(wall_ms() < at1 - 300);
  if (!host_spawn(&s, 0)) goto out;
  int64_t restart = s.spawned_wall;
  status_arg b1done = {"b1", "completed"}, b2done = {"b2", "completed"};
  int ok1 = wait_until(&s, pred_status, &b1done, DEADLINE_MS, "b1 completed");
  int ok2 = wait_until(&s, pred_status, &b2done, DEADLINE_MS, "b2 completed");
  if (!ok1 || !ok2) goto out;
  /* The retry time was persisted once and kept: one retry_scheduled, one attempt entry. */
  int64_t at1b = retry_at(&s, "b1", &n1, &a1), at2b = retry_at(&s, "b2", &n2, &a2);
  CHECK(n1 == 1 && a1 == 1 && at1b == at1);
  CHECK(n2 == 1 && a2 == 1 && at2b == at2);
  /* Each attempt ran once: b1's second at its time (not before), b2's promptly. */
  int64_t w1[3], w2[3];
  CHECK(flaky_runs(&s, "b1", w1) == 2 && w1[1] && w1[2]);
  CHECK(flaky_runs(&s, "b2", w2) == 2 && w2[1] && w2[2]);
  int64_t late1 = w1[2] - at1, late2 = w2[2] - restart;
  CHECK(late1 >= 0 && late1 < 2000);
  CHECK(late2 >= 0 && late2 < 2000);
  if (late1 < 0 || late1 >= 2000 || late2 < 0 || late2 >= 2000)
    fail_msg("[%s] b1's attempt 2 ran %" PRId64 " ms after its persisted time; b2's %" PRId64
             " ms after the restart", s.name, late1, late2);
  check_output(&s, "b1", "\"ok\":true");
  snprintf(summary, sizeof summary, ": attempt 2 ran %" PRId64 " ms after its persisted time; the overdue one %" PRId64
           " ms after the restart", late1, late2);
  host_stop(&s);
out:
  scen_end(&s, summary);
}

/* ---- scenario 7: a patched change ----------------------------------------------------- */

#define NPATCH 20

/* All NPATCH patchers have their second step's call out. */
static int pred_patch_step2(scen *s, void *arg) {
  (void)arg;
  recs r = {0};
  recs_load(s, &r);
  int n = 0;
  for (size_t i = 0; i < r.n; i++) n += r.v[i].seq == 2;
  recs_free(&r);
  return n >= NPATCH;
}

/* The instance's patch entries, and its progress as "<percent> <message>". */
static int patch_entries(scen *s, const char *id, char *progress, size_t cap) {
  wf_history_entry *e;
  size_t n;
  int found = 0;
  if (wf_history(s->cl, id, &e, &n) != WF_OK) return -1;
  for (size_t i = 0; i < n; i++)
    found += !strcmp(e[i].kind, "patch") && e[i].name && !strcmp(e[i].name, "phase-two") && e[i].seq == 1;
  wf_history_free(e, n);
  wf_info *info;
  snprintf(progress, cap, "?");
  if (wf_get(s->cl, id, &info) == WF_OK) {
    snprintf(progress, cap, "%g %s", info->progress, info->progress_message ? info->progress_message : "-");
    wf_info_free(info);
  }
  return found;
}

static void scenario_patched(void) {
  scen s;
  scen_begin(&s, "patched", "7 kill after a patch");
  char id[32], progress[128];
  recs r = {0};
  if (!host_spawn(&s, 1000) || !client_open(&s)) goto out;
  for (int i = 0; i < NPATCH; i++) {
    snprintf(id, sizeof id, "p%d", i);
    client_start(&s, "patcher", "null", id);
  }
  if (!wait_until(&s, pred_patch_step2, NULL, DEADLINE_MS * 2, "every patcher's second step in flight")) goto out;
  host_kill(&s);

  /* Committed with the intent of step 2: the patch entry and the progress before it. */
  for (int i = 0; i < NPATCH; i++) {
    snprintf(id, sizeof id, "p%d", i);
    CHECK(patch_entries(&s, id, progress, sizeof progress) == 1);
    CHECK(!strcmp(progress, "25 recorded"));
  }

  if (!host_spawn(&s, 0)) goto out;
  count_arg done = {"completed", "patcher", NPATCH};
  if (!wait_until(&s, pred_count, &done, DEADLINE_MS * 2, "every patcher completed")) goto out;
  recs_load(&s, &r);
  int old_path = 0;
  for (size_t i = 0; i < r.n; i++) old_path += strstr(r.v[i].params, "\"old\"") != NULL;
  CHECK(old_path == 0);
  for (int i = 0; i < NPATCH; i++) {
    snprintf(id, sizeof id, "p%d", i);
    wf_info *info;
    CHECK(wf_get(s.cl, id, &info) == WF_OK && !strcmp(info->status, "completed") && info->output_json &&
          !strcmp(info->output_json, "true"));
    wf_info_free(info);
    CHECK(patch_entries(&s, id, progress, sizeof progress) == 1); /* found on replay, not journaled again */
    CHECK(!strcmp(progress, "100 took the new path"));
    size_t idx[4];
    CHECK(recs_of(&r, id, 1, idx, 4) == 1);
    CHECK(recs_of(&r, id, 2, idx, 4) == 2); /* in flight at the kill: invoked again */
  }
  recs_free(&r);
  host_stop(&s);
out:
  scen_end(&s, "");
}

/* ---- scenario 8: the outbox ------------------------------------------------------------ */

typedef struct feed_lines {
  char line[8][WF_ID_MAX + 32];
  int n;
} feed_lines;

/* The outbox subscriber's log: one "<message id> <attempt>" per delivery, in order. */
static void feed_load(scen *s, feed_lines *f) {
  char path[160];
  snprintf(path, sizeof path, "%s.outbox", s->reclog);
  char *log = read_file(path, 0);
  f->n = 0;
  for (char *p = log, *nl; p && *p && f->n < 8; p = nl + 1) {
    nl = strchr(p, '\n');
    if (!nl) break;
    snprintf(f->line[f->n++], sizeof f->line[0], "%.*s", (int)(nl - p), p);
  }
  free(log);
}

static int pred_feed_started(scen *s, void *arg) {
  (void)arg;
  feed_lines f;
  char buf[32];
  feed_load(s, &f);
  return f.n >= 1 && !strcmp(status_of(s, "m1", buf, sizeof buf), "completed");
}

static int pred_outbox_empty(scen *s, void *arg) {
  (void)arg;
  wf_outbox_entry *e;
  size_t n;
  if (wf_outbox_list(s->cl, NULL, 0, &e, &n) != WF_OK) return 0;
  wf_outbox_list_free(e, n);
  return n == 0;
}

static void scenario_outbox(void) {
  scen s;
  scen_begin(&s, "outbox", "8 kill mid-delivery");
  feed_lines f;
  if (!host_spawn(&s, 1500) || !client_open(&s)) goto out;
  client_start(&s, "emitter", "{\"n\":3}", "m1");
  /* The step committed its three messages; the first is in the subscriber's hands. */
  if (!wait_until(&s, pred_feed_started, NULL, DEADLINE_MS, "m1 completed and its first message delivering")) goto out;
  host_kill(&s);
  feed_load(&s, &f);
  CHECK(f.n == 1 && !strcmp(f.line[0], "m1:0:1 1"));
  wf_outbox_entry *e;
  size_t n = 0;
  CHECK(wf_outbox_list(s.cl, "pending", 0, &e, &n) == WF_OK);
  CHECK(n == 3);
  if (n == 3) CHECK(!strcmp(e[0].msg_id, "m1:0:1") && !strcmp(e[2].msg_id, "m1:0:3") && e[0].attempts == 0);
  wf_outbox_list_free(e, n);

  if (!host_spawn(&s, 0)) goto out;
  if (!wait_until(&s, pred_outbox_empty, NULL, DEADLINE_MS, "the outbox delivered")) goto out;
  feed_load(&s, &f);
  /* At least once: the first again (the same attempt: the killed one was never counted), the
   * other two once, in emit order. */
  CHECK(f.n == 4);
  if (f.n == 4) {
    CHECK(!strcmp(f.line[1], "m1:0:1 1"));
    CHECK(!strcmp(f.line[2], "m1:0:2 1"));
    CHECK(!strcmp(f.line[3], "m1:0:3 1"));
  }
  host_stop(&s);
out:
  scen_end(&s, "");
}

/* ---- scenario 9: child workflows ------------------------------------------------------ */

#define NKIDS 6

/* The parent's `child` entries and the children the store has agree at every commit. */
static void check_children_match(scen *s, const char *parent, int *nkids) {
  int started = test_count_history(s->cl, parent, "child", "steps");
  wf_info *list;
  size_t n = 0;
  CHECK(wf_list(s->cl, NULL, "steps", 0, &list, &n) == WF_OK);
  for (size_t i = 0; i < n; i++) {
    CHECK(list[i].parent_id && !strcmp(list[i].parent_id, parent));
    CHECK(test_count_history(s->cl, list[i].id, "started", NULL) <= 1);
  }
  if ((int)n != started) fail_msg("[%s] the parent journaled %d children, the store has %zu", s->name, started, n);
  CHECK((int)n == started);
  wf_info_list_free(list, n);
  *nkids = started;
}

static int pred_some_kids(scen *s, void *arg) {
  (void)arg;
  return count_status(s, "running", "steps") >= 1;
}

static void scenario_children(unsigned seed) {
  scen s;
  scen_begin(&s, "children", "9 kills while children run");
  char summary[160] = "";
  int nkids = 0, kills = 0;
  srand(seed);
  if (!host_spawn(&s, 400) || !client_open(&s)) goto out;
  client_start(&s, "family", "{\"n\":6}", "fam");
  if (!wait_until(&s, pred_some_kids, NULL, DEADLINE_MS, "children of fam running")) goto out;
  for (int k = 0; k < 3; k++) { /* kill at random moments, with actions slow */
    sleep_ms(rand() % 700);
    host_kill(&s);
    kills++;
    check_children_match(&s, "fam", &nkids);
    if (!host_spawn(&s, k < 2 ? 400 : 0)) goto out;
  }
  status_arg done = {"fam", "completed"};
  if (!wait_until(&s, pred_status, &done, DEADLINE_MS, "fam completed")) goto out;
  check_output(&s, "fam", "\"total\":12");
  check_children_match(&s, "fam", &nkids);
  CHECK(nkids == NKIDS);
  CHECK(count_status(&s, "completed", "steps") == NKIDS);
  recs r = {0};
  recs_load(&s, &r);
  size_t idx[8];
  char kid[32];
  for (int i = 1; i <= NKIDS; i++) { /* each child's steps ran (again only if in flight at a kill) */
    snprintf(kid, sizeof kid, "fam/%d", 2 * i); /* after the parent's record at seq 2i - 1 */
    CHECK(test_count_history(s.cl, kid, "started", NULL) == 1);
    for (int q = 1; q <= 2; q++) CHECK(recs_of(&r, kid, q, idx, 8) >= 1);
  }
  recs_free(&r);
  snprintf(summary, sizeof summary, ": seed %u, %d kills, %d children each started once", seed, kills, nkids);
  host_stop(&s);
out:
  scen_end(&s, summary);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s WFHOST_BINARY CRASH_PLUGIN.so WORKFLOWS_DIR\n", argv[0]);
    return 2;
  }
  wfhost_bin = argv[1];
  plugin_path = argv[2];
  workflows_dir = argv[3];
  signal(SIGPIPE, SIG_IGN);
  snprintf(tmp, sizeof tmp, "%s", test_tmpdir());
  const char *seed_env = getenv("WF_CRASH_SEED");
  unsigned seed = seed_env && *seed_env ? (unsigned)strtoul(seed_env, NULL, 10)
                                        : (unsigned)(wall_ms() ^ ((int64_t)getpid() << 16));
  printf("test_crash: in %s (WF_CRASH_SEED=%u)\n", tmp, seed);
  fflush(stdout);

  scenario_intent();
  scenario_waiting();
  scenario_busy(seed);
  scenario_down();
  scenario_deliver(seed);
  scenario_backoff();
  scenario_patched();
  scenario_outbox();
  scenario_children(seed);
  TEST_MAIN_END();
}
