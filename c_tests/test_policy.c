/*
 * test_policy.c — action policies as values (host/wf_policy.c), without running anything:
 *
 *   - wf_retry_delay: the exact backoff sequences (exponential with its cap, constant, linear,
 *     the default cap of 100 x the initial delay, a fractional multiplier floored once) and
 *     the jitters for given draws of u;
 *   - wf_retry_check / wf_breaker_check: each invalid field is refused with a message that
 *     names it, and the limits themselves are accepted;
 *   - wf_action_opts_init: the documented defaults;
 *   - wf_register_action: an invalid policy is refused with WF_INVALID, naming the field.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "wf_policy.h"
#include "wfhost.h"

static wf_retry_policy retry_none(wf_backoff backoff, int64_t initial, double mult, int64_t max) {
  wf_action_opts o;
  wf_action_opts_init(&o);
  o.retry.backoff = backoff;
  o.retry.initial_delay_ms = initial;
  o.retry.multiplier = mult;
  o.retry.max_delay_ms = max;
  o.retry.jitter = WF_JITTER_NONE;
  return o.retry;
}

/* Checks wf_retry_delay(r, 1..n, u) against want[0..n-1]; prints the first difference. */
static void check_seq(const char *what, const wf_retry_policy *r, double u, const int64_t *want, int n) {
  for (int i = 0; i < n; i++) {
    int64_t got = wf_retry_delay(r, i + 1, u);
    if (got != want[i])
      fprintf(stderr, "%s: after %d failed attempt(s): want %lld ms, got %lld ms\n", what, i + 1,
              (long long)want[i], (long long)got);
    CHECK(got == want[i]);
  }
}

