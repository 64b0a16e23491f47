/*
 * wf_engine.c — scheduling and durability. Instances in memory, the ready queue, the
 * timer heap, the bounded cache of live coroutines, recovery at start, requests from the
 * API and from other processes, and group commit:
 *
 *   one batch = BEGIN; take requests; advance every ready instance (wf_step.c) writing its
 *   journal; write changed rows; COMMIT; then release effects: answer callers, invoke
 *   actions, evict cold coroutines.
 *
 * Nothing outside the host sees an effect before the state that caused it is committed.
 * If a commit fails (disk full, I/O error), the batch is rolled back, every instance it
 * touched is dropped from memory and rebuilt later from what is durable, and callers get
 * the error: nothing acknowledged is lost.
 */
#include <inttypes.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "wf_engine.h"

#define BATCH_MAX 8192 /* instances advanced per transaction */

static void on_idle(uv_idle_t *idle);
static void on_checkpoint(uv_timer_t *t);

/* ---- instance table ------------------------------------------------------------------ */

static uint64_t hash_str(const char *s) {
  uint64_t x = 1469598103934665603ull;
  while (*s) x = (x ^ (unsigned char)*s++) * 1099511628211ull;
  return x;
}

wf_instance *wf_engine_find(wf_host *h, const char *id) {
  if (!h->nbuckets) return NULL;
  for (wf_instance *in = h->buckets[hash_str(id) & (h->nbuckets - 1)]; in; in = in->hnext)
    if (!strcmp(in->id, id)) return in;
  return NULL;
}

static void table_grow(wf_host *h) {
  size_t n = h->nbuckets ? h->nbuckets * 2 : 1024;
  wf_instance **b = calloc(n, sizeof *b);
  if (!b) abort();
  for (size_t i = 0; i < h->nbuckets; i++) {
    for (wf_instance *in = h->buckets[i], *next; in; in = next) {
      next = in->hnext;
      size_t j = hash_str(in->id) & (n - 1);
      in->hnext = b[j];
      b[j] = in;
    }
  }
  free(h->buckets);
  h->buckets = b;
  h->nbuckets = n;
}

/* Returns the resident instance with this id, adding one if there is none: an empty record,
 * not yet loaded (its row is read from the store when it first runs). */
static wf_instance *find_or_add(wf_host *h, const char *id) {
  wf_instance *in = wf_engine_find(h, id);
  if (in) return in;
  if (h->ninstances + 1 > h->nbuckets) table_grow(h);
  in = calloc(1, sizeof *in);
  if (!in) abort();
  in->id = wf_strdup(id);
  in->co_ref = in->ctx_ref = LUA_NOREF;
  in->inbox_tail = &in->inbox;
  size_t j = hash_str(id) & (h->nbuckets - 1);
  in->hnext = h->buckets[j];
  h->buckets[j] = in;
  h->ninstances++;
  return in;
}

/* ---- pending commands ---------------------------------------------------------------- */

wf_pend *wf_pend_add(wf_instance *in, wf_pend_kind kind, int64_t seq) {
  wf_pend *p = in->spare; /* most instances wait on one command at a time: reuse its record */
  in->spare = NULL;
  if (!p && !(p = calloc(1, sizeof *p))) abort();
  p->kind = kind;
  p->seq = seq;
  wf_pend **pp = &in->pends;
  while (*pp) pp = &(*pp)->next;
  *pp = p;
  return p;
}

wf_pend *wf_pend_find(wf_instance *in, int64_t seq) {
  for (wf_pend *p = in->pends; p; p = p->next)
    if (p->seq == seq) return p;
  return NULL;
}

void wf_pend_remove(wf_instance *in, wf_pend *p) {
  wf_pend **pp = &in->pends;
  while (*pp && *pp != p) pp = &(*pp)->next;
  if (*pp) *pp = p->next;
  free(p->name);
  free(p->params);
  wf_outcome_free(&p->out);
  free(p->nonretry);
  free(p->key);
  free(p->brk_key);
  free(p->last_type);
  free(p->last_msg);
  free(p->last_fail);
  free(p->final_json);
  if (in->spare) {
    free(p);
  } else {
    memset(p, 0, sizeof *p);
    in->spare = p;
  }
}

void wf_pend_clear(wf_host *h, wf_instance *in) {
  while (in->pends) {
    wf_pend *p = in->pends;
    if (p->call) wf_attempt_cancel(h, in, p);
    wf_pend_remove(in, p);
  }
}

int wf_pend_has_call(const wf_instance *in) {
  for (const wf_pend *p = in->pends; p; p = p->next)
    if (p->call) return 1;
  return 0;
}

static void lru_remove(wf_host *h, wf_instance *in) {
  if (!in->in_lru) return;
  if (in->lru_prev) in->lru_prev->lru_next = in->lru_next;
  else h->lru_head = in->lru_next;
  if (in->lru_next) in->lru_next->lru_prev = in->lru_prev;
  else h->lru_tail = in->lru_prev;
  in->lru_prev = in->lru_next = NULL;
  in->in_lru = 0;
}

