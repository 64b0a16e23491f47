/*
 * wf_outbox.c — the transactional outbox: ctx:emit, the subscribers registered through the
 * C API, and the dispatcher that delivers each message to them at least once.
 *
 *   emit     ctx:emit(topic, payload) reaches wf_outbox_emit() through `note` (no yield). Live,
 *            the message row (with a pending delivery per matching subscriber) and an `emit`
 *            history entry are written in the open batch: the step's transaction. Replaying,
 *            the emit is durable already and nothing is written. The id "<instance>:<seq>:<n>"
 *            (the n-th emit since command seq) comes out the same on every replay.
 *   deliver  after a batch commits (never before, so only durable messages go out) and when
 *            a retry falls due, the dispatcher hands each subscriber the oldest of its pending
 *            deliveries, one at a time, in emit order. The subscriber completes it, now or later:
 *            delivered, or failed (retried after the policy's backoff, or a dead letter once its
 *            attempts run out). Outcomes are written in the next batch, with group commit.
 *   state    the store keeps a delivery row per (subscriber, message). In memory each subscriber
 *            has a cursor (every pending delivery up to it was handed over since the last
 *            rescan) and the deliveries it resolved whose rows are not written yet, so a queue is
 *            read from the store without handing a resolved message over twice. A failed attempt
 *            holds the subscriber until its new retry time is written and read back.
 *
 * A crash loses at most outcomes not yet written: those messages are delivered again (at
 * least once). The outcome of an attempt whose host died is not counted: the next host
 * delivers it again with the same attempt number.
 */
#include <inttypes.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wf_engine.h"

#define ROUND_MAX 256 /* deliveries handed to one subscriber between two commits */
#define NAME_MAX_LEN 128

typedef struct wf_subscriber wf_subscriber;

struct wf_delivery {
  wf_host *host;      /* NULL once the host closed: the completion is dropped */
  wf_subscriber *sub; /* NULL once the host stopped waiting (timed out): likewise */
  int64_t ord;
  uint64_t epoch;     /* the subscriber's epoch when it was handed over */
  int attempt;
  int held;           /* wf_delivery_hold(): drain does not wait for it */
  int64_t deadline;
  char *msg_id, *topic, *payload, *instance;
};

struct wf_subscriber {
  wf_subscriber *next;
  char *name;
  char *pattern;
  wf_subscriber_fn fn;
  void *ud;
  wf_retry_policy pol;  /* non_retryable in nonretry */
  char *nonretry;
  wf_delivery *inflight;
  int64_t cursor;       /* every pending delivery up to this ord was handed over in this epoch */
  uint64_t epoch;       /* bumped when older deliveries may have become pending again */
  int64_t *resolved;    /* ords delivered or dead-lettered whose rows are not written yet */
  size_t nresolved, capresolved, nresolved_written;
  int blocked;          /* a failed attempt's retry is not written yet */
  int64_t wait_until;   /* the oldest pending delivery waits for its retry time */
  int has_work;         /* the queue may hold a pending delivery: read it */
};

/* A delivery's outcome, written in the next batch. */
typedef struct ob_op {
  char *sub;
  int64_t ord;
  const char *status; /* NULL: delivered; "pending": retry at next_at; "failed": a dead letter */
  int attempts;
  int64_t next_at;
  char *error;
} ob_op;

/* An operator's retry of a message's failed deliveries. */
typedef struct ob_req {
  char *msg_id;
  char *sub; /* NULL: every subscriber */
} ob_req;

typedef struct wf_outbox {
  wf_subscriber *subs;
  ob_op *ops;
  size_t nops, capops, nops_written;
  ob_req *reqs;
  size_t nreqs, capreqs, nreqs_written;
  int route;          /* route unrouted messages in the next batch */
  int route_written;
  int rescan;         /* the written batch made older deliveries pending: read every queue again */
  size_t waited;      /* deliveries in flight and not held */
  int dispatching;
  uv_timer_t timer;   /* the earliest retry time or delivery deadline */
  int timer_open;
} wf_outbox;

