/*
 * wf_action.c — the action registry and action calls. The engine asks for an action to be
 * invoked only after its intent is committed (wf_engine.c); the action completes its call
 * with wf_call_ok() or wf_call_fail(), now or later from the loop thread, and the outcome goes
 * back to the engine, which journals it. Actions never write to the store.
 *
 * Built-in actions: `echo` (returns its params) and `log` (writes params.message to the
 * host's log).
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

int wf_register_action(wf_host *h, const char *name, wf_action_fn fn, void *ud) {
  if (!h) return WF_MISUSE;
  if (h->cfg.mode != WF_MODE_HOST) return wf_fail(h, WF_MISUSE, "actions are registered on a host, not a client handle");
  if (!name || (!valid_action_name(name) && strcmp(name, "*") != 0))
    return wf_fail(h, WF_INVALID, "bad action name '%s': use letters, digits, '_' and '.'", name ? name : "(null)");
  if (!fn) return wf_fail(h, WF_INVALID, "action '%s': the function is NULL", name);
  wf_action *a = find_exact(h, name);
  if (!a) {
    a = calloc(1, sizeof *a);
    if (!a) abort();
    a->name = wf_strdup(name);
    a->next = h->actions;
    h->actions = a;
  }
  a->fn = fn;
  a->ud = ud;
  return WF_OK;
}

void wf_action_dispatch(wf_host *h, wf_instance *in) {
  in->pend.dispatch = 0;
  wf_action *a = wf_action_find(h, in->pend.name);
  wf_call *c = calloc(1, sizeof *c);
  if (!c) abort();
  c->host = h;
  c->instance_id = wf_strdup(in->id);
  c->seq = in->pend.seq;
  c->attempt = in->pend.attempt;
  c->name = wf_strdup(in->pend.name);
  c->params = in->pend.params ? in->pend.params : wf_strdup("null"); /* moved: pend no longer needs it */
  in->pend.params = NULL;
  snprintf(c->key, sizeof c->key, "%s:%" PRId64, in->id, in->pend.seq);
  c->next = h->calls;
  if (h->calls) h->calls->prev = c;
  h->calls = c;
  h->calls_waited++;
  in->pend.call = c;
  if (!a) { /* unregistered since the intent was written */
    wf_call_fail(c, "not_registered", "the action is not registered on this host", 0);
    return;
  }
  a->fn(c, a->ud);
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
wf_host *wf_call_host(const wf_call *c) { return c->host; }

static void call_free(wf_call *c) {
  free(c->instance_id);
  free(c->name);
  free(c->params);
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
  return h;
}

static char *error_json(const char *code, const char *message, int retryable) {
  char *qc = wf_json_quote(code ? code : "error");
  char *qm = wf_json_quote(message ? message : "");
  size_t n = strlen(qc) + strlen(qm) + 64;
  char *s = wf_xmalloc(n);
  snprintf(s, n, "{\"code\":%s,\"message\":%s,\"retryable\":%s}", qc, qm, retryable ? "true" : "false");
  free(qc);
  free(qm);
  return s;
}

void wf_call_ok(wf_call *c, const char *result_json) {
  wf_host *h = call_unlink(c);
  if (!h || c->seq < 0) {
    call_free(c);
    return;
  }
  const char *json = result_json ? result_json : "null";
  size_t len = strlen(json);
  char err[300];
  if (len > h->cfg.max_payload) {
    snprintf(err, sizeof err, "the action's result is %zu bytes; the limit is %zu (config max_payload)",
             len, h->cfg.max_payload);
    wf_engine_call_done(h, c, 0, error_json("result_too_large", err, 0));
  } else {
    /* Not decoded here: the workflow decodes it once, and a malformed result becomes a
     * bad_result error there, the same way on every replay. */
    wf_engine_call_done(h, c, 1, wf_strdup(json));
  }
  call_free(c);
}

void wf_call_fail(wf_call *c, const char *code, const char *message, int retryable) {
  wf_host *h = call_unlink(c);
  if (h && c->seq >= 0) wf_engine_call_done(h, c, 0, error_json(code, message, retryable));
  call_free(c);
}

/* At close: calls still out complete into nothing. */
void wf_action_detach_all(wf_host *h) {
  for (wf_call *c = h->calls; c; c = c->next) c->host = NULL;
  h->calls = NULL;
  h->calls_waited = 0;
}

void wf_action_free_all(wf_host *h) {
  while (h->actions) {
    wf_action *a = h->actions;
    h->actions = a->next;
    free(a->name);
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
    wf_call_fail(c, "bad_params", "log expects params { message = \"...\", level = \"info\" }", 0);
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
  wf_register_action(h, "echo", action_echo, NULL);
  wf_register_action(h, "log", action_log, NULL);
}
