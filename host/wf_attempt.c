/*
 * wf_attempt.c — the attempts of one action step, under its policy. The order of the layers:
 * total timeout ⊃ durable retry ⊃ circuit breaker ⊃ attempt timeout ⊃ action.
 *
 * Everything here runs inside a batch: each decision is journaled in the instance's history
 * with the step's seq, and its effect (invoking the action) is released by the engine only
 * after the batch commits. The history of a step, with n the attempt number:
 *
 *   action            the workflow's call (its params); attempt 1 starts
 *   attempt           attempt n starts (n > 1, or 1 after a rejection)
 *   attempt_failed    attempt n failed: class transient or timeout (data: the error)
 *   rejected          the circuit is open: attempt n does not start (uses no attempt)
 *   retry_scheduled   attempt n starts at `at` (a durable timer; never re-drawn)
 *   action_lost       attempt n was in flight when the previous host stopped
 *   outcome_unknown   the same for an at-most-once action: suspended for an operator
 *   exhausted         no attempt or time left
 *   action_result / action_error   the outcome the workflow receives
 *
 * A step rebuilt by replay reads these back (rearm) and carries on where it was: a backoff
 * fires once, at its persisted time; an attempt in flight at a crash counts as lost.
 */
#include <inttypes.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wf_engine.h"

static double unit(wf_host *h) { return (double)(wf_rand64(h) >> 11) * 0x1.0p-53; }

void wf_attempt_observe(wf_host *h, const char *kind, const char *instance, int64_t seq, const char *action,
                        const char *data) {
  if (!h->observer) return;
  wf_action_event ev = {.kind = kind, .instance = instance, .seq = seq, .action = action,
                        .data_json = data, .at = wf_now(h)};
  h->observer(h->observer_ud, &ev);
}

void wf_attempt_journal(wf_host *h, wf_instance *in, int64_t seq, const char *kind, const char *name,
                        const char *data) {
  wf_engine_history(h, in, seq, kind, name, data);
  wf_attempt_observe(h, kind, in->id, seq, name, data);
}

/* A delay of at most a second, longer the more retries fall due at once: overdue retries
 * after a restart are spread out instead of all fired in the same instant. */
static int64_t spread(wf_host *h, int64_t now) {
  if (now - h->spread_at > 1000) {
    h->spread_at = now;
    h->spread_n = 0;
  }
  int w = ++h->spread_n > 1000 ? 1000 : h->spread_n;
  return (int64_t)(unit(h) * w);
}

/* ---- policies ------------------------------------------------------------------------ */

int wf_attempt_opts(wf_action *a, lua_State *co, int idx, wf_call_opts *o, char *err, size_t n) {
  o->action = a;
  o->pol = a->opts.retry;
  o->nonretry = wf_strdup(a->nonretry);
  o->key = NULL;
  if (idx) {
    idx = lua_absindex(co, idx);
    if (lua_getfield(co, idx, "retry") == LUA_TTABLE) wf_retry_from_lua(co, -1, &o->pol, &o->nonretry);
    lua_pop(co, 1);
    if (lua_getfield(co, idx, "timeout_ms") == LUA_TNUMBER) o->pol.attempt_timeout_ms = lua_tointeger(co, -1);
    lua_pop(co, 1);
    if (lua_getfield(co, idx, "key") == LUA_TSTRING) o->key = wf_strdup(lua_tostring(co, -1));
    lua_pop(co, 1);
    /* Not checked against the breaker's window: a workflow need not know the action's breaker
     * to give one call a longer timeout (the registration's own timeout is checked). */
    if (wf_retry_check(&o->pol, err, n) != 0) return -1;
  }
  if (!o->pol.max_delay_ms) o->pol.max_delay_ms = 100 * o->pol.initial_delay_ms;
  return 0;
}

void wf_call_opts_free(wf_call_opts *o) {
  free(o->nonretry);
  free(o->key);
  o->nonretry = o->key = NULL;
}

static void setup(wf_host *h, wf_pend *p, const char *name, char *params, wf_call_opts *o) {
  p->kind = WF_PEND_ACTION;
  p->name = wf_strdup(name);
  p->params = params;
  p->pol = o->pol;
  p->nonretry = o->nonretry;
  p->key = o->key;
  o->nonretry = o->key = NULL;
  wf_action *a = o->action;
  p->action = a;
  p->flags = a ? a->opts.flags : 0;
  if (a && a->opts.breaker.enabled && a->breaker_key) p->brk_key = a->breaker_key(h, params);
  else if (a && a->opts.breaker.enabled && a->opts.breaker.key_param)
    p->brk_key = wf_json_get(h, params, a->opts.breaker.key_param);
}

