/*
 * wf_breaker.c — circuit breakers: one per action, or per action and key (a bounded LRU).
 *
 * A breaker counts outcomes in a sliding window of 10 buckets spanning the policy's
 * sampling duration. Closed, it opens when a failure is recorded and the window holds at
 * least min_throughput calls of which failures / calls >= failure_ratio. Open, it rejects
 * until open_until; the first call at or after that is the half-open probe (up to
 * half_open_max_calls at once, each bounded by its attempt deadline); others are rejected
 * until a probe ends. A probe failure re-opens it; a probe success (or a permanent error: the
 * dependency answered) closes it with an empty window. Isolated (by an operator), it rejects
 * until closed by hand.
 *
 * State lives in memory; changes of state, and the counts at most once a second, are written
 * to the store in the batch that caused them, so `wfhost breakers` can read them and an
 * isolated or open breaker stays so across a restart.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wf_engine.h"

#define NBUCKETS 10

static const char *const state_names[] = {"closed", "open", "half_open", "isolated"};

const char *wf_breaker_state_name(int s) { return state_names[s]; }

static uint64_t hash2(const char *a, const char *b) {
  uint64_t x = 1469598103934665603ULL;
  for (; *a; a++) x = (x ^ (unsigned char)*a) * 1099511628211ULL;
  x = (x ^ 0x1f) * 1099511628211ULL;
  for (; *b; b++) x = (x ^ (unsigned char)*b) * 1099511628211ULL;
  return x;
}

static void lru_unlink(wf_host *h, wf_breaker *b) {
  if (b->lru_prev) b->lru_prev->lru_next = b->lru_next;
  else h->brk_lru_head = b->lru_next;
  if (b->lru_next) b->lru_next->lru_prev = b->lru_prev;
  else h->brk_lru_tail = b->lru_prev;
  b->lru_prev = b->lru_next = NULL;
}

static void lru_push(wf_host *h, wf_breaker *b) { /* most recent at the tail */
  b->lru_prev = h->brk_lru_tail;
  b->lru_next = NULL;
  if (h->brk_lru_tail) h->brk_lru_tail->lru_next = b;
  else h->brk_lru_head = b;
  h->brk_lru_tail = b;
}

static void table_remove(wf_host *h, wf_breaker *b) {
  wf_breaker **pp = &h->brk_buckets[b->hash & (h->brk_nbuckets - 1)];
  while (*pp != b) pp = &(*pp)->hnext;
  *pp = b->hnext;
  h->brk_count--;
}

static void breaker_free(wf_breaker *b) {
  free(b->action);
  free(b->key);
  free(b);
}

static wf_breaker *find(wf_host *h, const char *action, const char *key, uint64_t hash) {
  if (!h->brk_nbuckets) return NULL;
  for (wf_breaker *b = h->brk_buckets[hash & (h->brk_nbuckets - 1)]; b; b = b->hnext)
    if (b->hash == hash && !strcmp(b->action, action) && !strcmp(b->key, key)) return b;
  return NULL;
}

static wf_breaker *create(wf_host *h, const char *action, const char *key, uint64_t hash) {
  if (h->brk_count + 1 > h->brk_nbuckets * 2 || !h->brk_nbuckets) {
    size_t n = h->brk_nbuckets ? h->brk_nbuckets * 2 : 64;
    wf_breaker **nb = calloc(n, sizeof *nb);
    if (!nb) abort();
    for (size_t i = 0; i < h->brk_nbuckets; i++)
      for (wf_breaker *b = h->brk_buckets[i], *next; b; b = next) {
        next = b->hnext;
        b->hnext = nb[b->hash & (n - 1)];
        nb[b->hash & (n - 1)] = b;
      }
    free(h->brk_buckets);
    h->brk_buckets = nb;
    h->brk_nbuckets = n;
  }
  wf_breaker *b = calloc(1, sizeof *b);
  if (!b) abort();
  b->action = wf_strdup(action);
  b->key = wf_strdup(key);
  b->hash = hash;
  b->hnext = h->brk_buckets[hash & (h->brk_nbuckets - 1)];
  h->brk_buckets[hash & (h->brk_nbuckets - 1)] = b;
  h->brk_count++;
  lru_push(h, b);
  return b;
}

/* Keyed breakers of one action past max_keys: the least recently used closed one goes (never
 * keep, the one just made for a call). A breaker that is open, probing or isolated is kept:
 * dropping it would let calls through, so the bound may be passed while many are open. */
static void evict_keys(wf_host *h, const char *action, int max_keys, const wf_breaker *keep) {
  int n = 0;
  for (wf_breaker *b = h->brk_lru_head; b; b = b->lru_next)
    if (*b->key && !strcmp(b->action, action)) n++;
  for (wf_breaker *b = h->brk_lru_head, *next; b && n > max_keys; b = next) {
    next = b->lru_next;
    if (b == keep || !*b->key || strcmp(b->action, action) || b->state != WF_BRK_CLOSED || b->probes || b->dirty)
      continue;
    lru_unlink(h, b);
    table_remove(h, b);
    breaker_free(b);
    n--;
  }
}