/* ---- names and topics ---------------------------------------------------------------- */

/* A topic: dot-separated segments of letters, digits, '_' and '-', at most 128 bytes. */
static int valid_topic(const char *t, size_t n) {
  if (n == 0 || n > NAME_MAX_LEN) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = t[i];
    if (c == '.') {
      if (i == 0 || i + 1 == n || t[i + 1] == '.') return 0;
    } else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                 c == '-')) {
      return 0;
    }
  }
  return 1;
}

/* "*", a topic, or a topic followed by ".*". */
static int valid_pattern(const char *p) {
  size_t n = strlen(p);
  if (!strcmp(p, "*")) return 1;
  if (n > 2 && !strcmp(p + n - 2, ".*")) return valid_topic(p, n - 2);
  return valid_topic(p, n);
}

static int valid_subscriber_name(const char *s) {
  size_t n = strlen(s);
  return n > 0 && n <= NAME_MAX_LEN &&
         strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") == n;
}

static int matches(const char *pattern, const char *topic) {
  size_t n = strlen(pattern);
  if (!strcmp(pattern, "*")) return 1;
  if (n > 2 && !strcmp(pattern + n - 2, ".*")) return !strncmp(pattern, topic, n - 1); /* "order." prefix */
  return !strcmp(pattern, topic);
}

/* The names of the subscribers matching topic (a malloc'd array of borrowed strings, NULL if
 * none); marks their queues as having work. */
static const char **route_for(wf_outbox *ob, const char *topic, size_t *n) {
  const char **names = NULL;
  size_t k = 0, cap = 0;
  for (wf_subscriber *s = ob->subs; s; s = s->next) {
    if (!matches(s->pattern, topic)) continue;
    if (k == cap) {
      cap = cap ? cap * 2 : 4;
      names = wf_xrealloc(names, cap * sizeof *names);
    }
    names[k++] = s->name;
    s->has_work = 1;
  }
  *n = k;
  return names;
}

/* ---- emit ------------------------------------------------------------------------------ */

