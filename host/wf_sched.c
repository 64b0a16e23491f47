/*
 * wf_sched.c — schedules: workflows started at the firings of a cron expression.
 *
 * A schedule is a row of the store's `schedules` table: its definition (workflow, cron, zone,
 * input, catch-up and overlap policies, origin) and where it stands (next_at, the durable
 * next firing; the last firing that started an instance; counters). Schedules come from
 * workflow definitions (`schedule = ...`, written at host start by wf_sched_sync_definitions)
 * or from operators (wf_schedule_add, in either mode).
 *
 * The host keeps the rows in memory and one libuv timer for the earliest next_at. A batch
 * fires what is due (wf_sched_fire): it creates the instance, with the deterministic id
 * "<schedule id>@<firing time, ISO 8601 UTC>", and advances next_at, in the same transaction,
 * so a crash can neither start a firing twice nor lose one (and the id makes a repeated
 * start a no-op anyway). A batch that fails to commit makes the engine recover, which reads
 * the schedules from the store again.
 *
 * Firings found due more than WF_SCHEDULE_GRACE_MS late were missed (the host was down, or
 * its loop blocked): catch-up `skip` counts them and goes on from now; `once` starts one
 * instance for the latest of them. A firing whose schedule's previous instance has not
 * finished is skipped and counted under overlap `skip`, started under `allow`.
 *
 * Clients change schedules by writing the row and a "schedules" request; the host reads the
 * schedules again when it takes the request.
 */
#include <inttypes.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wf_cron.h"
#include "wf_engine.h"

typedef struct wf_sched {
  char *id, *workflow, *timezone, *input;
  wf_cron cron;
  int valid;           /* cron and zone parse: the schedule can fire */
  wf_catch_up catch_up;
  wf_overlap overlap;
  int64_t next_at;     /* 0: no next firing */
  char *last_instance; /* the instance of the last firing that started one, or NULL */
} wf_sched;

static const char *catch_up_name(wf_catch_up c) { return c == WF_CATCH_UP_ONCE ? "once" : "skip"; }
static const char *overlap_name(wf_overlap o) { return o == WF_OVERLAP_ALLOW ? "allow" : "skip"; }

/* ---- the host's schedules ------------------------------------------------------------ */

/* The loop's cached time may be behind (the timer was started before the loop ran), and the
 * host's clock may be injected: a wake-up before the firing is due arms the timer again. */
static void on_sched_timer(uv_timer_t *t) {
  wf_host *h = t->data;
  if (wf_sched_due(h)) wf_engine_kick(h);
  else wf_sched_arm(h);
}

void wf_sched_init(wf_host *h) {
  uv_timer_init(h->loop, &h->sched_timer);
  h->sched_timer.data = h;
}

static void sched_clear(wf_sched *s) {
  free(s->id);
  free(s->workflow);
  free(s->timezone);
  free(s->input);
  free(s->last_instance);
}

void wf_sched_free_all(wf_host *h) {
  for (size_t i = 0; i < h->nscheds; i++) sched_clear(&h->scheds[i]);
  free(h->scheds);
  h->scheds = NULL;
  h->nscheds = 0;
  h->sched_next = 0;
}

void wf_sched_arm(wf_host *h) {
  int64_t next = 0;
  for (size_t i = 0; i < h->nscheds; i++) {
    int64_t t = h->scheds[i].next_at;
    if (h->scheds[i].valid && t > 0 && (!next || t < next)) next = t;
  }
  h->sched_next = next;
  if (!h->started || h->closing) return;
  if (!next) {
    uv_timer_stop(&h->sched_timer);
    return;
  }
  int64_t delay = next - wf_now(h);
  uv_timer_start(&h->sched_timer, on_sched_timer, delay > 0 ? (uint64_t)delay : 0, 0);
}

int wf_sched_due(wf_host *h) { return h->sched_next > 0 && h->sched_next <= wf_now(h); }