static void lru_touch(wf_host *h, wf_instance *in) {
  lru_remove(h, in);
  in->lru_prev = h->lru_tail;
  if (h->lru_tail) h->lru_tail->lru_next = in;
  else h->lru_head = in;
  h->lru_tail = in;
  in->in_lru = 1;
}

/* Removes an instance from memory. Its durable state is untouched. */
static void instance_free(wf_host *h, wf_instance *in) {
  lru_remove(h, in);
  wf_instance **pp = &h->buckets[hash_str(in->id) & (h->nbuckets - 1)];
  while (*pp != in) pp = &(*pp)->hnext;
  *pp = in->hnext;
  h->ninstances--;
  wf_instance_release(h, in);
}

void wf_instance_release(wf_host *h, wf_instance *in) {
  wf_step_drop_coroutine(h, in); /* ... which ends its pending commands */
  free(in->spare);
  free(in->ignored);
  free(in->id);
  free(in->workflow);
  free(in->input);
  free(in->state);
  free(in->data);
  free(in->output);
  free(in->error);
  free(in->progress_msg);
  free(in->parent_id);
  free(in->row_wait);
  free(in->dry_report);
  free(in->saga_msg);
  free(in);
}

/* ---- inbox --------------------------------------------------------------------------- */

void wf_event_free(wf_event *ev) {
  if (!ev) return;
  free(ev->name);
  free(ev->data);
  free(ev);
}

static void inbox_append(wf_instance *in, int64_t id, const char *name, const char *data, int64_t at) {
  wf_event *ev = calloc(1, sizeof *ev);
  if (!ev) abort();
  ev->id = id;
  ev->at = at;
  ev->name = wf_strdup(name);
  ev->data = wf_strdup(data ? data : "null");
  *in->inbox_tail = ev;
  in->inbox_tail = &ev->next;
}

static int name_in(const char *name, const char *names) {
  size_t n = strlen(name);
  for (const char *p = names; p;) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && !memcmp(p, name, n)) return 1;
    p = bar ? bar + 1 : NULL;
  }
  return 0;
}

static wf_event *inbox_take(wf_instance *in, const char *names, int exact) {
  for (wf_event **pp = &in->inbox; *pp; pp = &(*pp)->next) {
    wf_event *ev = *pp;
    if (exact ? strcmp(ev->name, names) != 0 : !name_in(ev->name, names)) continue;
    *pp = ev->next;
    if (in->inbox_tail == &ev->next) in->inbox_tail = pp;
    ev->next = NULL;
    return ev;
  }
  return NULL;
}

wf_event *wf_inbox_take(wf_instance *in, const char *names) { return inbox_take(in, names, 0); }
wf_event *wf_inbox_take_exact(wf_instance *in, const char *name) { return inbox_take(in, name, 1); }

static void load_event(void *ud, const wf_event_rec *ev) {
  inbox_append(ud, ev->event_id, ev->name, ev->data, ev->at);
}

int wf_engine_load_inbox(wf_host *h, wf_instance *in) {
  while (in->inbox) {
    wf_event *ev = in->inbox;
    in->inbox = ev->next;
    wf_event_free(ev);
  }
  in->inbox_tail = &in->inbox;
  return wf_store_pending_events(h->st, in->id, load_event, in);
}

/* ---- journal ------------------------------------------------------------------------- */

static void touch(wf_host *h, wf_instance *in) {
  if (in->touched) return;
  in->touched = 1;
  in->touched_next = NULL;
  if (!h->touched_head) h->touched_tail = &h->touched_head;
  *h->touched_tail = in;
  h->touched_tail = &in->touched_next;
}

void wf_engine_store_rc(wf_host *h, int rc) {
  if (rc != WF_OK && h->batch_rc == WF_OK) {
    h->batch_rc = rc;
    wf_log(h, WF_LOG_ERROR, NULL, NULL, "store: %s", wf_store_errmsg(h->st));
  }
}

void wf_engine_history(wf_host *h, wf_instance *in, int64_t seq, const char *kind, const char *name,
                       const char *data) {
  if (in->dry) return;
  touch(h, in);
  wf_engine_store_rc(h, wf_store_append_history(h->st, in->id, ++in->pos, seq, kind, name, data, wf_now(h)));
  if (in->pos >= h->cfg.history_warn) wf_histsize_grew(h, in);
}

/* ---- ready queue --------------------------------------------------------------------- */

void wf_engine_kick(wf_host *h) {
  if (h->started && !h->closing && !uv_is_active((uv_handle_t *)&h->idle) &&
      !uv_is_active((uv_handle_t *)&h->backoff_timer)) /* backing off after a failed batch */
    uv_idle_start(&h->idle, on_idle);
}

void wf_engine_ready(wf_host *h, wf_instance *in) {
  if (!in->in_ready) {
    in->in_ready = 1;
    in->ready_next = NULL;
    if (h->ready_tail) h->ready_tail->ready_next = in;
    else h->ready_head = in;
    h->ready_tail = in;
  }
  wf_engine_kick(h);
}

/* ---- timers -------------------------------------------------------------------------- */

static int timer_before(const wf_timer *a, const wf_timer *b) {
  return a->due < b->due || (a->due == b->due && a->order < b->order);
}