static int emit_error(lua_State *L, const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

int wf_outbox_emit(wf_host *h, wf_instance *in, lua_State *L) {
  char msg[400];
  size_t tlen = 0, plen = 0;
  const char *topic = lua_type(L, 3) == LUA_TSTRING ? lua_tolstring(L, 3, &tlen) : NULL;
  const char *payload = lua_tolstring(L, 4, &plen);
  if (!topic || !valid_topic(topic, tlen) || strlen(topic) != tlen) {
    snprintf(msg, sizeof msg, "ctx:emit(topic, payload): bad topic %s%.60s%s: use dot-separated names of letters, "
             "digits, '_' and '-', at most %d bytes (\"order.shipped\")", topic ? "\"" : "",
             topic ? topic : luaL_typename(L, 3), topic ? "\"" : "", NAME_MAX_LEN);
    return emit_error(L, msg);
  }
  if (!payload) return emit_error(L, "ctx:emit: no payload");
  if (plen > h->cfg.max_payload) {
    snprintf(msg, sizeof msg, "ctx:emit(\"%s\", payload): the payload is %zu bytes; the limit is %zu (config max_payload)",
             topic, plen, h->cfg.max_payload);
    return emit_error(L, msg);
  }
  if (in->emit_seq != in->seq) {
    in->emit_seq = in->seq;
    in->emit_n = 0;
  }
  in->emit_n++;
  char id[WF_ID_MAX + 64], run[16];
  snprintf(id, sizeof id, "%s:%" PRId64 ":%d%s", in->id, in->seq, in->emit_n, wf_run_suffix(in, run));
  wf_outbox *ob = h->outbox;
  if (!in->replaying && !in->dry && ob) {
    size_t n;
    const char **names = route_for(ob, topic, &n);
    wf_message_rec m = {.msg_id = id, .instance_id = in->id, .topic = topic, .payload = payload, .at = wf_now(h)};
    int64_t ord = 0;
    int rc = wf_store_add_message(h->st, &m, names, n, &ord);
    free(names);
    wf_engine_store_rc(h, rc);
    if (rc == WF_OK && ord == 0)
      wf_log(h, WF_LOG_WARN, in->id, NULL, "message %s is in the outbox already; not written again", id);
    char *q = wf_json_quote(id);
    size_t dn = strlen(q) + plen + 32;
    char *data = wf_xmalloc(dn);
    snprintf(data, dn, "{\"id\":%s,\"payload\":%s}", q, payload);
    wf_engine_history(h, in, in->seq, "emit", topic, data);
    free(data);
    free(q);
  }
  lua_pushstring(L, id);
  return 1;
}

/* ---- subscribers ----------------------------------------------------------------------- */

void wf_subscriber_opts_init(wf_subscriber_opts *o) {
  wf_action_opts a;
  wf_action_opts_init(&a);
  memset(o, 0, sizeof *o);
  o->retry = a.retry;
  o->retry.max_attempts = 10;
  o->retry.attempt_timeout_ms = 30000;
}

static wf_subscriber *find_sub(wf_outbox *ob, const char *name) {
  for (wf_subscriber *s = ob->subs; s; s = s->next)
    if (!strcmp(s->name, name)) return s;
  return NULL;
}

int wf_subscribe(wf_host *h, const char *name, const char *pattern, wf_subscriber_fn fn, void *ud,
                 const wf_subscriber_opts *opts) {
  if (!h) return WF_MISUSE;
  wf_outbox *ob = h->outbox;
  if (h->cfg.mode != WF_MODE_HOST || !ob)
    return wf_fail(h, WF_MISUSE, "subscribers are registered on a host, not a client handle");
  if (!name || !valid_subscriber_name(name))
    return wf_fail(h, WF_INVALID, "bad subscriber name '%.200s': 1 to %d letters, digits, '_', '-' or '.'",
                   name ? name : "(null)", NAME_MAX_LEN);
  if (!pattern || !valid_pattern(pattern))
    return wf_fail(h, WF_INVALID, "subscriber '%s': bad topic pattern '%.200s': a topic (\"order.shipped\"), a "
                   "prefix (\"order.*\") or \"*\"", name, pattern ? pattern : "(null)");
  if (!fn) return wf_fail(h, WF_INVALID, "subscriber '%s': the function is NULL", name);
  wf_subscriber_opts o;
  if (opts) o = *opts;
  else wf_subscriber_opts_init(&o);
  o.retry.total_timeout_ms = 0; /* does not apply: a delivery has no total time */
  wf_retry_policy check = o.retry;
  if (check.max_attempts == 0) check.total_timeout_ms = 1; /* unlimited attempts are allowed here */
  char err[400];
  if (wf_retry_check(&check, err, sizeof err) != 0)
    return wf_fail(h, WF_INVALID, "subscriber '%s': invalid policy: %s", name, err);
  wf_subscriber *s = find_sub(ob, name);
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s) abort();
    s->name = wf_strdup(name);
    wf_subscriber **tail = &ob->subs; /* registration order: the order of a dispatch round */
    while (*tail) tail = &(*tail)->next;
    *tail = s;
  }
  free(s->pattern);
  free(s->nonretry);
  s->pattern = wf_strdup(pattern);
  s->fn = fn;
  s->ud = ud;
  s->pol = o.retry;
  s->nonretry = wf_join_types(o.retry.non_retryable);
  s->pol.non_retryable = NULL; /* the caller's array: use s->nonretry */
  if (!s->pol.max_delay_ms) s->pol.max_delay_ms = 100 * s->pol.initial_delay_ms;
  s->has_work = 1;
  ob->route = 1; /* messages nobody took so far may be this one's */
  wf_engine_kick(h);
  return WF_OK;
}

/* ---- deliveries ------------------------------------------------------------------------ */

const char *wf_delivery_subscriber(const wf_delivery *d) { return d->sub ? d->sub->name : ""; }
const char *wf_delivery_instance(const wf_delivery *d) { return d->instance; }
wf_host *wf_delivery_host(const wf_delivery *d) { return d->host; }

