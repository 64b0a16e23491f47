/*
 * wf_step.c — the one resume driver. It builds an instance's coroutine (replaying its
 * history if it has one), delivers outcomes (action results, events, timer firings,
 * cancellation), resumes the coroutine and handles each command it yields:
 *
 *   - while replaying, a command must match the one journaled at the same sequence number
 *     (kind and name); its recorded outcome is fed back without doing anything again. A
 *     mismatch suspends the instance with a readable diff.
 *   - at the frontier (the first command without a recorded outcome) the pending command is
 *     re-armed: an action in flight at a crash is invoked again with the same idempotency key.
 *   - after that, commands are live: journaled in the open batch, and their effects released
 *     by the engine only after the batch commits.
 */
#include <inttypes.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wf_engine.h"

/* History kinds that are commands (they take a sequence number) and outcomes. */
static int is_immediate(const char *k) {
  return !strcmp(k, "now") || !strcmp(k, "random") || !strcmp(k, "uuid") || !strcmp(k, "signal_child") ||
         !strcmp(k, "cancel_child");
}
static int is_command(const char *k) {
  return !strcmp(k, "action") || !strcmp(k, "wait") || !strcmp(k, "sleep") || !strcmp(k, "child") ||
         is_immediate(k);
}
/* Outcomes the instance's threads receive, in the order the journal has them: "cancel" (at
 * seq 0) is the instance's cancellation reaching it ("cancelled" at a command's seq is how
 * histories written before parallel branches recorded it; at seq 0 it is the final status). */
static int is_delivered(const wf_history_entry *e) {
  const char *k = e->kind;
  return !strcmp(k, "action_result") || !strcmp(k, "action_error") || !strcmp(k, "event") ||
         !strcmp(k, "timeout") || !strcmp(k, "timer_fired") || !strcmp(k, "child_ended") || !strcmp(k, "cancel") ||
         (!strcmp(k, "cancelled") && e->seq > 0);
}
/* What ends a command: its outcome, or its withdrawal by a cancelled thread. */
static int is_outcome(const wf_history_entry *e) { return is_delivered(e) || !strcmp(e->kind, "withdrawn"); }

/* The next outcome in the history, in delivery order (its index), or -1. */
static int64_t next_recorded(wf_instance *in) {
  while (in->rp < (int64_t)in->nhist && !is_delivered(&in->hist[in->rp])) in->rp++;
  return in->rp < (int64_t)in->nhist ? in->rp : -1;
}

/* Reads "due":N from a wait or sleep entry's data, which the driver wrote itself. */
static int64_t data_due(const char *data) {
  const char *p = data ? strstr(data, "\"due\":") : NULL;
  return p ? strtoll(p + 6, NULL, 10) : 0;
}

static void run(wf_host *h, wf_instance *in, int nargs);

void wf_step_free_replay(wf_instance *in) {
  wf_history_free(in->hist, in->nhist);
  free(in->cmd_at);
  free(in->out_at);
  in->hist = NULL;
  in->nhist = 0;
  in->cmd_at = in->out_at = NULL;
  in->replay_max_seq = 0;
  in->replaying = 0;
}

void wf_step_drop_coroutine(wf_host *h, wf_instance *in) {
  if (in->co) {
    luaL_unref(h->L, LUA_REGISTRYINDEX, in->co_ref);
    luaL_unref(h->L, LUA_REGISTRYINDEX, in->ctx_ref);
    in->co = NULL;
    in->co_ref = in->ctx_ref = LUA_NOREF;
    h->nlive--;
  }
  wf_step_free_replay(in);
  while (in->inbox) {
    wf_event *ev = in->inbox;
    in->inbox = ev->next;
    wf_event_free(ev);
  }
  in->inbox_tail = &in->inbox;
  wf_pend_clear(h, in);
  free(in->saga_msg);
  in->saga_msg = NULL;
  in->fast_seq = 0;
  in->nignored = 0;
}

/* ---- finishing ---------------------------------------------------------------------- */