static void heap_swap(wf_timer *a, wf_timer *b) {
  wf_timer t = *a;
  *a = *b;
  *b = t;
}

static void heap_push(wf_host *h, const char *id, int64_t seq, int64_t due) {
  if (h->nheap == h->capheap) {
    h->capheap = h->capheap ? h->capheap * 2 : 256;
    h->heap = wf_xrealloc(h->heap, h->capheap * sizeof *h->heap);
  }
  size_t i = h->nheap++;
  h->heap[i] = (wf_timer){.due = due, .order = h->timers_armed++, .seq = seq, .id = wf_strdup(id)};
  while (i && timer_before(&h->heap[i], &h->heap[(i - 1) / 2])) {
    heap_swap(&h->heap[(i - 1) / 2], &h->heap[i]);
    i = (i - 1) / 2;
  }
}

static wf_timer heap_pop(wf_host *h) {
  wf_timer top = h->heap[0];
  h->heap[0] = h->heap[--h->nheap];
  for (size_t i = 0;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < h->nheap && timer_before(&h->heap[l], &h->heap[m])) m = l;
    if (r < h->nheap && timer_before(&h->heap[r], &h->heap[m])) m = r;
    if (m == i) break;
    heap_swap(&h->heap[m], &h->heap[i]);
    i = m;
  }
  return top;
}

static void on_wake(uv_timer_t *t);

static void arm_timer(wf_host *h) {
  if (!h->started || h->closing) return;
  if (!h->nheap) {
    uv_timer_stop(&h->wake_timer);
    h->armed_due = 0;
    return;
  }
  int64_t due = h->heap[0].due;
  if (due == h->armed_due && uv_is_active((uv_handle_t *)&h->wake_timer)) return;
  int64_t delay = due - wf_now(h);
  h->armed_due = due;
  uv_timer_start(&h->wake_timer, on_wake, delay > 0 ? (uint64_t)delay : 0, 0);
}

void wf_engine_add_timer(wf_host *h, wf_instance *in, int64_t seq, int64_t due) {
  heap_push(h, in->id, seq, due);
  arm_timer(h);
}

/* Makes instances with a due timer ready. A timer whose instance no longer waits on it is
 * dropped: the instance checks what it waits on when it is advanced. */
static void fire_due(wf_host *h) {
  int64_t now = wf_now(h);
  while (h->nheap && h->heap[0].due <= now) {
    wf_timer t = heap_pop(h);
    wf_instance *in = wf_engine_find(h, t.id);
    if (!in) {
      in = find_or_add(h, t.id);
      wf_engine_ready(h, in);
    } else if (!in->co) {
      wf_engine_ready(h, in);
    } else {
      wf_pend *p = wf_pend_find(in, t.seq);
      if (p && p->due) wf_engine_ready(h, in);
    }
    free(t.id);
  }
}

static void on_wake(uv_timer_t *t) {
  wf_host *h = t->data;
  h->armed_due = 0;
  fire_due(h);
  arm_timer(h);
}

void wf_engine_poll(wf_host *h, int look) {
  fire_due(h);
  arm_timer(h);
  wf_action_expire(h, NULL);
  if (wf_sched_due(h)) wf_engine_kick(h);
  wf_outbox_poll(h);
  uint64_t now = uv_now(h->loop); /* at most one look per millisecond, unless asked */
  if ((look || now != h->ext_checked_at) && (h->ext_checked_at = now, wf_store_changed(h->st))) {
    h->ext_dirty = 1;
    wf_engine_kick(h);
  }
}

/* ---- requests ------------------------------------------------------------------------ */

static void starts_grow(wf_host *h) {
  size_t n = h->nstart_buckets ? h->nstart_buckets * 2 : 256;
  wf_submit **b = calloc(n, sizeof *b);
  if (!b) abort();
  for (size_t i = 0; i < h->nstart_buckets; i++) {
    for (wf_submit *s = h->starts[i], *next; s; s = next) {
      next = s->hnext;
      size_t j = hash_str(s->id) & (n - 1);
      s->hnext = b[j];
      b[j] = s;
    }
  }
  free(h->starts);
  h->starts = b;
  h->nstart_buckets = n;
}

wf_submit *wf_engine_queued_start(wf_host *h, const char *id) {
  if (!h->nstarts) return NULL;
  for (wf_submit *s = h->starts[hash_str(id) & (h->nstart_buckets - 1)]; s; s = s->hnext)
    if (!strcmp(s->id, id)) return s;
  return NULL;
}

static void starts_remove(wf_host *h, wf_submit *s) {
  wf_submit **pp = &h->starts[hash_str(s->id) & (h->nstart_buckets - 1)];
  while (*pp && *pp != s) pp = &(*pp)->hnext;
  if (*pp) {
    *pp = s->hnext;
    h->nstarts--;
  }
}

void wf_engine_submit(wf_host *h, wf_submit *s) {
  if (s->kind == WF_SUB_START) {
    if (h->nstarts + 1 > h->nstart_buckets) starts_grow(h);
    size_t j = hash_str(s->id) & (h->nstart_buckets - 1);
    s->hnext = h->starts[j];
    h->starts[j] = s;
    h->nstarts++;
  }
  s->next = NULL;
  *h->sub_tail = s;
  h->sub_tail = &s->next;
  wf_engine_kick(h);
}