static void load_row(void *ud, const wf_schedule_rec *r) {
  wf_host *h = ud;
  h->scheds = wf_xrealloc(h->scheds, (h->nscheds + 1) * sizeof *h->scheds);
  wf_sched *s = &h->scheds[h->nscheds++];
  memset(s, 0, sizeof *s);
  s->id = wf_strdup(r->id);
  s->workflow = wf_strdup(r->workflow);
  s->timezone = wf_strdup(r->timezone);
  s->input = wf_strdup(r->input);
  s->catch_up = !strcmp(r->catch_up, "once") ? WF_CATCH_UP_ONCE : WF_CATCH_UP_SKIP;
  s->overlap = !strcmp(r->overlap, "allow") ? WF_OVERLAP_ALLOW : WF_OVERLAP_SKIP;
  s->next_at = r->next_at;
  s->last_instance = wf_strdup(r->last_instance);
  char err[512];
  s->valid = wf_cron_parse(r->cron, &s->cron, err, sizeof err) == 0 && wf_tz_check(r->timezone, err, sizeof err) == 0;
  if (!s->valid) wf_log(h, WF_LOG_ERROR, NULL, NULL, "schedule %s does not fire: %s", r->id, err);
}

void wf_sched_load(wf_host *h) {
  wf_sched_free_all(h);
  int rc = wf_store_each_schedule(h->st, load_row, h);
  if (h->in_batch) wf_engine_store_rc(h, rc);
  else if (rc != WF_OK) wf_log(h, WF_LOG_ERROR, NULL, NULL, "schedules not read: %s", wf_store_errmsg(h->st));
  wf_sched_arm(h);
}

/* 1 if the instance has not finished (a suspended one has not). */
static int unfinished(wf_host *h, const char *id) {
  if (!id) return 0;
  wf_instance *in = wf_engine_find(h, id);
  if (in && in->loaded) return !wf_status_final(in->status);
  wf_info *info = NULL;
  int rc = wf_store_get_instance(h->st, id, &info);
  if (rc == WF_NOTFOUND) return 0;
  if (rc != WF_OK) {
    wf_engine_store_rc(h, rc); /* the batch rolls back: nothing is decided */
    return 1;
  }
  int r = !wf_status_final(wf_status_parse(info->status));
  wf_info_free(info);
  return r;
}

/* The input of the firing at `at`: the schedule's object with "schedule": {id, at, at_ms}. */
static char *firing_input(const wf_sched *s, int64_t at) {
  char iso[32];
  wf_cron_format(at, iso);
  char *qid = wf_json_quote(s->id);
  const char *p = s->input;
  while (*p && *p != '{') p++;
  if (*p) p++;
  const char *q = p;
  while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
  size_t n = strlen(qid) + strlen(p) + 128;
  char *out = wf_xmalloc(n);
  snprintf(out, n, "{\"schedule\":{\"id\":%s,\"at\":\"%s\",\"at_ms\":%" PRId64 "}%s%s", qid, iso, at,
           *q == '}' ? "" : ",", p);
  free(qid);
  return out;
}

static void fire_one(wf_host *h, wf_sched *s, int64_t now) {
  int64_t count = 0, last = 0;
  int64_t next = wf_cron_walk(&s->cron, s->timezone, s->next_at, now, &count, &last);
  if (next < 0) next = 0;
  int64_t run_at = count && (s->catch_up == WF_CATCH_UP_ONCE || now - last <= WF_SCHEDULE_GRACE_MS) ? last : 0;
  int64_t missed = count - (run_at ? 1 : 0), overlapped = 0;
  char id[WF_ID_MAX + 1] = "", at[32], next_txt[32];
  wf_cron_format(last, at);
  wf_cron_format(next, next_txt);
  if (missed && run_at)
    wf_log(h, WF_LOG_WARN, NULL, NULL, "schedule %s: %" PRId64 " firing%s missed before the one at %s, which runs "
           "now (catch-up %s)", s->id, missed, missed == 1 ? "" : "s", at, catch_up_name(s->catch_up));
  else if (missed)
    wf_log(h, WF_LOG_WARN, NULL, NULL, "schedule %s: %" PRId64 " firing%s missed, the latest at %s (catch-up %s); "
           "next at %s", s->id, missed, missed == 1 ? "" : "s", at, catch_up_name(s->catch_up),
           next ? next_txt : "never");
  if (run_at && s->overlap == WF_OVERLAP_SKIP && unfinished(h, s->last_instance)) {
    wf_log(h, WF_LOG_WARN, NULL, NULL, "schedule %s: firing at %s skipped: %s has not finished (overlap skip)",
           s->id, at, s->last_instance);
    overlapped = 1;
    run_at = 0;
  }
  if (run_at) {
    snprintf(id, sizeof id, "%s@%s", s->id, at);
    char *input = firing_input(s, run_at);
    int created = 0;
    int rc = wf_engine_create(h, id, s->workflow, wf_lua_has_workflow(h, s->workflow), input, &created);
    free(input);
    if (rc == WF_OK)
      wf_log(h, WF_LOG_INFO, id, NULL, "schedule %s: %s %s for the firing at %s", s->id,
             created ? "started" : "already had", s->workflow, at);
  }
  int rc = wf_store_advance_schedule(h->st, s->id, next, run_at, run_at ? id : NULL, missed, overlapped, now);
  if (rc != WF_NOTFOUND) wf_engine_store_rc(h, rc); /* removed meanwhile: the request reloads */
  s->next_at = next;
  if (run_at) {
    free(s->last_instance);
    s->last_instance = wf_strdup(id);
  }
}