static void delivery_free(wf_delivery *d) {
  free(d->msg_id);
  free(d->topic);
  free(d->payload);
  free(d->instance);
  free(d);
}

/* The host stops waiting for the subscriber's delivery in flight. */
static void unlink_inflight(wf_outbox *ob, wf_subscriber *s) {
  wf_delivery *d = s->inflight;
  s->inflight = NULL;
  if (!d->held) ob->waited--;
}

void wf_delivery_hold(wf_delivery *d) {
  if (d->held) return;
  d->held = 1;
  if (d->host && d->sub && d->sub->inflight == d) d->host->outbox->waited--;
}

static void push_op(wf_outbox *ob, const char *sub, int64_t ord, const char *status, int attempts,
                    int64_t next_at, const char *error) {
  if (ob->nops == ob->capops) {
    ob->capops = ob->capops ? ob->capops * 2 : 64;
    ob->ops = wf_xrealloc(ob->ops, ob->capops * sizeof *ob->ops);
  }
  ob->ops[ob->nops++] = (ob_op){.sub = wf_strdup(sub), .ord = ord, .status = status, .attempts = attempts,
                                .next_at = next_at, .error = wf_strdup(error)};
}

/* The delivery is settled (delivered or a dead letter): it leaves the subscriber's line. */
static void resolve(wf_subscriber *s, const wf_delivery *d) {
  if (s->nresolved == s->capresolved) {
    s->capresolved = s->capresolved ? s->capresolved * 2 : 16;
    s->resolved = wf_xrealloc(s->resolved, s->capresolved * sizeof *s->resolved);
  }
  s->resolved[s->nresolved++] = d->ord;
  /* Handed over in this epoch as the oldest pending one after the cursor: nothing older is
   * pending that this subscriber has not had. */
  if (d->epoch == s->epoch && d->ord > s->cursor) s->cursor = d->ord;
}

/* How an attempt ended: type NULL for delivered. */
static void outcome(wf_host *h, wf_subscriber *s, const wf_delivery *d, const char *type, const char *message) {
  wf_outbox *ob = h->outbox;
  int64_t now = wf_now(h);
  s->has_work = 1;
  wf_engine_kick(h);
  if (!type) {
    push_op(ob, s->name, d->ord, NULL, d->attempt, 0, NULL);
    resolve(s, d);
    wf_log(h, WF_LOG_DEBUG, d->instance, NULL, "message %s delivered to %s (attempt %d)", d->msg_id, s->name,
           d->attempt);
    return;
  }
  char err[700];
  snprintf(err, sizeof err, "%.100s: %.580s", type, message ? message : "");
  int dead = (s->pol.max_attempts && d->attempt >= s->pol.max_attempts) || wf_types_has(s->nonretry, type);
  if (dead) {
    push_op(ob, s->name, d->ord, "failed", d->attempt, 0, err);
    resolve(s, d);
    wf_log(h, WF_LOG_WARN, d->instance, NULL, "message %s to %s failed for good after %d attempt%s: %s "
           "(`wfhost outbox retry %s` delivers it again)", d->msg_id, s->name, d->attempt, d->attempt == 1 ? "" : "s",
           err, d->msg_id);
    return;
  }
  int64_t delay = wf_retry_delay(&s->pol, d->attempt, (double)(wf_rand64(h) >> 11) * 0x1.0p-53);
  push_op(ob, s->name, d->ord, "pending", d->attempt, now + delay, err);
  s->blocked = 1;
  s->wait_until = now + delay;
  wf_log(h, WF_LOG_INFO, d->instance, NULL, "message %s to %s: attempt %d failed (%s); next in %" PRId64 " ms",
         d->msg_id, s->name, d->attempt, err, delay);
}

static void complete(wf_delivery *d, const char *type, const char *message) {
  wf_host *h = d->host;
  wf_subscriber *s = d->sub;
  if (h && s && s->inflight == d) {
    unlink_inflight(h->outbox, s);
    outcome(h, s, d, type, message);
  }
  delivery_free(d);
}

