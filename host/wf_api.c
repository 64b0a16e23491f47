/*
 * wf_api.c — the public functions of wfhost.h: opening and closing handles, errors and
 * logging, requests (start, signal, cancel, retry) in host and client mode, reads, and
 * running the loop. Small shared helpers (strings, time, randomness) live here too.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "wf_engine.h"

/* ---- helpers ------------------------------------------------------------------------- */

void *wf_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) abort(); /* the host cannot keep its promises without memory */
  return p;
}

void *wf_xrealloc(void *p, size_t n) {
  p = realloc(p, n ? n : 1);
  if (!p) abort();
  return p;
}

char *wf_strdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = wf_xmalloc(n);
  memcpy(d, s, n);
  return d;
}

char *wf_json_quote(const char *s) {
  size_t n = strlen(s), cap = n * 6 + 3, j = 0;
  char *o = wf_xmalloc(cap);
  o[j++] = '"';
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"': o[j++] = '\\'; o[j++] = '"'; break;
    case '\\': o[j++] = '\\'; o[j++] = '\\'; break;
    case '\n': o[j++] = '\\'; o[j++] = 'n'; break;
    case '\r': o[j++] = '\\'; o[j++] = 'r'; break;
    case '\t': o[j++] = '\\'; o[j++] = 't'; break;
    default:
      if (*p < 0x20) j += (size_t)snprintf(o + j, cap - j, "\\u%04x", *p);
      else o[j++] = (char)*p;
    }
  }
  o[j++] = '"';
  o[j] = 0;
  return o;
}

void wf_format_time(int64_t ms, char out[32]) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, 32 - n, ".%03dZ", (int)(ms % 1000));
}

