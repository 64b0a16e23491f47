/*
 * test_actions.c — action steps under their policies, through the public API, with C actions
 * and a virtual clock (stepped from timer to timer as the test kit's Env:advance does):
 *
 *   1. durable retries: the backoff delays journaled, each attempt at exactly its time, one
 *      idempotency key for every attempt; a retry-after hint
 *   2. full jitter drawn from a fixed seed is reproducible and below the nominal delay
 *   3. attempt timeouts (and a total timeout before the attempt's): the deadline given to the
 *      action, the abandon callback, a late completion dropped
 *   4. exhaustion: the error the workflow sees; permanent and non-retryable errors; suspension
 *      for an operator and `wf_retry`
 *   5. the circuit breaker: opening, rejection without invoking, the half-open probe, closing
 *      and re-opening, permanent errors as successes; the observer and the counters
 *   6. keyed breakers and their bound (max_keys)
 *   7. isolating and closing a breaker by hand, from the host and from a client handle, and
 *      across a restart
 *   8. blocking actions on the thread pool
 *   9. at-most-once actions after a crash and after a timeout; at-least-once after a crash
 *  10. per-call options from Lua (timeout, retry, key), and invalid ones
 *  11. a new breaker key when every other key's breaker is open (the new one is kept), and an
 *      abandon callback that completes its call while the host closes
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"
#include "wfhost.h"

#define T0 INT64_C(1700000000000)

static char dir[64], wfdir[128];
static int64_t now_ms = T0; /* the virtual clock of every handle */
static int64_t clock_fn(void *ud) {
  (void)ud;
  return now_ms;
}

static void log_fn(void *ud, wf_log_level lvl, const char *inst, const char *msg, const char *fields) {
  (void)ud;
  if (getenv("WF_TEST_LOG"))
    fprintf(stderr, "log %d [%s] %s %s\n", (int)lvl, inst ? inst : "-", msg, fields ? fields : "");
}

static void write_file(const char *name, const char *src) { test_write_file(wfdir, name, src); }

static wf_host *open_mode(const char *name, uint64_t seed, wf_mode mode) {
  char db[256];
  snprintf(db, sizeof db, "%s/%s.db", dir, name);
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.mode = mode;
  cfg.clock = clock_fn;
  cfg.seed = seed;
  cfg.log = log_fn;
  cfg.log_level = WF_LOG_DEBUG;
  wf_host *h = NULL;
  int rc = wf_host_open(db, &cfg, &h);
  if (rc != WF_OK) fprintf(stderr, "open %s: %s\n", db, wf_errmsg(h));
  CHECK(rc == WF_OK);
  if (rc == WF_OK && mode == WF_MODE_HOST) {
    rc = wf_load_dir(h, wfdir);
    if (rc != WF_OK) fprintf(stderr, "load: %s\n", wf_errmsg(h));
    CHECK(rc == WF_OK);
  }
  return h;
}

static wf_host *open_host(const char *name, uint64_t seed) { return open_mode(name, seed, WF_MODE_HOST); }

/* Steps the virtual clock to target, stopping at every timer (and call deadline) on the way
 * and letting the host settle at each: the algorithm of lua/workflow/testing.lua Env:advance. */
static void advance_to(wf_host *h, int64_t target) {
  int i;
  for (i = 0; i < 100000; i++) {
    wf_host_drain(h);
    int64_t due;
    if (wf_next_timer(h, &due) != WF_OK || due > target) break;
    if (due > now_ms) now_ms = due;
  }
  CHECK(i < 100000);
  if (target > now_ms) now_ms = target;
  wf_host_drain(h);
}

static void advance(wf_host *h, int64_t ms) { advance_to(h, now_ms + ms); }

/* ---- reading instances ------------------------------------------------------------------ */

static const char *status_of(wf_host *h, const char *id) { return test_status_of(h, id); }

static int is_status(wf_host *h, const char *id, const char *want) {
  const char *got = status_of(h, id);
  if (strcmp(got, want) != 0) fprintf(stderr, "  %s: status %s, want %s\n", id, got, want);
  return !strcmp(got, want);
}

/* 1 if the instance's output (or, with error = 1, its error text) contains needle. */
static int info_has(wf_host *h, const char *id, int error, const char *needle) {
  wf_info *i;
  if (wf_get(h, id, &i) != WF_OK) return 0;
  const char *s = error ? i->error : i->output_json;
  int found = s && strstr(s, needle) != NULL;
  if (!found)
    fprintf(stderr, "  %s: %s \"%s\" lacks \"%s\"\n", id, error ? "error" : "output", s ? s : "(null)", needle);
  wf_info_free(i);
  return found;
}
#define OUT_HAS(h, id, needle) info_has(h, id, 0, needle)
#define ERR_HAS(h, id, needle) info_has(h, id, 1, needle)

static int hist_count(wf_host *h, const char *id, const char *kind) {
  wf_history_entry *e;
  size_t n;
  int found = 0;
  if (wf_history(h, id, &e, &n) != WF_OK) return -1;
  for (size_t i = 0; i < n; i++) found += !strcmp(e[i].kind, kind);
  wf_history_free(e, n);
  return found;
}

/* The data and time of the k-th (from 0) history entry of kind; 0 if there is none. */
static int hist_nth(wf_host *h, const char *id, const char *kind, int k, char *data, size_t n, int64_t *at) {
  wf_history_entry *e;
  size_t ne;
  int found = 0;
  if (data && n) *data = 0;
  if (wf_history(h, id, &e, &ne) != WF_OK) return 0;
  for (size_t i = 0; i < ne && !found; i++) {
    if (strcmp(e[i].kind, kind) != 0 || k-- > 0) continue;
    found = 1;
    if (data) snprintf(data, n, "%s", e[i].data_json ? e[i].data_json : "");
    if (at) *at = e[i].at;
  }
  wf_history_free(e, ne);
  return found;
}

/* "key":<integer> in a JSON object written by the host; INT64_MIN if absent. */
static int64_t jint(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = json ? strstr(json, pat) : NULL;
  if (!p) return INT64_MIN;
  return strtoll(p + strlen(pat), NULL, 10);
}

/* 1 if json has "key":"value". */
static int jstr_is(const char *json, const char *key, const char *value) {
  char pat[200];
  snprintf(pat, sizeof pat, "\"%s\":\"%s\"", key, value);
  return json && strstr(json, pat) != NULL;
}

/* ---- breakers --------------------------------------------------------------------------- */

/* Copies the breaker of action/key into *out (strings not kept); 0 if it is not listed. */
typedef struct {
  char state[32];
  int64_t calls, failures, open_until;
} brk_view;

static int breaker_of(wf_host *h, const char *action, const char *key, brk_view *out) {
  wf_breaker_info *list;
  size_t n;
  int found = 0;
  memset(out, 0, sizeof *out);
  snprintf(out->state, sizeof out->state, "absent");
  if (wf_breakers(h, &list, &n) != WF_OK) return 0;
  for (size_t i = 0; i < n && !found; i++) {
    if (strcmp(list[i].action, action) != 0 || strcmp(list[i].key, key ? key : "") != 0) continue;
    found = 1;
    snprintf(out->state, sizeof out->state, "%s", list[i].state);
    out->calls = list[i].calls;
    out->failures = list[i].failures;
    out->open_until = list[i].open_until;
  }
  wf_breakers_free(list, n);
  return found;
}

static const char *breaker_state(wf_host *h, const char *action, const char *key) {
  static brk_view v;
  breaker_of(h, action, key, &v);
  return v.state;
}

static int breakers_of_action(wf_host *h, const char *action) {
  wf_breaker_info *list;
  size_t n;
  int k = 0;
  if (wf_breakers(h, &list, &n) != WF_OK) return -1;
  for (size_t i = 0; i < n; i++) k += !strcmp(list[i].action, action);
  wf_breakers_free(list, n);
  return k;
}

/* ---- the observer ----------------------------------------------------------------------- */

#define MAX_EVS 2048
typedef struct {
  char kind[24], instance[64], action[64], data[400];
  int64_t seq, at;
} obs_event;
static obs_event evs[MAX_EVS];
static int nevs;