void wf_delivery_ok(wf_delivery *d) { complete(d, NULL, NULL); }

void wf_delivery_fail(wf_delivery *d, const char *type, const char *message) {
  complete(d, type && wf_valid_error_type(type) ? type : "error", message ? message : "");
}

/* ---- the dispatcher -------------------------------------------------------------------- */

static int is_resolved(const wf_subscriber *s, int64_t ord) {
  for (size_t i = 0; i < s->nresolved; i++)
    if (s->resolved[i] == ord) return 1;
  return 0;
}

typedef struct head {
  wf_subscriber *s;
  wf_delivery *d; /* the oldest pending delivery not resolved, or NULL */
  int64_t next_at;
} head;

static void take_head(void *ud, const wf_delivery_rec *r) {
  head *hd = ud;
  if (hd->d || is_resolved(hd->s, r->ord)) return;
  wf_delivery *d = calloc(1, sizeof *d);
  if (!d) abort();
  d->ord = r->ord;
  d->attempt = r->attempts + 1;
  d->msg_id = wf_strdup(r->msg_id);
  d->topic = wf_strdup(r->topic);
  d->payload = wf_strdup(r->payload);
  d->instance = wf_strdup(r->instance_id);
  hd->d = d;
  hd->next_at = r->next_at;
}

/* Reads the subscriber's oldest pending delivery that it has not settled. */
static int read_head(wf_host *h, wf_subscriber *s, head *hd) {
  int skip = 0;
  for (size_t i = 0; i < s->nresolved; i++) skip += s->resolved[i] > s->cursor;
  *hd = (head){.s = s};
  int rc = wf_store_next_deliveries(h->st, s->name, s->cursor, 1 + skip, take_head, hd);
  if (rc != WF_OK) {
    wf_log(h, WF_LOG_ERROR, NULL, NULL, "outbox: %s", wf_store_errmsg(h->st));
    if (hd->d) delivery_free(hd->d);
    hd->d = NULL;
  }
  return rc;
}

static void on_timer(uv_timer_t *t);

static void arm(wf_host *h) {
  wf_outbox *ob = h->outbox;
  int64_t wake = wf_outbox_next_wake(h);
  if (!wake || !h->started || h->closing) {
    uv_timer_stop(&ob->timer);
    return;
  }
  int64_t delay = wake - wf_now(h);
  uv_timer_start(&ob->timer, on_timer, delay > 0 ? (uint64_t)delay : 0, 0);
}

/* Hands each subscriber its due deliveries (up to ROUND_MAX), and times out the one in flight
 * past its deadline. Only outside a batch: what it reads is committed. */
static void dispatch(wf_host *h) {
  wf_outbox *ob = h->outbox;
  if (!ob || ob->dispatching || h->in_batch || h->closing || !h->started) return;
  ob->dispatching = 1;
  int64_t now = wf_now(h);
  for (wf_subscriber *s = ob->subs; s; s = s->next) {
    wf_delivery *late = s->inflight;
    if (late && late->deadline <= now) {
      unlink_inflight(ob, s);
      late->sub = NULL; /* its completion, whenever it comes, is dropped */
      char m[100];
      snprintf(m, sizeof m, "no answer within %" PRId64 " ms (attempt timeout)", s->pol.attempt_timeout_ms);
      outcome(h, s, late, "timeout", m);
    }
    for (int n = 0; n < ROUND_MAX && !s->inflight && !s->blocked && s->has_work && s->wait_until <= now; n++) {
      head hd;
      if (read_head(h, s, &hd) != WF_OK) {
        s->wait_until = now + 1000; /* the store could not be read: try again in a second */
        break;
      }
      if (!hd.d) {
        s->has_work = 0;
        break;
      }
      if (hd.next_at > now) { /* backing off: its later messages wait behind it */
        s->wait_until = hd.next_at;
        delivery_free(hd.d);
        break;
      }
      wf_delivery *d = hd.d;
      s->wait_until = 0;
      d->host = h;
      d->sub = s;
      d->epoch = s->epoch;
      d->deadline = now + s->pol.attempt_timeout_ms;
      s->inflight = d;
      ob->waited++;
      wf_log(h, WF_LOG_DEBUG, d->instance, NULL, "delivering message %s (%s) to %s, attempt %d", d->msg_id,
             d->topic, s->name, d->attempt);
      s->fn(d, d->msg_id, d->topic, d->payload, d->attempt, s->ud); /* d may be gone now */
    }
  }
  ob->dispatching = 0;
  arm(h);
}