void wf_sched_fire(wf_host *h) {
  if (!wf_sched_due(h)) return;
  int64_t now = wf_now(h);
  for (size_t i = 0; i < h->nscheds && h->batch_rc == WF_OK; i++) {
    wf_sched *s = &h->scheds[i];
    if (s->valid && s->next_at > 0 && s->next_at <= now) fire_one(h, s, now);
  }
  wf_sched_arm(h);
}

/* ---- definitions --------------------------------------------------------------------- */

typedef struct origin_list {
  char **ids;   /* schedules of definitions in the store */
  int *origin_def;
  size_t n;
} origin_list;

static void collect_origin(void *ud, const wf_schedule_rec *r) {
  origin_list *l = ud;
  l->ids = wf_xrealloc(l->ids, (l->n + 1) * sizeof *l->ids);
  l->origin_def = wf_xrealloc(l->origin_def, (l->n + 1) * sizeof *l->origin_def);
  l->ids[l->n] = wf_strdup(r->id);
  l->origin_def[l->n++] = !strcmp(r->origin, "definition");
}

void wf_sched_sync_definitions(wf_host *h) {
  wf_def_schedule *defs;
  size_t n = wf_lua_def_schedules(h, &defs);
  origin_list have = {0};
  int64_t now = wf_now(h);
  int rc = wf_store_begin(h->st);
  if (rc == WF_OK) rc = wf_store_each_schedule(h->st, collect_origin, &have);
  for (size_t i = 0; i < n && rc == WF_OK; i++) {
    wf_def_schedule *d = &defs[i];
    for (size_t k = 0; k < have.n; k++)
      if (!have.origin_def[k] && !strcmp(have.ids[k], d->workflow))
        wf_log(h, WF_LOG_WARN, NULL, NULL, "schedule %s: the operator's schedule is replaced by the one workflow %s "
               "declares", d->workflow, d->workflow);
    wf_cron c;
    char err[512];
    int64_t next = wf_cron_parse(d->cron, &c, err, sizeof err) == 0 ? wf_cron_next(&c, d->timezone, now) : 0;
    wf_schedule_rec r = {.id = d->workflow, .workflow = d->workflow, .cron = d->cron, .timezone = d->timezone,
                         .input = d->input, .catch_up = d->catch_up, .overlap = d->overlap,
                         .origin = "definition", .next_at = next > 0 ? next : 0, .updated_at = now};
    rc = wf_store_put_schedule(h->st, &r);
  }
  /* A definition that no longer declares its schedule: the schedule goes. */
  for (size_t k = 0; k < have.n && rc == WF_OK; k++) {
    int declared = 0;
    for (size_t i = 0; i < n && !declared; i++) declared = !strcmp(defs[i].workflow, have.ids[k]);
    if (!have.origin_def[k] || declared) continue;
    rc = wf_store_delete_schedule(h->st, have.ids[k], NULL);
    if (rc == WF_OK)
      wf_log(h, WF_LOG_INFO, NULL, NULL, "schedule %s removed: no loaded definition declares it", have.ids[k]);
  }
  if (rc == WF_OK) rc = wf_store_commit(h->st);
  else wf_store_rollback(h->st);
  if (rc != WF_OK) wf_log(h, WF_LOG_ERROR, NULL, NULL, "schedules of the definitions not written: %s", wf_store_errmsg(h->st));
  for (size_t k = 0; k < have.n; k++) free(have.ids[k]);
  free(have.ids);
  free(have.origin_def);
  wf_lua_free_def_schedules(defs, n);
}