/* Writes ctx.data if it changed. Returns 0, or -1 if it cannot be encoded (message pushed). */
static int sync_data(wf_host *h, wf_instance *in) {
  lua_State *L = h->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, in->ctx_ref);
  /* Most workflows keep no data: an empty table needs no encoding. */
  lua_pushliteral(L, "data");
  if (lua_rawget(L, -2) == LUA_TTABLE) {
    lua_pushnil(L);
    if (lua_next(L, -2) == 0) {
      lua_pop(L, 2);
      if (!in->data || strcmp(in->data, "{}") != 0) {
        free(in->data);
        in->data = wf_strdup("{}");
        in->row_dirty = 1;
      }
      return 0;
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  if (wf_lua_callmod(h, "encode_data", 1, 1) != 0) return -1;
  const char *s = lua_tostring(L, -1);
  if (!in->data || strcmp(in->data, s) != 0) {
    free(in->data);
    in->data = wf_strdup(s);
    in->row_dirty = 1;
  }
  lua_pop(L, 1);
  return 0;
}

static void end_instance(wf_host *h, wf_instance *in, wf_status st, const char *kind,
                         const char *data, char *error) {
  in->status = st;
  free(in->error);
  in->error = error;
  in->row_dirty = 1;
  wf_engine_history(h, in, 0, kind, NULL, data);
  wf_child_ended(h, in);
  for (wf_pend *p = in->pends; p; p = p->next) /* branches left behind */
    if (!p->replay && (p->due || p->kind == WF_PEND_ACTION))
      wf_engine_store_rc(h, wf_store_delete_timer(h->st, in->id, p->seq));
  wf_step_drop_coroutine(h, in);
}

/* {"<key>":"<text>"} (malloc'd), the data of a failed or suspended entry. */
static char *json_field(const char *key, const char *text) {
  char *q = wf_json_quote(text);
  size_t n = strlen(q) + strlen(key) + 8;
  char *data = wf_xmalloc(n);
  snprintf(data, n, "{\"%s\":%s}", key, q);
  free(q);
  return data;
}

static void fail_with(wf_host *h, wf_instance *in, const char *msg) {
  char *data = json_field("message", msg);
  wf_log(h, WF_LOG_ERROR, in->id, NULL, "failed: %s", msg);
  end_instance(h, in, WF_ST_FAILED, "failed", data, wf_strdup(msg));
  free(data);
}

/* Suspends the instance for an operator. The coroutine is dropped: `wfhost retry` rebuilds
 * it by replay once the cause (code, a missing action) is fixed. */
void wf_step_suspend(wf_host *h, wf_instance *in, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (in->dry) {
    if (!in->dry_report) in->dry_report = wf_strdup(msg);
    in->dry_done = 1;
    wf_step_drop_coroutine(h, in);
    return;
  }
  char *data = json_field("reason", msg);
  wf_log(h, WF_LOG_WARN, in->id, NULL, "suspended: %s", msg);
  in->status = WF_ST_SUSPENDED;
  free(in->error);
  in->error = wf_strdup(msg);
  in->row_dirty = 1;
  wf_engine_history(h, in, 0, "suspended", NULL, data);
  free(data);
  wf_step_drop_coroutine(h, in);
}

static const char *describe_cmd(const char *kind, const char *name, char *buf, size_t n) {
  if (!strcmp(kind, "action")) snprintf(buf, n, "action `%s`", name ? name : "?");
  else if (!strcmp(kind, "wait")) snprintf(buf, n, "wait for `%s`", name ? name : "?");
  else if (!strcmp(kind, "sleep")) snprintf(buf, n, "sleep");
  else if (!strcmp(kind, "child")) snprintf(buf, n, "child workflow `%s`", name ? name : "?");
  else if (!strcmp(kind, "signal_child") || !strcmp(kind, "cancel_child"))
    snprintf(buf, n, "%s of child `%s`", kind + 7, name ? name : "?");
  else snprintf(buf, n, "ctx:%s()", kind);
  return buf;
}

static void diverged(wf_host *h, wf_instance *in, int64_t seq, const char *code_does) {
  char rec[300];
  const char *recorded = "nothing";
  if (seq <= in->replay_max_seq && in->cmd_at[seq] >= 0) {
    wf_history_entry *e = &in->hist[in->cmd_at[seq]];
    recorded = describe_cmd(e->kind, e->name, rec, sizeof rec);
  }
  wf_step_suspend(h, in,
          "non-determinism at step %" PRId64 ": history has %s, the code now %s. Restore the "
          "previous code (or guard the change with a new workflow version), then run `wfhost retry %s`",
          seq, recorded, code_does, in->id);
}

/* Makes a readable message (with a traceback into the workflow file) for an error raised by
 * the coroutine; the error value is on top of co's stack. */
static char *error_text(wf_host *h, wf_instance *in, int rc, int *is_cancel) {
  lua_State *L = h->L, *co = in->co;
  *is_cancel = 0;
  char head[1200];
  if (rc == LUA_ERRMEM) {
    snprintf(head, sizeof head,
             "memory limit exceeded: the workflow Lua state reached its limit of %zu bytes "
             "(config memory_limit)", h->cfg.memory_limit);
  } else {
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
    lua_pushvalue(L, -1);
    if (wf_lua_callmod(h, "error_code", 1, 1) == 0) {
      const char *code = lua_tostring(L, -1);
      *is_cancel = code && !strcmp(code, "cancelled") && in->cancel_delivered;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    if (wf_lua_callmod(h, "describe_error", 1, 1) != 0) {}
    snprintf(head, sizeof head, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    lua_pop(L, 1);
    /* An error a branch raised and ctx:all passed on: where the branch raised it. */
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    lua_insert(L, -2);
    const char *tb = wf_lua_callmod(h, "branch_traceback", 2, 1) == 0 ? lua_tostring(L, -1) : NULL;
    if (tb) {
      lua_pushstring(L, head);
      lua_insert(L, -2);
      lua_concat(L, 2);
    } else {
      lua_pop(L, 1);
    }
    if (!tb) luaL_traceback(L, co, head, 0);
  }
  if (rc == LUA_ERRMEM) luaL_traceback(L, co, head, 0);
  /* Drop the host's own frames from the traceback (never the message): a reader wants the
   * workflow's lines. */
  const char *tb = lua_tostring(L, -1);
  const char *frames = strstr(tb, "\nstack traceback:\n");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (const char *p = tb; *p;) {
    const char *eol = strchr(p, '\n');
    size_t len = eol ? (size_t)(eol - p + 1) : strlen(p);
    int host_frame = frames && p > frames &&
                     (memmem(p, len, "[wfhost]", 8) != NULL || memmem(p, len, "(...tail calls...)", 18) != NULL ||
                      memmem(p, len, "[C]: in function 'error'", 24) != NULL);
    if (!host_frame) luaL_addlstring(&b, p, len);
    p += len;
  }
  luaL_pushresult(&b);
  char *out = wf_strdup(lua_tostring(L, -1));
  size_t n = strlen(out);
  while (n && out[n - 1] == '\n') out[--n] = 0;
  static const char tail[] = "\nstack traceback:";
  if (n >= sizeof tail - 1 && !strcmp(out + n - (sizeof tail - 1), tail)) out[n - (sizeof tail - 1)] = 0;
  lua_pop(L, 2);
  return out;
}

/* A replay check reached the end of the code: it agrees if the history ended the same way. */
static void dry_finish(wf_host *h, wf_instance *in, int rc) {
  int is_cancel = 0;
  char *msg = rc == LUA_OK ? NULL : error_text(h, in, rc, &is_cancel);
  wf_status got = rc == LUA_OK ? WF_ST_COMPLETED : is_cancel ? WF_ST_CANCELLED : WF_ST_FAILED;
  wf_status was = in->dry_status;
  int agrees = was == got;
  if (!agrees && !in->dry_report) {
    char buf[1400];
    snprintf(buf, sizeof buf, "history has the instance %s after step %" PRId64 ", the code now %s%s%.1000s",
             wf_status_name(was), in->seq, rc == LUA_OK ? "completes" : "fails", msg ? ": " : "",
             msg ? msg : "");
    in->dry_report = wf_strdup(buf);
  }
  free(msg);
  in->dry_done = 1;
  wf_step_drop_coroutine(h, in);
}

/* The error that ended the main thread was ctx:complete unwinding: pushes the value (JSON) on
 * h->L and returns 1; or an error encoding it (pushed, returns -1); or 0. */
static int completion(wf_host *h, wf_instance *in) {
  lua_State *L = h->L;
  lua_pushthread(in->co);
  lua_xmove(in->co, L, 1);
  lua_pushvalue(in->co, -1);
  lua_xmove(in->co, L, 1);
  if (wf_lua_callmod(h, "completion", 2, 2) != 0) return -1;
  int next_run = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (lua_isstring(L, -1)) return next_run ? 2 : 1;
  lua_pop(L, 1);
  return 0;
}

/* The main thread ended with an error (msg) and the workflow registered compensations: runs
 * them in a new main thread. Returns 1 if it did. */
static int start_saga(wf_host *h, wf_instance *in, const char *msg, int is_cancel) {
  lua_State *L = h->L;
  lua_pushthread(in->co);
  lua_xmove(in->co, L, 1);
  lua_pushstring(L, msg);
  if (wf_lua_callmod(h, "saga", 2, 1) != 0 || !lua_isfunction(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  lua_State *co = lua_newthread(L);
  lua_insert(L, -2);
  lua_xmove(L, co, 1);
  luaL_unref(L, LUA_REGISTRYINDEX, in->co_ref);
  in->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  in->co = co;
  in->saga_msg = wf_strdup(msg);
  in->saga_cancel = is_cancel;
  wf_log(h, WF_LOG_INFO, in->id, NULL, "%s: running compensations", is_cancel ? "cancelled" : "failed");
  run(h, in, 0);
  return 1;
}

/* The compensations ran: the instance ends failed or cancelled with the original error. */
static void finish_saga(wf_host *h, wf_instance *in, int rc) {
  char *msg = in->saga_msg;
  int cancel = in->saga_cancel;
  in->saga_msg = NULL;
  if (rc != LUA_OK) { /* only the host's own code runs outside the compensations' pcalls */
    int ignore;
    char *why = error_text(h, in, rc, &ignore);
    size_t n = strlen(msg) + strlen(why) + 64;
    char *both = wf_xmalloc(n);
    snprintf(both, n, "%s\n(compensating: %s)", msg, why);
    free(msg);
    free(why);
    msg = both;
  }
  wf_status st = cancel ? WF_ST_CANCELLED : WF_ST_FAILED;
  if (in->dry) {
    if (in->dry_status != st && !in->dry_report) {
      char buf[1400];
      snprintf(buf, sizeof buf, "history has the instance %s after step %" PRId64 ", the code now %s: %.1000s",
               wf_status_name(in->dry_status), in->seq, cancel ? "is cancelled" : "fails", msg);
      in->dry_report = wf_strdup(buf);
    }
    in->dry_done = 1;
    wf_step_drop_coroutine(h, in);
  } else if (in->replaying && (in->seq < in->replay_max_seq || next_recorded(in) >= 0)) {
    diverged(h, in, in->seq + 1, "ends its compensations");
  } else if (cancel) {
    wf_log(h, WF_LOG_INFO, in->id, NULL, "cancelled (compensated)");
    end_instance(h, in, WF_ST_CANCELLED, "cancelled", NULL, msg);
    return;
  } else {
    fail_with(h, in, msg);
  }
  free(msg);
}

/* ctx:continue_as_new(input): this run ends, and the next starts from scratch under the same
 * id with input and an empty history, in this batch. Takes input. */
static void new_run(wf_host *h, wf_instance *in, char *input) {
  if (in->replaying && (in->seq < in->replay_max_seq || next_recorded(in) >= 0)) {
    diverged(h, in, in->seq + 1, "continues as new");
  } else if (in->dry) { /* the history ends before it: the code agrees with all of it */
    in->dry_done = 1;
    wf_step_drop_coroutine(h, in);
  } else if (strlen(input) > h->cfg.max_payload) {
    char msg[200];
    snprintf(msg, sizeof msg, "ctx:continue_as_new(input): the input is %zu bytes; the limit is %zu (config max_payload)",
             strlen(input), h->cfg.max_payload);
    fail_with(h, in, msg);
  } else {
    in->replaying = 0;
    wf_child_release(h, in);
    if (in->row_new) wf_engine_write_row(h, in); /* started in this batch: the row to update */
    wf_engine_store_rc(h, wf_store_new_run(h->st, in->id, in->run + 1, input));
    wf_step_drop_coroutine(h, in); /* its branches' calls are abandoned */
    in->run++;
    free(in->input);
    in->input = input;
    free(in->state);
    in->state = NULL;
    free(in->data);
    in->data = wf_strdup("{}");
    free(in->progress_msg);
    in->progress_msg = NULL;
    in->has_progress = 0;
    in->pos = in->seq = 0;
    in->version = 0; /* the next run starts on the newest loaded version */
    in->status = WF_ST_RUNNING;
    in->row_dirty = 1;
    wf_log(h, WF_LOG_INFO, in->id, NULL, "continued as new: run %d", in->run);
    wf_engine_ready(h, in);
    return;
  }
  free(input);
}

static void finish(wf_host *h, wf_instance *in, int rc) {
  lua_State *co = in->co;
  if (in->saga_msg) {
    finish_saga(h, in, rc);
    return;
  }
  char *out = NULL;
  if (rc == LUA_OK) {
    out = wf_strdup(lua_tostring(co, -1));
  } else if (rc != LUA_ERRMEM && !h->trip) {
    int c = completion(h, in);
    if (c != 0) { /* ctx:complete: the value, or why it cannot be stored */
      out = wf_strdup(lua_tostring(h->L, -1));
      lua_pop(h->L, 1);
      if (c == 2) { /* ctx:continue_as_new: the next run's input */
        new_run(h, in, out);
        return;
      }
      if (c < 0) {
        fail_with(h, in, out);
        free(out);
        return;
      }
      rc = LUA_OK;
    } else if (!in->dry || in->dry_status != WF_ST_COMPLETED) {
      int is_cancel;
      char *msg = error_text(h, in, rc, &is_cancel);
      int started = start_saga(h, in, msg, is_cancel);
      free(msg);
      if (started) return;
    }
  }
  if (in->replaying && (in->seq < in->replay_max_seq || next_recorded(in) >= 0)) {
    diverged(h, in, in->seq + 1, rc == LUA_OK ? "returns" : "raises an error");
    free(out);
    return;
  }
  if (in->dry) {
    dry_finish(h, in, rc);
    free(out);
    return;
  }
  in->replaying = 0;
  if (rc == LUA_OK) {
    size_t len = strlen(out);
    if (len > h->cfg.max_payload) {
      char msg[200];
      snprintf(msg, sizeof msg, "the workflow's output is %zu bytes; the limit is %zu (config max_payload)",
               len, h->cfg.max_payload);
      fail_with(h, in, msg);
      free(out);
      return;
    }
    if (sync_data(h, in) != 0) {
      char *m = wf_strdup(lua_tostring(h->L, -1));
      lua_pop(h->L, 1);
      fail_with(h, in, m);
      free(m);
      free(out);
      return;
    }
    free(in->output);
    in->output = out;
    wf_log(h, WF_LOG_INFO, in->id, NULL, "completed");
    end_instance(h, in, WF_ST_COMPLETED, "completed", in->output, NULL);
    return;
  }
  int is_cancel;
  char *msg = error_text(h, in, rc, &is_cancel);
  if (rc == LUA_ERRMEM || h->trip == 2) h->reclaim = 1; /* collect its garbage after the step */
  if (!(rc == LUA_ERRMEM) && sync_data(h, in) != 0) lua_pop(h->L, 1);
  if (is_cancel) {
    wf_log(h, WF_LOG_INFO, in->id, NULL, "cancelled");
    end_instance(h, in, WF_ST_CANCELLED, "cancelled", NULL, msg);
    return;
  }
  fail_with(h, in, msg);
  free(msg);
}

/* Fails the instance if its history is at the hard limit (wf_histsize.c), before it
 * journals more; returns 1 if it did. */
static int history_limit_reached(wf_host *h, wf_instance *in) {
  if (in->dry || !wf_histsize_full(h, in)) return 0;
  char msg[400];
  wf_histsize_message(h, in, msg, sizeof msg);
  fail_with(h, in, msg);
  return 1;
}

/* ---- commands ----------------------------------------------------------------------- */

/* An event as journaled and as resumed with: {"at":<arrival ms>,"data":<payload>}. */
static char *event_record(const wf_event *ev) {
  size_t n = strlen(ev->data) + 48;
  char *s = wf_xmalloc(n);
  snprintf(s, n, "{\"at\":%" PRId64 ",\"data\":%s}", ev->at, ev->data);
  return s;
}

/* Journals the taking of an event by the wait at seq, and pushes it to resume with. */
static int take_event(wf_host *h, wf_instance *in, int64_t seq, wf_event *ev, int64_t due) {
  char *rec = event_record(ev);
  wf_engine_history(h, in, seq, "event", ev->name, rec);
  wf_engine_store_rc(h, wf_store_consume_event(h->st, ev->id, seq));
  if (due) wf_engine_store_rc(h, wf_store_delete_timer(h->st, in->id, seq));
  lua_pushliteral(in->co, "event");
  lua_pushstring(in->co, ev->name);
  lua_pushstring(in->co, rec);
  free(rec);
  wf_event_free(ev);
  return 3;
}

/* Pushes the recorded outcome of a replayed command; returns the number of values. */
static int push_recorded(lua_State *co, const wf_history_entry *e) {
  const char *k = e->kind;
  if (!strcmp(k, "action_result")) {
    lua_pushliteral(co, "json");
    lua_pushstring(co, e->data_json ? e->data_json : "null");
    return 2;
  }
  if (!strcmp(k, "action_error")) {
    lua_pushliteral(co, "error");
    lua_pushstring(co, e->data_json ? e->data_json : "{}");
    return 2;
  }
  if (!strcmp(k, "event")) {
    lua_pushliteral(co, "event");
    lua_pushstring(co, e->name);
    lua_pushstring(co, e->data_json);
    return 3;
  }
  if (!strcmp(k, "child_ended")) {
    lua_pushliteral(co, "child");
    lua_pushstring(co, e->name);
    lua_pushstring(co, e->data_json ? e->data_json : "{}");
    return 3;
  }
  if (!strcmp(k, "signal_child") || !strcmp(k, "cancel_child")) {
    lua_pushliteral(co, "value");
    lua_pushboolean(co, e->data_json && strstr(e->data_json, "\"delivered\":true") != NULL);
    return 2;
  }
  if (!strcmp(k, "timeout")) { lua_pushliteral(co, "timeout"); return 1; }
  if (!strcmp(k, "timer_fired")) { lua_pushliteral(co, "fired"); return 1; }
  if (!strcmp(k, "cancelled")) { lua_pushliteral(co, "cancelled"); return 1; }
  lua_pushliteral(co, "value");
  if (!strcmp(k, "now")) lua_pushinteger(co, strtoll(e->data_json, NULL, 10));
  else if (!strcmp(k, "random")) lua_pushnumber(co, strtod(e->data_json, NULL));
  else { /* uuid: a JSON string of 36 characters */
    const char *d = e->data_json ? e->data_json : "\"\"";
    lua_pushlstring(co, d + 1, strlen(d) >= 2 ? strlen(d) - 2 : 0);
  }
  return 2;
}

static int not_registered(wf_host *h, wf_instance *in, const char *name) {
  wf_step_suspend(h, in, "action '%s' is not registered on this host: register it (or load its plugin), "
                  "then run `wfhost retry %s`", name, in->id);
  return -1;
}

/* Re-arms the command at seq, journaled with no outcome in the history: it was pending when
 * the instance was last in memory. o: the policy of an action's call. Returns -1, or 0 if the
 * instance was suspended. */
static int rearm(wf_host *h, wf_instance *in, int64_t seq, const wf_history_entry *e, wf_call_opts *o) {
  int is_action = !strcmp(e->kind, "action");
  wf_pend *p = wf_pend_add(in, is_action ? WF_PEND_ACTION : !strcmp(e->kind, "wait") ? WF_PEND_WAIT : WF_PEND_SLEEP, seq);
  if (!is_action) p->due = data_due(e->data_json);
  if (in->cancel_requested || in->dry) {
    /* Cancelled while not in memory: the cancellation is handed over before any event is
     * taken or any action invoked again. (A replay check arms nothing.) */
    p->name = wf_strdup(e->name);
    return -1;
  }
  if (is_action) {
    if (!o->action) {
      wf_pend_remove(in, p);
      return not_registered(h, in, e->name), 0;
    }
    wf_attempt_rearm(h, in, p, e, o);
    return in->co ? -1 : 0;
  }
  p->name = wf_strdup(e->name);
  if (p->due) wf_engine_add_timer(h, in, seq, p->due);
  return -1;
}

static int raise_in(lua_State *co, const char *msg) {
  lua_pushliteral(co, "raise");
  lua_pushstring(co, msg);
  return 2;
}

/* The replay delivered every recorded outcome: what the instance waits on now is live. */
static int replay_done(wf_host *h, wf_instance *in) {
  for (wf_pend *p = in->pends; p; p = p->next)
    if (p->replay) { /* the history has its outcome, the code never reached it */
      diverged(h, in, p->seq, "waits for it, but the history gave its outcome to nothing");
      return -1;
    }
  if (in->seq < in->replay_max_seq) {
    diverged(h, in, in->seq + 1, "waits before it gets there");
    return -1;
  }
  if (in->dry) { /* it reaches the steps it is blocked on: the history agrees */
    in->dry_done = 1;
    wf_step_drop_coroutine(h, in);
    return -1;
  }
  in->replaying = 0;
  return 0;
}

/* One pending command's outcome if it has one now: pushes (status, values...) and returns
 * their number; 0 if none; -1 if the instance ended (suspended). */
static int outcome_of(wf_host *h, wf_instance *in, wf_pend *p) {
  lua_State *co = in->co;
  switch (p->kind) {
  case WF_PEND_ACTION:
    return wf_attempt_deliver(h, in, p);
  case WF_PEND_WAIT: {
    wf_event *ev = wf_inbox_take(in, p->name);
    if (ev) return take_event(h, in, p->seq, ev, p->due);
    if (!p->due || p->due > wf_now(h)) return 0;
    wf_engine_history(h, in, p->seq, "timeout", NULL, NULL);
    wf_engine_store_rc(h, wf_store_delete_timer(h->st, in->id, p->seq));
    lua_pushliteral(co, "timeout");
    return 1;
  }
  case WF_PEND_CHILD: {
    wf_event *ev = wf_inbox_take_exact(in, p->name); /* a child id may hold a '|' */
    if (!ev) return 0;
    wf_engine_history(h, in, p->seq, "child_ended", p->params, ev->data);
    wf_engine_store_rc(h, wf_store_consume_event(h->st, ev->id, p->seq));
    lua_pushliteral(co, "child");
    lua_pushstring(co, p->params);
    lua_pushstring(co, ev->data);
    wf_event_free(ev);
    return 3;
  }
  case WF_PEND_SLEEP:
    if (p->due > wf_now(h)) return 0;
    wf_engine_history(h, in, p->seq, "timer_fired", NULL, NULL);
    wf_engine_store_rc(h, wf_store_delete_timer(h->st, in->id, p->seq));
    lua_pushliteral(co, "fired");
    return 1;
  default:
    return 0;
  }
}

/* The next outcome for the instance's threads: pushes (seq, status, values...) and returns
 * their number; 0 if nothing is ready (the instance parks); -1 if it ended. Replay delivers
 * the recorded outcomes in journal order; live, the first ready command in issue order. */
static int next_outcome(wf_host *h, wf_instance *in) {
  lua_State *co = in->co;
  if (in->replaying) {
    int64_t i = next_recorded(in);
    if (i >= 0) {
      const wf_history_entry *e = &in->hist[i];
      in->rp = i + 1;
      if (!strcmp(e->kind, "cancel") || !strcmp(e->kind, "cancelled")) in->cancel_delivered = 1;
      if (e->seq == 0) {
        lua_pushinteger(co, 0);
        lua_pushliteral(co, "cancelled");
        return 2;
      }
      wf_pend *p = wf_pend_find(in, e->seq);
      if (!p || !p->replay) {
        diverged(h, in, e->seq, p ? "waits for it, but the history gave it no outcome" : "does not wait for it");
        return -1;
      }
      wf_pend_remove(in, p);
      lua_pushinteger(co, e->seq);
      return push_recorded(co, e) + 1;
    }
    if (replay_done(h, in) != 0) return -1;
  }
  if (in->cancel_requested) {
    in->cancel_requested = 0;
    in->cancel_delivered = 1;
    wf_engine_history(h, in, 0, "cancel", NULL, NULL);
    lua_pushinteger(co, 0);
    lua_pushliteral(co, "cancelled");
    return 2;
  }
  for (wf_pend *p = in->pends; p; p = p->next) {
    int n = outcome_of(h, in, p);
    if (n < 0 || !in->co) return -1;
    if (n > 0) {
      lua_pushinteger(co, p->seq);
      lua_insert(co, -n - 1);
      wf_pend_remove(in, p);
      return n + 1;
    }
  }
  return 0;
}

/* A thread of the instance was cancelled: it gives up the command at seq. */
static void withdraw(wf_host *h, wf_instance *in, int64_t seq) {
  wf_pend *p = wf_pend_find(in, seq);
  if (!p) return;
  if (p->replay) { /* the history says what happened to it: it must have been withdrawn */
    const wf_history_entry *e = &in->hist[in->out_at[seq]];
    if (strcmp(e->kind, "withdrawn") != 0)
      diverged(h, in, seq, "cancels it, but the history delivered its outcome");
    else
      wf_pend_remove(in, p);
    return;
  }
  wf_engine_history(h, in, seq, "withdrawn", p->kind == WF_PEND_CHILD ? p->params : p->name, NULL);
  if (p->kind == WF_PEND_CHILD) wf_child_withdrawn(h, in, p);
  if (p->due || p->kind == WF_PEND_ACTION) /* a sleep, a timeout, a retry's backoff */
    wf_engine_store_rc(h, wf_store_delete_timer(h->st, in->id, seq));
  wf_attempt_cancel(h, in, p); /* a call in flight is abandoned: its outcome will be ignored */
  wf_pend_remove(in, p);
}

/* The instance waits for the outcome of the child it started with command seq. */
static void child_pend(wf_instance *in, int64_t seq, const char *child_id, int detached) {
  wf_pend *p = wf_pend_add(in, WF_PEND_CHILD, seq);
  p->params = wf_strdup(child_id);
  p->name = wf_child_event_name(child_id);
  p->detached = detached;
}

/* Handles one yield of the main thread (see wf_ctx.lua): a command, a block for the next
 * outcome, or a withdrawal. Pops it and returns the number of values pushed to resume with at
 * once, or -1 if the instance parks or ended. *delivered: an outcome is among them. */
static int command(wf_host *h, wf_instance *in, int nres, int *delivered) {
  lua_State *co = in->co;
  char kind[16] = "";
  const char *k = lua_tostring(co, -nres);
  if (k) snprintf(kind, sizeof kind, "%s", k);
  *delivered = 0;
  if (!strcmp(kind, "block")) {
    lua_pop(co, nres);
    int n = next_outcome(h, in);
    *delivered = n > 0;
    return n > 0 ? n : -1;
  }
  if (!strcmp(kind, "withdraw")) {
    int64_t seq = nres >= 2 ? lua_tointeger(co, -nres + 1) : 0;
    lua_pop(co, nres);
    withdraw(h, in, seq);
    return in->co ? 0 : -1;
  }
  char *name = nres >= 2 ? wf_strdup(lua_tostring(co, -nres + 1)) : NULL;
  /* The argument: JSON params (string) for an action, milliseconds for a sleep or a wait's
   * timeout (absent: no timeout). */
  size_t arglen = 0;
  char *arg = NULL;
  int64_t argnum = 0;
  int has_num = 0;
  if (nres >= 3 && lua_type(co, -nres + 2) == LUA_TSTRING) {
    const char *a = lua_tolstring(co, -nres + 2, &arglen);
    arg = wf_xmalloc(arglen + 1);
    memcpy(arg, a, arglen + 1);
  } else if (nres >= 3 && lua_isinteger(co, -nres + 2)) {
    argnum = lua_tointeger(co, -nres + 2);
    has_num = argnum >= 0;
  }
  int issue_only = nres >= 5 && lua_type(co, -nres + 4) == LUA_TSTRING;
  /* An action's policy, with the workflow's per-call options (a table) over the action's. */
  wf_call_opts opts = {0};
  char operr[400] = "";
  int64_t next = in->seq + 1; /* replayed calls with a recorded outcome need no policy */
  wf_action *action = !strcmp(kind, "action") && name && !in->dry &&
                              (!in->replaying || next > in->replay_max_seq || in->out_at[next] < 0)
                          ? wf_action_find(h, name)
                          : NULL;
  int bad_opts = action && wf_attempt_opts(action, co, nres >= 4 && lua_istable(co, -nres + 3) ? -nres + 3 : 0,
                                           &opts, operr, sizeof operr) != 0;
  /* A child's opts.id and opts.detached; a signal's opts.event. */
  int is_child = !strcmp(kind, "child"), detached = 0;
  char *opt = NULL;
  if ((is_child || !strcmp(kind, "signal_child")) && nres >= 4 && lua_istable(co, -nres + 3)) {
    int t = lua_absindex(co, -nres + 3);
    if (lua_getfield(co, t, is_child ? "id" : "event") == LUA_TSTRING) opt = wf_strdup(lua_tostring(co, -1));
    lua_getfield(co, t, "detached");
    detached = lua_toboolean(co, -1);
    lua_pop(co, 2);
  }
  lua_pop(co, nres);
  int64_t seq = ++in->seq;
  int n = -1;
  char buf[600];
  if (is_child) in->has_children = 1; /* live or replayed: the run has (or may have) a child */
  char cid[WF_ID_MAX + 48]; /* a child's id: opts.id, or "<id>/<seq>[@<run>]" */
  if (is_child && opt) {
    snprintf(cid, sizeof cid, "%s", opt);
  } else if (is_child) {
    char run[16];
    snprintf(cid, sizeof cid, "%s/%" PRId64 "%s", in->id, seq, wf_run_suffix(in, run));
  }

  if (!is_command(kind)) {
    n = raise_in(co, "wfhost: unknown command");
    goto done;
  }

  if (in->replaying && seq <= in->replay_max_seq) {
    if (in->cmd_at[seq] < 0) {
      diverged(h, in, seq, describe_cmd(kind, name, buf, sizeof buf));
      goto done;
    }
    const wf_history_entry *e = &in->hist[in->cmd_at[seq]];
    int same = !strcmp(e->kind, kind) && ((!e->name && !name) || (e->name && name && !strcmp(e->name, name)));
    if (!same) {
      char does[300];
      snprintf(does, sizeof does, "%s", describe_cmd(kind, name, buf, sizeof buf));
      snprintf(buf, sizeof buf, "calls %.280s", does);
      diverged(h, in, seq, buf);
      goto done;
    }
    if (is_child) { /* the same child: its id and whether it is detached */
      char *rec = wf_child_record(cid, detached);
      same = e->data_json && !strcmp(e->data_json, rec);
      free(rec);
      if (!same) {
        snprintf(buf, sizeof buf, "starts it as %.300s%s", cid, detached ? " (detached)" : "");
        diverged(h, in, seq, buf);
        goto done;
      }
    }
    if (in->out_at[seq] >= 0) {
      const wf_history_entry *out = &in->hist[in->out_at[seq]];
      if (is_immediate(out->kind)) {
        n = push_recorded(co, out);
        goto done;
      }
      /* Its outcome (or its withdrawal) comes in journal order. */
      wf_pend_add(in, WF_PEND_NONE, seq)->replay = 1;
    } else if (is_child) { /* still running: its outcome comes to the inbox */
      child_pend(in, seq, cid, detached);
    } else {
      if (bad_opts) { /* the code now passes options that make no valid policy */
        wf_step_suspend(h, in, "ctx.actions.%s(params, opts) at step %" PRId64 ": %s. Fix the workflow, then run "
                        "`wfhost retry %s`", name, seq, operr, in->id);
        goto done;
      }
      if (rearm(h, in, seq, e, &opts) == 0) goto done;
    }
  } else if (in->replaying && next_recorded(in) >= 0) {
    diverged(h, in, seq, describe_cmd(kind, name, buf, sizeof buf));
    goto done;
  } else if (in->dry) {
    /* Past the end of the history: a divergence only if the history says it ended. */
    if (wf_status_final(in->dry_status) && !in->dry_report) {
      char does[300];
      char msg[600];
      snprintf(msg, sizeof msg, "history ends with the instance %s after step %" PRId64 ", the code now calls %s",
               wf_status_name(in->dry_status), seq - 1, describe_cmd(kind, name, does, sizeof does));
      in->dry_report = wf_strdup(msg);
    }
    in->dry_done = 1;
    wf_step_drop_coroutine(h, in);
    goto done;
  } else {
    in->replaying = 0;
    /* Live. */
    if (history_limit_reached(h, in)) goto done;
    int64_t now = wf_now(h);
    if (!strcmp(kind, "action")) {
      if (!action) {
        not_registered(h, in, name);
        goto done;
      }
      if (bad_opts) { /* the workflow's per-call options make no valid policy */
        snprintf(buf, sizeof buf, "ctx.actions.%.80s(params, opts): %.200s", name, operr);
        n = raise_in(co, buf);
        in->seq--;
        goto done;
      }
      if (arglen > h->cfg.max_payload) {
        snprintf(buf, sizeof buf, "params of action '%s' are %zu bytes; the limit is %zu (config max_payload)",
                 name, arglen, h->cfg.max_payload);
        n = raise_in(co, buf);
        in->seq--;
        goto done;
      }
      wf_attempt_call(h, in, wf_pend_add(in, WF_PEND_ACTION, seq), name, arg, &opts);
      arg = NULL;
      if (!in->co) goto done;
    } else if (!strcmp(kind, "wait")) {
      int64_t due = has_num ? now + argnum : 0;
      char data[96];
      if (has_num) snprintf(data, sizeof data, "{\"due\":%" PRId64 ",\"timeout_ms\":%" PRId64 "}", due, argnum);
      else snprintf(data, sizeof data, "{}");
      wf_engine_history(h, in, seq, "wait", name, data);
      wf_pend *p = wf_pend_add(in, WF_PEND_WAIT, seq);
      p->name = name;
      name = NULL;
      p->due = due;
      if (due) {
        wf_engine_store_rc(h, wf_store_add_timer(h->st, in->id, seq, due));
        wf_engine_add_timer(h, in, seq, due);
      }
    } else if (!strcmp(kind, "sleep")) {
      int64_t ms = has_num ? argnum : 0;
      int64_t due = now + ms;
      char data[96];
      snprintf(data, sizeof data, "{\"due\":%" PRId64 ",\"ms\":%" PRId64 "}", due, ms);
      wf_engine_history(h, in, seq, "sleep", NULL, data);
      wf_engine_store_rc(h, wf_store_add_timer(h->st, in->id, seq, due));
      wf_pend_add(in, WF_PEND_SLEEP, seq)->due = due;
      wf_engine_add_timer(h, in, seq, due);
    } else if (is_child) {
      if (arglen > h->cfg.max_payload) {
        snprintf(buf, sizeof buf, "the input of child workflow '%s' is %zu bytes; the limit is %zu (config max_payload)",
                 name, arglen, h->cfg.max_payload);
        n = raise_in(co, buf);
        in->seq--;
        goto done;
      }
      if (wf_child_start(h, in, seq, name, arg ? arg : "null", cid, detached, buf, sizeof buf) != 0) {
        char msg[720];
        snprintf(msg, sizeof msg, "ctx:child(\"%.100s\"): %.590s", name, buf);
        n = raise_in(co, msg);
        in->seq--;
        goto done;
      }
      char *rec = wf_child_record(cid, detached);
      wf_engine_history(h, in, seq, "child", name, rec);
      free(rec);
      child_pend(in, seq, cid, detached);
    } else if (!strcmp(kind, "signal_child") || !strcmp(kind, "cancel_child")) {
      if (arglen > h->cfg.max_payload) {
        snprintf(buf, sizeof buf, "handle:signal(event, data): the data is %zu bytes; the limit is %zu (config max_payload)",
                 arglen, h->cfg.max_payload);
        n = raise_in(co, buf);
        in->seq--;
        goto done;
      }
      int sent;
      char *ev = NULL;
      if (kind[0] == 's') {
        sent = wf_child_signal(h, name, opt ? opt : "", arg ? arg : "null");
        ev = wf_json_quote(opt ? opt : "");
      } else {
        sent = wf_child_cancel(h, name);
      }
      snprintf(buf, sizeof buf, "{%s%s%s\"delivered\":%s}", ev ? "\"event\":" : "", ev ? ev : "", ev ? "," : "",
               sent ? "true" : "false");
      free(ev);
      wf_engine_history(h, in, seq, kind, name, buf);
      lua_pushliteral(co, "value");
      lua_pushboolean(co, sent);
      n = 2;
      goto done;
    } else if (!strcmp(kind, "now")) {
      snprintf(buf, sizeof buf, "%" PRId64, now);
      wf_engine_history(h, in, seq, "now", NULL, buf);
      lua_pushliteral(co, "value");
      lua_pushinteger(co, now);
      n = 2;
      goto done;
    } else if (!strcmp(kind, "random")) {
      double u = (double)(wf_rand64(h) >> 11) * 0x1.0p-53;
      snprintf(buf, sizeof buf, "%.17g", u);
      wf_engine_history(h, in, seq, "random", NULL, buf);
      lua_pushliteral(co, "value");
      lua_pushnumber(co, strtod(buf, NULL));
      n = 2;
      goto done;
    } else { /* uuid */
      char u[37];
      wf_uuid(h->rng, u);
      snprintf(buf, sizeof buf, "\"%s\"", u);
      wf_engine_history(h, in, seq, "uuid", NULL, buf);
      lua_pushliteral(co, "value");
      lua_pushstring(co, u);
      n = 2;
      goto done;
    }
  }
  /* The command is pending. */
  if (issue_only) {
    lua_pushliteral(co, "pending");
    lua_pushinteger(co, seq);
    n = 2;
    if (is_child) {
      lua_pushstring(co, cid);
      n = 3;
    }
    goto done;
  }
  in->fast_seq = seq;
  n = next_outcome(h, in);
  if (n > 0) {
    *delivered = 1;
    lua_pushinteger(co, seq);
    lua_insert(co, -n - 1);
    in->fast_seq = 0;
    n++;
  } else {
    n = -1;
  }
done:
  wf_call_opts_free(&opts);
  free(opt);
  free(name);
  free(arg);
  return n;
}

/* ---- the driver --------------------------------------------------------------------- */

/* Running while an action is in flight; else waiting. */
static wf_status park_status(const wf_instance *in) {
  for (const wf_pend *p = in->pends; p; p = p->next)
    if (p->kind == WF_PEND_ACTION && !p->backing_off) return WF_ST_RUNNING;
  return WF_ST_WAITING;
}

static void run(wf_host *h, wf_instance *in, int nargs) {
  int first = 1, delivered = 0;
  h->trip = 0;
  h->trip_msg[0] = 0;
  lua_State *co = in->co;
  for (;;) {
    int nres = 0;
    /* The budget counts from one wait to the next; while replaying it restarts at each
     * command, so that many recorded steps replayed in one go are not counted as one. */
    if (!h->trip && (in->replaying || first || delivered)) wf_lua_arm_budget(h, co);
    first = 0;
    h->current = in;
    h->mem_enforce = 1;
    int rc = lua_resume(co, h->L, nargs, &nres);
    h->mem_enforce = 0;
    h->current = NULL;
    if (rc == LUA_YIELD) {
      nargs = command(h, in, nres, &delivered);
      if (nargs >= 0) continue;
      if (!in->co) return; /* suspended */
      in->status = park_status(in);
      if (!in->replaying && sync_data(h, in) != 0) {
        char *m = wf_strdup(lua_tostring(h->L, -1));
        lua_pop(h->L, 1);
        fail_with(h, in, m);
        free(m);
      }
      return;
    }
    finish(h, in, rc);
    if (h->reclaim) {
      h->reclaim = 0;
      lua_gc(h->L, LUA_GCCOLLECT);
    }
    return;
  }
}

/* Reads the instance's row, unless it is already known. */
static int load_row(wf_host *h, wf_instance *in) {
  if (!in->loaded) {
    wf_info *info = NULL;
    int rc = wf_store_get_instance(h->st, in->id, &info);
    if (rc != WF_OK) return rc;
    free(in->workflow);
    in->workflow = wf_strdup(info->workflow);
    in->version = info->version;
    in->status = wf_status_parse(info->status);
    in->row_status = in->status;
    free(in->row_wait);
    in->row_wait = wf_strdup(info->waiting_for);
    in->input = wf_strdup(info->input_json);
    in->state = wf_strdup(info->state);
    in->data = wf_strdup(info->data_json);
    in->has_progress = info->progress >= 0;
    in->progress = info->progress;
    in->progress_msg = wf_strdup(info->progress_message);
    in->created_at = info->created_at;
    in->parent_id = wf_strdup(info->parent_id);
    in->run = info->run;
    in->loaded = 1;
    wf_info_free(info);
  }
  return WF_OK;
}

/* Loads the history (indexed by seq for replay) and the unconsumed events of an instance. */
static int load_journal(wf_host *h, wf_instance *in) {
  wf_step_free_replay(in); /* loading twice (a replay check, then its build) leaks nothing */
  /* Created in this batch: no history yet (its inbox may already hold an event). */
  int rc = in->row_new ? WF_OK : wf_store_load_history(h->st, in->id, &in->hist, &in->nhist);
  if (rc != WF_OK) return rc;
  int64_t max = 0;
  for (size_t i = 0; i < in->nhist; i++)
    if (is_command(in->hist[i].kind) && in->hist[i].seq > max) max = in->hist[i].seq;
  in->cmd_at = wf_xmalloc(sizeof(int64_t) * (size_t)(max + 1));
  in->out_at = wf_xmalloc(sizeof(int64_t) * (size_t)(max + 1));
  for (int64_t s = 0; s <= max; s++) in->cmd_at[s] = in->out_at[s] = -1;
  for (size_t i = 0; i < in->nhist; i++) {
    const wf_history_entry *e = &in->hist[i];
    if (e->seq < 1 || e->seq > max) continue;
    if (is_command(e->kind)) {
      in->cmd_at[e->seq] = (int64_t)i;
      if (is_immediate(e->kind)) in->out_at[e->seq] = (int64_t)i;
    } else if (is_outcome(e)) {
      in->out_at[e->seq] = (int64_t)i;
    }
  }
  in->replay_max_seq = max;
  in->rp = 0;
  in->pos = in->nhist ? in->hist[in->nhist - 1].pos : 0;
  in->is_new = in->nhist == 0;
  return wf_engine_load_inbox(h, in);
}

/* Takes the cancellation requests in the inbox (a parent's, wf_child.c): the instance is
 * cancelled in this batch, which consumes them with it. */
static void take_cancel(wf_host *h, wf_instance *in) {
  wf_event *ev;
  while (in->inbox && (ev = wf_inbox_take_exact(in, WF_EVENT_CANCEL))) {
    wf_engine_store_rc(h, wf_store_consume_event(h->st, ev->id, 0));
    wf_event_free(ev);
    in->cancel_requested = 1;
  }
}

/* Builds the coroutine and runs it from the start, replaying the history. */
static void build(wf_host *h, wf_instance *in) {
  lua_State *L = h->L;
  int rc = load_row(h, in);
  if (rc == WF_NOTFOUND) {
    /* A timer or event of an instance that no longer exists: the engine lets it go. */
    in->status = WF_ST_CANCELLED;
    return;
  }
  /* Finished, or suspended with nothing asked of it: no need for its history. */
  if (rc == WF_OK && !in->dry &&
      (wf_status_final(in->status) ||
       (in->status == WF_ST_SUSPENDED && !in->retry_requested && !in->cancel_requested))) {
    wf_step_drop_coroutine(h, in);
    return;
  }
  if (rc == WF_OK) rc = load_journal(h, in);
  if (rc != WF_OK) {
    /* The batch is rolled back and the instance rebuilt once the store answers again. */
    wf_engine_store_rc(h, rc);
    wf_step_free_replay(in);
    return;
  }
  if (!in->dry) take_cancel(h, in);
  if (in->cancel_requested && (in->is_new || in->status == WF_ST_SUSPENDED)) {
    /* Nothing runs to receive the cancellation: the instance ends here (cancelling the
     * children its history started). */
    in->cancel_requested = 0;
    for (size_t i = 0; i < in->nhist && !in->has_children; i++) in->has_children = !strcmp(in->hist[i].kind, "child");
    if (in->is_new) wf_engine_history(h, in, 0, "started", NULL, in->input ? in->input : "null");
    in->is_new = 0;
    wf_log(h, WF_LOG_INFO, in->id, NULL, "cancelled");
    end_instance(h, in, WF_ST_CANCELLED, "cancelled", NULL,
                 wf_strdup(in->status == WF_ST_SUSPENDED ? "cancelled while suspended" : "cancelled before it started"));
    return;
  }
  in->retry_requested = 0;
  int version = in->is_new && in->version == 0 ? 0 : in->version;
  if (!wf_lua_push_def(h, in->workflow, &version)) {
    if (in->is_new) wf_engine_history(h, in, 0, "started", NULL, in->input);
    in->is_new = 0;
    if (in->version)
      wf_step_suspend(h, in, "workflow '%s' version %d is not loaded on this host: load it, then run `wfhost retry %s`",
              in->workflow, in->version, in->id);
    else
      wf_step_suspend(h, in, "workflow '%s' is not loaded on this host: load it, then run `wfhost retry %s`",
              in->workflow, in->id);
    return;
  }
  if (in->version != version) in->row_dirty = 1;
  in->version = version;
  int run_idx = lua_gettop(L);

  lua_State *co = lua_newthread(L);
  in->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  in->co = co;
  h->nlive++;

  lua_pushstring(L, in->id);
  lua_pushstring(L, in->workflow);
  lua_pushinteger(L, in->version);
  if (wf_lua_callmod(h, "new_ctx", 3, 1) != 0) {
    lua_pushnil(L);
  }
  in->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  lua_rawgeti(L, LUA_REGISTRYINDEX, h->mod_ref);
  lua_getfield(L, -1, "main");
  lua_remove(L, -2);
  lua_pushvalue(L, run_idx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, in->ctx_ref);
  lua_pushstring(L, in->input ? in->input : "null");
  lua_xmove(L, co, 4);
  lua_pop(L, 1); /* run */

  in->seq = 0;
  in->emit_seq = in->emit_n = 0;
  in->replaying = in->replay_max_seq > 0;
  if (in->replaying)
    wf_log(h, WF_LOG_DEBUG, in->id, NULL, "rebuilding by replay (%zu history entries)", in->nhist);
  in->cancel_delivered = 0;
  if (in->is_new) {
    wf_engine_history(h, in, 0, "started", NULL, in->input ? in->input : "null");
    in->is_new = 0;
    wf_log(h, WF_LOG_INFO, in->id, NULL, "started %s v%d", in->workflow, in->version);
  }
  in->status = WF_ST_RUNNING;
  run(h, in, 3);
  if (in->co && !in->replaying) wf_step_free_replay(in);
}

int wf_step_replay_check(wf_host *h, const char *id, char **report) {
  *report = NULL;
  wf_instance *in = calloc(1, sizeof *in);
  if (!in) abort();
  in->id = wf_strdup(id);
  in->dry = 1;
  in->co_ref = in->ctx_ref = LUA_NOREF;
  in->inbox_tail = &in->inbox;
  int rc = load_row(h, in);
  if (rc == WF_OK) rc = load_journal(h, in);
  if (rc != WF_OK) {
    wf_instance_release(h, in);
    return rc == WF_NOTFOUND ? wf_fail(h, rc, "no instance '%s'", id) : wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  }
  in->dry_status = in->status;
  if (in->is_new) { /* never ran: nothing to check */
    wf_instance_release(h, in);
    return WF_OK;
  }
  /* As the engine would run it, with every effect suppressed. */
  in->retry_requested = 1;
  in->cancel_requested = 0;
  build(h, in);
  if (!in->dry_done && !in->dry_report)
    in->dry_report = wf_strdup("the replay did not reach the end of the history (the code parked early)");
  *report = in->dry_report;
  in->dry_report = NULL;
  wf_instance_release(h, in);
  return WF_OK;
}

/* Hands the instance its next outcome, if one is ready; returns 1 if it did (and ran the
 * coroutine). */
static int deliver(wf_host *h, wf_instance *in) {
  int n = next_outcome(h, in);
  if (n <= 0 || !in->co) return 0;
  if (in->fast_seq) { /* the main thread's command: its own seq first */
    lua_pushinteger(in->co, in->fast_seq);
    lua_insert(in->co, -n - 1);
    in->fast_seq = 0;
    n++;
  }
  run(h, in, n);
  return 1;
}

void wf_step_advance(wf_host *h, wf_instance *in) {
  if (!in->co) build(h, in);
  else if (in->inbox) take_cancel(h, in);
  if (in->co && in->nignored) {
    for (size_t i = 0; i < in->nignored; i++) wf_engine_history(h, in, in->ignored[i], "ignored", NULL, NULL);
    in->nignored = 0;
  }
  /* An action step retrying without end journals entries while its coroutine stays parked.
   * A cancellation still goes through: the workflow's handler fails at its next command. */
  if (in->co && !wf_pend_has_call(in) && !in->cancel_requested && history_limit_reached(h, in)) return;
  while (in->co && !in->replaying && deliver(h, in)) {
  }
  /* Parked: an attempt may have ended and its retry be waiting now, or the reverse. */
  if (in->co && (in->status == WF_ST_RUNNING || in->status == WF_ST_WAITING)) in->status = park_status(in);
}

/* note(_, kind, ...): state labels, log lines, patch checks, progress, saga steps and outbox
 * messages (wf_outbox.c) of the running instance, recorded without yielding. */
int wf_step_note(lua_State *L) {
  wf_host *h = lua_touserdata(L, lua_upvalueindex(1));
  wf_instance *in = h->current;
  const char *kind = luaL_checkstring(L, 2);
  if (!in) {
    if (!strcmp(kind, "patched")) return luaL_error(L, "ctx:patched can only be called by a running instance");
    return 0;
  }
  if (!strcmp(kind, "patched")) return wf_patch_note(h, in, L);
  if (!strcmp(kind, "progress")) return wf_progress_note(h, in, L);
  if (!strcmp(kind, "state")) {
    if (!in->replaying) wf_histsize_check_note(h, in, L);
    const char *label = lua_tostring(L, 3);
    if ((label == NULL) != (in->state == NULL) || (label && strcmp(label, in->state) != 0)) {
      free(in->state);
      in->state = wf_strdup(label);
      in->row_dirty = 1;
    }
    if (!in->replaying) wf_engine_history(h, in, in->seq, "state", label, NULL);
  } else if (!strcmp(kind, "compensation")) { /* a saga's progress: begin, done, failed, end */
    if (!in->replaying) {
      char *err = lua_isstring(L, 5) ? wf_json_quote(lua_tostring(L, 5)) : NULL;
      char data[160];
      snprintf(data, sizeof data, "{\"%s\":%lld%s", !strcmp(luaL_checkstring(L, 3), "begin") || !strcmp(lua_tostring(L, 3), "end") ? "count" : "index",
               (long long)luaL_optinteger(L, 4, 0), err ? ",\"error\":" : "}");
      size_t n = strlen(data) + (err ? strlen(err) : 0) + 2;
      char *json = wf_xmalloc(n);
      snprintf(json, n, "%s%s%s", data, err ? err : "", err ? "}" : "");
      wf_engine_history(h, in, in->seq, "compensation", lua_tostring(L, 3), json);
      free(json);
      free(err);
    }
  } else if (!strcmp(kind, "arm")) { /* a branch thread runs after a wait: a fresh budget */
    lua_State *t = lua_tothread(L, 3);
    if (t && !h->trip) wf_lua_arm_budget(h, t);
  } else if (!strcmp(kind, "log") && !in->replaying) {
    wf_log(h, wf_log_level_parse(luaL_checkstring(L, 3)), in->id, lua_tostring(L, 5), "%s", luaL_checkstring(L, 4));
  } else if (!strcmp(kind, "emit")) {
    return wf_outbox_emit(h, in, L);
  }
  return 0;
}