static void observer(void *ud, const wf_action_event *ev) {
  (void)ud;
  if (nevs == MAX_EVS) return;
  obs_event *e = &evs[nevs++];
  snprintf(e->kind, sizeof e->kind, "%s", ev->kind);
  snprintf(e->instance, sizeof e->instance, "%s", ev->instance ? ev->instance : "");
  snprintf(e->action, sizeof e->action, "%s", ev->action ? ev->action : "");
  snprintf(e->data, sizeof e->data, "%s", ev->data_json ? ev->data_json : "");
  e->seq = ev->seq;
  e->at = ev->at;
}

/* Observed events of kind for action whose data contains needle (NULL: any). */
static int obs_count(const char *kind, const char *action, const char *needle) {
  int k = 0;
  for (int i = 0; i < nevs; i++)
    k += !strcmp(evs[i].kind, kind) && (!action || !strcmp(evs[i].action, action)) &&
         (!needle || strstr(evs[i].data, needle));
  return k;
}

/* ---- a scripted action ------------------------------------------------------------------ */

enum { S_OK, S_TRANSIENT, S_PERMANENT, S_HOLD, S_NOT_COMPLETED };
#define MAX_CALLS 64

typedef struct script {
  int mode;           /* what an invocation does, after the fail_transient first ones */
  int fail_transient; /* the first n invocations fail transiently */
  int hold_next;      /* the next n invocations are held (answered later by the test) */
  const char *fail_if; /* params containing this fail transiently */
  const char *err_type;
  int64_t retry_after_first; /* > 0: the first failure carries this retry-after hint */
  int calls;
  int64_t at[MAX_CALLS], deadline[MAX_CALLS];
  int attempt[MAX_CALLS];
  char key[MAX_CALLS][160], instance[MAX_CALLS][64], params[MAX_CALLS][160];
  pthread_t thread[MAX_CALLS];
  wf_call *held[MAX_CALLS];
  int nheld;
  int abandoned;
  wf_call *abandoned_calls[MAX_CALLS];
  int complete_on_abandon; /* the abandon callback completes the call (which frees it) */
} script;

static pthread_t loop_thread;

static void on_abandon(wf_call *c, void *ud) {
  script *s = ud;
  if (s->abandoned < MAX_CALLS) s->abandoned_calls[s->abandoned] = c;
  s->abandoned++;
  if (s->complete_on_abandon) {
    for (int i = 0; i < s->nheld; i++)
      if (s->held[i] == c) s->held[i--] = s->held[--s->nheld];
    wf_call_fail(c, "aborted", "aborted when abandoned", WF_TRANSIENT);
  }
}

static pthread_mutex_t script_mu = PTHREAD_MUTEX_INITIALIZER; /* blocking actions run at once */

static void scripted(wf_call *c, void *ud) {
  script *s = ud;
  pthread_mutex_lock(&script_mu);
  int i = s->calls++;
  if (i < MAX_CALLS) {
    s->at[i] = now_ms;
    s->deadline[i] = wf_call_deadline(c);
    s->attempt[i] = wf_call_attempt(c);
    snprintf(s->key[i], sizeof s->key[i], "%s", wf_call_key(c));
    snprintf(s->instance[i], sizeof s->instance[i], "%s", wf_call_instance(c));
    snprintf(s->params[i], sizeof s->params[i], "%s", wf_call_params(c));
    s->thread[i] = pthread_self();
  }
  int hold = s->hold_next > 0 || s->mode == S_HOLD;
  if (hold) {
    if (s->hold_next > 0) s->hold_next--;
    s->held[s->nheld++] = c;
  }
  pthread_mutex_unlock(&script_mu);
  if (hold) { /* (never on a blocking action) */
    wf_call_hold(c);
    wf_call_on_abandon(c, on_abandon, s);
    return;
  }
  const char *type = s->err_type ? s->err_type : "http_503";
  if (i < s->fail_transient || s->mode == S_TRANSIENT || (s->fail_if && strstr(wf_call_params(c), s->fail_if))) {
    if (i == 0 && s->retry_after_first > 0) wf_call_fail_after(c, type, "service down", s->retry_after_first);
    else wf_call_fail(c, type, "service down", WF_TRANSIENT);
  } else if (s->mode == S_PERMANENT) {
    wf_call_fail(c, type, "refused for good", WF_PERMANENT);
  } else if (s->mode == S_NOT_COMPLETED) {
    /* returns without completing (only meaningful for a blocking action) */
  } else {
    char out[64];
    snprintf(out, sizeof out, "{\"n\":%d}", i + 1);
    wf_call_ok(c, out);
  }
}

/* Completes every held call (ok) and forgets them. */
static void release_held(script *s) {
  for (int i = 0; i < s->nheld; i++) wf_call_ok(s->held[i], "{\"late\":true}");
  s->nheld = 0;
}

static void reg(wf_host *h, script *s, const char *name, const wf_action_opts *o) {
  int rc = wf_register_action(h, name, scripted, s, o);
  if (rc != WF_OK) fprintf(stderr, "register %s: %s\n", name, wf_errmsg(h));
  CHECK(rc == WF_OK);
}

/* No breaker, no jitter: what most tests want to see exactly. */
static wf_action_opts opts_plain(void) {
  wf_action_opts o;
  wf_action_opts_init(&o);
  o.breaker.enabled = 0;
  o.retry.jitter = WF_JITTER_NONE;
  return o;
}

static void start_call(wf_host *h, const char *id, const char *action, const char *params) {
  char input[512];
  snprintf(input, sizeof input, "{\"action\":\"%s\",\"params\":%s}", action, params ? params : "{}");
  int rc = wf_start(h, "call", input, id, NULL, NULL, NULL);
  if (rc != WF_OK) fprintf(stderr, "start %s: %s\n", id, wf_errmsg(h));
  CHECK(rc == WF_OK);
}

/* ---- 1. retry delays -------------------------------------------------------------------- */