static int64_t real_clock(void *ud) {
  (void)ud;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t wf_now(wf_host *h) { return h->cfg.clock(h->cfg.clock_ud); }

/* xoshiro256** */
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t next64(uint64_t *s) {
  uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return r;
}

uint64_t wf_rand64(wf_host *h) { return next64(h->rng); }

/* Seeds a generator from seed, or from the OS when seed is 0. */
static void seed_rng(uint64_t rng[4], uint64_t seed) {
  if (!seed && getrandom(rng, 4 * sizeof *rng, 0) == (ssize_t)(4 * sizeof *rng)) return;
  if (!seed) seed = (uint64_t)real_clock(NULL) ^ (uint64_t)(uintptr_t)rng;
  for (int i = 0; i < 4; i++) { /* splitmix64 */
    uint64_t z = (seed += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    rng[i] = z ^ (z >> 31);
  }
}

void wf_uuid(uint64_t rng[4], char out[37]) {
  uint64_t a = next64(rng), b = next64(rng);
  a = (a & ~0xf000ull) | 0x4000ull;                       /* version 4 */
  b = (b & 0x3fffffffffffffffull) | 0x8000000000000000ull; /* variant 10 */
  snprintf(out, 37, "%08x-%04x-%04x-%04x-%012llx", (unsigned)(a >> 32), (unsigned)((a >> 16) & 0xffff),
           (unsigned)(a & 0xffff), (unsigned)(b >> 48), (unsigned long long)(b & 0xffffffffffffull));
}

void wf_uuid7(uint64_t rng[4], int64_t ms, char out[37]) {
  uint64_t a = next64(rng), b = next64(rng);
  uint64_t t = (uint64_t)ms & 0xffffffffffffull;
  b = (b & 0x3fffffffffffffffull) | 0x8000000000000000ull; /* variant 10 */
  snprintf(out, 37, "%08x-%04x-7%03x-%04x-%012llx", (unsigned)(t >> 16), (unsigned)(t & 0xffff),
           (unsigned)(a & 0xfff), (unsigned)(b >> 48), (unsigned long long)(b & 0xffffffffffffull));
}

int wf_valid_id(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n > WF_ID_MAX) return 0;
  for (const unsigned char *p = (const unsigned char *)id; *p; p++)
    if (*p < 0x21 || *p == 0x7f) return 0; /* no spaces or control characters */
  return 1;
}

static const char *const status_names[] = {"pending", "running", "waiting", "completed",
                                           "failed", "cancelled", "suspended"};

const char *wf_status_name(wf_status s) { return status_names[s]; }

int wf_status_parse(const char *s) {
  for (int i = 0; i < 7; i++)
    if (s && !strcmp(s, status_names[i])) return i;
  return WF_ST_PENDING;
}

int wf_status_final(wf_status s) {
  return s == WF_ST_COMPLETED || s == WF_ST_FAILED || s == WF_ST_CANCELLED;
}

/* ---- errors and logging -------------------------------------------------------------- */

int wf_fail(wf_host *h, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(h->errmsg, sizeof h->errmsg, fmt, ap);
  va_end(ap);
  return rc;
}

const char *wf_errmsg(const wf_host *h) {
  if (!h) return "no handle (out of memory?)";
  return h->errmsg[0] ? h->errmsg : "no error";
}

const char *wf_strerror(int rc) {
  static const char *const names[] = {"ok", "error", "invalid argument", "not found",
                                      "refused in this state", "busy", "I/O error",
                                      "schema too new", "misuse", "workflow code error"};
  return rc >= 0 && rc <= WF_LUA ? names[rc] : "unknown error";
}

static void stderr_log(void *ud, wf_log_level level, const char *instance, const char *msg,
                       const char *fields_json) {
  static const char *const lv[] = {"DEBUG", "INFO", "WARN", "ERROR"};
  wf_host *h = ud;
  char t[32];
  wf_format_time(wf_now(h), t);
  fprintf(stderr, "%s %-5s %s%s%s%s%s%s\n", t, lv[level], instance ? "[" : "", instance ? instance : "",
          instance ? "] " : "", msg, fields_json ? " " : "", fields_json ? fields_json : "");
}

wf_log_level wf_log_level_parse(const char *s) {
  if (s && !strcmp(s, "debug")) return WF_LOG_DEBUG;
  if (s && !strcmp(s, "warn")) return WF_LOG_WARN;
  if (s && !strcmp(s, "error")) return WF_LOG_ERROR;
  return WF_LOG_INFO;
}

void wf_log(wf_host *h, wf_log_level lvl, const char *instance, const char *fields_json,
            const char *fmt, ...) {
  if (lvl < h->cfg.log_level) return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (h->cfg.log) h->cfg.log(h->cfg.log_ud, lvl, instance, msg, fields_json);
  else stderr_log(h, lvl, instance, msg, fields_json);
}

/* ---- open and close ------------------------------------------------------------------ */

void wf_config_init(wf_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->log_level = WF_LOG_INFO;
}

int wf_host_open(const char *db_path, const wf_config *cfg, wf_host **out) {
  *out = NULL;
  wf_host *h = calloc(1, sizeof *h);
  if (!h) return WF_ERROR;
  *out = h;
  if (cfg) h->cfg = *cfg;
  else wf_config_init(&h->cfg);
  if (!h->cfg.cache_size) h->cfg.cache_size = 10000;
  if (!h->cfg.instruction_budget) h->cfg.instruction_budget = 100000000;
  if (!h->cfg.memory_limit) h->cfg.memory_limit = (size_t)1 << 30;
  if (!h->cfg.max_payload) h->cfg.max_payload = (size_t)1 << 20;
  if (!h->cfg.poll_interval_ms) h->cfg.poll_interval_ms = 10;
  if (!h->cfg.clock) h->cfg.clock = real_clock;
  if (!h->cfg.history_warn) h->cfg.history_warn = 10000;
  if (!h->cfg.history_limit) h->cfg.history_limit = 100000;
  if (h->cfg.history_warn < 0 || h->cfg.history_limit < 0)
    return wf_fail(h, WF_INVALID, "history_warn and history_limit must be >= 0 (0: the default)");
  if (!db_path) return wf_fail(h, WF_INVALID, "no database path");
  h->db_path = wf_strdup(db_path);
  seed_rng(h->rng, h->cfg.seed);
  seed_rng(h->id_rng, 0);
  int rc = wf_store_open(db_path, h->cfg.durability, &h->st);
  if (rc != WF_OK) return wf_fail(h, rc, "%s", h->st ? wf_store_errmsg(h->st) : "cannot open the database");
  if (h->cfg.mode == WF_MODE_HOST) {
    rc = wf_store_lock_host(h->st);
    if (rc != WF_OK) return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  }
  rc = wf_lua_open(h);
  if (rc != WF_OK) return rc;
  if (h->cfg.mode == WF_MODE_HOST) {
    rc = wf_engine_init(h);
    if (rc != WF_OK) return rc;
    wf_action_register_builtins(h);
  }
  return WF_OK;
}

void wf_host_close(wf_host *h) {
  if (!h) return;
  wf_http_close(h);
  if (h->cfg.mode == WF_MODE_HOST && h->loop) wf_engine_shutdown(h);
  wf_outbox_free(h);
  wf_action_free_all(h);
  wf_breaker_free_all(h);
  wf_histsize_free(h);
  wf_lua_close(h);
  wf_store_close(h->st);
  free(h->db_path);
  free(h);
}

/* ---- workflow code ------------------------------------------------------------------- */

int wf_load_dir(wf_host *h, const char *dir) {
  if (!h) return WF_MISUSE;
  if (h->cfg.mode != WF_MODE_HOST) return wf_fail(h, WF_MISUSE, "workflows are loaded by a host, not a client handle");
  int rc = wf_lua_load_dir(h, dir, 0);
  if (rc == WF_OK && h->started) { /* keep the catalog current for clients, and the schedules */
    wf_engine_store_catalog(h);
    wf_sched_sync_definitions(h);
    wf_sched_load(h);
  }
  return rc;
}

int wf_check_dir(wf_host *h, const char *dir) {
  if (!h) return WF_MISUSE;
  return wf_lua_load_dir(h, dir, 1);
}

/* ---- requests ------------------------------------------------------------------------ */

static int check_payload(wf_host *h, const char *what, const char *json) {
  size_t len = strlen(json);
  if (len > h->cfg.max_payload)
    return wf_fail(h, WF_INVALID, "%s is %zu bytes; the limit is %zu (config max_payload)", what, len,
                   h->cfg.max_payload);
  char err[300];
  if (wf_json_check(h, json, err, sizeof err) != 0)
    return wf_fail(h, WF_INVALID, "%s is not valid JSON: %s", what, err);
  return WF_OK;
}

/* The status of an instance as the engine or the store knows it. */
static int lookup(wf_host *h, const char *id, wf_status *st, char **workflow) {
  if (workflow) *workflow = NULL;
  wf_instance *in = h->cfg.mode == WF_MODE_HOST ? wf_engine_find(h, id) : NULL;
  if (in && in->loaded) {
    *st = in->status;
    if (workflow) *workflow = wf_strdup(in->workflow);
    return WF_OK;
  }
  wf_info *info = NULL;
  int rc = wf_store_get_instance(h->st, id, &info);
  if (rc == WF_NOTFOUND && h->cfg.mode == WF_MODE_HOST) {
    /* Started through this handle, to be created in the next batch. */
    wf_submit *s = wf_engine_queued_start(h, id);
    if (s) {
      *st = WF_ST_PENDING;
      if (workflow) *workflow = wf_strdup(s->workflow);
      return WF_OK;
    }
  }
  if (rc == WF_NOTFOUND) return wf_fail(h, WF_NOTFOUND, "no instance '%s'", id);
  if (rc != WF_OK) return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  *st = wf_status_parse(info->status);
  if (workflow) *workflow = wf_strdup(info->workflow);
  wf_info_free(info);
  return WF_OK;
}

static wf_submit *new_submit(wf_sub_kind kind, const char *id, wf_done_fn done, void *ud) {
  wf_submit *s = calloc(1, sizeof *s);
  if (!s) abort();
  s->kind = kind;
  s->id = wf_strdup(id);
  s->done = done;
  s->ud = ud;
  return s;
}

/* Client mode: runs one write in its own durable transaction. */
static int client_commit(wf_host *h, int rc) {
  if (rc == WF_OK) rc = wf_store_commit(h->st);
  else wf_store_rollback(h->st);
  if (rc != WF_OK) return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  return WF_OK;
}

int wf_start(wf_host *h, const char *workflow, const char *input_json, const char *id,
             char *id_out, wf_done_fn done, void *ud) {
  if (!h) return WF_MISUSE;
  if (!workflow || !*workflow) return wf_fail(h, WF_INVALID, "no workflow name");
  const char *input = input_json ? input_json : "null";
  int rc = check_payload(h, "the input", input);
  if (rc != WF_OK) return rc;
  char gen[37];
  int generated = id == NULL;
  if (id) {
    if (!wf_valid_id(id))
      return wf_fail(h, WF_INVALID, "bad instance id '%s': 1 to %d bytes, no spaces or control characters",
                     id, WF_ID_MAX);
  } else {
    wf_uuid7(h->id_rng, wf_now(h), gen);
    id = gen;
  }
  int version = 0;
  if (h->cfg.mode == WF_MODE_HOST) {
    version = wf_lua_has_workflow(h, workflow);
    if (!version) return wf_fail(h, WF_NOTFOUND, "unknown workflow '%s': no loaded file defines it", workflow);
  } else {
    int known = -1;
    rc = wf_store_catalog_has(h->st, workflow, &known);
    if (rc != WF_OK) return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
    if (known == 0)
      return wf_fail(h, WF_NOTFOUND, "unknown workflow '%s': the host running on this database has not loaded it",
                     workflow);
  }
  wf_status st;
  char *existing = NULL;
  rc = generated ? WF_NOTFOUND : lookup(h, id, &st, &existing); /* a fresh UUID is new */
  if (rc == WF_OK) {
    int same = !strcmp(existing, workflow);
    free(existing);
    if (!same) return wf_fail(h, WF_STATE, "instance '%s' exists and runs another workflow", id);
  } else if (rc != WF_NOTFOUND) {
    return rc;
  }
  if (id_out) snprintf(id_out, WF_ID_MAX + 1, "%s", id);
  if (h->cfg.mode == WF_MODE_HOST) {
    wf_submit *s = new_submit(WF_SUB_START, id, done, ud);
    s->workflow = wf_strdup(workflow);
    s->version = version;
    s->data = wf_strdup(input);
    wf_engine_submit(h, s);
    return WF_OK;
  }
  if (rc == WF_NOTFOUND) {
    int64_t now = wf_now(h);
    wf_instance_rec r = {.id = id, .workflow = workflow, .version = 0, .status = "pending",
                         .input = input, .data = "{}", .created_at = now, .updated_at = now};
    int created = 0;
    rc = wf_store_begin(h->st);
    if (rc == WF_OK) rc = wf_store_insert_instance(h->st, &r, &created);
    rc = client_commit(h, rc);
    if (rc != WF_OK) return rc;
  }
  if (done) done(h, WF_OK, id, ud);
  return WF_OK;
}

/* Shared by signal, cancel and retry: the instance must exist and accept the request. */
static int check_target(wf_host *h, const char *id, const char *what, int want_suspended) {
  if (!id) return wf_fail(h, WF_INVALID, "no instance id");
  wf_status st;
  int rc = lookup(h, id, &st, NULL);
  if (rc != WF_OK) return rc;
  if (want_suspended && st != WF_ST_SUSPENDED)
    return wf_fail(h, WF_STATE, "instance '%s' is %s, not suspended: there is nothing to retry", id, wf_status_name(st));
  if (wf_status_final(st))
    return wf_fail(h, WF_STATE, "instance '%s' has %s; it takes no %s", id,
                   st == WF_ST_COMPLETED ? "completed" : st == WF_ST_FAILED ? "failed" : "been cancelled", what);
  return WF_OK;
}

int wf_signal(wf_host *h, const char *id, const char *event, const char *data_json, wf_done_fn done, void *ud) {
  if (!h) return WF_MISUSE;
  size_t n = event ? strlen(event) : 0;
  int bad = n == 0 || n > 128 || strchr(event, '|');
  for (size_t i = 0; i < n && !bad; i++) bad = (unsigned char)event[i] < 0x20 || event[i] == 0x7f;
  if (bad) return wf_fail(h, WF_INVALID, "bad event name: 1 to 128 bytes, no '|' or control characters");
  const char *data = data_json ? data_json : "null";
  int rc = check_payload(h, "the event data", data);
  if (rc == WF_OK) rc = check_target(h, id, "more events", 0);
  if (rc != WF_OK) return rc;
  if (h->cfg.mode == WF_MODE_HOST) {
    wf_submit *s = new_submit(WF_SUB_SIGNAL, id, done, ud);
    s->name = wf_strdup(event);
    s->data = wf_strdup(data);
    wf_engine_submit(h, s);
    return WF_OK;
  }
  int64_t eid;
  rc = wf_store_begin(h->st);
  if (rc == WF_OK) rc = wf_store_add_event(h->st, id, event, data, wf_now(h), &eid);
  rc = client_commit(h, rc);
  if (rc == WF_OK && done) done(h, WF_OK, id, ud);
  return rc;
}

static int request(wf_host *h, const char *id, wf_sub_kind kind, wf_done_fn done, void *ud) {
  int rc = check_target(h, id, kind == WF_SUB_CANCEL ? "cancellation" : "retry", kind == WF_SUB_RETRY);
  if (rc != WF_OK) return rc;
  if (h->cfg.mode == WF_MODE_HOST) {
    wf_engine_submit(h, new_submit(kind, id, done, ud));
    return WF_OK;
  }
  rc = wf_store_begin(h->st);
  if (rc == WF_OK) rc = wf_store_add_request(h->st, id, kind == WF_SUB_CANCEL ? "cancel" : "retry", wf_now(h));
  rc = client_commit(h, rc);
  if (rc == WF_OK && done) done(h, WF_OK, id, ud);
  return rc;
}

/* ---- circuit breakers ---------------------------------------------------------------- */

static void collect_breaker(void *ud, const wf_breaker_rec *r) {
  struct { wf_breaker_info *list; size_t n, cap; } *acc = ud;
  if (acc->n == acc->cap) {
    acc->cap = acc->cap ? acc->cap * 2 : 16;
    acc->list = wf_xrealloc(acc->list, acc->cap * sizeof *acc->list);
  }
  acc->list[acc->n++] = (wf_breaker_info){
      .action = wf_strdup(r->action), .key = wf_strdup(r->key), .state = wf_strdup(r->state),
      .calls = r->calls, .failures = r->failures,
      .failure_ratio = r->calls ? (double)r->failures / (double)r->calls : 0,
      .open_until = r->open_until, .updated_at = r->updated_at};
}

int wf_breakers(wf_host *h, wf_breaker_info **out, size_t *n) {
  if (!h || !out || !n) return WF_MISUSE;
  if (h->cfg.mode == WF_MODE_HOST) return wf_breaker_list(h, out, n);
  struct { wf_breaker_info *list; size_t n, cap; } acc = {0};
  int rc = wf_store_each_breaker(h->st, collect_breaker, &acc);
  if (rc != WF_OK) {
    wf_breakers_free(acc.list, acc.n);
    return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  }
  *out = acc.list;
  *n = acc.n;
  return WF_OK;
}

void wf_breakers_free(wf_breaker_info *list, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(list[i].action);
    free(list[i].key);
    free(list[i].state);
  }
  free(list);
}

