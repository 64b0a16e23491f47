/*
 * wf_policy.c — action policies as values: their defaults, the checks that refuse an invalid
 * one, the backoff arithmetic, and reading one from a Lua table (a workflow's per-call
 * override, or a policy given to the test kit). No state and no I/O: wf_attempt.c applies
 * them to steps, wf_breaker.c runs the breakers.
 */
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wf_engine.h"

void wf_action_opts_init(wf_action_opts *o) {
  memset(o, 0, sizeof *o);
  o->retry.max_attempts = 3;
  o->retry.backoff = WF_BACKOFF_EXPONENTIAL;
  o->retry.initial_delay_ms = 1000;
  o->retry.multiplier = 2.0;
  o->retry.jitter = WF_JITTER_FULL;
  o->retry.attempt_timeout_ms = 10000;
  o->breaker.enabled = 1;
  o->breaker.failure_ratio = 0.5;
  o->breaker.min_throughput = 20;
  o->breaker.sampling_duration_ms = 30000;
  o->breaker.break_duration_ms = 5000;
  o->breaker.half_open_max_calls = 1;
  o->breaker.max_keys = 1000;
}

/* An error type: what wf_call_fail() and non_retryable name. */
int wf_valid_error_type(const char *t) {
  size_t n = t ? strlen(t) : 0;
  if (n == 0 || n > 128) return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)t[i] < 0x20 || t[i] == 0x1f || t[i] == 0x7f) return 0;
  return 1;
}

int wf_retry_check(const wf_retry_policy *r, char *err, size_t n) {
#define BAD(...) return snprintf(err, n, __VA_ARGS__), -1
  if (r->max_attempts < 0) BAD("retry.max_attempts must be 0 (unlimited) or more, got %d", r->max_attempts);
  if (r->max_attempts == 0 && r->total_timeout_ms <= 0)
    BAD("retry.max_attempts = 0 (unlimited) needs a retry.total_timeout, or the step could retry forever");
  if ((unsigned)r->backoff > WF_BACKOFF_LINEAR) BAD("retry.backoff must be exponential, constant or linear");
  if ((unsigned)r->jitter > WF_JITTER_NONE) BAD("retry.jitter must be full, equal or none");
  if (r->initial_delay_ms < 0) BAD("retry.initial_delay must not be negative");
  if (!(r->multiplier >= 1.0) || isinf(r->multiplier))
    BAD("retry.multiplier must be a number >= 1, got %g", r->multiplier);
  if (r->max_delay_ms && r->max_delay_ms < r->initial_delay_ms)
    BAD("retry.max_delay (%lld ms) must not be less than retry.initial_delay (%lld ms)",
        (long long)r->max_delay_ms, (long long)r->initial_delay_ms);
  if (r->attempt_timeout_ms <= 0) BAD("retry.attempt_timeout must be positive");
  if (r->total_timeout_ms < 0) BAD("retry.total_timeout must not be negative (0: none)");
  if (r->non_retryable)
    for (const char *const *t = r->non_retryable; *t; t++)
      if (!wf_valid_error_type(*t)) BAD("retry.non_retryable: bad error type \"%.60s\"", *t);
  return 0;
#undef BAD
}

int wf_breaker_check(const wf_breaker_policy *b, int64_t attempt_timeout_ms, char *err, size_t n) {
#define BAD(...) return snprintf(err, n, __VA_ARGS__), -1
  if (!b->enabled) return 0;
  if (!(b->failure_ratio > 0 && b->failure_ratio <= 1))
    BAD("breaker.failure_ratio must be in (0, 1], got %g", b->failure_ratio);
  if (b->min_throughput < 2) BAD("breaker.min_throughput must be at least 2, got %d", b->min_throughput);
  if (b->sampling_duration_ms < 2 * attempt_timeout_ms)
    BAD("breaker.sampling_duration (%lld ms) must be at least twice the attempt timeout (%lld ms), "
        "so that a window sees the outcome of the calls it counts",
        (long long)b->sampling_duration_ms, (long long)attempt_timeout_ms);
  if (b->break_duration_ms <= 0) BAD("breaker.break_duration must be positive");
  if (b->half_open_max_calls < 1) BAD("breaker.half_open_max_calls must be at least 1");
  if (b->max_keys < 1) BAD("breaker.max_keys must be at least 1");
  if (b->key_param && (!*b->key_param || strlen(b->key_param) > 128))
    BAD("breaker.key must name a params field");
  return 0;
#undef BAD
}

int64_t wf_retry_delay(const wf_retry_policy *r, int failed, double u) {
  int64_t initial = r->initial_delay_ms;
  int64_t max = r->max_delay_ms ? r->max_delay_ms : 100 * initial;
  double raw;
  switch (r->backoff) {
  case WF_BACKOFF_CONSTANT: raw = (double)initial; break;
  case WF_BACKOFF_LINEAR: raw = (double)initial * failed; break;
  default: raw = floor((double)initial * pow(r->multiplier, failed - 1)); break;
  }
  double nominal = raw < (double)max ? raw : (double)max;
  switch (r->jitter) {
  case WF_JITTER_NONE: return (int64_t)nominal;
  case WF_JITTER_EQUAL: return (int64_t)floor(nominal * (1 + u) / 2);
  default: return (int64_t)floor(u * nominal);
  }
}