static void test_delays(void) {
  /* Exponential, 1 s x 2, capped at 100 s, no jitter: over 10 attempts, 9 delays. */
  wf_retry_policy r = retry_none(WF_BACKOFF_EXPONENTIAL, 1000, 2.0, 100000);
  static const int64_t expo[] = {1000, 2000, 4000, 8000, 16000, 32000, 64000, 100000, 100000};
  check_seq("exponential", &r, 0.5, expo, 9);
  /* u does not matter without jitter. */
  check_seq("exponential u=0", &r, 0.0, expo, 9);
  check_seq("exponential u=0.999999", &r, 0.999999, expo, 9);
  /* Far past the cap: no overflow, still the cap. */
  CHECK(wf_retry_delay(&r, 200, 0.5) == 100000);
  CHECK(wf_retry_delay(&r, 5000, 0.5) == 100000);

  /* Constant. */
  r = retry_none(WF_BACKOFF_CONSTANT, 500, 2.0, 0);
  static const int64_t cons[] = {500, 500, 500, 500, 500, 500};
  check_seq("constant", &r, 0.5, cons, 6);

  /* Linear: initial x n. */
  r = retry_none(WF_BACKOFF_LINEAR, 300, 2.0, 100000);
  static const int64_t lin[] = {300, 600, 900, 1200, 1500, 1800, 2100};
  check_seq("linear", &r, 0.5, lin, 7);
  /* Linear with its cap. */
  r = retry_none(WF_BACKOFF_LINEAR, 300, 2.0, 1000);
  static const int64_t lincap[] = {300, 600, 900, 1000, 1000};
  check_seq("linear capped", &r, 0.5, lincap, 5);

  /* max_delay 0: the cap is 100 x initial. */
  r = retry_none(WF_BACKOFF_EXPONENTIAL, 10, 2.0, 0);
  static const int64_t defcap[] = {10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000};
  check_seq("default cap", &r, 0.5, defcap, 10);
  r = retry_none(WF_BACKOFF_LINEAR, 1000, 2.0, 0);
  CHECK(wf_retry_delay(&r, 99, 0.5) == 99000);
  CHECK(wf_retry_delay(&r, 100, 0.5) == 100000);
  CHECK(wf_retry_delay(&r, 101, 0.5) == 100000);

  /* A fractional multiplier: the raw delay is floored to whole ms once. */
  r = retry_none(WF_BACKOFF_EXPONENTIAL, 1000, 1.5, 0);
  static const int64_t frac[] = {1000, 1500, 2250, 3375, 5062, 7593};
  check_seq("multiplier 1.5", &r, 0.5, frac, 6);
  /* Multiplier 1 behaves as constant. */
  r = retry_none(WF_BACKOFF_EXPONENTIAL, 700, 1.0, 0);
  static const int64_t one[] = {700, 700, 700, 700};
  check_seq("multiplier 1", &r, 0.5, one, 4);

  /* Full jitter: floor(u * nominal). */
  r = retry_none(WF_BACKOFF_EXPONENTIAL, 1000, 2.0, 100000);
  r.jitter = WF_JITTER_FULL;
  static const int64_t full0[] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  check_seq("full jitter u=0", &r, 0.0, full0, 9);
  static const int64_t fullh[] = {500, 1000, 2000, 4000, 8000, 16000, 32000, 50000, 50000};
  check_seq("full jitter u=0.5", &r, 0.5, fullh, 9);
  static const int64_t fullmax[] = {999, 1999, 3999, 7999, 15999, 31999, 63999, 99999, 99999};
  check_seq("full jitter u=0.999999", &r, 0.999999, fullmax, 9);
  /* On a floored fractional nominal: floor(0.5 * 3375) = 1687. */
  r = retry_none(WF_BACKOFF_EXPONENTIAL, 1000, 1.5, 0);
  r.jitter = WF_JITTER_FULL;
  CHECK(wf_retry_delay(&r, 4, 0.5) == 1687);
  CHECK(wf_retry_delay(&r, 5, 0.25) == 1265); /* floor(0.25 * 5062) */

  /* Equal jitter: floor(nominal * (1 + u) / 2). */
  r = retry_none(WF_BACKOFF_EXPONENTIAL, 1000, 2.0, 100000);
  r.jitter = WF_JITTER_EQUAL;
  static const int64_t eq0[] = {500, 1000, 2000, 4000, 8000, 16000, 32000, 50000, 50000};
  check_seq("equal jitter u=0", &r, 0.0, eq0, 9);
  static const int64_t eqh[] = {750, 1500, 3000, 6000, 12000, 24000, 48000, 75000, 75000};
  check_seq("equal jitter u=0.5", &r, 0.5, eqh, 9);
  static const int64_t eqmax[] = {999, 1999, 3999, 7999, 15999, 31999, 63999, 99999, 99999};
  check_seq("equal jitter u=0.999999", &r, 0.999999, eqmax, 9);
  r = retry_none(WF_BACKOFF_EXPONENTIAL, 1000, 1.5, 0);
  r.jitter = WF_JITTER_EQUAL;
  CHECK(wf_retry_delay(&r, 4, 0.0) == 1687);  /* floor(3375 / 2) */
  CHECK(wf_retry_delay(&r, 2, 0.5) == 1125);  /* floor(1500 * 1.5 / 2) */
  /* Jitter on constant and linear too. */
  r = retry_none(WF_BACKOFF_CONSTANT, 800, 2.0, 0);
  r.jitter = WF_JITTER_FULL;
  CHECK(wf_retry_delay(&r, 7, 0.25) == 200);
  r.jitter = WF_JITTER_EQUAL;
  CHECK(wf_retry_delay(&r, 7, 0.25) == 500);
  r = retry_none(WF_BACKOFF_LINEAR, 100, 2.0, 0);
  r.jitter = WF_JITTER_FULL;
  CHECK(wf_retry_delay(&r, 3, 0.5) == 150);

  /* A zero initial delay: retries at once. */
  r = retry_none(WF_BACKOFF_EXPONENTIAL, 0, 2.0, 0);
  CHECK(wf_retry_delay(&r, 1, 0.5) == 0);
  CHECK(wf_retry_delay(&r, 10, 0.5) == 0);
}