int wf_sched_l_check(lua_State *L) {
  const char *cron = luaL_checkstring(L, 1), *tz = luaL_optstring(L, 2, NULL);
  wf_cron c;
  char err[512];
  if (wf_cron_parse(cron, &c, err, sizeof err) != 0 || wf_tz_check(tz, err, sizeof err) != 0) {
    lua_pushstring(L, err);
    return 1;
  }
  return 0;
}

/* ---- the public functions ------------------------------------------------------------ */

void wf_schedule_opts_init(wf_schedule_opts *o) { memset(o, 0, sizeof *o); }

static int valid_schedule_id(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n > 100) return 0;
  for (const char *p = id; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr("_.:-", *p)))
      return 0;
  return 1;
}

typedef struct find_one {
  const char *id;
  int found, origin_def;
} find_one;

static void see_one(void *ud, const wf_schedule_rec *r) {
  find_one *f = ud;
  if (strcmp(r->id, f->id)) return;
  f->found = 1;
  f->origin_def = !strcmp(r->origin, "definition");
}

/* Looks the schedule id up in the store. */
static int find_schedule(wf_host *h, const char *id, find_one *f) {
  *f = (find_one){.id = id};
  int rc = wf_store_each_schedule(h->st, see_one, f);
  return rc == WF_OK ? WF_OK : wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
}

/* Writes a change in a transaction of its own: a client adds the request that makes the host
 * read the schedules again; a host reads them itself. */
static int write_change(wf_host *h, const wf_schedule_rec *put, const char *remove_id) {
  int rc = wf_store_begin(h->st);
  if (rc == WF_OK) rc = put ? wf_store_put_schedule(h->st, put) : wf_store_delete_schedule(h->st, remove_id, NULL);
  if (rc == WF_OK && h->cfg.mode == WF_MODE_CLIENT)
    rc = wf_store_add_request(h->st, put ? put->id : remove_id, "schedules", wf_now(h));
  if (rc == WF_OK) rc = wf_store_commit(h->st);
  else wf_store_rollback(h->st);
  if (rc != WF_OK) return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  if (h->cfg.mode == WF_MODE_HOST) wf_sched_load(h);
  return WF_OK;
}

int wf_schedule_add(wf_host *h, const char *id, const char *workflow, const char *cron, const char *input_json,
                    const wf_schedule_opts *opts) {
  if (!h) return WF_MISUSE;
  if (h->cfg.mode == WF_MODE_HOST && h->in_batch) return wf_fail(h, WF_MISUSE, "wf_schedule_add cannot run inside a batch");
  wf_schedule_opts defaults;
  if (!opts) {
    wf_schedule_opts_init(&defaults);
    opts = &defaults;
  }
  if (!workflow || !*workflow) return wf_fail(h, WF_INVALID, "no workflow name");
  if (!id) id = workflow;
  if (!valid_schedule_id(id))
    return wf_fail(h, WF_INVALID, "bad schedule id '%s': 1 to 100 letters, digits, '_', '.', ':' or '-'", id);
  if (!cron) return wf_fail(h, WF_INVALID, "no cron expression");
  wf_cron c;
  char err[600];
  if (wf_cron_parse(cron, &c, err, sizeof err) != 0) return wf_fail(h, WF_INVALID, "%s", err);
  const char *tz = opts->timezone && strcmp(opts->timezone, "UTC") ? opts->timezone : NULL;
  if (wf_tz_check(tz, err, sizeof err) != 0) return wf_fail(h, WF_INVALID, "%s", err);
  if (opts->catch_up != WF_CATCH_UP_SKIP && opts->catch_up != WF_CATCH_UP_ONCE)
    return wf_fail(h, WF_INVALID, "bad catch-up policy %d", (int)opts->catch_up);
  if (opts->overlap != WF_OVERLAP_SKIP && opts->overlap != WF_OVERLAP_ALLOW)
    return wf_fail(h, WF_INVALID, "bad overlap policy %d", (int)opts->overlap);
  const char *input = input_json ? input_json : "{}";
  if (strlen(input) > h->cfg.max_payload)
    return wf_fail(h, WF_INVALID, "the input is %zu bytes; the limit is %zu (config max_payload)", strlen(input),
                   h->cfg.max_payload);
  if (wf_json_object_without(h, input, "schedule", err, sizeof err) != 0)
    return wf_fail(h, WF_INVALID, "bad schedule input: %s", err);
  if (h->cfg.mode == WF_MODE_HOST) {
    if (!wf_lua_has_workflow(h, workflow))
      return wf_fail(h, WF_NOTFOUND, "unknown workflow '%s': no loaded file defines it", workflow);
  } else {
    int known = -1;
    int rc = wf_store_catalog_has(h->st, workflow, &known);
    if (rc != WF_OK) return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
    if (known == 0)
      return wf_fail(h, WF_NOTFOUND, "unknown workflow '%s': the host running on this database has not loaded it",
                     workflow);
  }
  find_one f;
  int rc = find_schedule(h, id, &f);
  if (rc != WF_OK) return rc;
  if (f.found && f.origin_def)
    return wf_fail(h, WF_STATE, "schedule '%s' is declared by the definition of workflow '%s': change it in the "
                   "workflow file, or pass another id", id, id);
  int64_t now = wf_now(h), next = wf_cron_next(&c, tz, now);
  wf_schedule_rec r = {.id = id, .workflow = workflow, .cron = cron, .timezone = tz, .input = input,
                       .catch_up = catch_up_name(opts->catch_up), .overlap = overlap_name(opts->overlap),
                       .origin = "operator", .next_at = next > 0 ? next : 0, .updated_at = now};
  return write_change(h, &r, NULL);
}