static int breaker_request(wf_host *h, const char *action, const char *key, int isolate) {
  if (!h) return WF_MISUSE;
  if (!action || !*action || strlen(action) > 128 || strchr(action, 0x1f))
    return wf_fail(h, WF_INVALID, "bad action name");
  if (!key) key = "";
  if (strlen(key) > 1024 || strchr(key, 0x1f)) return wf_fail(h, WF_INVALID, "bad breaker key");
  if (h->cfg.mode == WF_MODE_HOST) {
    wf_breaker_set(h, action, key, isolate);
    h->ext_dirty = 1; /* a batch writes it */
    if (h->started) wf_engine_kick(h);
    return WF_OK;
  }
  size_t n = strlen(action) + strlen(key) + 2;
  char *id = wf_xmalloc(n);
  snprintf(id, n, *key ? "%s\x1f%s" : "%s", action, key);
  int rc = wf_store_begin(h->st);
  if (rc == WF_OK) rc = wf_store_add_request(h->st, id, isolate ? "isolate" : "close", wf_now(h));
  free(id);
  return client_commit(h, rc);
}

int wf_breaker_isolate(wf_host *h, const char *action, const char *key) { return breaker_request(h, action, key, 1); }
int wf_breaker_close(wf_host *h, const char *action, const char *key) { return breaker_request(h, action, key, 0); }