/* ---- checks -------------------------------------------------------------------------- */

static wf_action_opts defaults(void) {
  wf_action_opts o;
  wf_action_opts_init(&o);
  return o;
}

/* The retry policy r must be refused with a message containing field. */
static void refuse_retry(const char *what, const wf_retry_policy *r, const char *field) {
  char err[400] = "";
  int rc = wf_retry_check(r, err, sizeof err);
  if (rc == 0 || !strstr(err, field))
    fprintf(stderr, "%s: want a refusal naming %s, got rc %d \"%s\"\n", what, field, rc, err);
  CHECK(rc != 0);
  CHECK(strstr(err, field) != NULL);
}

static void accept_retry(const char *what, const wf_retry_policy *r) {
  char err[400] = "";
  int rc = wf_retry_check(r, err, sizeof err);
  if (rc != 0) fprintf(stderr, "%s: want it accepted, got \"%s\"\n", what, err);
  CHECK(rc == 0);
}

static void refuse_breaker(const char *what, const wf_breaker_policy *b, int64_t timeout, const char *field) {
  char err[400] = "";
  int rc = wf_breaker_check(b, timeout, err, sizeof err);
  if (rc == 0 || !strstr(err, field))
    fprintf(stderr, "%s: want a refusal naming %s, got rc %d \"%s\"\n", what, field, rc, err);
  CHECK(rc != 0);
  CHECK(strstr(err, field) != NULL);
}

static void accept_breaker(const char *what, const wf_breaker_policy *b, int64_t timeout) {
  char err[400] = "";
  int rc = wf_breaker_check(b, timeout, err, sizeof err);
  if (rc != 0) fprintf(stderr, "%s: want it accepted, got \"%s\"\n", what, err);
  CHECK(rc == 0);
}

static void test_retry_check(void) {
  wf_action_opts o = defaults();
  accept_retry("defaults", &o.retry);

  o = defaults();
  o.retry.multiplier = 0.5;
  refuse_retry("multiplier 0.5", &o.retry, "retry.multiplier");
  o.retry.multiplier = 0;
  refuse_retry("multiplier 0", &o.retry, "retry.multiplier");
  o.retry.multiplier = -2;
  refuse_retry("multiplier -2", &o.retry, "retry.multiplier");
  o.retry.multiplier = NAN;
  refuse_retry("multiplier NaN", &o.retry, "retry.multiplier");
  o.retry.multiplier = INFINITY;
  refuse_retry("multiplier inf", &o.retry, "retry.multiplier");
  o.retry.multiplier = 1.0;
  accept_retry("multiplier 1", &o.retry);

  o = defaults();
  o.retry.initial_delay_ms = 1000;
  o.retry.max_delay_ms = 999;
  refuse_retry("max_delay < initial", &o.retry, "retry.max_delay");
  o.retry.max_delay_ms = 1000;
  accept_retry("max_delay = initial", &o.retry);
  o.retry.max_delay_ms = 0; /* the default cap */
  accept_retry("max_delay 0", &o.retry);

  o = defaults();
  o.retry.max_attempts = 0;
  refuse_retry("unlimited attempts without a total timeout", &o.retry, "retry.max_attempts");
  {
    char err[400] = "";
    wf_retry_check(&o.retry, err, sizeof err);
    CHECK(strstr(err, "total_timeout") != NULL); /* and says what would make it valid */
  }
  o.retry.total_timeout_ms = 60000;
  accept_retry("unlimited attempts with a total timeout", &o.retry);
  o = defaults();
  o.retry.max_attempts = -1;
  refuse_retry("max_attempts -1", &o.retry, "retry.max_attempts");
  o.retry.max_attempts = -1;
  o.retry.total_timeout_ms = 60000;
  refuse_retry("max_attempts -1 with a total timeout", &o.retry, "retry.max_attempts");
  o = defaults();
  o.retry.max_attempts = 1;
  accept_retry("max_attempts 1", &o.retry);

  o = defaults();
  o.retry.attempt_timeout_ms = 0;
  refuse_retry("attempt_timeout 0", &o.retry, "retry.attempt_timeout");
  o.retry.attempt_timeout_ms = -5;
  refuse_retry("attempt_timeout -5", &o.retry, "retry.attempt_timeout");
  o.retry.attempt_timeout_ms = 1;
  accept_retry("attempt_timeout 1", &o.retry);

  o = defaults();
  o.retry.total_timeout_ms = -1;
  refuse_retry("total_timeout -1", &o.retry, "retry.total_timeout");
  o = defaults();
  o.retry.initial_delay_ms = -1;
  refuse_retry("initial_delay -1", &o.retry, "retry.initial_delay");
  o = defaults();
  o.retry.backoff = (wf_backoff)7;
  refuse_retry("backoff 7", &o.retry, "retry.backoff");
  o = defaults();
  o.retry.jitter = (wf_jitter)9;
  refuse_retry("jitter 9", &o.retry, "retry.jitter");

  o = defaults();
  static const char *const good_types[] = {"declined", "http_404", NULL};
  o.retry.non_retryable = good_types;
  accept_retry("non_retryable", &o.retry);
  static const char *const bad_types[] = {"declined", "", NULL};
  o.retry.non_retryable = bad_types;
  refuse_retry("non_retryable with an empty type", &o.retry, "retry.non_retryable");
}