wf_breaker *wf_breaker_get(wf_host *h, const char *action, const char *key, const wf_breaker_policy *p) {
  if (!key) key = "";
  uint64_t hash = hash2(action, key);
  wf_breaker *b = find(h, action, key, hash);
  if (b) {
    if (h->brk_lru_tail != b) {
      lru_unlink(h, b);
      lru_push(h, b);
    }
    return b;
  }
  b = create(h, action, key, hash);
  if (*key && p) evict_keys(h, action, p->max_keys, b);
  return b;
}

/* ---- the window ---------------------------------------------------------------------- */

static int64_t width(const wf_breaker_policy *p) {
  int64_t w = p->sampling_duration_ms / NBUCKETS;
  return w > 0 ? w : 1;
}

static void window_counts(const wf_breaker *b, const wf_breaker_policy *p, int64_t now, int64_t *calls,
                          int64_t *failures) {
  int64_t cur = now / width(p);
  *calls = *failures = 0;
  for (int i = 0; i < NBUCKETS; i++)
    if (b->win[i].epoch > cur - NBUCKETS && b->win[i].epoch <= cur) {
      *calls += b->win[i].calls;
      *failures += b->win[i].failures;
    }
}

static void window_add(wf_breaker *b, const wf_breaker_policy *p, int64_t now, int failure) {
  int64_t cur = now / width(p);
  int i = (int)(cur % NBUCKETS);
  if (b->win[i].epoch != cur) b->win[i] = (typeof(b->win[i])){.epoch = cur};
  b->win[i].calls++;
  b->win[i].failures += failure;
}

static void window_clear(wf_breaker *b) { memset(b->win, 0, sizeof b->win); }

/* ---- transitions --------------------------------------------------------------------- */

static void mark_dirty(wf_host *h, wf_breaker *b) {
  if (b->dirty) return;
  b->dirty = 1;
  b->dirty_next = h->brk_dirty;
  h->brk_dirty = b;
}

static void transition(wf_host *h, wf_breaker *b, const wf_breaker_policy *p, int to, int64_t now,
                       wf_instance *in, int64_t seq) {
  int from = b->state;
  b->state = to;
  b->probes = 0;
  if (to == WF_BRK_OPEN) {
    b->open_until = now + p->break_duration_ms;
    h->stats.breaker_opened++;
  } else {
    b->open_until = 0; /* only an open breaker has a time to stay open until */
    if (to == WF_BRK_HALF_OPEN) h->stats.breaker_half_opened++;
    if (to == WF_BRK_CLOSED) {
      window_clear(b);
      h->stats.breaker_closed++;
    }
  }
  mark_dirty(h, b);
  int64_t calls, failures;
  window_counts(b, p, now, &calls, &failures);
  char *qk = wf_json_quote(b->key);
  char data[400];
  snprintf(data, sizeof data,
           "{\"key\":%.200s,\"from\":\"%s\",\"to\":\"%s\",\"calls\":%" PRId64 ",\"failures\":%" PRId64
           ",\"open_until\":%" PRId64 "}",
           qk, state_names[from], state_names[to], calls, failures, b->open_until);
  free(qk);
  wf_log(h, to == WF_BRK_CLOSED ? WF_LOG_INFO : WF_LOG_WARN, in ? in->id : NULL, data,
         "circuit breaker of %s%s%s: %s -> %s", b->action, *b->key ? " key " : "", b->key, state_names[from],
         state_names[to]);
  if (in) wf_attempt_journal(h, in, seq, "breaker", b->action, data);
  else wf_attempt_observe(h, "breaker", NULL, 0, b->action, data);
}

int wf_breaker_allow(wf_host *h, wf_breaker *b, const wf_breaker_policy *p, int64_t now, int64_t probe_until,
                     int *probe, int64_t *retry_at, wf_instance *in, int64_t seq) {
  *probe = 0;
  switch (b->state) {
  case WF_BRK_CLOSED:
    return 1;
  case WF_BRK_ISOLATED:
    *retry_at = now + p->break_duration_ms;
    return 0;
  case WF_BRK_OPEN:
    if (now < b->open_until) {
      *retry_at = b->open_until;
      return 0;
    }
    transition(h, b, p, WF_BRK_HALF_OPEN, now, in, seq);
    /* fall through */
  case WF_BRK_HALF_OPEN:
    if (b->probes && b->probe_until <= now) b->probes = 0; /* probes past their deadline ended */
    if (b->probes >= p->half_open_max_calls) {
      *retry_at = now;
      return 0;
    }
    b->probes++;
    if (probe_until > b->probe_until) b->probe_until = probe_until;
    *probe = 1;
    return 1;
  }
  return 1;
}