static void answer(wf_host *h, wf_done_fn done, void *ud, const char *id, int rc) {
  if (!done) return;
  if (h->nanswers == h->capanswers) {
    h->capanswers = h->capanswers ? h->capanswers * 2 : 64;
    h->answers = wf_xrealloc(h->answers, h->capanswers * sizeof *h->answers);
  }
  h->answers[h->nanswers++] = (wf_answer){.done = done, .ud = ud, .id = wf_strdup(id), .rc = rc};
}

static void free_submit(wf_submit *s) {
  free(s->id);
  free(s->workflow);
  free(s->name);
  free(s->data);
  free(s);
}

/* A new event for an instance: into its inbox if its coroutine is live (otherwise the inbox
 * is loaded from the store when it is built), and wake it. */
static void event_arrived(wf_host *h, const char *id, int64_t event_id, const char *name,
                          const char *data, int64_t at) {
  if (event_id > h->last_event_id) h->last_event_id = event_id;
  wf_instance *in = find_or_add(h, id);
  if (!strcmp(name, WF_EVENT_CANCEL)) in->cancel_requested = 1; /* its parent ended, or cancelled it */
  int known = 0;
  for (wf_event *ev = in->inbox; ev && !known; ev = ev->next) known = ev->id == event_id;
  if (in->co && !known) inbox_append(in, event_id, name, data, at);
  wf_engine_ready(h, in);
}

const char *wf_run_suffix(const wf_instance *in, char buf[16]) {
  if (in->run <= 1) return "";
  snprintf(buf, 16, "@%d", in->run);
  return buf;
}

const char *wf_default_key(const wf_instance *in, int64_t seq, char *buf, size_t n) {
  char run[16];
  snprintf(buf, n, "%s:%" PRId64 "%s", in->id, seq, wf_run_suffix(in, run));
  return buf;
}

int wf_engine_add_event(wf_host *h, const char *id, const char *name, const char *data) {
  int64_t now = wf_now(h), eid = 0;
  int rc = wf_store_add_event(h->st, id, name, data, now, &eid);
  wf_engine_store_rc(h, rc);
  if (rc == WF_OK) event_arrived(h, id, eid, name, data, now);
  return rc;
}

int wf_engine_create(wf_host *h, const char *id, const char *workflow, int version, const char *input,
                     int *created) {
  return wf_engine_create_child(h, id, workflow, version, input, NULL, 0, 0, created);
}

/* A top-level instance's row is inserted at the end of the batch, with what its first step
 * made of it (wf_engine_write_row), instead of inserted now and updated then. A child's row
 * is inserted at once: its parent's end in the same batch looks its children up in the store. */
int wf_engine_create_child(wf_host *h, const char *id, const char *workflow, int version, const char *input,
                           const char *parent_id, int64_t parent_seq, int detached, int *created) {
  int64_t now = wf_now(h);
  int made = 0, rc;
  wf_instance *old = wf_engine_find(h, id);
  if (old && old->row_new) {
    rc = WF_OK;
  } else if (!parent_id) {
    int exists = 0;
    rc = wf_store_has_instance(h->st, id, &exists);
    made = rc == WF_OK && !exists;
  } else {
    wf_instance_rec r = {.id = id, .workflow = workflow, .version = version, .status = "pending",
                         .input = input, .data = "{}", .created_at = now, .updated_at = now,
                         .parent_id = parent_id, .parent_seq = parent_seq, .detached = detached};
    rc = wf_store_insert_instance(h->st, &r, &made);
  }
  wf_engine_store_rc(h, rc);
  if (rc == WF_OK && made) {
    wf_instance *in = find_or_add(h, id);
    in->row_new = !parent_id;
    in->workflow = wf_strdup(workflow);
    in->version = version;
    in->input = wf_strdup(input);
    in->data = wf_strdup("{}");
    in->status = in->row_status = WF_ST_PENDING;
    in->created_at = now;
    in->parent_id = parent_id ? wf_strdup(parent_id) : NULL;
    in->run = 1;
    in->loaded = 1;
    touch(h, in);
    wf_engine_ready(h, in);
  }
  if (created) *created = made;
  return rc;
}

static void apply_submit(wf_host *h, wf_submit *s) {
  wf_instance *in;
  int rc = WF_OK;
  switch (s->kind) {
  case WF_SUB_START:
    rc = wf_engine_create(h, s->id, s->workflow, s->version, s->data, NULL);
    break;
  case WF_SUB_SIGNAL:
    rc = wf_engine_add_event(h, s->id, s->name, s->data);
    break;
  case WF_SUB_CANCEL:
    in = find_or_add(h, s->id);
    in->cancel_requested = 1;
    wf_engine_ready(h, in);
    break;
  case WF_SUB_RETRY:
    in = find_or_add(h, s->id);
    in->retry_requested = 1;
    wf_engine_ready(h, in);
    break;
  }
  answer(h, s->done, s->ud, s->id, rc);
}

static void ingest_pending(void *ud, const char *id) {
  wf_host *h = ud;
  wf_instance *in = find_or_add(h, id);
  if (!in->loaded) wf_engine_ready(h, in);
}