static void test_breaker_check(void) {
  wf_action_opts o = defaults();
  accept_breaker("defaults", &o.breaker, o.retry.attempt_timeout_ms);

  /* sampling_duration >= 2 x the attempt timeout. */
  o = defaults();
  o.breaker.sampling_duration_ms = 19999;
  refuse_breaker("sampling 19999 / timeout 10000", &o.breaker, 10000, "breaker.sampling_duration");
  o.breaker.sampling_duration_ms = 20000;
  accept_breaker("sampling 20000 / timeout 10000", &o.breaker, 10000);
  o.breaker.sampling_duration_ms = 30000;
  refuse_breaker("sampling 30000 / timeout 15001", &o.breaker, 15001, "breaker.sampling_duration");

  o = defaults();
  o.breaker.failure_ratio = 0;
  refuse_breaker("failure_ratio 0", &o.breaker, 10000, "breaker.failure_ratio");
  o.breaker.failure_ratio = 1.0001;
  refuse_breaker("failure_ratio 1.0001", &o.breaker, 10000, "breaker.failure_ratio");
  o.breaker.failure_ratio = 2;
  refuse_breaker("failure_ratio 2", &o.breaker, 10000, "breaker.failure_ratio");
  o.breaker.failure_ratio = -0.5;
  refuse_breaker("failure_ratio -0.5", &o.breaker, 10000, "breaker.failure_ratio");
  o.breaker.failure_ratio = NAN;
  refuse_breaker("failure_ratio NaN", &o.breaker, 10000, "breaker.failure_ratio");
  o.breaker.failure_ratio = 1.0;
  accept_breaker("failure_ratio 1", &o.breaker, 10000);
  o.breaker.failure_ratio = 0.01;
  accept_breaker("failure_ratio 0.01", &o.breaker, 10000);

  o = defaults();
  o.breaker.min_throughput = 1;
  refuse_breaker("min_throughput 1", &o.breaker, 10000, "breaker.min_throughput");
  o.breaker.min_throughput = 0;
  refuse_breaker("min_throughput 0", &o.breaker, 10000, "breaker.min_throughput");
  o.breaker.min_throughput = 2;
  accept_breaker("min_throughput 2", &o.breaker, 10000);

  o = defaults();
  o.breaker.half_open_max_calls = 0;
  refuse_breaker("half_open_max_calls 0", &o.breaker, 10000, "breaker.half_open_max_calls");
  o.breaker.half_open_max_calls = 1;
  accept_breaker("half_open_max_calls 1", &o.breaker, 10000);

  o = defaults();
  o.breaker.break_duration_ms = 0;
  refuse_breaker("break_duration 0", &o.breaker, 10000, "breaker.break_duration");
  o = defaults();
  o.breaker.max_keys = 0;
  refuse_breaker("max_keys 0", &o.breaker, 10000, "breaker.max_keys");
  o = defaults();
  o.breaker.key_param = "";
  refuse_breaker("key_param \"\"", &o.breaker, 10000, "breaker.key");
  o.breaker.key_param = "tenant";
  accept_breaker("key_param tenant", &o.breaker, 10000);

  /* A disabled breaker is not checked. */
  o = defaults();
  o.breaker.enabled = 0;
  o.breaker.failure_ratio = 0;
  o.breaker.min_throughput = 0;
  o.breaker.sampling_duration_ms = 1;
  accept_breaker("disabled", &o.breaker, 10000);
}

