/*
 * wf_action.c — the action registry and action calls. The engine asks for an action to be
 * invoked only after its intent is committed (wf_engine.c); the action completes its call
 * with wf_call_ok() or wf_call_fail(), now or later from the loop thread (or, for a blocking
 * action, on its worker thread), and the outcome goes back to the engine, which decides with
 * the step's policy what follows (wf_attempt.c). Actions never write to the store.
 *
 * Built-in actions: `echo` (returns its params), `log` (writes params.message to the host's
 * log) and `http.request` (wf_http.c).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wf_engine.h"

static wf_action *find_exact(wf_host *h, const char *name) {
  for (wf_action *a = h->actions; a; a = a->next)
    if (!strcmp(a->name, name)) return a;
  return NULL;
}

/* The action registered under name, else the fallback "*", else NULL. */
wf_action *wf_action_find(wf_host *h, const char *name) {
  wf_action *a = find_exact(h, name);
  return a ? a : find_exact(h, "*");
}

static int valid_action_name(const char *name) {
  size_t n = strlen(name);
  return n > 0 && n <= 128 &&
         strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.") == n;
}

void wf_action_policy_of(wf_host *h, const char *name, wf_retry_policy *r, wf_breaker_policy *b) {
  wf_action *a = wf_action_find(h, name);
  wf_action_opts d;
  if (!a) wf_action_opts_init(&d);
  const wf_action_opts *o = a ? &a->opts : &d;
  if (r) *r = o->retry;
  if (b) *b = o->breaker;
}

int wf_register_action(wf_host *h, const char *name, wf_action_fn fn, void *ud, const wf_action_opts *opts) {
  if (!h) return WF_MISUSE;
  if (h->cfg.mode != WF_MODE_HOST) return wf_fail(h, WF_MISUSE, "actions are registered on a host, not a client handle");
  if (!name || (!valid_action_name(name) && strcmp(name, "*") != 0))
    return wf_fail(h, WF_INVALID, "bad action name '%s': use letters, digits, '_' and '.'", name ? name : "(null)");
  if (!fn) return wf_fail(h, WF_INVALID, "action '%s': the function is NULL", name);
  wf_action_opts o;
  if (opts) o = *opts;
  else wf_action_opts_init(&o);
  char err[400];
  if (wf_retry_check(&o.retry, err, sizeof err) != 0 ||
      wf_breaker_check(&o.breaker, o.retry.attempt_timeout_ms, err, sizeof err) != 0)
    return wf_fail(h, WF_INVALID, "action '%s': invalid policy: %s", name, err);
  if (o.flags & ~(unsigned)(WF_ACTION_BLOCKING | WF_ACTION_AT_MOST_ONCE))
    return wf_fail(h, WF_INVALID, "action '%s': unknown flags 0x%x", name, o.flags);
  wf_action *a = find_exact(h, name);
  if (!a) {
    a = calloc(1, sizeof *a);
    if (!a) abort();
    a->name = wf_strdup(name);
    a->next = h->actions;
    h->actions = a;
  }
  free(a->nonretry);
  free(a->key_param);
  a->fn = fn;
  a->ud = ud;
  a->opts = o;
  a->nonretry = wf_join_types(o.retry.non_retryable);
  a->key_param = wf_strdup(o.breaker.key_param);
  a->opts.retry.non_retryable = NULL; /* the caller's array: use a->nonretry */
  a->opts.breaker.key_param = a->key_param;
  if (!a->opts.retry.max_delay_ms) a->opts.retry.max_delay_ms = 100 * a->opts.retry.initial_delay_ms;
  return WF_OK;
}

/* ---- deadlines ----------------------------------------------------------------------- */

/* The calls in flight in a min-heap by deadline, each knowing its place, so that a call that
 * completes leaves the heap at once (most do, long before their deadline). */
static void dl_set(wf_host *h, size_t i, wf_call *c) {
  h->dl[i] = c;
  c->dl_idx = i;
}