int wf_schedule_remove(wf_host *h, const char *id) {
  if (!h) return WF_MISUSE;
  if (h->cfg.mode == WF_MODE_HOST && h->in_batch)
    return wf_fail(h, WF_MISUSE, "wf_schedule_remove cannot run inside a batch");
  if (!id) return wf_fail(h, WF_INVALID, "no schedule id");
  find_one f;
  int rc = find_schedule(h, id, &f);
  if (rc != WF_OK) return rc;
  if (!f.found) return wf_fail(h, WF_NOTFOUND, "no schedule '%s'", id);
  if (f.origin_def)
    return wf_fail(h, WF_STATE, "schedule '%s' is declared by the definition of workflow '%s': remove its "
                   "`schedule` field there", id, id);
  return write_change(h, NULL, id);
}

typedef struct info_acc {
  wf_schedule_info *list;
  size_t n;
} info_acc;

static void collect_info(void *ud, const wf_schedule_rec *r) {
  info_acc *a = ud;
  a->list = wf_xrealloc(a->list, (a->n + 1) * sizeof *a->list);
  a->list[a->n++] = (wf_schedule_info){
      .id = wf_strdup(r->id), .workflow = wf_strdup(r->workflow), .cron = wf_strdup(r->cron),
      .timezone = wf_strdup(r->timezone ? r->timezone : "UTC"), .input_json = wf_strdup(r->input),
      .catch_up = wf_strdup(r->catch_up), .overlap = wf_strdup(r->overlap), .origin = wf_strdup(r->origin),
      .next_at = r->next_at, .last_at = r->last_at, .last_instance = wf_strdup(r->last_instance),
      .missed = r->missed, .overlapped = r->overlapped, .created_at = r->created_at, .updated_at = r->updated_at};
}

int wf_schedules(wf_host *h, wf_schedule_info **out, size_t *n) {
  if (!h || !out || !n) return WF_MISUSE;
  info_acc a = {0};
  int rc = wf_store_each_schedule(h->st, collect_info, &a);
  if (rc != WF_OK) {
    wf_schedules_free(a.list, a.n);
    *out = NULL;
    *n = 0;
    return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  }
  *out = a.list;
  *n = a.n;
  return WF_OK;
}

void wf_schedules_free(wf_schedule_info *list, size_t n) {
  for (size_t i = 0; list && i < n; i++) {
    wf_schedule_info *s = &list[i];
    free(s->id);
    free(s->workflow);
    free(s->cron);
    free(s->timezone);
    free(s->input_json);
    free(s->catch_up);
    free(s->overlap);
    free(s->origin);
    free(s->last_instance);
  }
  free(list);
}