static void test_retry_delays(void) {
  now_ms = T0;
  wf_host *h = open_host("retry", 1);
  static script s;
  memset(&s, 0, sizeof s);
  s.fail_transient = 4;
  wf_action_opts o = opts_plain();
  o.retry.max_attempts = 10;
  o.retry.initial_delay_ms = 1000;
  reg(h, &s, "flaky", &o);

  int64_t t0 = now_ms;
  start_call(h, "r1", "flaky", "{\"x\":1}");
  advance(h, 60000);
  CHECK(is_status(h, "r1", "completed"));
  CHECK(OUT_HAS(h, "r1", "\"ok\":true"));
  CHECK(OUT_HAS(h, "r1", "\"n\":5"));
  CHECK(s.calls == 5);
  const int64_t want_at[] = {t0, t0 + 1000, t0 + 3000, t0 + 7000, t0 + 15000};
  const int64_t want_delay[] = {1000, 2000, 4000, 8000};
  for (int i = 0; i < 5 && i < s.calls; i++) {
    if (s.at[i] != want_at[i])
      fprintf(stderr, "attempt %d ran at t0%+" PRId64 ", want t0%+" PRId64 "\n", i + 1, s.at[i] - t0, want_at[i] - t0);
    CHECK(s.at[i] == want_at[i]);
    CHECK(s.attempt[i] == i + 1);
    CHECK(!strcmp(s.key[i], "r1:1"));
    CHECK(!strcmp(s.instance[i], "r1"));
    CHECK(!strcmp(s.params[i], "{\"x\":1}"));
    CHECK(s.deadline[i] == want_at[i] + 10000);
  }
  CHECK(hist_count(h, "r1", "retry_scheduled") == 4);
  CHECK(hist_count(h, "r1", "attempt_failed") == 4);
  CHECK(hist_count(h, "r1", "attempt") == 4); /* attempts 2..5: attempt 1 is the action entry */
  CHECK(hist_count(h, "r1", "action") == 1);
  CHECK(hist_count(h, "r1", "action_result") == 1);
  CHECK(hist_count(h, "r1", "exhausted") == 0);
  char data[512];
  int64_t at = 0;
  for (int i = 0; i < 4; i++) {
    CHECK(hist_nth(h, "r1", "retry_scheduled", i, data, sizeof data, &at));
    if (jint(data, "delay_ms") != want_delay[i]) fprintf(stderr, "retry_scheduled %d: %s\n", i, data);
    CHECK(jint(data, "delay_ms") == want_delay[i]);
    CHECK(jint(data, "attempt") == i + 2);
    CHECK(jint(data, "at") == want_at[i + 1]);
    CHECK(jstr_is(data, "reason", "transient"));
    CHECK(at == want_at[i]);
    CHECK(hist_nth(h, "r1", "attempt_failed", i, data, sizeof data, &at));
    CHECK(jint(data, "attempt") == i + 1);
    CHECK(jstr_is(data, "class", "transient"));
    CHECK(jstr_is(data, "type", "http_503"));
    CHECK(jstr_is(data, "message", "service down"));
    CHECK(at == want_at[i]);
    CHECK(hist_nth(h, "r1", "attempt", i, data, sizeof data, &at));
    CHECK(jint(data, "attempt") == i + 2);
    CHECK(at == want_at[i + 1]);
  }

  wf_action_stats st;
  wf_action_stats_get(h, &st);
  CHECK(st.attempts[WF_OUTCOME_TRANSIENT] == 4);
  CHECK(st.attempts[WF_OUTCOME_OK] == 1);
  CHECK(st.retries_transient == 4);
  CHECK(st.exhausted == 0);
  CHECK(st.in_flight == 0);

  /* A retry-after hint replaces the backoff. */
  static script hint;
  memset(&hint, 0, sizeof hint);
  hint.fail_transient = 1;
  hint.retry_after_first = 2500;
  hint.err_type = "http_429";
  reg(h, &hint, "hinted", &o);
  int64_t t1 = now_ms;
  start_call(h, "r2", "hinted", NULL);
  advance(h, 10000);
  CHECK(is_status(h, "r2", "completed"));
  CHECK(hint.calls == 2);
  CHECK(hint.at[1] == t1 + 2500);
  CHECK(hist_nth(h, "r2", "retry_scheduled", 0, data, sizeof data, NULL));
  CHECK(jint(data, "delay_ms") == 2500);
  wf_host_close(h);
}

/* ---- 2. jitter from a fixed seed -------------------------------------------------------- */

static void run_jitter(const char *name, uint64_t seed, int64_t delays[4]) {
  now_ms = T0;
  wf_host *h = open_host(name, seed);
  static script s;
  memset(&s, 0, sizeof s);
  s.fail_transient = 4;
  wf_action_opts o = opts_plain();
  o.retry.jitter = WF_JITTER_FULL;
  o.retry.max_attempts = 10;
  reg(h, &s, "jittery", &o);
  start_call(h, "j1", "jittery", NULL);
  advance(h, 60000);
  CHECK(is_status(h, "j1", "completed"));
  CHECK(s.calls == 5);
  char data[512];
  for (int i = 0; i < 4; i++) {
    delays[i] = -1;
    CHECK(hist_nth(h, "j1", "retry_scheduled", i, data, sizeof data, NULL));
    delays[i] = jint(data, "delay_ms");
    /* Each attempt ran exactly its jittered delay after the previous one. */
    if (i + 1 < s.calls) CHECK(s.at[i + 1] - s.at[i] == delays[i]);
  }
  wf_host_close(h);
}

static void test_jitter_seed(void) {
  int64_t a[4], b[4], c[4];
  run_jitter("jitter_a", 12345, a);
  run_jitter("jitter_b", 12345, b);
  run_jitter("jitter_c", 999, c);
  const int64_t nominal[] = {1000, 2000, 4000, 8000};
  int same_as_other_seed = 1;
  for (int i = 0; i < 4; i++) {
    CHECK(a[i] == b[i]);
    CHECK(a[i] >= 0 && a[i] < nominal[i]);
    CHECK(c[i] >= 0 && c[i] < nominal[i]);
    if (a[i] != c[i]) same_as_other_seed = 0;
  }
  CHECK(!same_as_other_seed); /* another seed draws other delays */
}

/* ---- 3. attempt timeouts ---------------------------------------------------------------- */

static void test_attempt_timeout(void) {
  now_ms = T0;
  wf_host *h = open_host("timeout", 1);
  static script s;
  memset(&s, 0, sizeof s);
  s.mode = S_HOLD;
  wf_action_opts o = opts_plain();
  o.retry.attempt_timeout_ms = 5000;
  o.retry.max_attempts = 2;
  reg(h, &s, "never", &o);

  int64_t t0 = now_ms;
  start_call(h, "t1", "never", NULL);
  wf_host_drain(h);
  CHECK(s.calls == 1);
  CHECK(s.deadline[0] == t0 + 5000);
  int64_t due = 0;
  CHECK(wf_next_timer(h, &due) == WF_OK && due == t0 + 5000); /* the deadline is a timer */
  advance_to(h, t0 + 4999);
  CHECK(hist_count(h, "t1", "attempt_failed") == 0);
  CHECK(s.abandoned == 0);
  CHECK(is_status(h, "t1", "running"));
  advance_to(h, t0 + 30000);
  CHECK(s.calls == 2);
  CHECK(s.at[1] == t0 + 6000); /* 5 s timeout, then 1 s of backoff */
  CHECK(s.attempt[1] == 2);
  CHECK(s.deadline[1] == t0 + 11000);
  CHECK(!strcmp(s.key[0], s.key[1]));
  CHECK(hist_count(h, "t1", "attempt_failed") == 2);
  char data[512];
  int64_t at = 0;
  CHECK(hist_nth(h, "t1", "attempt_failed", 0, data, sizeof data, &at));
  CHECK(at == t0 + 5000);
  CHECK(jstr_is(data, "class", "timeout"));
  CHECK(jstr_is(data, "type", "timeout"));
  CHECK(strstr(data, "5000 ms") != NULL);
  CHECK(jint(data, "attempt") == 1);
  CHECK(hist_nth(h, "t1", "attempt_failed", 1, data, sizeof data, &at));
  CHECK(at == t0 + 11000);
  CHECK(jint(data, "attempt") == 2);
  CHECK(hist_nth(h, "t1", "retry_scheduled", 0, data, sizeof data, NULL));
  CHECK(jstr_is(data, "reason", "timeout"));
  CHECK(hist_count(h, "t1", "exhausted") == 1);
  CHECK(is_status(h, "t1", "completed"));
  CHECK(OUT_HAS(h, "t1", "\"code\":\"retries_exhausted\""));
  CHECK(OUT_HAS(h, "t1", "\"type\":\"timeout\""));
  CHECK(OUT_HAS(h, "t1", "\"attempts\":2"));
  /* The abandon callback ran once for each abandoned call. */
  CHECK(s.abandoned == 2);
  CHECK(s.nheld == 2);
  if (s.abandoned == 2 && s.nheld == 2) {
    CHECK(s.abandoned_calls[0] == s.held[0]);
    CHECK(s.abandoned_calls[1] == s.held[1]);
  }
  wf_action_stats st;
  wf_action_stats_get(h, &st);
  CHECK(st.attempts[WF_OUTCOME_TIMEOUT] == 2);
  CHECK(st.attempt_max_ms[WF_OUTCOME_TIMEOUT] == 5000);
  CHECK(st.attempt_ms[WF_OUTCOME_TIMEOUT] == 10000);
  CHECK(st.retries_timeout == 1);
  CHECK(st.exhausted == 1);

  /* The application completes the abandoned calls late: the outcomes are dropped. */
  wf_call_ok(s.held[0], "{\"late\":true}");
  wf_call_fail(s.held[1], "http_500", "late failure", WF_TRANSIENT);
  s.nheld = 0;
  advance(h, 1000);
  CHECK(s.abandoned == 2);
  CHECK(is_status(h, "t1", "completed"));
  CHECK(hist_count(h, "t1", "action_result") == 0);
  CHECK(hist_count(h, "t1", "action_error") == 1);
  CHECK(hist_count(h, "t1", "attempt_failed") == 2);
  wf_action_stats_get(h, &st);
  CHECK(st.in_flight == 0);
  CHECK(st.attempts[WF_OUTCOME_OK] == 0);

  /* A total timeout shorter than the attempt timeout: the deadline is the total one. */
  static script tt;
  memset(&tt, 0, sizeof tt);
  tt.mode = S_HOLD;
  o = opts_plain();
  o.retry.attempt_timeout_ms = 5000;
  o.retry.total_timeout_ms = 3000;
  o.retry.max_attempts = 3;
  reg(h, &tt, "never_total", &o);
  int64_t t1 = now_ms;
  start_call(h, "t2", "never_total", NULL);
  wf_host_drain(h);
  CHECK(tt.calls == 1);
  CHECK(tt.deadline[0] == t1 + 3000);
  advance(h, 20000);
  CHECK(tt.calls == 1);
  CHECK(tt.abandoned == 1);
  CHECK(hist_nth(h, "t2", "attempt_failed", 0, data, sizeof data, &at));
  CHECK(at == t1 + 3000);
  CHECK(strstr(data, "total") != NULL);
  CHECK(is_status(h, "t2", "completed"));
  CHECK(OUT_HAS(h, "t2", "\"code\":\"deadline_exceeded\""));
  release_held(&tt);
  wf_host_drain(h);

  /* The abandon callback may complete the call itself: dropped too. */
  static script cb;
  memset(&cb, 0, sizeof cb);
  cb.mode = S_HOLD;
  cb.complete_on_abandon = 1;
  o = opts_plain();
  o.retry.attempt_timeout_ms = 2000;
  o.retry.max_attempts = 1;
  reg(h, &cb, "never_cb", &o);
  int64_t t2 = now_ms;
  start_call(h, "t3", "never_cb", NULL);
  advance(h, 5000);
  CHECK(cb.calls == 1);
  CHECK(cb.abandoned == 1);
  CHECK(cb.nheld == 0);
  CHECK(hist_nth(h, "t3", "attempt_failed", 0, data, sizeof data, &at));
  CHECK(at == t2 + 2000 && jstr_is(data, "class", "timeout"));
  CHECK(is_status(h, "t3", "completed"));
  CHECK(OUT_HAS(h, "t3", "\"type\":\"timeout\""));
  wf_action_stats_get(h, &st);
  CHECK(st.in_flight == 0);
  wf_host_close(h);
}