static void dl_up(wf_host *h, size_t i) {
  wf_call *c = h->dl[i];
  while (i && h->dl[(i - 1) / 2]->deadline > c->deadline) {
    dl_set(h, i, h->dl[(i - 1) / 2]);
    i = (i - 1) / 2;
  }
  dl_set(h, i, c);
}

static void dl_down(wf_host *h, size_t i) {
  wf_call *c = h->dl[i];
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = l;
    if (l >= h->ndl) break;
    if (r < h->ndl && h->dl[r]->deadline < h->dl[l]->deadline) m = r;
    if (h->dl[m]->deadline >= c->deadline) break;
    dl_set(h, i, h->dl[m]);
    i = m;
  }
  dl_set(h, i, c);
}

static void on_deadline(uv_timer_t *t);

static void dl_arm(wf_host *h) {
  if (!h->started || h->closing) return;
  if (!h->ndl) {
    uv_timer_stop(&h->dl_timer);
    return;
  }
  int64_t delay = h->dl[0]->deadline - wf_now(h);
  uv_timer_start(&h->dl_timer, on_deadline, delay > 0 ? (uint64_t)delay : 0, 0);
}

static void dl_push(wf_host *h, wf_call *c) {
  if (h->ndl == h->capdl) {
    h->capdl = h->capdl ? h->capdl * 2 : 256;
    h->dl = wf_xrealloc(h->dl, h->capdl * sizeof *h->dl);
  }
  dl_set(h, h->ndl++, c);
  dl_up(h, c->dl_idx);
  if (c->dl_idx == 0) dl_arm(h);
}

static void dl_remove(wf_host *h, wf_call *c) {
  size_t i = c->dl_idx;
  if (i == (size_t)-1) return;
  c->dl_idx = (size_t)-1;
  wf_call *last = h->dl[--h->ndl];
  if (last == c) return;
  dl_set(h, i, last);
  dl_up(h, i);
  dl_down(h, last->dl_idx);
}

void wf_action_expire(wf_host *h, int64_t *next) {
  int64_t now = wf_now(h);
  while (h->ndl && h->dl[0]->deadline <= now) {
    wf_call *c = h->dl[0];
    dl_remove(h, c);
    wf_engine_call_timeout(h, c);
  }
  if (next) *next = h->ndl ? h->dl[0]->deadline : 0;
  dl_arm(h);
}

static void on_deadline(uv_timer_t *t) { wf_action_expire(t->data, NULL); }

/* ---- calls --------------------------------------------------------------------------- */

static void call_free(wf_call *c) {
  free(c->instance_id);
  free(c->name);
  free(c->params);
  free(c->key);
  free(c->out);
  free(c->err_type);
  free(c);
}

/* Unlinks a completed call; returns its host, or NULL if the host has closed. */
static wf_host *call_unlink(wf_call *c) {
  wf_host *h = c->host;
  if (!h) return NULL;
  if (c->prev) c->prev->next = c->next;
  else h->calls = c->next;
  if (c->next) c->next->prev = c->prev;
  if (!c->held) h->calls_waited--;
  h->stats.in_flight--;
  dl_remove(h, c);
  return h;
}

/* The engine hears of every completion while the host is open, also of an abandoned call
 * (it drops the outcome then, and forgets the call). */
static void call_finish(wf_call *c, wf_outcome_rec *o) {
  wf_host *h = call_unlink(c);
  if (h) wf_engine_call_done(h, c, o);
  else wf_outcome_free(o);
  call_free(c);
}

void wf_outcome_free(wf_outcome_rec *o) {
  free(o->result);
  free(o->type);
  free(o->message);
  memset(o, 0, sizeof *o);
}

static void complete_ok(wf_call *c, const char *json) {
  wf_outcome_rec o = {.ok = 1, .retry_after = -1};
  wf_host *h = c->host;
  size_t len = strlen(json);
  if (h && len > h->cfg.max_payload) {
    char err[300];
    snprintf(err, sizeof err, "the action's result is %zu bytes; the limit is %zu (config max_payload)", len,
             h->cfg.max_payload);
    o = (wf_outcome_rec){.type = wf_strdup("result_too_large"), .message = wf_strdup(err),
                         .cls = WF_OUTCOME_PERMANENT, .retry_after = -1};
  } else {
    /* Not decoded here: the workflow decodes it once, and a malformed result becomes a
     * bad_result error there, the same way on every replay. */
    o.result = wf_strdup(json);
  }
  call_finish(c, &o);
}