static void test_defaults(void) {
  wf_action_opts o;
  memset(&o, 0x5a, sizeof o); /* init must set every field */
  wf_action_opts_init(&o);
  CHECK(o.flags == 0);
  CHECK(o.retry.max_attempts == 3);
  CHECK(o.retry.backoff == WF_BACKOFF_EXPONENTIAL);
  CHECK(o.retry.initial_delay_ms == 1000);
  CHECK(o.retry.multiplier == 2.0);
  CHECK(o.retry.max_delay_ms == 0); /* 0: 100 x initial */
  CHECK(o.retry.jitter == WF_JITTER_FULL);
  CHECK(o.retry.non_retryable == NULL);
  CHECK(o.retry.attempt_timeout_ms == 10000);
  CHECK(o.retry.total_timeout_ms == 0);
  CHECK(o.retry.suspend_on_exhaustion == 0);
  CHECK(o.breaker.enabled == 1);
  CHECK(o.breaker.failure_ratio == 0.5);
  CHECK(o.breaker.min_throughput == 20);
  CHECK(o.breaker.sampling_duration_ms == 30000);
  CHECK(o.breaker.break_duration_ms == 5000);
  CHECK(o.breaker.half_open_max_calls == 1);
  CHECK(o.breaker.key_param == NULL);
  CHECK(o.breaker.max_keys == 1000);
  /* The defaults' delays: 1 s x 2, capped at 100 s. */
  o.retry.jitter = WF_JITTER_NONE;
  CHECK(wf_retry_delay(&o.retry, 1, 0.5) == 1000);
  CHECK(wf_retry_delay(&o.retry, 2, 0.5) == 2000);
  CHECK(wf_retry_delay(&o.retry, 20, 0.5) == 100000);
}

/* ---- registration -------------------------------------------------------------------- */

static void noop_action(wf_call *c, void *ud) {
  (void)ud;
  wf_call_ok(c, NULL);
}

static int quiet_log_calls;
static void quiet_log(void *ud, wf_log_level lvl, const char *inst, const char *msg, const char *fields) {
  (void)ud, (void)lvl, (void)inst, (void)msg, (void)fields;
  quiet_log_calls++;
}

static void refuse_register(wf_host *h, const char *what, const wf_action_opts *o, const char *field) {
  int rc = wf_register_action(h, "pay.charge", noop_action, NULL, o);
  if (rc != WF_INVALID || !strstr(wf_errmsg(h), field))
    fprintf(stderr, "register %s: want WF_INVALID naming %s, got %d \"%s\"\n", what, field, rc, wf_errmsg(h));
  CHECK(rc == WF_INVALID);
  CHECK(strstr(wf_errmsg(h), field) != NULL);
  CHECK(strstr(wf_errmsg(h), "pay.charge") != NULL); /* and the action */
}