static void on_timer(uv_timer_t *t) { dispatch(t->data); }

int64_t wf_outbox_next_wake(wf_host *h) {
  wf_outbox *ob = h->outbox;
  int64_t wake = 0;
  if (!ob) return 0;
  for (wf_subscriber *s = ob->subs; s; s = s->next) {
    int64_t w = s->inflight ? s->inflight->deadline : !s->blocked && s->has_work ? s->wait_until : 0;
    if (w && (!wake || w < wake)) wake = w;
  }
  return wake;
}

void wf_outbox_poll(wf_host *h) {
  int64_t wake = wf_outbox_next_wake(h);
  if (wake && wake <= wf_now(h)) dispatch(h);
}

int wf_outbox_pending(wf_host *h) {
  wf_outbox *ob = h->outbox;
  return ob && (ob->nops || ob->nreqs || ob->route);
}

int wf_outbox_busy(wf_host *h) {
  wf_outbox *ob = h->outbox;
  if (!ob) return 0;
  if (ob->nops || ob->nreqs || ob->route || ob->waited) return 1;
  int64_t wake = wf_outbox_next_wake(h);
  return wake && wake <= wf_now(h);
}

/* ---- the batch ------------------------------------------------------------------------- */

static void route_one(void *ud, const wf_delivery_rec *r) {
  wf_host *h = ud;
  size_t n;
  const char **names = route_for(h->outbox, r->topic, &n);
  if (n) {
    wf_engine_store_rc(h, wf_store_route_message(h->st, r->ord, names, n, wf_now(h)));
    h->outbox->rescan = 1;
    wf_log(h, WF_LOG_INFO, r->instance_id, NULL, "message %s (%s), emitted while no subscriber matched, routed to "
           "%zu subscriber%s", r->msg_id, r->topic, n, n == 1 ? "" : "s");
  }
  free(names);
}

void wf_outbox_write(wf_host *h) {
  wf_outbox *ob = h->outbox;
  if (!ob) return;
  int64_t now = wf_now(h);
  ob->rescan = 0;
  ob->route_written = ob->route;
  if (ob->route) wf_engine_store_rc(h, wf_store_each_unrouted(h->st, route_one, h));
  for (size_t i = 0; i < ob->nreqs; i++) {
    int n = 0;
    wf_engine_store_rc(h, wf_store_requeue_deliveries(h->st, ob->reqs[i].msg_id, ob->reqs[i].sub, now, &n));
    if (n) {
      ob->rescan = 1;
      wf_log(h, WF_LOG_INFO, NULL, NULL, "message %s: %d failed deliver%s queued again", ob->reqs[i].msg_id, n,
             n == 1 ? "y" : "ies");
    }
  }
  for (size_t i = 0; i < ob->nops; i++) {
    ob_op *o = &ob->ops[i];
    wf_engine_store_rc(h, wf_store_set_delivery(h->st, o->sub, o->ord, o->status, o->attempts, o->next_at, o->error, now));
  }
  ob->nops_written = ob->nops;
  ob->nreqs_written = ob->nreqs;
  for (wf_subscriber *s = ob->subs; s; s = s->next) s->nresolved_written = s->nresolved;
}