static void complete_fail(wf_call *c, const char *type, const char *message, wf_error_class cls,
                          int64_t retry_after) {
  wf_outcome_rec o = {.type = wf_strdup(wf_valid_error_type(type) ? type : "error"),
                      .message = wf_strdup(message ? message : ""),
                      .cls = cls == WF_TRANSIENT ? WF_OUTCOME_TRANSIENT : WF_OUTCOME_PERMANENT,
                      .retry_after = cls == WF_TRANSIENT ? retry_after : -1};
  call_finish(c, &o);
}

void wf_call_ok(wf_call *c, const char *result_json) {
  if (c->on_worker) { /* the loop thread completes it (after_work) */
    c->done = 1;
    c->out = wf_strdup(result_json ? result_json : "null");
    return;
  }
  complete_ok(c, result_json ? result_json : "null");
}

static void fail_any(wf_call *c, const char *type, const char *message, wf_error_class cls, int64_t retry_after) {
  if (c->on_worker) {
    c->done = 2;
    c->err_type = wf_strdup(type ? type : "error");
    c->out = wf_strdup(message ? message : "");
    c->err_class = cls;
    c->retry_after = retry_after;
    return;
  }
  complete_fail(c, type, message, cls, retry_after);
}

void wf_call_fail(wf_call *c, const char *type, const char *message, wf_error_class cls) {
  fail_any(c, type, message, cls, -1);
}

void wf_call_fail_after(wf_call *c, const char *type, const char *message, int64_t retry_after_ms) {
  fail_any(c, type, message, WF_TRANSIENT, retry_after_ms < 0 ? 0 : retry_after_ms);
}

/* ---- the thread pool ----------------------------------------------------------------- */

static void work_run(uv_work_t *w) {
  wf_call *c = w->data;
  c->action->fn(c, c->action->ud);
}

static void work_done(uv_work_t *w, int status) {
  wf_call *c = w->data;
  if (c->host) c->host->workers--;
  c->on_worker = 0;
  if (status == UV_ECANCELED || !c->done)
    complete_fail(c, "not_completed", status == UV_ECANCELED ? "the call was cancelled before it ran"
                  : "the blocking action returned without completing its call", WF_PERMANENT, -1);
  else if (c->done == 1)
    complete_ok(c, c->out);
  else
    complete_fail(c, c->err_type, c->out, c->err_class, c->retry_after);
}

/* ---- dispatch ------------------------------------------------------------------------ */

void wf_action_dispatch(wf_host *h, wf_instance *in, wf_pend *p) {
  p->dispatch = 0;
  wf_action *a = p->action;
  wf_call *c = calloc(1, sizeof *c);
  if (!c) abort();
  int64_t now = wf_now(h);
  c->host = h;
  c->instance_id = wf_strdup(in->id);
  c->seq = p->seq;
  c->attempt = p->attempt;
  c->name = wf_strdup(p->name);
  c->params = wf_strdup(p->params ? p->params : "null");
  if (p->key) {
    c->key = wf_strdup(p->key);
  } else {
    char key[WF_ID_MAX + 48];
    c->key = wf_strdup(wf_default_key(in, p->seq, key, sizeof key));
  }
  c->deadline = now + p->pol.attempt_timeout_ms;
  if (p->pol.total_timeout_ms && p->first_at + p->pol.total_timeout_ms < c->deadline)
    c->deadline = p->first_at + p->pol.total_timeout_ms;
  c->retry_after = -1;
  c->next = h->calls;
  if (h->calls) h->calls->prev = c;
  h->calls = c;
  h->calls_waited++;
  h->stats.in_flight++;
  p->call = c;
  p->started_at = now;
  dl_push(h, c);
  if (!a) { /* unregistered since the intent was written */
    wf_call_fail(c, "not_registered", "the action is not registered on this host", WF_PERMANENT);
    return;
  }
  if (a->opts.flags & WF_ACTION_BLOCKING) {
    c->action = a;
    c->on_worker = 1;
    c->work.data = c;
    h->workers++;
    if (uv_queue_work(h->loop, &c->work, work_run, work_done) != 0) {
      h->workers--;
      c->on_worker = 0;
      wf_call_fail(c, "not_started", "the thread pool refused the call", WF_TRANSIENT);
    }
    return;
  }
  a->fn(c, a->ud);
}