/* ---- 4. exhaustion ---------------------------------------------------------------------- */

static void test_exhaustion(void) {
  now_ms = T0;
  wf_host *h = open_host("exhaust", 1);
  static script down, decline, strict, susp;
  memset(&down, 0, sizeof down);
  memset(&decline, 0, sizeof decline);
  memset(&strict, 0, sizeof strict);
  memset(&susp, 0, sizeof susp);
  down.mode = S_TRANSIENT;
  down.err_type = "http_503";
  wf_action_opts o = opts_plain();
  o.retry.max_attempts = 3;
  o.retry.initial_delay_ms = 100;
  reg(h, &down, "down", &o);
  decline.mode = S_PERMANENT;
  decline.err_type = "declined";
  o.retry.max_attempts = 5;
  reg(h, &decline, "decline", &o);
  strict.mode = S_TRANSIENT;
  strict.err_type = "bad_request";
  static const char *const nonretry[] = {"bad_request", NULL};
  o.retry.non_retryable = nonretry;
  reg(h, &strict, "strict", &o);
  susp.mode = S_TRANSIENT;
  susp.err_type = "http_500";
  o = opts_plain();
  o.retry.max_attempts = 2;
  o.retry.suspend_on_exhaustion = 1;
  reg(h, &susp, "susp", &o);

  start_call(h, "e1", "down", NULL);
  start_call(h, "e2", "decline", NULL);
  start_call(h, "e3", "strict", NULL);
  start_call(h, "e4", "susp", NULL);
  advance(h, 60000);

  /* Retries exhausted: the workflow catches the error. */
  CHECK(down.calls == 3);
  CHECK(is_status(h, "e1", "completed"));
  CHECK(OUT_HAS(h, "e1", "\"ok\":false"));
  CHECK(OUT_HAS(h, "e1", "\"code\":\"retries_exhausted\""));
  CHECK(OUT_HAS(h, "e1", "\"type\":\"http_503\""));
  CHECK(OUT_HAS(h, "e1", "\"attempts\":3"));
  CHECK(OUT_HAS(h, "e1", "\"cause_type\":\"http_503\""));
  CHECK(OUT_HAS(h, "e1", "\"cause_message\":\"service down\""));
  CHECK(OUT_HAS(h, "e1", "3 attempts failed"));
  CHECK(OUT_HAS(h, "e1", "\"retryable\":false"));
  CHECK(hist_count(h, "e1", "exhausted") == 1);
  CHECK(hist_count(h, "e1", "action_error") == 1);
  CHECK(hist_count(h, "e1", "retry_scheduled") == 2);
  char data[1024];
  CHECK(hist_nth(h, "e1", "exhausted", 0, data, sizeof data, NULL));
  CHECK(jint(data, "attempts") == 3);
  CHECK(jstr_is(data, "code", "retries_exhausted"));

  /* A permanent error is not retried: its code is its type. */
  CHECK(decline.calls == 1);
  CHECK(is_status(h, "e2", "completed"));
  CHECK(OUT_HAS(h, "e2", "\"code\":\"declined\""));
  CHECK(OUT_HAS(h, "e2", "\"type\":\"declined\""));
  CHECK(OUT_HAS(h, "e2", "\"attempts\":1"));
  CHECK(OUT_HAS(h, "e2", "refused for good"));
  CHECK(hist_count(h, "e2", "retry_scheduled") == 0);
  CHECK(hist_count(h, "e2", "exhausted") == 0);

  /* A transient error of a non-retryable type neither. */
  CHECK(strict.calls == 1);
  CHECK(OUT_HAS(h, "e3", "\"code\":\"bad_request\""));
  CHECK(hist_count(h, "e3", "retry_scheduled") == 0);

  /* Suspended for an operator, then retried: a new round of attempts. */
  CHECK(susp.calls == 2);
  CHECK(is_status(h, "e4", "suspended"));
  CHECK(ERR_HAS(h, "e4", "wfhost retry"));
  CHECK(ERR_HAS(h, "e4", "susp"));
  CHECK(hist_count(h, "e4", "exhausted") == 1);
  susp.mode = S_OK;
  CHECK(wf_retry(h, "e4", NULL, NULL) == WF_OK);
  advance(h, 1000);
  CHECK(is_status(h, "e4", "completed"));
  CHECK(OUT_HAS(h, "e4", "\"ok\":true"));
  CHECK(susp.calls == 3);
  CHECK(susp.attempt[2] == 3);
  CHECK(!strcmp(susp.key[2], susp.key[0]));
  CHECK(wf_retry(h, "e4", NULL, NULL) == WF_STATE);

  /* A second round that fails too suspends again, after its own max_attempts. */
  static script susp2;
  memset(&susp2, 0, sizeof susp2);
  susp2.mode = S_TRANSIENT;
  reg(h, &susp2, "susp2", &o);
  start_call(h, "e5", "susp2", NULL);
  advance(h, 60000);
  CHECK(susp2.calls == 2);
  CHECK(is_status(h, "e5", "suspended"));
  CHECK(wf_retry(h, "e5", NULL, NULL) == WF_OK);
  advance(h, 60000);
  CHECK(susp2.calls == 4);
  CHECK(is_status(h, "e5", "suspended"));
  CHECK(hist_count(h, "e5", "exhausted") == 2);

  wf_action_stats st;
  wf_action_stats_get(h, &st);
  CHECK(st.attempts[WF_OUTCOME_PERMANENT] == 1);
  CHECK(st.exhausted == 4); /* e1, e4, e5 twice */
  wf_host_close(h);
}

/* ---- 5. the circuit breaker ------------------------------------------------------------- */