/* ---- outcomes ------------------------------------------------------------------------ */

/* Attempts made in this round (since the step began, or since an operator's retry). */
static int made(const wf_pend *p) { return p->attempt - p->round_base; }
/* (While backing off, or after a rejection, pend.attempt is the next attempt: one fewer was made.) */

static wf_breaker *breaker_of(wf_host *h, wf_pend *p, wf_breaker_policy *bp) {
  const wf_action *a = p->action;
  if (!a || !a->opts.breaker.enabled) return NULL;
  *bp = a->opts.breaker;
  return wf_breaker_get(h, p->name, p->brk_key, bp);
}

static void count(wf_host *h, wf_pend *p, wf_outcome cls, int64_t now) {
  h->stats.attempts[cls]++;
  if (cls == WF_OUTCOME_LOST || !p->started_at) return;
  uint64_t ms = now > p->started_at ? (uint64_t)(now - p->started_at) : 0;
  h->stats.attempt_ms[cls] += ms;
  if (ms > h->stats.attempt_max_ms[cls]) h->stats.attempt_max_ms[cls] = ms;
}

/* The step ends with this outcome (takes json). It is journaled and handed to the workflow
 * when the instance takes its next outcome (wf_attempt_deliver), so that the journal keeps the
 * order in which the instance's threads received their outcomes. Returns 0. */
static int deliver_outcome(wf_pend *p, int ok, char *json) {
  free(p->final_json);
  p->final = ok ? 1 : 2;
  p->final_json = json;
  return 0;
}

/* The error a workflow receives: {code, message, type, attempts, retryable, cause}. */
static char *error_json(const char *code, const char *type, const char *message, int attempts, const char *cause) {
  char *qc = wf_json_quote(code), *qt = wf_json_quote(type), *qm = wf_json_quote(message);
  size_t n = strlen(qc) + strlen(qt) + strlen(qm) + (cause ? strlen(cause) : 0) + 128;
  char *s = wf_xmalloc(n);
  int k = snprintf(s, n, "{\"code\":%s,\"type\":%s,\"message\":%s,\"attempts\":%d,\"retryable\":false", qc, qt, qm,
                   attempts);
  snprintf(s + k, n - (size_t)k, cause ? ",\"cause\":%s}" : "}", cause);
  free(qc);
  free(qt);
  free(qm);
  return s;
}

/* {"attempt":n,"class":...,"type":...,"message":...}: an attempt_failed entry, and the cause
 * of the error when attempts run out. */
static char *failure_json(int attempt, wf_outcome cls, const char *type, const char *message) {
  char *qt = wf_json_quote(type), *qm = wf_json_quote(message);
  size_t n = strlen(qt) + strlen(qm) + 80;
  char *s = wf_xmalloc(n);
  snprintf(s, n, "{\"attempt\":%d,\"class\":\"%s\",\"type\":%s,\"message\":%s}", attempt, wf_outcome_name(cls), qt,
           qm);
  free(qt);
  free(qm);
  return s;
}

/* No attempt or no time left: the workflow gets the error, or the instance waits for an
 * operator. Returns what wf_attempt_deliver returns. */
static int exhaust(wf_host *h, wf_instance *in, wf_pend *p, const char *code, int n) {
  h->stats.exhausted++;
  const char *type = p->last_type ? p->last_type : "error";
  const char *last = p->last_msg ? p->last_msg : "";
  if (n < 0) n = 0;
  char msg[1200];
  if (!strcmp(code, "deadline_exceeded"))
    snprintf(msg, sizeof msg, "no success within the total timeout of %" PRId64 " ms (%d attempt%s); last error: %.900s",
             p->pol.total_timeout_ms, n, n == 1 ? "" : "s", last);
  else
    snprintf(msg, sizeof msg, "%d attempt%s failed; last error: %.900s", n, n == 1 ? "" : "s", last);
  char *err = error_json(code, type, msg, n, p->last_fail);
  wf_attempt_journal(h, in, p->seq, "exhausted", p->name, err);
  if (p->pol.suspend_on_exhaustion) {
    free(err);
    wf_step_suspend(h, in, "action '%s' gave up: %s. Fix the cause, then run `wfhost retry %s` to try again",
                    p->name, msg, in->id);
    return -1;
  }
  return deliver_outcome(p, 0, err);
}