/* "\x1f" + each type + "\x1f", or NULL for none: one string to copy and to search. */
char *wf_join_types(const char *const *types) {
  if (!types || !*types) return NULL;
  size_t n = 2;
  for (const char *const *t = types; *t; t++) n += strlen(*t) + 1;
  char *s = wf_xmalloc(n), *p = s;
  *p++ = 0x1f;
  for (const char *const *t = types; *t; t++) {
    size_t k = strlen(*t);
    memcpy(p, *t, k);
    p += k;
    *p++ = 0x1f;
  }
  *p = 0;
  return s;
}

int wf_types_has(const char *joined, const char *type) {
  if (!joined || !type) return 0;
  size_t k = strlen(type);
  for (const char *p = joined; (p = strstr(p, type)); p++)
    if (p > joined && p[-1] == 0x1f && p[k] == 0x1f) return 1;
  return 0;
}

/* ---- from Lua ------------------------------------------------------------------------ */

/* The table at idx is what wf_ctx.normalize_policy made of a workflow's or a spec's policy:
 * known keys only, durations in ms. Fields that are absent keep their value in o. */
static int opt_int(lua_State *L, int t, const char *k, int64_t *v) {
  lua_getfield(L, t, k);
  int present = lua_isinteger(L, -1);
  if (present) *v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return present;
}

static void opt_num(lua_State *L, int t, const char *k, double *v) {
  lua_getfield(L, t, k);
  if (lua_type(L, -1) == LUA_TNUMBER) *v = lua_tonumber(L, -1);
  lua_pop(L, 1);
}

static const char *opt_str(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  lua_pop(L, 1); /* the table still holds the string */
  return s;
}

static int pick(const char *s, const char *const *names) {
  for (int i = 0; names[i]; i++)
    if (!strcmp(s, names[i])) return i;
  return -1;
}

void wf_retry_from_lua(lua_State *L, int idx, wf_retry_policy *r, char **nonretry) {
  static const char *const backoffs[] = {"exponential", "constant", "linear", NULL};
  static const char *const jitters[] = {"full", "equal", "none", NULL};
  int t = lua_absindex(L, idx);
  int64_t v;
  if (opt_int(L, t, "max_attempts", &v)) r->max_attempts = v < 0 ? -1 : v > 1000000000 ? 1000000000 : (int)v;
  const char *s = opt_str(L, t, "backoff");
  if (s) r->backoff = (wf_backoff)pick(s, backoffs);
  s = opt_str(L, t, "jitter");
  if (s) r->jitter = (wf_jitter)pick(s, jitters);
  /* A new initial delay without a max_delay gets the default cap, 100 x initial. */
  if (opt_int(L, t, "initial_delay_ms", &r->initial_delay_ms)) r->max_delay_ms = 0;
  opt_num(L, t, "multiplier", &r->multiplier);
  opt_int(L, t, "max_delay_ms", &r->max_delay_ms);
  opt_int(L, t, "attempt_timeout_ms", &r->attempt_timeout_ms);
  opt_int(L, t, "total_timeout_ms", &r->total_timeout_ms);
  s = opt_str(L, t, "on_exhausted");
  if (s) r->suspend_on_exhaustion = !strcmp(s, "suspend");
  if (lua_getfield(L, t, "non_retryable") == LUA_TTABLE) {
    size_t n = lua_rawlen(L, -1);
    const char **types = wf_xmalloc((n + 1) * sizeof *types);
    for (size_t i = 0; i < n; i++) {
      lua_rawgeti(L, -1, (lua_Integer)i + 1);
      types[i] = lua_tostring(L, -1) ? lua_tostring(L, -1) : "";
      lua_pop(L, 1); /* the array holds the strings */
    }
    types[n] = NULL;
    free(*nonretry);
    *nonretry = wf_join_types(types);
    free(types);
  }
  lua_pop(L, 1);
}

void wf_breaker_from_lua(lua_State *L, int idx, wf_breaker_policy *b) {
  int t = lua_absindex(L, idx);
  int64_t v;
  if (lua_getfield(L, t, "enabled") == LUA_TBOOLEAN) b->enabled = lua_toboolean(L, -1);
  lua_pop(L, 1);
  opt_num(L, t, "failure_ratio", &b->failure_ratio);
  if (opt_int(L, t, "min_throughput", &v)) b->min_throughput = v > 1000000000 ? 1000000000 : v < 0 ? 0 : (int)v;
  opt_int(L, t, "sampling_duration_ms", &b->sampling_duration_ms);
  opt_int(L, t, "break_duration_ms", &b->break_duration_ms);
  if (opt_int(L, t, "half_open_max_calls", &v)) b->half_open_max_calls = v > 1000000 ? 1000000 : v < 0 ? 0 : (int)v;
  if (opt_int(L, t, "max_keys", &v)) b->max_keys = v > 100000000 ? 100000000 : v < 0 ? 0 : (int)v;
  const char *s = opt_str(L, t, "key");
  if (s) b->key_param = s; /* borrowed: the caller copies it */
}