static void test_breaker(void) {
  now_ms = T0;
  wf_host *h = open_host("breaker", 1);
  nevs = 0;
  wf_set_observer(h, observer, NULL);
  static script s, perm;
  memset(&s, 0, sizeof s);
  memset(&perm, 0, sizeof perm);
  s.mode = S_TRANSIENT;
  wf_action_opts o = opts_plain();
  o.retry.max_attempts = 1;
  o.breaker.enabled = 1;
  o.breaker.min_throughput = 4;
  o.breaker.failure_ratio = 0.5;
  o.breaker.break_duration_ms = 5000;
  reg(h, &s, "brk", &o);
  perm.mode = S_PERMANENT;
  reg(h, &perm, "brkperm", &o);

  /* Four transient failures from four instances open it. */
  int64_t t0 = now_ms;
  start_call(h, "b1", "brk", NULL);
  start_call(h, "b2", "brk", NULL);
  start_call(h, "b3", "brk", NULL);
  CHECK(!strcmp(breaker_state(h, "brk", ""), "absent") || !strcmp(breaker_state(h, "brk", ""), "closed"));
  wf_host_drain(h);
  CHECK(!strcmp(breaker_state(h, "brk", ""), "closed")); /* 3 calls: below min_throughput */
  start_call(h, "b4", "brk", NULL);
  wf_host_drain(h);
  CHECK(s.calls == 4);
  brk_view v;
  CHECK(breaker_of(h, "brk", "", &v));
  CHECK(!strcmp(v.state, "open"));
  CHECK(v.calls == 4 && v.failures == 4);
  CHECK(v.open_until == t0 + 5000);
  int opened_in = 0;
  const char *b[] = {"b1", "b2", "b3", "b4"};
  for (int i = 0; i < 4; i++) {
    CHECK(is_status(h, b[i], "completed"));
    CHECK(OUT_HAS(h, b[i], "\"code\":\"retries_exhausted\""));
    opened_in += hist_count(h, b[i], "breaker");
  }
  CHECK(opened_in == 1);
  char data[512];
  CHECK(hist_nth(h, "b4", "breaker", 0, data, sizeof data, NULL));
  CHECK(jstr_is(data, "from", "closed") && jstr_is(data, "to", "open"));
  CHECK(obs_count("breaker", "brk", "\"to\":\"open\"") == 1);
  wf_action_stats st;
  wf_action_stats_get(h, &st);
  CHECK(st.breaker_opened == 1);
  CHECK(st.breakers_open == 1);
  CHECK(st.attempts[WF_OUTCOME_TRANSIENT] == 4);
  CHECK(st.rejections == 0);

  /* A fifth instance is rejected without invoking the action; no attempt is used. */
  advance(h, 1000);
  start_call(h, "b5", "brk", NULL);
  wf_host_drain(h);
  CHECK(s.calls == 4);
  CHECK(is_status(h, "b5", "waiting"));
  CHECK(hist_count(h, "b5", "rejected") == 1);
  CHECK(hist_count(h, "b5", "attempt") == 0);
  CHECK(hist_count(h, "b5", "attempt_failed") == 0);
  CHECK(hist_nth(h, "b5", "rejected", 0, data, sizeof data, NULL));
  CHECK(jint(data, "attempt") == 1);
  CHECK(jint(data, "open_until") == t0 + 5000);
  CHECK(hist_nth(h, "b5", "retry_scheduled", 0, data, sizeof data, NULL));
  CHECK(jint(data, "attempt") == 1);
  CHECK(jstr_is(data, "reason", "circuit_open"));
  int64_t retry5 = jint(data, "at");
  CHECK(retry5 >= t0 + 5000 && retry5 < t0 + 6000);
  CHECK(obs_count("rejected", "brk", NULL) == 1);
  wf_action_stats_get(h, &st);
  CHECK(st.rejections == 1);
  CHECK(st.retries_circuit_open == 1);

  /* At its retry time (past open_until) its call is the half-open probe; hold it. */
  s.mode = S_HOLD;
  advance_to(h, retry5);
  CHECK(s.calls == 5);
  CHECK(!strcmp(s.instance[4], "b5"));
  CHECK(s.attempt[4] == 1);
  CHECK(s.at[4] == retry5);
  CHECK(!strcmp(breaker_state(h, "brk", ""), "half_open"));
  CHECK(hist_nth(h, "b5", "breaker", 0, data, sizeof data, NULL));
  CHECK(jstr_is(data, "from", "open") && jstr_is(data, "to", "half_open"));
  /* While the probe is out, another instance is rejected. */
  start_call(h, "b6", "brk", NULL);
  wf_host_drain(h);
  CHECK(s.calls == 5);
  CHECK(hist_count(h, "b6", "rejected") == 1);
  CHECK(hist_nth(h, "b6", "rejected", 0, data, sizeof data, NULL));
  CHECK(jstr_is(data, "state", "half_open"));
  CHECK(hist_nth(h, "b6", "retry_scheduled", 0, data, sizeof data, NULL));
  CHECK(jint(data, "attempt") == 1);
  /* The probe succeeds: closed. */
  s.mode = S_OK;
  CHECK(s.nheld == 1);
  release_held(&s);
  wf_host_drain(h);
  CHECK(is_status(h, "b5", "completed"));
  CHECK(OUT_HAS(h, "b5", "\"ok\":true"));
  CHECK(!strcmp(breaker_state(h, "brk", ""), "closed"));
  CHECK(hist_count(h, "b5", "breaker") == 2);
  CHECK(hist_nth(h, "b5", "breaker", 1, data, sizeof data, NULL));
  CHECK(jstr_is(data, "from", "half_open") && jstr_is(data, "to", "closed"));
  advance(h, 2000);
  CHECK(s.calls == 6);
  CHECK(is_status(h, "b6", "completed"));
  CHECK(OUT_HAS(h, "b6", "\"ok\":true"));

  /* Open again; this time the probe fails: open again, for another break. */
  s.mode = S_TRANSIENT;
  start_call(h, "c1", "brk", NULL);
  start_call(h, "c2", "brk", NULL);
  start_call(h, "c3", "brk", NULL);
  start_call(h, "c4", "brk", NULL);
  wf_host_drain(h);
  CHECK(s.calls == 10);
  CHECK(!strcmp(breaker_state(h, "brk", ""), "open"));
  start_call(h, "c5", "brk", NULL);
  wf_host_drain(h);
  CHECK(s.calls == 10);
  CHECK(hist_nth(h, "c5", "retry_scheduled", 0, data, sizeof data, NULL));
  int64_t retry_c5 = jint(data, "at");
  advance_to(h, retry_c5);
  CHECK(s.calls == 11);
  CHECK(breaker_of(h, "brk", "", &v));
  CHECK(!strcmp(v.state, "open"));
  CHECK(v.open_until == retry_c5 + 5000);
  CHECK(hist_count(h, "c5", "breaker") == 2);
  CHECK(hist_nth(h, "c5", "breaker", 1, data, sizeof data, NULL));
  CHECK(jstr_is(data, "from", "half_open") && jstr_is(data, "to", "open"));
  CHECK(is_status(h, "c5", "completed"));
  CHECK(OUT_HAS(h, "c5", "\"code\":\"retries_exhausted\""));

  /* Permanent errors are answers: they count as successes and never open it. */
  const char *p[] = {"p1", "p2", "p3", "p4", "p5", "p6"};
  for (int i = 0; i < 6; i++) start_call(h, p[i], "brkperm", NULL);
  wf_host_drain(h);
  CHECK(perm.calls == 6);
  CHECK(breaker_of(h, "brkperm", "", &v));
  CHECK(!strcmp(v.state, "closed"));
  CHECK(v.calls == 6 && v.failures == 0);
  CHECK(OUT_HAS(h, "p6", "\"code\":\"http_503\""));

  /* The observer saw every transition and rejection; the counters agree. */
  CHECK(obs_count("breaker", "brk", "\"to\":\"open\"") == 3);
  CHECK(obs_count("breaker", "brk", "\"to\":\"half_open\"") == 2);
  CHECK(obs_count("breaker", "brk", "\"to\":\"closed\"") == 1);
  CHECK(obs_count("breaker", "brkperm", NULL) == 0);
  CHECK(obs_count("rejected", "brk", NULL) == 3);
  CHECK(obs_count("exhausted", "brk", NULL) == 9);
  CHECK(obs_count("attempt", "brk", NULL) == 11); /* every started attempt, the first ones too */
  CHECK(obs_count("breaker", "brk", "\"failures\":") == 3 + 2 + 1);
  CHECK(obs_count("breaker", "brk", "\"open_until\":") == 3 + 2 + 1);
  CHECK(obs_count("breaker", "brk", "\"key\":\"\"") == 3 + 2 + 1);
  /* ... and each step's outcome. */
  CHECK(obs_count("action_error", "brk", "\"code\":\"retries_exhausted\"") == 9);
  CHECK(obs_count("action_result", "brk", NULL) == 2);
  CHECK(obs_count("action_error", "brkperm", "\"code\":\"http_503\"") == 6);
  for (int i = 0; i < nevs; i++)
    if (!strcmp(evs[i].kind, "rejected"))
      CHECK(evs[i].seq == 1 && evs[i].at > t0 && (!strcmp(evs[i].instance, "b5") || !strcmp(evs[i].instance, "b6") ||
                                                   !strcmp(evs[i].instance, "c5")));
  wf_action_stats_get(h, &st);
  CHECK(st.rejections == 3);
  CHECK(st.retries_circuit_open == 3);
  CHECK(st.breaker_opened == 3);
  CHECK(st.breaker_half_opened == 2);
  CHECK(st.breaker_closed == 1);
  CHECK(st.attempts[WF_OUTCOME_TRANSIENT] == 9);
  CHECK(st.attempts[WF_OUTCOME_OK] == 2);
  CHECK(st.attempts[WF_OUTCOME_PERMANENT] == 6);
  CHECK(st.exhausted == 9);
  CHECK(st.breakers_open == 1);
  CHECK(st.in_flight == 0);
  wf_set_observer(h, NULL, NULL);
  wf_host_close(h);
}