int wf_cancel(wf_host *h, const char *id, wf_done_fn done, void *ud) {
  return h ? request(h, id, WF_SUB_CANCEL, done, ud) : WF_MISUSE;
}

int wf_retry(wf_host *h, const char *id, wf_done_fn done, void *ud) {
  return h ? request(h, id, WF_SUB_RETRY, done, ud) : WF_MISUSE;
}

/* ---- reads --------------------------------------------------------------------------- */

int wf_get(wf_host *h, const char *id, wf_info **out) {
  if (!h) return WF_MISUSE;
  *out = NULL;
  int rc = wf_store_get_instance(h->st, id, out);
  if (rc == WF_NOTFOUND) return wf_fail(h, rc, "no instance '%s'", id);
  if (rc != WF_OK) return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  return WF_OK;
}

int wf_list(wf_host *h, const char *status, const char *workflow, int limit, wf_info **out, size_t *n) {
  *out = NULL;
  *n = 0;
  if (!h) return WF_MISUSE;
  int rc = wf_store_list_instances(h->st, status, workflow, limit, out, n);
  if (rc != WF_OK) return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  return WF_OK;
}

int wf_history(wf_host *h, const char *id, wf_history_entry **out, size_t *n) {
  *out = NULL;
  *n = 0;
  if (!h) return WF_MISUSE;
  wf_status st;
  int rc = lookup(h, id, &st, NULL);
  if (rc != WF_OK) return rc;
  rc = wf_store_load_history(h->st, id, out, n);
  if (rc != WF_OK) return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  return WF_OK;
}