/* The host stops waiting for the call. The action may complete it from the callback (which
 * frees it): nothing here touches c after the callback. */
void wf_action_abandon(wf_host *h, wf_call *c) {
  c->abandoned = 1; /* its outcome will be journaled as ignored, never delivered */
  if (c->host) {
    dl_remove(h, c);
    if (!c->held) { /* a drain no longer waits for it */
      c->held = 1;
      h->calls_waited--;
    }
  }
  wf_abandon_fn fn = c->abandon;
  c->abandon = NULL;
  if (fn) fn(c, c->abandon_ud);
}

void wf_call_on_abandon(wf_call *c, wf_abandon_fn fn, void *ud) {
  c->abandon = fn;
  c->abandon_ud = ud;
}

void wf_call_hold(wf_call *c) {
  if (c->held || !c->host) return;
  c->held = 1;
  c->host->calls_waited--;
}

const char *wf_call_action(const wf_call *c) { return c->name; }
const char *wf_call_params(const wf_call *c) { return c->params; }
const char *wf_call_instance(const wf_call *c) { return c->instance_id; }
const char *wf_call_key(const wf_call *c) { return c->key; }
int wf_call_attempt(const wf_call *c) { return c->attempt; }
int64_t wf_call_deadline(const wf_call *c) { return c->deadline; }
wf_host *wf_call_host(const wf_call *c) { return c->host; }

/* At close: calls still out are abandoned and complete into nothing. */
void wf_action_detach_all(wf_host *h) {
  for (wf_call *c = h->calls, *next; c; c = next) {
    next = c->next;
    wf_instance *in = wf_engine_find(h, c->instance_id);
    for (wf_pend *p = in ? in->pends : NULL; p; p = p->next)
      if (p->call == c) p->call = NULL;
    c->host = NULL; /* first: a completion from the callback then only frees the call */
    if (!c->on_worker) wf_action_abandon(h, c);
  }
  h->calls = NULL;
  h->calls_waited = 0;
  free(h->dl);
  h->dl = NULL;
  h->ndl = h->capdl = 0;
}

void wf_action_free_all(wf_host *h) {
  while (h->actions) {
    wf_action *a = h->actions;
    h->actions = a->next;
    free(a->name);
    free(a->nonretry);
    free(a->key_param);
    free(a);
  }
}

/* ---- built-in actions ---------------------------------------------------------------- */

static void action_echo(wf_call *c, void *ud) {
  (void)ud;
  wf_call_ok(c, wf_call_params(c));
}

/* log { message = "...", level = "info" } */
static void action_log(wf_call *c, void *ud) {
  (void)ud;
  wf_host *h = wf_call_host(c);
  lua_State *L = h->L;
  lua_pushstring(L, wf_call_params(c));
  if (wf_lua_callmod(h, "decode", 1, 1) != 0 || !lua_istable(L, -1)) {
    lua_pop(L, 1);
    wf_call_fail(c, "bad_params", "log expects params { message = \"...\", level = \"info\" }", WF_PERMANENT);
    return;
  }
  lua_getfield(L, -1, "message");
  lua_getfield(L, -2, "level");
  const char *lvl = lua_tostring(L, -1);
  wf_log(h, wf_log_level_parse(lvl), wf_call_instance(c), NULL, "%s", lua_tostring(L, -2) ? lua_tostring(L, -2) : "");
  lua_pop(L, 3);
  wf_call_ok(c, "{}");
}

void wf_action_register_builtins(wf_host *h) {
  wf_register_action(h, "echo", action_echo, NULL, NULL);
  wf_register_action(h, "log", action_log, NULL, NULL);
  wf_http_register(h);
}