/* The next attempt (number p->attempt) starts at `at`: persisted, then waited for. */
static int schedule(wf_host *h, wf_instance *in, wf_pend *p, int64_t now, int64_t at, const char *reason) {
  if (p->pol.total_timeout_ms && at >= p->first_at + p->pol.total_timeout_ms)
    return exhaust(h, in, p, "deadline_exceeded", made(p) - 1);
  if (!strcmp(reason, "circuit_open")) h->stats.retries_circuit_open++;
  else if (!strcmp(reason, "timeout")) h->stats.retries_timeout++;
  else if (!strcmp(reason, "lost")) h->stats.retries_lost++;
  else h->stats.retries_transient++;
  char data[200];
  snprintf(data, sizeof data, "{\"attempt\":%d,\"at\":%" PRId64 ",\"delay_ms\":%" PRId64 ",\"reason\":\"%s\"}",
           p->attempt, at, at - now, reason);
  wf_attempt_journal(h, in, p->seq, "retry_scheduled", p->name, data);
  wf_engine_store_rc(h, wf_store_add_timer(h->st, in->id, p->seq, at));
  p->backing_off = 1;
  p->due = at;
  wf_engine_add_timer(h, in, p->seq, at > now ? at : now + spread(h, now));
  return -1;
}

/* Starts attempt p->attempt now, unless the breaker refuses it. journal: write an
 * `attempt` entry (attempt 1 of a new call is the `action` entry itself). */
static int start(wf_host *h, wf_instance *in, wf_pend *p, int64_t now, int journal) {
  wf_breaker_policy bp;
  wf_breaker *b = breaker_of(h, p, &bp);
  p->probe = 0;
  if (b) {
    int64_t retry_at = now;
    if (!wf_breaker_allow(h, b, &bp, now, now + p->pol.attempt_timeout_ms, &p->probe, &retry_at, in,
                          p->seq)) {
      h->stats.rejections++;
      char data[200];
      snprintf(data, sizeof data, "{\"attempt\":%d,\"state\":\"%s\",\"open_until\":%" PRId64 "}", p->attempt,
               wf_breaker_state_name(b->state), b->open_until);
      wf_attempt_journal(h, in, p->seq, "rejected", p->name, data);
      if (!p->last_type) {
        static const char why[] = "the circuit breaker is open: the action was not invoked";
        p->last_type = wf_strdup("circuit_open");
        p->last_msg = wf_strdup(why);
        free(p->last_fail);
        p->last_fail = wf_strdup("{\"type\":\"circuit_open\",\"message\":\"" "the circuit breaker is open: "
                                       "the action was not invoked\"}");
      }
      int64_t window = bp.break_duration_ms < 1000 ? bp.break_duration_ms : 1000;
      int64_t at = (retry_at > now ? retry_at : now) + (int64_t)(unit(h) * (double)window);
      return schedule(h, in, p, now, at, "circuit_open");
    }
  }
  char data[96];
  snprintf(data, sizeof data, "{\"attempt\":%d}", p->attempt);
  if (journal) wf_attempt_journal(h, in, p->seq, "attempt", p->name, data);
  else wf_attempt_observe(h, "attempt", in->id, p->seq, p->name, data);
  p->backing_off = 0;
  p->due = 0;
  p->dispatch = 1;
  return -1;
}

/* An attempt failed with cls (transient, permanent, timeout or lost). */
static int failed(wf_host *h, wf_instance *in, wf_pend *p, int64_t now, wf_outcome cls, const char *type, const char *message,
                  int64_t retry_after) {
  if (cls == WF_OUTCOME_PERMANENT || wf_types_has(p->nonretry, type))
    return deliver_outcome(p, 0, error_json(type, type, message, made(p), NULL));
  free(p->last_type);
  free(p->last_msg);
  free(p->last_fail);
  p->last_type = wf_strdup(type);
  p->last_msg = wf_strdup(message);
  p->last_fail = failure_json(p->attempt, cls, type, message);
  wf_attempt_journal(h, in, p->seq, "attempt_failed", p->name, p->last_fail);
  if ((p->flags & WF_ACTION_AT_MOST_ONCE) && (cls == WF_OUTCOME_TIMEOUT || cls == WF_OUTCOME_LOST)) {
    char key[WF_ID_MAX + 600];
    if (p->key) snprintf(key, sizeof key, "%.580s", p->key);
    else wf_default_key(in, p->seq, key, sizeof key);
    char d[64];
    snprintf(d, sizeof d, "{\"attempt\":%d}", p->attempt);
    wf_attempt_journal(h, in, p->seq, "outcome_unknown", p->name, d);
    wf_step_suspend(h, in,
                    "outcome unknown: attempt %d of at-most-once action '%s' (key %s) %s, so it may or may not have "
                    "taken effect, and it is not invoked again on its own. Check with the service, then run "
                    "`wfhost retry %s` to invoke it again, or `wfhost cancel %s`",
                    p->attempt, p->name, key,
                    cls == WF_OUTCOME_LOST ? "was in flight when the host stopped" : "timed out", in->id, in->id);
    return -1;
  }
  if (p->pol.max_attempts && made(p) >= p->pol.max_attempts)
    return exhaust(h, in, p, "retries_exhausted", made(p));
  int64_t delay = cls == WF_OUTCOME_LOST ? 0
                  : retry_after >= 0     ? retry_after
                                         : wf_retry_delay(&p->pol, made(p), unit(h));
  p->attempt++;
  return schedule(h, in, p, now, now + delay, wf_outcome_name(cls));
}