/* ---- 6. keyed breakers ------------------------------------------------------------------ */

/* One attempt per call; a breaker per params.tenant that opens after two failures. */
static wf_action_opts keyed_opts(int max_keys) {
  wf_action_opts o = opts_plain();
  o.retry.max_attempts = 1;
  o.breaker.enabled = 1;
  o.breaker.key_param = "tenant";
  o.breaker.min_throughput = 2;
  o.breaker.failure_ratio = 0.5;
  o.breaker.max_keys = max_keys;
  return o;
}

static void test_keyed_breaker(void) {
  now_ms = T0;
  wf_host *h = open_host("keyed", 1);
  static script k;
  memset(&k, 0, sizeof k);
  k.fail_if = "\"tenant\":\"a\"";
  wf_action_opts o = keyed_opts(2);
  reg(h, &k, "keyed", &o);

  start_call(h, "k1", "keyed", "{\"tenant\":\"a\"}");
  start_call(h, "k2", "keyed", "{\"tenant\":\"a\"}");
  wf_host_drain(h);
  CHECK(k.calls == 2);
  CHECK(!strcmp(breaker_state(h, "keyed", "a"), "open"));
  CHECK(!strcmp(breaker_state(h, "keyed", ""), "absent")); /* no unkeyed breaker */
  start_call(h, "k3", "keyed", "{\"tenant\":\"b\"}");
  wf_host_drain(h);
  CHECK(k.calls == 3);
  CHECK(is_status(h, "k3", "completed"));
  CHECK(OUT_HAS(h, "k3", "\"ok\":true"));
  brk_view v;
  CHECK(breaker_of(h, "keyed", "b", &v));
  CHECK(!strcmp(v.state, "closed") && v.calls == 1 && v.failures == 0);
  start_call(h, "k4", "keyed", "{\"tenant\":\"a\"}");
  wf_host_drain(h);
  CHECK(k.calls == 3); /* a is open: rejected */
  CHECK(hist_count(h, "k4", "rejected") == 1);
  CHECK(breakers_of_action(h, "keyed") == 2);

  /* Past max_keys, the least recently used closed breaker goes; the open one stays. */
  start_call(h, "k5", "keyed", "{\"tenant\":\"c\"}");
  wf_host_drain(h);
  CHECK(k.calls == 4);
  CHECK(is_status(h, "k5", "completed"));
  CHECK(breakers_of_action(h, "keyed") == 2);
  CHECK(!strcmp(breaker_state(h, "keyed", "a"), "open"));
  CHECK(!strcmp(breaker_state(h, "keyed", "b"), "absent"));
  CHECK(!strcmp(breaker_state(h, "keyed", "c"), "closed"));
  start_call(h, "k6", "keyed", "{\"tenant\":\"d\"}");
  wf_host_drain(h);
  CHECK(k.calls == 5);
  CHECK(breakers_of_action(h, "keyed") == 2);
  CHECK(!strcmp(breaker_state(h, "keyed", "a"), "open"));
  CHECK(!strcmp(breaker_state(h, "keyed", "c"), "absent"));
  CHECK(!strcmp(breaker_state(h, "keyed", "d"), "closed"));
  /* A forgotten key starts over with a fresh breaker. */
  start_call(h, "k7", "keyed", "{\"tenant\":\"b\"}");
  wf_host_drain(h);
  CHECK(k.calls == 6);
  CHECK(is_status(h, "k7", "completed"));
  CHECK(breakers_of_action(h, "keyed") == 2);
  CHECK(!strcmp(breaker_state(h, "keyed", "a"), "open"));
  wf_host_close(h);
}

/* Every other key's breaker is open (not droppable) when a new key comes: the new key's
 * breaker, the one in use, must not be the one dropped. */
static void keyed_new_key_scenario(void) {
  now_ms = T0;
  wf_host *h = open_host("keyed_full", 1);
  static script k;
  memset(&k, 0, sizeof k);
  k.fail_if = "\"fail\":true";
  wf_action_opts o = keyed_opts(1);
  reg(h, &k, "keyed1", &o);
  start_call(h, "u1", "keyed1", "{\"tenant\":\"a\",\"fail\":true}");
  start_call(h, "u2", "keyed1", "{\"tenant\":\"a\",\"fail\":true}");
  wf_host_drain(h);
  CHECK(!strcmp(breaker_state(h, "keyed1", "a"), "open"));
  start_call(h, "u3", "keyed1", "{\"tenant\":\"b\",\"fail\":true}");
  start_call(h, "u4", "keyed1", "{\"tenant\":\"b\",\"fail\":true}");
  wf_host_drain(h);
  CHECK(k.calls == 4);
  /* b's breaker, just made, is kept although the action then has more than max_keys (a is
   * open and cannot be dropped). */
  CHECK(!strcmp(breaker_state(h, "keyed1", "b"), "open"));
  CHECK(!strcmp(breaker_state(h, "keyed1", "a"), "open"));
  wf_host_close(h);
}


/* ---- 7. isolate and close --------------------------------------------------------------- */