static void info_fields_free(wf_info *i) {
  free(i->id);
  free(i->workflow);
  free(i->status);
  free(i->state);
  free(i->input_json);
  free(i->data_json);
  free(i->output_json);
  free(i->error);
  free(i->waiting_for);
  free(i->progress_message);
  free(i->parent_id);
}

void wf_info_free(wf_info *info) {
  if (!info) return;
  info_fields_free(info);
  free(info);
}

void wf_info_list_free(wf_info *list, size_t n) {
  for (size_t i = 0; list && i < n; i++) info_fields_free(&list[i]);
  free(list);
}

void wf_history_free(wf_history_entry *e, size_t n) {
  for (size_t i = 0; e && i < n; i++) {
    free(e[i].kind);
    free(e[i].name);
    free(e[i].data_json);
  }
  free(e);
}

/* ---- workflow versions --------------------------------------------------------------- */

typedef struct {
  wf_workflow_info *list;
  size_t n, cap;
} versions_acc;

static wf_workflow_info *version_entry(versions_acc *acc, const char *name, int version) {
  for (size_t i = 0; i < acc->n; i++)
    if (acc->list[i].version == version && !strcmp(acc->list[i].name, name)) return &acc->list[i];
  if (acc->n == acc->cap) {
    acc->cap = acc->cap ? acc->cap * 2 : 16;
    acc->list = wf_xrealloc(acc->list, acc->cap * sizeof *acc->list);
  }
  wf_workflow_info *w = &acc->list[acc->n++];
  memset(w, 0, sizeof *w);
  w->name = wf_strdup(name);
  w->version = version;
  return w;
}