void wf_outbox_committed(wf_host *h) {
  wf_outbox *ob = h->outbox;
  if (!ob) return;
  for (size_t i = 0; i < ob->nops_written; i++) {
    free(ob->ops[i].sub);
    free(ob->ops[i].error);
  }
  if (ob->nops > ob->nops_written) /* (memmove of a NULL array is undefined, even of 0 bytes) */
    memmove(ob->ops, ob->ops + ob->nops_written, (ob->nops - ob->nops_written) * sizeof *ob->ops);
  ob->nops -= ob->nops_written;
  for (size_t i = 0; i < ob->nreqs_written; i++) {
    free(ob->reqs[i].msg_id);
    free(ob->reqs[i].sub);
  }
  if (ob->nreqs > ob->nreqs_written)
    memmove(ob->reqs, ob->reqs + ob->nreqs_written, (ob->nreqs - ob->nreqs_written) * sizeof *ob->reqs);
  ob->nreqs -= ob->nreqs_written;
  ob->nops_written = ob->nreqs_written = 0;
  if (ob->route_written) ob->route = ob->route_written = 0;
  for (wf_subscriber *s = ob->subs; s; s = s->next) {
    if (s->nresolved > s->nresolved_written)
      memmove(s->resolved, s->resolved + s->nresolved_written,
              (s->nresolved - s->nresolved_written) * sizeof *s->resolved);
    s->nresolved -= s->nresolved_written;
    s->nresolved_written = 0;
    s->blocked = 0;
    if (ob->rescan) {
      s->epoch++;
      s->cursor = 0;
      s->wait_until = 0;
      s->has_work = 1;
    }
  }
  ob->rescan = 0;
  for (size_t i = 0; i < ob->nops; i++) /* failures that came after the write wait for the next */
    if (ob->ops[i].status && !strcmp(ob->ops[i].status, "pending")) {
      wf_subscriber *s = find_sub(ob, ob->ops[i].sub);
      if (s) s->blocked = 1;
    }
}

void wf_outbox_dispatch(wf_host *h) { dispatch(h); }

/* ---- operators --------------------------------------------------------------------------- */

static void push_req(wf_outbox *ob, const char *msg_id, const char *sub) {
  if (ob->nreqs == ob->capreqs) {
    ob->capreqs = ob->capreqs ? ob->capreqs * 2 : 8;
    ob->reqs = wf_xrealloc(ob->reqs, ob->capreqs * sizeof *ob->reqs);
  }
  ob->reqs[ob->nreqs++] = (ob_req){.msg_id = wf_strdup(msg_id), .sub = wf_strdup(sub)};
}

void wf_outbox_request(wf_host *h, const char *id) {
  if (!h->outbox) return;
  const char *sep = strchr(id, 0x1f);
  char msg_id[WF_ID_MAX + 48];
  snprintf(msg_id, sizeof msg_id, "%.*s", sep ? (int)(sep - id) : (int)strlen(id), id);
  push_req(h->outbox, msg_id, sep ? sep + 1 : NULL);
}

typedef struct entries {
  wf_outbox_entry *list;
  size_t n, cap;
  const char *msg_id, *sub; /* filters, or NULL */
} entries;

static void collect(void *ud, const wf_delivery_rec *r) {
  entries *e = ud;
  if (e->msg_id && strcmp(e->msg_id, r->msg_id)) return;
  if (e->sub && (!r->subscriber || strcmp(e->sub, r->subscriber))) return;
  if (e->n == e->cap) {
    e->cap = e->cap ? e->cap * 2 : 16;
    e->list = wf_xrealloc(e->list, e->cap * sizeof *e->list);
  }
  e->list[e->n++] = (wf_outbox_entry){
      .msg_id = wf_strdup(r->msg_id), .topic = wf_strdup(r->topic), .instance_id = wf_strdup(r->instance_id),
      .payload_json = wf_strdup(r->payload), .subscriber = wf_strdup(r->subscriber), .status = wf_strdup(r->status),
      .attempts = r->attempts, .next_at = r->next_at, .last_error = wf_strdup(r->last_error),
      .created_at = r->created_at, .updated_at = r->updated_at};
}