static void test_isolate(void) {
  now_ms = T0;
  wf_host *h = open_host("isolate", 1);
  static script s;
  memset(&s, 0, sizeof s);
  wf_action_opts o = opts_plain();
  o.breaker.enabled = 1;
  reg(h, &s, "iso", &o);
  nevs = 0;
  wf_set_observer(h, observer, NULL);

  /* On the host. */
  CHECK(wf_breaker_isolate(h, "iso", NULL) == WF_OK);
  wf_host_drain(h);
  CHECK(!strcmp(breaker_state(h, "iso", ""), "isolated"));
  CHECK(obs_count("breaker", "iso", "\"to\":\"isolated\"") == 1);
  for (int i = 0; i < nevs; i++) /* an operator's change: no instance */
    if (!strcmp(evs[i].kind, "breaker")) CHECK(evs[i].instance[0] == 0);
  start_call(h, "i1", "iso", NULL);
  wf_host_drain(h);
  CHECK(s.calls == 0);
  CHECK(hist_count(h, "i1", "rejected") == 1);
  char data[512];
  CHECK(hist_nth(h, "i1", "rejected", 0, data, sizeof data, NULL));
  CHECK(jstr_is(data, "state", "isolated"));
  advance(h, 30000); /* rejected again and again, without using attempts */
  CHECK(s.calls == 0);
  CHECK(hist_count(h, "i1", "rejected") >= 4);
  CHECK(hist_count(h, "i1", "attempt") == 0);
  CHECK(is_status(h, "i1", "waiting"));
  wf_action_stats st;
  wf_action_stats_get(h, &st);
  CHECK(st.breakers_open == 1);
  CHECK(wf_breaker_close(h, "iso", "") == WF_OK);
  CHECK(!strcmp(breaker_state(h, "iso", ""), "closed"));
  advance(h, 7000);
  CHECK(s.calls == 1);
  CHECK(s.attempt[0] == 1);
  CHECK(is_status(h, "i1", "completed"));
  CHECK(obs_count("breaker", "iso", "\"to\":\"closed\"") == 1);

  /* From a client handle: a request the host applies in its next batch. */
  wf_host *c = open_mode("isolate", 0, WF_MODE_CLIENT);
  CHECK(wf_breaker_isolate(c, "iso", NULL) == WF_OK);
  for (int i = 0; i < 5 && strcmp(breaker_state(h, "iso", ""), "isolated") != 0; i++) {
    usleep(2000);
    wf_host_drain(h);
  }
  CHECK(!strcmp(breaker_state(h, "iso", ""), "isolated"));
  CHECK(!strcmp(breaker_state(c, "iso", ""), "isolated")); /* what the host wrote */
  start_call(h, "i2", "iso", NULL);
  wf_host_drain(h);
  CHECK(s.calls == 1);
  CHECK(hist_count(h, "i2", "rejected") == 1);
  CHECK(wf_breaker_close(c, "iso", NULL) == WF_OK);
  for (int i = 0; i < 5 && strcmp(breaker_state(h, "iso", ""), "closed") != 0; i++) {
    usleep(2000);
    wf_host_drain(h);
  }
  CHECK(!strcmp(breaker_state(h, "iso", ""), "closed"));
  CHECK(!strcmp(breaker_state(c, "iso", ""), "closed"));
  advance(h, 7000);
  CHECK(s.calls == 2);
  CHECK(is_status(h, "i2", "completed"));
  /* A client cannot isolate without an action name. */
  CHECK(wf_breaker_isolate(c, "", NULL) == WF_INVALID);

  /* Isolation survives a restart. */
  CHECK(wf_breaker_isolate(h, "iso", NULL) == WF_OK);
  wf_host_drain(h);
  wf_set_observer(h, NULL, NULL);
  wf_host_close(h);
  CHECK(!strcmp(breaker_state(c, "iso", ""), "isolated"));
  h = open_host("isolate", 1);
  reg(h, &s, "iso", &o);
  wf_host_drain(h);
  CHECK(!strcmp(breaker_state(h, "iso", ""), "isolated"));
  start_call(h, "i3", "iso", NULL);
  advance(h, 10000);
  CHECK(s.calls == 2);
  CHECK(hist_count(h, "i3", "rejected") >= 1);
  CHECK(wf_breaker_close(h, "iso", NULL) == WF_OK);
  advance(h, 7000);
  CHECK(s.calls == 3);
  CHECK(is_status(h, "i3", "completed"));
  wf_host_close(h);
  wf_host_close(c);
}

/* ---- 8. blocking actions ---------------------------------------------------------------- */

static void test_blocking(void) {
  now_ms = T0;
  wf_host *h = open_host("blocking", 1);
  static script s, nc;
  memset(&s, 0, sizeof s);
  memset(&nc, 0, sizeof nc);
  wf_action_opts o = opts_plain();
  o.flags = WF_ACTION_BLOCKING;
  reg(h, &s, "blk", &o);
  nc.mode = S_NOT_COMPLETED;
  reg(h, &nc, "blk_nc", &o);
  start_call(h, "w1", "blk", "{\"y\":2}");
  start_call(h, "w2", "blk_nc", NULL);
  wf_host_drain(h);
  CHECK(s.calls == 1);
  CHECK(s.calls == 1 && !pthread_equal(s.thread[0], loop_thread));
  CHECK(!strcmp(s.params[0], "{\"y\":2}"));
  CHECK(!strcmp(s.key[0], "w1:1"));
  CHECK(is_status(h, "w1", "completed"));
  CHECK(OUT_HAS(h, "w1", "\"n\":1"));
  CHECK(nc.calls == 1);
  CHECK(nc.calls == 1 && !pthread_equal(nc.thread[0], loop_thread));
  CHECK(is_status(h, "w2", "completed"));
  CHECK(OUT_HAS(h, "w2", "\"code\":\"not_completed\""));
  CHECK(OUT_HAS(h, "w2", "\"type\":\"not_completed\""));
  CHECK(hist_count(h, "w2", "retry_scheduled") == 0); /* permanent: not retried */

  /* Many at once, each on a worker. */
  char id[16];
  for (int i = 0; i < 8; i++) {
    snprintf(id, sizeof id, "wm%d", i);
    start_call(h, id, "blk", NULL);
  }
  wf_host_drain(h);
  CHECK(s.calls == 9);
  int done = 0;
  for (int i = 0; i < 8; i++) {
    snprintf(id, sizeof id, "wm%d", i);
    done += !strcmp(status_of(h, id), "completed");
  }
  CHECK(done == 8);
  for (int i = 0; i < s.calls && i < MAX_CALLS; i++) CHECK(!pthread_equal(s.thread[i], loop_thread));
  wf_action_stats st;
  wf_action_stats_get(h, &st);
  CHECK(st.in_flight == 0);
  wf_host_close(h);
}

/* ---- 9. at-most-once -------------------------------------------------------------------- */

static void test_at_most_once(void) {
  now_ms = T0;
  wf_host *h = open_host("amo", 1);
  static script amo, alo;
  memset(&amo, 0, sizeof amo);
  memset(&alo, 0, sizeof alo);
  amo.hold_next = 1;
  alo.hold_next = 1;
  wf_action_opts oa = opts_plain();
  oa.flags = WF_ACTION_AT_MOST_ONCE;
  oa.retry.attempt_timeout_ms = 3000;
  wf_action_opts ol = opts_plain();
  reg(h, &amo, "amo", &oa);
  reg(h, &alo, "alo", &ol);
  start_call(h, "m1", "amo", NULL);
  start_call(h, "n1", "alo", NULL);
  wf_host_drain(h);
  CHECK(amo.calls == 1 && alo.calls == 1);
  CHECK(amo.nheld == 1 && alo.nheld == 1);
  /* The host stops with both calls in flight; they complete later, into nothing. */
  wf_host_close(h);
  CHECK(amo.abandoned == 1 && alo.abandoned == 1);
  release_held(&amo);
  release_held(&alo);

  now_ms += 1000;
  h = open_host("amo", 1);
  reg(h, &amo, "amo", &oa);
  reg(h, &alo, "alo", &ol);
  wf_host_drain(h);
  /* At most once: not invoked again, suspended for an operator. */
  CHECK(amo.calls == 1);
  CHECK(is_status(h, "m1", "suspended"));
  CHECK(ERR_HAS(h, "m1", "outcome unknown"));
  CHECK(ERR_HAS(h, "m1", "in flight when the host stopped"));
  CHECK(hist_count(h, "m1", "action_lost") == 1);
  CHECK(hist_count(h, "m1", "outcome_unknown") == 1);
  /* At least once: invoked again with the same key, as attempt 2. */
  CHECK(alo.calls == 2);
  CHECK(alo.attempt[1] == 2);
  CHECK(!strcmp(alo.key[1], alo.key[0]) && !strcmp(alo.key[1], "n1:1"));
  CHECK(hist_count(h, "n1", "action_lost") == 1);
  char data[512];
  CHECK(hist_nth(h, "n1", "action_lost", 0, data, sizeof data, NULL));
  CHECK(jint(data, "attempt") == 1);
  CHECK(hist_count(h, "n1", "outcome_unknown") == 0);
  CHECK(is_status(h, "n1", "completed"));
  wf_action_stats st;
  wf_action_stats_get(h, &st);
  CHECK(st.attempts[WF_OUTCOME_LOST] == 2);
  CHECK(st.retries_lost == 1);
  /* The operator retries: invoked again (attempt 2), with the same key. */
  CHECK(wf_retry(h, "m1", NULL, NULL) == WF_OK);
  wf_host_drain(h);
  CHECK(amo.calls == 2);
  CHECK(amo.attempt[1] == 2);
  CHECK(!strcmp(amo.key[1], amo.key[0]));
  CHECK(is_status(h, "m1", "completed"));
  CHECK(OUT_HAS(h, "m1", "\"ok\":true"));

  /* An at-most-once attempt that times out: the same. */
  amo.hold_next = 1;
  int64_t t = now_ms;
  start_call(h, "m2", "amo", NULL);
  wf_host_drain(h);
  CHECK(amo.calls == 3);
  CHECK(amo.deadline[2] == t + 3000);
  advance(h, 3000);
  CHECK(amo.abandoned == 2);
  CHECK(is_status(h, "m2", "suspended"));
  CHECK(ERR_HAS(h, "m2", "outcome unknown"));
  CHECK(ERR_HAS(h, "m2", "timed out"));
  CHECK(hist_count(h, "m2", "outcome_unknown") == 1);
  advance(h, 60000);
  CHECK(amo.calls == 3); /* never on its own */
  CHECK(is_status(h, "m2", "suspended"));
  CHECK(wf_retry(h, "m2", NULL, NULL) == WF_OK);
  wf_host_drain(h);
  CHECK(amo.calls == 4);
  CHECK(amo.attempt[3] == 2);
  CHECK(is_status(h, "m2", "completed"));
  release_held(&amo); /* the abandoned call, late: dropped */
  wf_host_drain(h);
  CHECK(is_status(h, "m2", "completed"));
  CHECK(hist_count(h, "m2", "action_result") == 1);
  wf_host_close(h);
}