static void ingest_event(void *ud, const wf_event_rec *ev) {
  wf_host *h = ud;
  event_arrived(h, ev->instance_id, ev->event_id, ev->name, ev->data, ev->at);
}

static void ingest_request(void *ud, int64_t req_id, const char *id, const char *kind) {
  wf_host *h = ud;
  (void)req_id;
  if (!strcmp(kind, "schedules")) { /* a client changed a schedule: read them again */
    wf_sched_load(h);
    return;
  }
  if (!strcmp(kind, "isolate") || !strcmp(kind, "close")) { /* id: action, then \x1f and the key */
    const char *sep = strchr(id, 0x1f);
    char action[200];
    snprintf(action, sizeof action, "%.*s", sep ? (int)(sep - id) : (int)strlen(id), id);
    wf_breaker_set(h, action, sep ? sep + 1 : "", !strcmp(kind, "isolate"));
    return;
  }
  if (!strcmp(kind, "outbox_retry")) { /* id: the message id, then \x1f and the subscriber if any */
    wf_outbox_request(h, id);
    return;
  }
  wf_instance *in = find_or_add(h, id);
  if (!strcmp(kind, "cancel")) in->cancel_requested = 1;
  else if (!strcmp(kind, "retry")) in->retry_requested = 1;
  wf_engine_ready(h, in);
}

/* Takes what other processes wrote: new instances, events, cancel and retry requests. Runs
 * inside the batch's write transaction, so no writer can slip in between. */
static void ingest(wf_host *h) {
  static const char *const pending[] = {"pending", NULL};
  if (!h->ext_dirty && !wf_store_changed(h->st)) return;
  h->ext_dirty = 0;
  wf_engine_store_rc(h, wf_store_each_instance(h->st, pending, ingest_pending, h));
  wf_engine_store_rc(h, wf_store_events_after(h->st, h->last_event_id, ingest_event, h));
  wf_engine_store_rc(h, wf_store_take_requests(h->st, ingest_request, h));
}

static void load_timer(void *ud, const char *id, int64_t seq, int64_t due) {
  heap_push(ud, id, seq, due);
}

/* Instances left pending or running by a previous host (or before a rolled-back batch), and
 * the timers: the heap is rebuilt from the store, where every armed timer has its row. */
static void recover(wf_host *h) {
  static const char *const active[] = {"pending", "running", NULL};
  wf_engine_store_rc(h, wf_store_each_instance(h->st, active, ingest_pending, h));
  for (size_t i = 0; i < h->nheap; i++) free(h->heap[i].id);
  h->nheap = 0;
  wf_engine_store_rc(h, wf_store_each_timer(h->st, load_timer, h));
  h->armed_due = 0;
  arm_timer(h);
  wf_sched_load(h);
}

/* ---- the batch ----------------------------------------------------------------------- */

static void describe_pend(const wf_pend *p, char *buf, size_t n) {
  char t[32];
  switch (p->kind) {
  case WF_PEND_ACTION:
    wf_attempt_describe(p, buf, n);
    break;
  case WF_PEND_WAIT:
    if (p->due) {
      wf_format_time(p->due, t);
      snprintf(buf, n, "event %s (timeout at %s)", p->name, t);
    } else {
      snprintf(buf, n, "event %s", p->name);
    }
    break;
  case WF_PEND_SLEEP:
    wf_format_time(p->due, t);
    snprintf(buf, n, "timer until %s", t);
    break;
  case WF_PEND_CHILD:
    snprintf(buf, n, "child %s", p->params);
    break;
  default:
    buf[0] = 0;
  }
}

/* What the instance waits on: its one command, or its branches' joined by "; ". */
static char *waiting_for(wf_instance *in) {
  if (!in->pends) return NULL;
  char buf[1024], one[600];
  size_t len = 0;
  buf[0] = 0;
  for (const wf_pend *p = in->pends; p; p = p->next) {
    describe_pend(p, one, sizeof one);
    int k = snprintf(buf + len, sizeof buf - len, "%s%s", len ? "; " : "", one);
    if (k < 0 || (size_t)k >= sizeof buf - len) {
      snprintf(buf + (sizeof buf - 5), 5, "...");
      break;
    }
    len += (size_t)k;
  }
  return wf_strdup(buf);
}

void wf_engine_write_row(wf_host *h, wf_instance *in) {
  char *wait = in->co ? waiting_for(in) : NULL;
  int same_wait = (!wait && !in->row_wait) || (wait && in->row_wait && !strcmp(wait, in->row_wait));
  if (!in->row_new && !in->row_dirty && in->status == in->row_status && same_wait) {
    free(wait);
    return;
  }
  wf_instance_rec r = {.id = in->id, .workflow = in->workflow, .version = in->version,
                       .status = wf_status_name(in->status), .state = in->state,
                       .input = in->input, .data = in->data ? in->data : "{}",
                       .output = in->output, .error = in->error, .waiting_for = wait,
                       .created_at = in->created_at, .updated_at = wf_now(h),
                       .has_progress = in->has_progress, .progress = in->progress,
                       .progress_message = in->progress_msg};
  if (in->row_new) {
    int made = 0;
    int rc = wf_store_insert_instance(h->st, &r, &made);
    wf_engine_store_rc(h, rc == WF_OK && !made ? WF_INVALID : rc); /* cannot be: the batch holds the write lock */
    in->row_new = 0;
  } else {
    wf_engine_store_rc(h, wf_store_update_instance(h->st, &r));
  }
  free(in->row_wait);
  in->row_wait = wait;
  in->row_status = in->status;
  in->row_dirty = 0;
}