void wf_breaker_record(wf_host *h, wf_breaker *b, const wf_breaker_policy *p, int64_t now, int outcome,
                       int probe, wf_instance *in, int64_t seq) {
  if (outcome == WF_OUTCOME_CANCELLED || outcome == WF_OUTCOME_LOST) {
    if (probe && b->probes) b->probes--;
    return;
  }
  int failure = outcome == WF_OUTCOME_TRANSIENT || outcome == WF_OUTCOME_TIMEOUT;
  if (b->state == WF_BRK_HALF_OPEN) {
    if (!probe) return; /* a call let through before the breaker opened: its window is gone */
    transition(h, b, p, failure ? WF_BRK_OPEN : WF_BRK_CLOSED, now, in, seq);
    return;
  }
  if (b->state != WF_BRK_CLOSED) return;
  window_add(b, p, now, failure);
  if (now - b->written_at >= 1000) mark_dirty(h, b);
  if (!failure) return;
  int64_t calls, failures;
  window_counts(b, p, now, &calls, &failures);
  if (calls >= p->min_throughput && (double)failures >= p->failure_ratio * (double)calls)
    transition(h, b, p, WF_BRK_OPEN, now, in, seq);
}

/* Isolate (1) or close (0) by hand. */
void wf_breaker_set(wf_host *h, const char *action, const char *key, int isolate) {
  wf_breaker *b = wf_breaker_get(h, action, key, NULL);
  wf_breaker_policy p;
  wf_action_policy_of(h, action, NULL, &p);
  int to = isolate ? WF_BRK_ISOLATED : WF_BRK_CLOSED;
  if (b->state == to && !isolate) window_clear(b);
  else if (b->state != to) transition(h, b, &p, to, wf_now(h), NULL, 0);
}

/* ---- the store ----------------------------------------------------------------------- */

static void fill_rec(wf_host *h, const wf_breaker *b, int64_t now, wf_breaker_rec *r) {
  wf_breaker_policy p;
  wf_action_policy_of(h, b->action, NULL, &p);
  int64_t calls, failures;
  window_counts(b, &p, now, &calls, &failures);
  *r = (wf_breaker_rec){.action = b->action, .key = b->key, .state = state_names[b->state],
                        .calls = calls, .failures = failures, .open_until = b->open_until,
                        .updated_at = now};
}

void wf_breaker_write_dirty(wf_host *h) {
  int64_t now = wf_now(h);
  for (wf_breaker *b = h->brk_dirty, *next; b; b = next) {
    next = b->dirty_next;
    wf_breaker_rec r;
    fill_rec(h, b, now, &r);
    wf_engine_store_rc(h, wf_store_put_breaker(h->st, &r));
    b->written_at = now;
    b->dirty = 0;
    b->dirty_next = NULL;
  }
  h->brk_dirty = NULL;
}

static void load_one(void *ud, const wf_breaker_rec *r) {
  wf_host *h = ud;
  int64_t now = wf_now(h);
  int st = !strcmp(r->state, "isolated") ? WF_BRK_ISOLATED
           : !strcmp(r->state, "open") && r->open_until > now ? WF_BRK_OPEN
           : !strcmp(r->state, "open") || !strcmp(r->state, "half_open") ? WF_BRK_HALF_OPEN
                                                                          : WF_BRK_CLOSED;
  if (st == WF_BRK_CLOSED) return;
  wf_breaker *b = wf_breaker_get(h, r->action, r->key, NULL);
  b->state = st;
  b->open_until = r->open_until;
  b->written_at = r->updated_at;
}

int wf_breaker_load(wf_host *h) { return wf_store_each_breaker(h->st, load_one, h); }

int wf_breaker_list(wf_host *h, wf_breaker_info **out, size_t *n) {
  int64_t now = wf_now(h);
  wf_breaker_info *list = calloc(h->brk_count ? h->brk_count : 1, sizeof *list);
  if (!list) abort();
  size_t i = 0;
  for (wf_breaker *b = h->brk_lru_head; b; b = b->lru_next, i++) {
    wf_breaker_rec r;
    fill_rec(h, b, now, &r);
    list[i] = (wf_breaker_info){.action = wf_strdup(r.action), .key = wf_strdup(r.key),
                                .state = wf_strdup(r.state), .calls = r.calls, .failures = r.failures,
                                .failure_ratio = r.calls ? (double)r.failures / (double)r.calls : 0,
                                .open_until = r.open_until, .updated_at = b->written_at};
  }
  *out = list;
  *n = i;
  return WF_OK;
}

void wf_breaker_free_all(wf_host *h) {
  for (wf_breaker *b = h->brk_lru_head, *next; b; b = next) {
    next = b->lru_next;
    breaker_free(b);
  }
  free(h->brk_buckets);
  h->brk_buckets = NULL;
  h->brk_nbuckets = h->brk_count = 0;
  h->brk_lru_head = h->brk_lru_tail = NULL;
  h->brk_dirty = NULL;
}