/* ---- the step ------------------------------------------------------------------------ */

int wf_attempt_call(wf_host *h, wf_instance *in, wf_pend *p, const char *name, char *params, wf_call_opts *o) {
  wf_engine_history(h, in, p->seq, "action", name, params);
  setup(h, p, name, params, o);
  p->attempt = 1;
  p->first_at = wf_now(h);
  return start(h, in, p, p->first_at, 0);
}

/* Reads "key":<integer> from an entry's data (written by this file). */
static int64_t data_int(const char *data, const char *key) {
  char pat[32];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = data ? strstr(data, pat) : NULL;
  return p ? strtoll(p + strlen(pat), NULL, 10) : 0;
}

int wf_attempt_rearm(wf_host *h, wf_instance *in, wf_pend *p, const wf_history_entry *cmd, wf_call_opts *o) {
  int64_t now = wf_now(h);
  int64_t seq = p->seq;
  setup(h, p, cmd->name, wf_strdup(cmd->data_json), o);
  /* ended: the last round ran out of attempts (exhausted) or stopped at an unknown outcome;
   * the entry that follows it (attempt, or rejected) is the operator's new round. */
  int started = 0, inflight = 0, waiting = 0, ended = 0;
  int64_t next_at = 0;
  const char *last_fail = NULL;
  p->first_at = cmd->at;
  for (size_t i = (size_t)(cmd - in->hist); i < in->nhist; i++) {
    const wf_history_entry *e = &in->hist[i];
    if (e->seq != seq) continue;
    const char *k = e->kind;
    int n = (int)data_int(e->data_json, "attempt");
    if (ended && (!strcmp(k, "attempt") || !strcmp(k, "rejected"))) {
      ended = 0;
      p->round_base = started;
      p->first_at = e->at;
    }
    if (!strcmp(k, "action")) started = 1, inflight = 1;
    else if (!strcmp(k, "attempt")) started = n, inflight = 1, waiting = 0;
    else if (!strcmp(k, "attempt_failed")) inflight = 0, last_fail = e->data_json;
    else if (!strcmp(k, "rejected")) started = n - 1, inflight = 0;
    else if (!strcmp(k, "action_lost")) inflight = 0;
    else if (!strcmp(k, "retry_scheduled")) waiting = 1, p->attempt = n, next_at = data_int(e->data_json, "at");
    else if (!strcmp(k, "outcome_unknown") || !strcmp(k, "exhausted")) ended = 1, inflight = waiting = 0;
  }
  if (last_fail) {
    p->last_type = wf_json_get(h, last_fail, "type");
    p->last_msg = wf_json_get(h, last_fail, "message");
    p->last_fail = wf_strdup(last_fail);
  }
  if (ended) { /* the operator asked for another try: a new round starts now */
    p->round_base = started;
    p->first_at = now;
    p->attempt = started + 1;
    return start(h, in, p, now, 1);
  }
  if (inflight) {
    p->attempt = started;
    char data[64];
    snprintf(data, sizeof data, "{\"attempt\":%d}", started);
    wf_attempt_journal(h, in, seq, "action_lost", cmd->name, data);
    count(h, p, WF_OUTCOME_LOST, now);
    return failed(h, in, p, now, WF_OUTCOME_LOST, "lost", "the attempt was in flight when the host stopped", -1);
  }
  if (waiting) {
    p->backing_off = 1;
    p->due = next_at;
    wf_engine_add_timer(h, in, seq, next_at > now ? next_at : now + spread(h, now));
    return -1;
  }
  p->attempt = started + 1;
  return start(h, in, p, now, 1);
}