/* A rolled-back batch: forget every instance it touched (the store is the truth); ready
 * instances it did not reach stay queued. Timers that fired for the forgotten ones are
 * reloaded from the store by the recovery that follows. */
static void undo_batch(wf_host *h) {
  while (h->touched_head) {
    wf_instance *in = h->touched_head;
    h->touched_head = in->touched_next;
    in->touched = 0;
    if (!in->in_ready) instance_free(h, in);
  }
  h->ext_dirty = 1;
  h->recover_needed = 1;
}

/* The next batch recovers (recover_needed) what the failed one dropped. */
static void on_backoff(uv_timer_t *t) {
  wf_host *h = t->data;
  uv_idle_start(&h->idle, on_idle);
}

static void run_batch(wf_host *h) {
  int64_t last_event = h->last_event_id;
  h->batch_rc = wf_store_begin(h->st);
  if (h->batch_rc != WF_OK) { /* nothing was done yet: only wait and try again */
    wf_log(h, WF_LOG_ERROR, NULL, NULL, "cannot begin a transaction: %s", wf_store_errmsg(h->st));
    goto back_off;
  }
  h->in_batch = 1;
  if (h->recover_needed) {
    h->recover_needed = 0;
    recover(h);
  }
  ingest(h);
  while (h->sub_head) {
    wf_submit *s = h->sub_head;
    h->sub_head = s->next;
    if (!h->sub_head) h->sub_tail = &h->sub_head;
    if (s->kind == WF_SUB_START) starts_remove(h, s);
    apply_submit(h, s);
    free_submit(s);
  }
  wf_sched_fire(h);
  for (int n = 0; h->ready_head && n < BATCH_MAX; n++) {
    wf_instance *in = h->ready_head;
    h->ready_head = in->ready_next;
    if (!h->ready_head) h->ready_tail = NULL;
    in->in_ready = 0;
    touch(h, in);
    wf_step_advance(h, in);
  }
  for (wf_instance *in = h->touched_head; in; in = in->touched_next)
    if (in->loaded) wf_engine_write_row(h, in);
  wf_breaker_write_dirty(h);
  wf_outbox_write(h);
  h->in_batch = 0;
  if (h->batch_rc == WF_OK) h->batch_rc = wf_store_commit(h->st);
  else wf_store_rollback(h->st);
  if (h->batch_rc != WF_OK) goto failed;
  wf_outbox_committed(h);

  h->io_backoff_ms = 0;
  /* A large WAL is checkpointed now; a smaller one once the host has been idle a moment. */
  int pending = 0;
  wf_engine_store_rc(h, wf_store_checkpoint(h->st, 0, &pending));
  if (pending) uv_timer_start(&h->checkpoint_timer, on_checkpoint, 100, 0);
  /* Effects, now that the batch is durable. */
  size_t nans = h->nanswers;
  h->nanswers = 0;
  for (size_t i = 0; i < nans; i++) {
    wf_answer *a = &h->answers[i];
    a->done(h, a->rc, a->id, a->ud);
    free(a->id);
  }
  wf_instance *touched = h->touched_head;
  h->touched_head = NULL;
  for (wf_instance *in = touched, *next; in; in = next) {
    next = in->touched_next;
    in->touched = 0;
    if (wf_status_final(in->status) || in->status == WF_ST_SUSPENDED) {
      if (!in->in_ready) instance_free(h, in);
      continue;
    }
    if (!h->closing)
      for (wf_pend *p = in->pends; p; p = p->next)
        if (p->dispatch) wf_action_dispatch(h, in, p);
    if (in->co && in->status == WF_ST_WAITING) lru_touch(h, in);
    else lru_remove(h, in);
  }
  /* Keep the cache of live coroutines bounded: the least recently used parked instances are
   * dropped and rebuilt by replay when they next have work. */
  while (h->nlive > (size_t)h->cfg.cache_size && h->lru_head) {
    wf_instance *in = h->lru_head;
    lru_remove(h, in);
    if (!in->in_ready && !in->cancel_requested && !wf_pend_has_call(in)) instance_free(h, in);
  }
  wf_outbox_dispatch(h); /* outbox messages go out only now that they are durable */
  return;

failed:
  h->in_batch = 0;
  wf_store_rollback(h->st);
  h->last_event_id = last_event;
  {
    int rc = h->batch_rc ? h->batch_rc : WF_IO;
    size_t nans = h->nanswers;
    h->nanswers = 0;
    for (size_t i = 0; i < nans; i++) {
      wf_answer *a = &h->answers[i];
      wf_fail(h, rc, "the request was not stored: %s", wf_store_errmsg(h->st));
      a->done(h, rc, a->id, a->ud);
      free(a->id);
    }
    /* Requests not yet applied stay queued for the next batch. */
  }
  undo_batch(h);
back_off:
  h->io_backoff_ms = h->io_backoff_ms ? h->io_backoff_ms * 2 : 50;
  if (h->io_backoff_ms > 5000) h->io_backoff_ms = 5000;
  wf_log(h, WF_LOG_WARN, NULL, NULL, "batch not written; retrying in %d ms", h->io_backoff_ms);
  uv_idle_stop(&h->idle);
  uv_timer_start(&h->backoff_timer, on_backoff, (uint64_t)h->io_backoff_ms, 0);
}