static void add_loaded(void *ud, const char *name, int version, const char *source, int64_t count) {
  (void)count;
  wf_workflow_info *w = version_entry(ud, name, version);
  w->loaded = 1;
  free(w->source);
  w->source = wf_strdup(source);
}

static void add_active(void *ud, const char *name, int version, const char *source, int64_t count) {
  (void)source;
  if (version <= 0) return; /* a pending instance whose version is chosen when it first runs */
  version_entry(ud, name, version)->active = count;
}

static int cmp_version(const void *a, const void *b) {
  const wf_workflow_info *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  return c ? c : (x->version > y->version) - (x->version < y->version);
}

int wf_workflows(wf_host *h, wf_workflow_info **out, size_t *n) {
  if (!h || !out || !n) return WF_MISUSE;
  *out = NULL;
  *n = 0;
  versions_acc acc = {0};
  int rc = WF_OK;
  if (h->cfg.mode == WF_MODE_HOST) {
    char **names, **sources;
    int *versions;
    size_t k = wf_lua_workflow_names(h, &names, &versions, &sources);
    for (size_t i = 0; i < k; i++) {
      add_loaded(&acc, names[i], versions[i], sources[i], 0);
      free(names[i]);
      free(sources[i]);
    }
    free(names);
    free(sources);
    free(versions);
  } else {
    rc = wf_store_each_catalog(h->st, add_loaded, &acc);
  }
  if (rc == WF_OK) rc = wf_store_active_versions(h->st, add_active, &acc);
  if (rc != WF_OK) {
    wf_workflows_free(acc.list, acc.n);
    return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  }
  if (acc.n) qsort(acc.list, acc.n, sizeof *acc.list, cmp_version);
  /* Sorted by name, then version: the newest loaded version of a name is its last loaded one. */
  for (size_t i = 0; i < acc.n; i++) {
    if (!acc.list[i].loaded) continue;
    size_t j = i + 1;
    while (j < acc.n && !strcmp(acc.list[j].name, acc.list[i].name) && !acc.list[j].loaded) j++;
    acc.list[i].newest = !(j < acc.n && !strcmp(acc.list[j].name, acc.list[i].name));
  }
  *out = acc.list;
  *n = acc.n;
  return WF_OK;
}