/* A parked step's news: an attempt's outcome, a timeout, the time of a retry. */
static int progress(wf_host *h, wf_instance *in, wf_pend *p) {
  int64_t now = wf_now(h);
  if (p->has_result) {
    wf_outcome_rec o = p->out;
    memset(&p->out, 0, sizeof p->out);
    p->has_result = 0;
    wf_outcome cls = o.ok ? WF_OUTCOME_OK : o.cls;
    count(h, p, cls, now);
    wf_breaker_policy bp;
    wf_breaker *b = breaker_of(h, p, &bp);
    if (b) wf_breaker_record(h, b, &bp, now, cls, p->probe, in, p->seq);
    int r;
    if (o.ok) {
      r = deliver_outcome(p, 1, o.result);
      o.result = NULL;
    } else {
      r = failed(h, in, p, now, cls, o.type, o.message, o.retry_after);
    }
    wf_outcome_free(&o);
    return r;
  }
  if (p->timed_out) {
    p->timed_out = 0;
    count(h, p, WF_OUTCOME_TIMEOUT, now);
    wf_breaker_policy bp;
    wf_breaker *b = breaker_of(h, p, &bp);
    if (b) wf_breaker_record(h, b, &bp, now, WF_OUTCOME_TIMEOUT, p->probe, in, p->seq);
    char msg[200];
    snprintf(msg, sizeof msg, "no outcome within %" PRId64 " ms (the %s timeout)", now - p->started_at,
             p->pol.total_timeout_ms && now >= p->first_at + p->pol.total_timeout_ms ? "total"
                                                                                                        : "attempt");
    return failed(h, in, p, now, WF_OUTCOME_TIMEOUT, "timeout", msg, -1);
  }
  if (p->backing_off && now >= p->due) {
    wf_engine_store_rc(h, wf_store_delete_timer(h->st, in->id, p->seq));
    p->backing_off = 0;
    if (p->pol.total_timeout_ms && now >= p->first_at + p->pol.total_timeout_ms)
      return exhaust(h, in, p, "deadline_exceeded", made(p) - 1);
    return start(h, in, p, now, 1);
  }
  return 0;
}

int wf_attempt_deliver(wf_host *h, wf_instance *in, wf_pend *p) {
  if (!p->final) progress(h, in, p);
  if (!in->co) return -1; /* suspended */
  if (!p->final) return 0;
  int ok = p->final == 1;
  wf_attempt_journal(h, in, p->seq, ok ? "action_result" : "action_error", p->name, p->final_json);
  lua_pushstring(in->co, ok ? "json" : "error");
  lua_pushstring(in->co, p->final_json);
  return 2;
}

void wf_attempt_cancel(wf_host *h, wf_instance *in, wf_pend *p) {
  if (!p->call) return;
  wf_call *c = p->call;
  p->call = NULL;
  int64_t now = wf_now(h);
  count(h, p, WF_OUTCOME_CANCELLED, now);
  wf_breaker_policy bp;
  wf_breaker *b = breaker_of(h, p, &bp);
  if (b) wf_breaker_record(h, b, &bp, now, WF_OUTCOME_CANCELLED, p->probe, in, p->seq);
  wf_action_abandon(h, c);
}

void wf_attempt_describe(const wf_pend *p, char *buf, size_t n) {
  if (p->backing_off) {
    char t[32];
    wf_format_time(p->due, t);
    snprintf(buf, n, "retry of action %s (attempt %d) at %s", p->name, p->attempt, t);
  } else if (p->attempt > 1) {
    snprintf(buf, n, "action %s (attempt %d)", p->name, p->attempt);
  } else {
    snprintf(buf, n, "action %s", p->name);
  }
}

const char *wf_outcome_name(wf_outcome o) {
  static const char *const names[] = {"ok", "transient", "timeout", "permanent", "cancelled", "lost"};
  return (unsigned)o < WF_OUTCOME_COUNT ? names[o] : "?";
}

void wf_action_stats_get(wf_host *h, wf_action_stats *out) {
  *out = h->stats;
  out->breakers_open = 0;
  for (wf_breaker *b = h->brk_lru_head; b; b = b->lru_next) out->breakers_open += b->state != WF_BRK_CLOSED;
}

void wf_set_observer(wf_host *h, wf_observer_fn fn, void *ud) {
  h->observer = fn;
  h->observer_ud = ud;
}