static void on_checkpoint(uv_timer_t *t) {
  wf_host *h = t->data;
  if (h->ready_head || h->sub_head) return; /* busy again: the next batch re-arms it */
  if (wf_store_checkpoint(h->st, 1, NULL) != WF_OK)
    wf_log(h, WF_LOG_WARN, NULL, NULL, "checkpoint: %s", wf_store_errmsg(h->st));
}

static void on_idle(uv_idle_t *idle) {
  wf_host *h = idle->data;
  if (h->ready_head || h->sub_head || h->ext_dirty || h->recover_needed || wf_sched_due(h) ||
      wf_outbox_pending(h))
    run_batch(h);
  if (!h->ready_head && !h->sub_head && !h->ext_dirty && !wf_outbox_pending(h) &&
      uv_is_active((uv_handle_t *)&h->idle))
    uv_idle_stop(&h->idle);
  if (h->stop_requested && !h->ready_head && !h->sub_head) wf_engine_stop(h);
}

static void on_poll(uv_timer_t *t) {
  wf_host *h = t->data;
  if (wf_store_changed(h->st)) {
    h->ext_dirty = 1;
    wf_engine_kick(h);
  }
}

/* ---- calls --------------------------------------------------------------------------- */

/* The step that waits for this call, or NULL: the call was abandoned, and its outcome is
 * journaled as ignored if the instance is live. */
static wf_pend *waiting_on(wf_host *h, wf_call *c, wf_instance **inp) {
  wf_instance *in = *inp = wf_engine_find(h, c->instance_id);
  for (wf_pend *p = in ? in->pends : NULL; p; p = p->next)
    if (p->call == c) {
      if (!c->abandoned) return p;
      p->call = NULL; /* abandoned by its action itself (at close): forget it */
    }
  wf_log(h, WF_LOG_DEBUG, c->instance_id, NULL, "outcome of %s (step %" PRId64 ") ignored: the step no longer waits for it",
         c->name, c->seq);
  if (in && in->co) {
    in->ignored = wf_xrealloc(in->ignored, sizeof *in->ignored * (in->nignored + 1));
    in->ignored[in->nignored++] = c->seq;
    wf_engine_ready(h, in);
  }
  return NULL;
}

void wf_engine_call_done(wf_host *h, wf_call *c, wf_outcome_rec *o) {
  wf_instance *in;
  wf_pend *p = waiting_on(h, c, &in);
  if (!p) {
    wf_outcome_free(o);
    return;
  }
  p->call = NULL;
  p->has_result = 1;
  wf_outcome_free(&p->out);
  p->out = *o;
  wf_engine_ready(h, in);
}

void wf_engine_call_timeout(wf_host *h, wf_call *c) {
  wf_instance *in;
  wf_pend *p = waiting_on(h, c, &in);
  if (!p) return;
  p->call = NULL;
  p->timed_out = 1;
  wf_action_abandon(h, c);
  wf_engine_ready(h, in);
}

/* ---- lifecycle ----------------------------------------------------------------------- */

int wf_engine_init(wf_host *h) {
  h->sub_tail = &h->sub_head;
  if (h->cfg.loop) {
    h->loop = h->cfg.loop;
  } else {
    if (uv_loop_init(&h->own_loop) != 0) return wf_fail(h, WF_ERROR, "cannot create a libuv loop");
    h->loop = &h->own_loop;
    h->owns_loop = 1;
  }
  uv_idle_init(h->loop, &h->idle);
  uv_timer_init(h->loop, &h->wake_timer);
  uv_timer_init(h->loop, &h->poll_timer);
  uv_timer_init(h->loop, &h->backoff_timer);
  uv_timer_init(h->loop, &h->checkpoint_timer);
  uv_timer_init(h->loop, &h->dl_timer);
  wf_sched_init(h);
  uv_unref((uv_handle_t *)&h->checkpoint_timer); /* never keeps a loop alive by itself */
  h->idle.data = h->wake_timer.data = h->poll_timer.data = h->backoff_timer.data = h;
  h->checkpoint_timer.data = h->dl_timer.data = h;
  wf_outbox_init(h);
  h->handles_open = 1;
  return WF_OK;
}

void wf_engine_store_catalog(wf_host *h) {
  char **names = NULL, **sources = NULL;
  int *versions = NULL;
  size_t n = wf_lua_workflow_names(h, &names, &versions, &sources);
  if (wf_store_begin(h->st) == WF_OK) {
    if (wf_store_replace_catalog(h->st, (const char *const *)names, versions, (const char *const *)sources, n,
                                 wf_now(h)) == WF_OK)
      wf_store_commit(h->st);
    else
      wf_store_rollback(h->st);
  }
  for (size_t i = 0; i < n; i++) {
    free(names[i]);
    free(sources[i]);
  }
  free(names);
  free(sources);
  free(versions);
}