static void test_register(const char *dir) {
  char db[256];
  snprintf(db, sizeof db, "%s/policy.db", dir);
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.log = quiet_log;
  wf_host *h = NULL;
  int rc = wf_host_open(db, &cfg, &h);
  CHECK(rc == WF_OK);
  if (rc != WF_OK) {
    fprintf(stderr, "open: %s\n", wf_errmsg(h));
    wf_host_close(h);
    return;
  }
  wf_action_opts o = defaults();
  CHECK(wf_register_action(h, "pay.charge", noop_action, NULL, NULL) == WF_OK);
  CHECK(wf_register_action(h, "pay.charge", noop_action, NULL, &o) == WF_OK);

  o.retry.multiplier = 0.5;
  refuse_register(h, "multiplier 0.5", &o, "retry.multiplier");
  o = defaults();
  o.retry.multiplier = NAN;
  refuse_register(h, "multiplier NaN", &o, "retry.multiplier");
  o = defaults();
  o.retry.max_delay_ms = 10;
  refuse_register(h, "max_delay 10", &o, "retry.max_delay");
  o = defaults();
  o.retry.max_attempts = 0;
  refuse_register(h, "max_attempts 0", &o, "retry.max_attempts");
  o.retry.total_timeout_ms = 1000;
  CHECK(wf_register_action(h, "pay.charge", noop_action, NULL, &o) == WF_OK);
  o = defaults();
  o.retry.max_attempts = -3;
  refuse_register(h, "max_attempts -3", &o, "retry.max_attempts");
  o = defaults();
  o.retry.attempt_timeout_ms = 0;
  refuse_register(h, "attempt_timeout 0", &o, "retry.attempt_timeout");
  o = defaults();
  o.retry.attempt_timeout_ms = 20000; /* the default sampling of 30 s is now too short */
  refuse_register(h, "attempt_timeout 20 s with sampling 30 s", &o, "breaker.sampling_duration");
  o.breaker.enabled = 0;
  CHECK(wf_register_action(h, "pay.charge", noop_action, NULL, &o) == WF_OK);
  o = defaults();
  o.breaker.failure_ratio = 0;
  refuse_register(h, "failure_ratio 0", &o, "breaker.failure_ratio");
  o.breaker.failure_ratio = 1.5;
  refuse_register(h, "failure_ratio 1.5", &o, "breaker.failure_ratio");
  o = defaults();
  o.breaker.min_throughput = 1;
  refuse_register(h, "min_throughput 1", &o, "breaker.min_throughput");
  o = defaults();
  o.breaker.half_open_max_calls = 0;
  refuse_register(h, "half_open_max_calls 0", &o, "breaker.half_open_max_calls");

  /* Unknown flags, bad names, no function. */
  o = defaults();
  o.flags = 0x80;
  CHECK(wf_register_action(h, "pay.charge", noop_action, NULL, &o) == WF_INVALID);
  o.flags = WF_ACTION_BLOCKING | WF_ACTION_AT_MOST_ONCE;
  CHECK(wf_register_action(h, "pay.charge", noop_action, NULL, &o) == WF_OK);
  CHECK(wf_register_action(h, "bad name", noop_action, NULL, NULL) == WF_INVALID);
  CHECK(wf_register_action(h, "pay.charge", NULL, NULL, NULL) == WF_INVALID);
  wf_host_close(h);

  /* A client handle registers nothing. */
  cfg.mode = WF_MODE_CLIENT;
  CHECK(wf_host_open(db, &cfg, &h) == WF_OK);
  CHECK(wf_register_action(h, "pay.charge", noop_action, NULL, NULL) == WF_MISUSE);
  wf_host_close(h);
}

int main(void) {
  char dir[64];
  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  test_delays();
  test_retry_check();
  test_breaker_check();
  test_defaults();
  test_register(dir);
  TEST_MAIN_END();
}