/* ---- 10. per-call options --------------------------------------------------------------- */

static void test_call_options(void) {
  now_ms = T0;
  wf_host *h = open_host("opts", 1);
  static script s;
  memset(&s, 0, sizeof s);
  s.mode = S_TRANSIENT;
  wf_action_opts o = opts_plain(); /* 3 attempts, 10 s timeout */
  reg(h, &s, "optact", &o);
  CHECK(wf_start(h, "opts", NULL, "o1", NULL, NULL, NULL) == WF_OK);
  advance(h, 60000);
  CHECK(s.calls == 2);
  for (int i = 0; i < 2 && i < s.calls; i++) {
    CHECK(!strcmp(s.key[i], "k-1"));
    CHECK(s.deadline[i] == s.at[i] + 2000);
    CHECK(s.attempt[i] == i + 1);
  }
  CHECK(is_status(h, "o1", "completed"));
  CHECK(OUT_HAS(h, "o1", "\"code\":\"retries_exhausted\""));
  CHECK(OUT_HAS(h, "o1", "\"attempts\":2"));

  /* A per-call timeout times the attempt out at its own deadline. */
  static script held;
  memset(&held, 0, sizeof held);
  held.mode = S_HOLD;
  reg(h, &held, "optheld", &o);
  int64_t t = now_ms;
  CHECK(wf_start(h, "optsheld", NULL, "o2", NULL, NULL, NULL) == WF_OK);
  wf_host_drain(h);
  CHECK(held.calls == 1 && held.deadline[0] == t + 1500);
  advance(h, 1500);
  CHECK(held.abandoned == 1);
  char data[512];
  int64_t at = 0;
  CHECK(hist_nth(h, "o2", "attempt_failed", 0, data, sizeof data, &at));
  CHECK(at == t + 1500 && jstr_is(data, "class", "timeout"));
  CHECK(is_status(h, "o2", "completed"));
  CHECK(OUT_HAS(h, "o2", "\"attempts\":1"));
  release_held(&held);

  /* Invalid options: the workflow fails, naming the field. */
  int before = s.calls;
  CHECK(wf_start(h, "badopts", NULL, "o3", NULL, NULL, NULL) == WF_OK);
  advance(h, 60000);
  CHECK(is_status(h, "o3", "failed"));
  CHECK(ERR_HAS(h, "o3", "retry.multiplier"));
  CHECK(s.calls == before); /* not invoked */
  /* Options the Lua side refuses (an unknown field) fail the same way. */
  CHECK(wf_start(h, "badopts2", NULL, "o4", NULL, NULL, NULL) == WF_OK);
  advance(h, 1000);
  CHECK(is_status(h, "o4", "failed"));
  CHECK(ERR_HAS(h, "o4", "multipler"));
  wf_host_close(h);
}

/* An abandon callback that completes its call while the host closes (allowed: wfhost.h
 * wf_call_on_abandon); the step is redone by the next host. */
static void abandon_at_close_scenario(void) {
  now_ms = T0;
  wf_host *h = open_host("abandon_close", 1);
  static script s;
  memset(&s, 0, sizeof s);
  s.hold_next = 1;
  s.complete_on_abandon = 1;
  wf_action_opts o = opts_plain();
  reg(h, &s, "held_cb", &o);
  start_call(h, "x1", "held_cb", NULL);
  wf_host_drain(h);
  CHECK(s.calls == 1 && s.nheld == 1);
  wf_host_close(h);
  CHECK(s.abandoned == 1);
  CHECK(s.nheld == 0);
  h = open_host("abandon_close", 1);
  reg(h, &s, "held_cb", &o);
  wf_host_drain(h);
  CHECK(s.calls == 2 && s.attempt[1] == 2);
  CHECK(is_status(h, "x1", "completed"));
  wf_host_close(h);
}


int main(void) {
  loop_thread = pthread_self();
  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(wfdir, sizeof wfdir, "%s/workflows", dir);
  mkdir(wfdir, 0755);
  /* Calls input.action with input.params and returns the result, or the error's fields. */
  write_file("call.lua",
             "return workflow.define { name = 'call', run = function(ctx, input)\n"
             "  local ok, r = pcall(ctx.actions[input.action], input.params)\n"
             "  if ok then return { ok = true, result = r, n = type(r) == 'table' and r.n or nil } end\n"
             "  if type(r) ~= 'table' then return { ok = false, raw = tostring(r) } end\n"
             "  return { ok = false, code = r.code, type = r.type, attempts = r.attempts, message = r.message,\n"
             "           retryable = r.retryable,\n"
             "           cause_type = r.cause and r.cause.type, cause_message = r.cause and r.cause.message }\n"
             "end }\n");
  write_file("opts.lua",
             "return workflow.define { name = 'opts', run = function(ctx)\n"
             "  local ok, r = pcall(ctx.actions.optact, { n = 1 },\n"
             "                      { timeout = '2s', retry = { max_attempts = 2 }, key = 'k-1' })\n"
             "  if ok then return { ok = true } end\n"
             "  return { ok = false, code = r.code, attempts = r.attempts }\n"
             "end }\n");
  write_file("optsheld.lua",
             "return workflow.define { name = 'optsheld', run = function(ctx)\n"
             "  local ok, r = pcall(ctx.actions.optheld, {}, { timeout = 1.5, retry = { max_attempts = 1 } })\n"
             "  if ok then return { ok = true } end\n"
             "  return { ok = false, code = r.code, attempts = r.attempts }\n"
             "end }\n");
  write_file("badopts.lua",
             "return workflow.define { name = 'badopts', run = function(ctx)\n"
             "  return ctx.actions.optact({}, { retry = { multiplier = 0 } })\n"
             "end }\n");
  write_file("badopts2.lua",
             "return workflow.define { name = 'badopts2', run = function(ctx)\n"
             "  return ctx.actions.optact({}, { retry = { multipler = 2 } })\n"
             "end }\n");
  test_retry_delays();
  test_jitter_seed();
  test_attempt_timeout();
  test_exhaustion();
  test_breaker();
  test_keyed_breaker();
  test_isolate();
  test_blocking();
  test_at_most_once();
  test_call_options();
  keyed_new_key_scenario();
  abandon_at_close_scenario();
  TEST_MAIN_END();
}