int wf_engine_start(wf_host *h) {
  h->stop_requested = 0;
  if (h->started) return WF_OK;
  if (!h->recovered) {
    /* The first ingest takes every unconsumed event, including those sent while no host
     * ran: each wakes its instance, which takes it if it waits for it. */
    h->last_event_id = 0;
    wf_engine_store_catalog(h);
    wf_sched_sync_definitions(h);
    /* The first batch recovers what a previous host left running, and loads the timers. */
    h->recover_needed = 1;
    h->recovered = 1;
    if (wf_breaker_load(h) != WF_OK)
      wf_log(h, WF_LOG_WARN, NULL, NULL, "circuit breakers not restored: %s", wf_store_errmsg(h->st));
  }
  h->started = 1;
  h->ext_dirty = 1;
  uv_idle_start(&h->idle, on_idle);
  if (h->cfg.poll_interval_ms > 0)
    uv_timer_start(&h->poll_timer, on_poll, (uint64_t)h->cfg.poll_interval_ms,
                   (uint64_t)h->cfg.poll_interval_ms);
  arm_timer(h);
  wf_sched_arm(h);
  return WF_OK;
}

void wf_engine_stop(wf_host *h) {
  h->stop_requested = 1;
  if (h->owns_loop) {
    if (!uv_is_active((uv_handle_t *)&h->idle)) uv_stop(h->loop);
    return;
  }
  /* The application's loop goes on; the host takes no more work until started again. */
  if (h->in_batch) return;
  uv_idle_stop(&h->idle);
  uv_timer_stop(&h->wake_timer);
  uv_timer_stop(&h->poll_timer);
  uv_timer_stop(&h->backoff_timer);
  uv_timer_stop(&h->checkpoint_timer);
  uv_timer_stop(&h->dl_timer);
  uv_timer_stop(&h->sched_timer);
  wf_outbox_stop(h);
  h->armed_due = 0;
  h->started = 0;
}

int wf_engine_busy(wf_host *h) {
  if (h->ready_head || h->sub_head || h->ext_dirty || h->calls_waited || h->recover_needed || h->workers ||
      wf_outbox_busy(h))
    return 1;
  return (h->nheap && h->heap[0].due <= wf_now(h)) || (h->ndl && h->dl[0]->deadline <= wf_now(h)) ||
         wf_sched_due(h);
}

static void on_close(uv_handle_t *hd) { (void)hd; }

static void close_any(uv_handle_t *hd, void *arg) {
  (void)arg;
  if (!uv_is_closing(hd)) uv_close(hd, NULL);
}

void wf_engine_shutdown(wf_host *h) {
  h->closing = 1;
  /* Requests already accepted are committed (and answered) before the host goes; the
   * actions this last batch asks for are invoked by the next host. */
  if ((h->sub_head || h->ready_head || wf_outbox_pending(h)) && !h->recover_needed) run_batch(h);
  wf_action_detach_all(h);
  if (h->handles_open) {
    uv_close((uv_handle_t *)&h->idle, on_close);
    uv_close((uv_handle_t *)&h->wake_timer, on_close);
    uv_close((uv_handle_t *)&h->poll_timer, on_close);
    uv_close((uv_handle_t *)&h->backoff_timer, on_close);
    uv_close((uv_handle_t *)&h->checkpoint_timer, on_close);
    uv_close((uv_handle_t *)&h->dl_timer, on_close);
    uv_close((uv_handle_t *)&h->sched_timer, on_close);
    wf_outbox_close(h);
    /* Let the loop run the close callbacks; on the application's loop this only runs ours. */
    uv_run(h->loop, UV_RUN_NOWAIT);
    h->handles_open = 0;
  }
  for (size_t i = 0; i < h->nbuckets; i++) {
    while (h->buckets[i]) instance_free(h, h->buckets[i]);
  }
  free(h->buckets);
  h->buckets = NULL;
  h->nbuckets = 0;
  for (size_t i = 0; i < h->nheap; i++) free(h->heap[i].id);
  free(h->heap);
  h->heap = NULL;
  h->nheap = 0;
  wf_sched_free_all(h);
  while (h->sub_head) {
    wf_submit *s = h->sub_head;
    h->sub_head = s->next;
    free_submit(s);
  }
  free(h->starts);
  h->starts = NULL;
  h->nstarts = h->nstart_buckets = 0;
  for (size_t i = 0; i < h->nanswers; i++) free(h->answers[i].id);
  free(h->answers);
  h->answers = NULL;
  if (h->owns_loop) {
    /* Handles actions left open (a timer for a call that will never be answered) are
     * closed too, so that closing never waits for them. */
    uv_walk(h->loop, close_any, NULL);
    while (uv_loop_close(h->loop) == UV_EBUSY) uv_run(h->loop, UV_RUN_NOWAIT);
    h->owns_loop = 0;
  }
}