int wf_outbox_list(wf_host *h, const char *status, int limit, wf_outbox_entry **out, size_t *n) {
  if (!h || !out || !n) return WF_MISUSE;
  *out = NULL;
  *n = 0;
  if (status && strcmp(status, "pending") && strcmp(status, "failed"))
    return wf_fail(h, WF_INVALID, "unknown outbox status '%s' (pending or failed)", status);
  entries e = {0};
  int rc = wf_store_list_deliveries(h->st, status, limit, collect, &e);
  if (rc != WF_OK) {
    wf_outbox_list_free(e.list, e.n);
    return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  }
  *out = e.list;
  *n = e.n;
  return WF_OK;
}

void wf_outbox_list_free(wf_outbox_entry *list, size_t n) {
  for (size_t i = 0; list && i < n; i++) {
    free(list[i].msg_id);
    free(list[i].topic);
    free(list[i].instance_id);
    free(list[i].payload_json);
    free(list[i].subscriber);
    free(list[i].status);
    free(list[i].last_error);
  }
  free(list);
}

int wf_outbox_retry(wf_host *h, const char *msg_id, const char *sub) {
  if (!h) return WF_MISUSE;
  if (!msg_id || !*msg_id || strlen(msg_id) > WF_ID_MAX + 40 || strchr(msg_id, 0x1f))
    return wf_fail(h, WF_INVALID, "bad message id");
  if (sub && !valid_subscriber_name(sub)) return wf_fail(h, WF_INVALID, "bad subscriber name '%.200s'", sub);
  entries e = {.msg_id = msg_id, .sub = sub};
  int rc = wf_store_list_deliveries(h->st, "failed", 0, collect, &e);
  size_t found = e.n;
  wf_outbox_list_free(e.list, e.n);
  if (rc != WF_OK) return wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
  if (!found)
    return wf_fail(h, WF_NOTFOUND, "message '%s' has no failed delivery%s%s: `wfhost outbox --failed` lists them",
                   msg_id, sub ? " to " : "", sub ? sub : "");
  if (h->cfg.mode == WF_MODE_HOST) {
    push_req(h->outbox, msg_id, sub);
    wf_engine_kick(h);
    return WF_OK;
  }
  size_t len = strlen(msg_id) + (sub ? strlen(sub) : 0) + 2;
  char *id = wf_xmalloc(len);
  snprintf(id, len, sub ? "%s\x1f%s" : "%s", msg_id, sub);
  rc = wf_store_begin(h->st);
  if (rc == WF_OK) rc = wf_store_add_request(h->st, id, "outbox_retry", wf_now(h));
  free(id);
  if (rc == WF_OK) rc = wf_store_commit(h->st);
  else wf_store_rollback(h->st);
  return rc == WF_OK ? WF_OK : wf_fail(h, rc, "%s", wf_store_errmsg(h->st));
}

/* ---- lifecycle --------------------------------------------------------------------------- */

void wf_outbox_init(wf_host *h) {
  wf_outbox *ob = calloc(1, sizeof *ob);
  if (!ob) abort();
  h->outbox = ob;
  uv_timer_init(h->loop, &ob->timer);
  ob->timer.data = h;
  ob->timer_open = 1;
}

void wf_outbox_stop(wf_host *h) {
  if (h->outbox) uv_timer_stop(&h->outbox->timer);
}

void wf_outbox_close(wf_host *h) {
  wf_outbox *ob = h->outbox;
  if (ob && ob->timer_open) {
    uv_close((uv_handle_t *)&ob->timer, NULL);
    ob->timer_open = 0;
  }
}

void wf_outbox_free(wf_host *h) {
  wf_outbox *ob = h->outbox;
  if (!ob) return;
  while (ob->subs) {
    wf_subscriber *s = ob->subs;
    ob->subs = s->next;
    if (s->inflight) { /* completed after the close: dropped */
      s->inflight->host = NULL;
      s->inflight->sub = NULL;
    }
    free(s->name);
    free(s->pattern);
    free(s->nonretry);
    free(s->resolved);
    free(s);
  }
  ob->nops_written = ob->nops;
  ob->nreqs_written = ob->nreqs;
  ob->subs = NULL;
  wf_outbox_committed(h); /* frees the ops and requests (nothing more is written) */
  free(ob->ops);
  free(ob->reqs);
  free(ob);
  h->outbox = NULL;
}