void wf_workflows_free(wf_workflow_info *list, size_t n) {
  for (size_t i = 0; list && i < n; i++) {
    free(list[i].name);
    free(list[i].source);
  }
  free(list);
}

int wf_replay_check(wf_host *h, const char *id, char **report) {
  if (!h) return WF_MISUSE;
  *report = NULL;
  if (h->cfg.mode != WF_MODE_HOST) return wf_fail(h, WF_MISUSE, "a replay check needs a host with the workflows loaded");
  if (h->in_batch) return wf_fail(h, WF_MISUSE, "wf_replay_check cannot run inside an action");
  return wf_step_replay_check(h, id, report);
}

int wf_snapshot(wf_host *h, const char *path) {
  if (!h) return WF_MISUSE;
  int rc = wf_store_snapshot(h->st, path);
  return rc == WF_OK ? WF_OK : wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
}

int wf_next_timer(wf_host *h, int64_t *due) {
  if (!h || h->cfg.mode != WF_MODE_HOST) return WF_MISUSE;
  int64_t next = 0;
  wf_action_expire(h, &next); /* a call's deadline is a timer too */
  if (h->nheap && (!next || h->heap[0].due < next)) next = h->heap[0].due;
  if (h->sched_next && (!next || h->sched_next < next)) next = h->sched_next;
  int64_t ob = wf_outbox_next_wake(h); /* an outbox retry, or a delivery's deadline */
  if (ob && (!next || ob < next)) next = ob;
  if (!next) return wf_fail(h, WF_NOTFOUND, "no timer is armed");
  *due = next;
  return WF_OK;
}

/* ---- running ------------------------------------------------------------------------- */

uv_loop_t *wf_host_loop(wf_host *h) { return h && h->cfg.mode == WF_MODE_HOST ? h->loop : NULL; }

int wf_host_start(wf_host *h) {
  if (!h || h->cfg.mode != WF_MODE_HOST) return h ? wf_fail(h, WF_MISUSE, "a client handle does not run") : WF_MISUSE;
  return wf_engine_start(h);
}

int wf_host_run(wf_host *h) {
  int rc = wf_host_start(h);
  if (rc != WF_OK) return rc;
  uv_run(h->loop, UV_RUN_DEFAULT);
  return WF_OK;
}

int wf_host_drain(wf_host *h) {
  int rc = wf_host_start(h);
  if (rc != WF_OK) return rc;
  for (;;) {
    wf_engine_poll(h, 0);
    if (!wf_engine_busy(h)) {
      wf_engine_poll(h, 1); /* a last look for what other handles wrote before returning */
      if (!wf_engine_busy(h)) break;
    }
    uv_run(h->loop, UV_RUN_ONCE);
  }
  return WF_OK;
}

int wf_host_step(wf_host *h, int *busy) {
  *busy = 0;
  int rc = wf_host_start(h);
  if (rc != WF_OK) return rc;
  wf_engine_poll(h, 0);
  if (!wf_engine_busy(h)) {
    wf_engine_poll(h, 1);
    if (!wf_engine_busy(h)) return WF_OK;
  }
  uv_run(h->loop, UV_RUN_ONCE);
  *busy = 1;
  return WF_OK;
}

void wf_host_stop(wf_host *h) {
  if (h && h->cfg.mode == WF_MODE_HOST && h->loop) wf_engine_stop(h);
}
