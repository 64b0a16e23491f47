/*
 * test_outbox.c — the transactional outbox through the public API, on a virtual clock:
 *
 *   1. messages are delivered only once committed (another connection sees them when the
 *      subscriber is called), in emit order, with deterministic ids; the history journals
 *      each emit; delivered messages leave the outbox
 *   2. the same transaction as the step: a batch that fails to commit delivers nothing, and
 *      the step redone after the recovery emits each message once
 *   3. retries on the virtual clock with the policy's backoff; later messages wait behind a
 *      failing one; the listing shows attempts, next attempt and last error
 *   4. dead letters: attempts exhausted, non-retryable types; the next message goes on;
 *      wf_outbox_retry from the host and from a client handle
 *   5. per-subscriber independence: a failing subscriber never makes another receive twice
 *   6. no duplicate emits under replay (a restart, and an evicted coroutine)
 *   7. messages with no subscriber are kept (unrouted) and delivered once one is registered,
 *      also by a later host
 *   8. attempt timeouts: a late completion is dropped
 *   9. bad topics, payloads too large or not JSON, bad registrations
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <uv.h>

#include "test_util.h"
#include "wfhost.h"

#define T0 INT64_C(1700000000000)

static char dir[64], wfdir[128];
static int64_t now_ms = T0;
static int64_t clock_fn(void *ud) {
  (void)ud;
  return now_ms;
}

static void log_fn(void *ud, wf_log_level lvl, const char *inst, const char *msg, const char *fields) {
  (void)ud;
  if (getenv("WF_TEST_LOG")) fprintf(stderr, "log %d [%s] %s %s\n", (int)lvl, inst ? inst : "-", msg, fields ? fields : "");
}

static void db_path(const char *name, char *out, size_t n) { snprintf(out, n, "%s/%s.db", dir, name); }

static wf_host *open_host(const char *name, int cache_size, size_t max_payload) {
  char db[256];
  db_path(name, db, sizeof db);
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.clock = clock_fn;
  cfg.seed = 7;
  cfg.log = log_fn;
  cfg.log_level = WF_LOG_DEBUG;
  cfg.cache_size = cache_size;
  cfg.max_payload = max_payload;
  return test_open_host(db, &cfg, wfdir);
}

static wf_host *open_client(const char *name) {
  char db[256];
  db_path(name, db, sizeof db);
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.mode = WF_MODE_CLIENT;
  cfg.clock = clock_fn;
  wf_host *c = NULL;
  CHECK(wf_host_open(db, &cfg, &c) == WF_OK);
  return c;
}

/* ---- a recording subscriber ------------------------------------------------------------ */

typedef struct sub {
  int fail_next;         /* fail this many attempts, then succeed */
  int fail_all;
  const char *fail_type; /* the type of the failures ("unavailable" if NULL) */
  int hold;              /* keep deliveries to complete later */
  wf_delivery *held[16];
  int nheld;
  int count;             /* attempts seen */
  char log[16384];       /* "<msg id> <attempt> <topic> <payload (40 bytes)>\n" per attempt */
  wf_host *reader;       /* another connection: what it sees is committed */
  int uncommitted;       /* attempts of messages that connection did not see */
} sub;

/* 1 if the instance's committed history has an emit entry with this message id. */
static int emit_committed(wf_host *reader, const char *instance, const char *msg_id) {
  wf_history_entry *e;
  size_t n;
  if (wf_history(reader, instance, &e, &n) != WF_OK) return 0;
  char want[300];
  snprintf(want, sizeof want, "\"id\":\"%s\"", msg_id);
  int found = 0;
  for (size_t i = 0; i < n; i++)
    found |= !strcmp(e[i].kind, "emit") && e[i].data_json && strstr(e[i].data_json, want) != NULL;
  wf_history_free(e, n);
  return found;
}

static void on_message(wf_delivery *d, const char *msg_id, const char *topic, const char *payload, int attempt,
                       void *ud) {
  sub *s = ud;
  s->count++;
  size_t len = strlen(s->log);
  snprintf(s->log + len, sizeof s->log - len, "%s %d %s %.40s\n", msg_id, attempt, topic, payload);
  if (s->reader && !emit_committed(s->reader, wf_delivery_instance(d), msg_id)) s->uncommitted++;
  if (s->hold) {
    wf_delivery_hold(d);
    s->held[s->nheld++] = d;
    return;
  }
  if (s->fail_all || s->fail_next > 0) {
    if (s->fail_next > 0) s->fail_next--;
    wf_delivery_fail(d, s->fail_type ? s->fail_type : "unavailable", "the endpoint said 503");
    return;
  }
  wf_delivery_ok(d);
}

static int subscribe(wf_host *h, const char *name, const char *pattern, sub *s, int max_attempts, int64_t delay_ms) {
  wf_subscriber_opts o;
  wf_subscriber_opts_init(&o);
  o.retry.max_attempts = max_attempts;
  o.retry.backoff = WF_BACKOFF_CONSTANT;
  o.retry.jitter = WF_JITTER_NONE;
  o.retry.initial_delay_ms = delay_ms;
  o.retry.attempt_timeout_ms = 2000;
  return wf_subscribe(h, name, pattern, on_message, s, &o);
}

/* Moves the virtual clock to the next timer and runs what fell due; 0 if there is none. */
static int step(wf_host *h) {
  int64_t due;
  if (wf_next_timer(h, &due) != WF_OK) return 0;
  if (due > now_ms) now_ms = due;
  CHECK(wf_host_drain(h) == WF_OK);
  return 1;
}

static size_t count_lines(const char *s) {
  size_t n = 0;
  for (; *s; s++) n += *s == '\n';
  return n;
}

static size_t list_count(wf_host *h, const char *status) {
  wf_outbox_entry *e;
  size_t n = 0;
  CHECK(wf_outbox_list(h, status, 0, &e, &n) == WF_OK);
  wf_outbox_list_free(e, n);
  return n;
}

static int history_count(wf_host *h, const char *id, const char *kind) {
  wf_history_entry *e;
  size_t n;
  int c = 0;
  if (wf_history(h, id, &e, &n) != WF_OK) return -1;
  for (size_t i = 0; i < n; i++) c += !strcmp(e[i].kind, kind);
  wf_history_free(e, n);
  return c;
}

/* ---- 1. after commit, in order --------------------------------------------------------- */

static void test_order_and_commit(void) {
  wf_host *h = open_host("order", 0, 0);
  wf_host *reader = open_client("order");
  sub a = {.reader = reader};
  CHECK(subscribe(h, "shipping", "order.*", &a, 3, 1000) == WF_OK);
  CHECK(wf_start(h, "emitter", "{\"n\":5,\"topic\":\"order.shipped\"}", "e1", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(test_status_of(h, "e1"), "waiting"));
  CHECK(a.count == 5);
  CHECK(a.uncommitted == 0);
  CHECK(!strcmp(a.log, "e1:0:1 1 order.shipped {\"i\":1}\n"
                       "e1:0:2 1 order.shipped {\"i\":2}\n"
                       "e1:0:3 1 order.shipped {\"i\":3}\n"
                       "e1:0:4 1 order.shipped {\"i\":4}\n"
                       "e1:0:5 1 order.shipped {\"i\":5}\n"));
  /* The history journals each emit with its topic, id and payload. */
  wf_history_entry *e;
  size_t n;
  CHECK(wf_history(h, "e1", &e, &n) == WF_OK);
  int emits = 0;
  for (size_t i = 0; i < n; i++)
    if (!strcmp(e[i].kind, "emit")) {
      emits++;
      CHECK(e[i].seq == 0 && !strcmp(e[i].name, "order.shipped"));
      if (emits == 2) CHECK(!strcmp(e[i].data_json, "{\"id\":\"e1:0:2\",\"payload\":{\"i\":2}}"));
    }
  wf_history_free(e, n);
  CHECK(emits == 5);
  CHECK(list_count(h, NULL) == 0); /* delivered: gone */

  /* The emit after the wait has the wait's seq; a topic the pattern does not match is not
   * this subscriber's. */
  a.log[0] = 0;
  CHECK(wf_signal(h, "e1", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(a.log, "e1:1:1 1 order.done {\"n\":5}\n"));
  CHECK(!strcmp(test_status_of(h, "e1"), "completed"));
  CHECK(list_count(h, NULL) == 1); /* "audit.closed": no subscriber */
  wf_host_close(h);
  wf_host_close(reader);
}

/* ---- 2. the step's transaction ----------------------------------------------------------- */

static wf_call *gate_call;
static int gate_calls;
static void gate(wf_call *c, void *ud) {
  (void)ud;
  gate_calls++;
  gate_call = c;
  wf_call_hold(c);
}

static void test_failed_commit(void) {
  wf_host *h = open_host("txn", 0, 0);
  sub a = {0};
  CHECK(subscribe(h, "all", "*", &a, 3, 1000) == WF_OK);
  CHECK(wf_register_action(h, "gate", gate, NULL, NULL) == WF_OK);
  static char input[12000];
  snprintf(input, sizeof input, "{\"pad\":\"%09000d\"}", 0);
  CHECK(wf_start(h, "gated", input, "big", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(gate_calls == 1);

  /* The step after the action emits three large messages: no room for its batch. */
  signal(SIGXFSZ, SIG_IGN);
  struct rlimit old, lim;
  getrlimit(RLIMIT_FSIZE, &old);
  char db[300];
  db_path("txn", db, sizeof db);
  lim.rlim_cur = (rlim_t)test_wal_log_end(db) + 4096;
  lim.rlim_max = old.rlim_max;
  setrlimit(RLIMIT_FSIZE, &lim);
  wf_call_ok(gate_call, "{}");
  uv_loop_t *loop = wf_host_loop(h);
  for (int i = 0; i < 20; i++) uv_run(loop, UV_RUN_NOWAIT);
  CHECK(a.count == 0); /* the batch with the emits was rolled back: nothing went out */
  CHECK(history_count(h, "big", "emit") == 0);
  CHECK(list_count(h, NULL) == 0);

  /* Room again: the host rebuilds the instance from what is durable, the action is invoked
   * again (its result was lost with the batch), and the step emits each message once. */
  setrlimit(RLIMIT_FSIZE, &old);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(gate_calls == 2);
  wf_call_ok(gate_call, "{}");
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(test_status_of(h, "big"), "completed"));
  CHECK(a.count == 3);
  CHECK(strstr(a.log, "big:1:1 1 x.y") && strstr(a.log, "big:1:3 1 x.y") && !strstr(a.log, "big:1:4"));
  CHECK(history_count(h, "big", "emit") == 3);
  CHECK(list_count(h, NULL) == 0);
  wf_host_close(h);
}

/* ---- 3. retries ------------------------------------------------------------------------- */

static void test_retries(void) {
  now_ms = T0;
  wf_host *h = open_host("retry", 0, 0);
  sub b = {.fail_next = 2};
  CHECK(subscribe(h, "billing", "order.shipped", &b, 5, 1000) == WF_OK);
  CHECK(wf_start(h, "emitter", "{\"n\":2,\"topic\":\"order.shipped\"}", "r1", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(b.log, "r1:0:1 1 order.shipped {\"i\":1}\n")); /* message 2 waits behind 1 */

  wf_outbox_entry *e;
  size_t n;
  CHECK(wf_outbox_list(h, "pending", 0, &e, &n) == WF_OK);
  CHECK(n == 2);
  if (n == 2) {
    CHECK(!strcmp(e[0].msg_id, "r1:0:1") && !strcmp(e[0].subscriber, "billing") && !strcmp(e[0].status, "pending"));
    CHECK(e[0].attempts == 1 && e[0].next_at == T0 + 1000);
    CHECK(e[0].last_error && !strcmp(e[0].last_error, "unavailable: the endpoint said 503"));
    CHECK(!strcmp(e[0].instance_id, "r1") && !strcmp(e[0].topic, "order.shipped") && !strcmp(e[0].payload_json, "{\"i\":1}"));
    CHECK(!strcmp(e[1].msg_id, "r1:0:2") && e[1].attempts == 0 && !e[1].last_error);
  }
  wf_outbox_list_free(e, n);

  int64_t due = 0;
  CHECK(wf_next_timer(h, &due) == WF_OK && due == T0 + 1000);
  CHECK(step(h));
  CHECK(now_ms == T0 + 1000 && b.count == 2);
  CHECK(wf_next_timer(h, &due) == WF_OK && due == T0 + 2000);
  CHECK(step(h));
  CHECK(!strcmp(b.log, "r1:0:1 1 order.shipped {\"i\":1}\n"
                       "r1:0:1 2 order.shipped {\"i\":1}\n"
                       "r1:0:1 3 order.shipped {\"i\":1}\n"
                       "r1:0:2 1 order.shipped {\"i\":2}\n"));
  CHECK(list_count(h, NULL) == 0);
  CHECK(wf_next_timer(h, &due) == WF_NOTFOUND);

  /* The backoff survives a restart: the persisted time, not a new one. */
  b = (sub){.fail_next = 1};
  CHECK(wf_start(h, "emitter", "{\"n\":1,\"topic\":\"order.shipped\"}", "r2", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(b.count == 1);
  wf_host_close(h);
  now_ms += 400;
  h = open_host("retry", 0, 0);
  CHECK(subscribe(h, "billing", "order.shipped", &b, 5, 1000) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(b.count == 1); /* not before its time */
  CHECK(wf_next_timer(h, &due) == WF_OK && due == now_ms + 600);
  CHECK(step(h));
  CHECK(b.count == 2 && strstr(b.log, "r2:0:1 2 "));
  CHECK(list_count(h, NULL) == 0);
  wf_host_close(h);
}

/* ---- 4. dead letters ------------------------------------------------------------------- */

static void test_dead_letters(void) {
  now_ms = T0;
  wf_host *h = open_host("dead", 0, 0);
  sub c = {.fail_all = 1};
  CHECK(subscribe(h, "crm", "*", &c, 2, 500) == WF_OK);
  CHECK(wf_start(h, "emitter", "{\"n\":2,\"topic\":\"lead.new\"}", "d1", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  while (step(h)) {
  }
  /* Two attempts each; the first dead letter let the second message go. */
  CHECK(!strcmp(c.log, "d1:0:1 1 lead.new {\"i\":1}\n"
                       "d1:0:1 2 lead.new {\"i\":1}\n"
                       "d1:0:2 1 lead.new {\"i\":2}\n"
                       "d1:0:2 2 lead.new {\"i\":2}\n"));
  wf_outbox_entry *e;
  size_t n;
  CHECK(wf_outbox_list(h, "failed", 0, &e, &n) == WF_OK);
  CHECK(n == 2);
  for (size_t i = 0; i < n; i++) {
    CHECK(!strcmp(e[i].status, "failed") && e[i].attempts == 2);
    CHECK(e[i].last_error && strstr(e[i].last_error, "503"));
  }
  wf_outbox_list_free(e, n);
  CHECK(list_count(h, "pending") == 0);

  /* An operator retries one message: a fresh round of attempts, now successful. */
  CHECK(wf_outbox_retry(h, "d1:0:9", NULL) == WF_NOTFOUND);
  CHECK(strstr(wf_errmsg(h), "no failed delivery"));
  CHECK(wf_outbox_retry(h, "d1:0:1", "nobody") == WF_NOTFOUND);
  c.fail_all = 0;
  CHECK(wf_outbox_retry(h, "d1:0:1", "crm") == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(c.count == 5 && strstr(c.log, "d1:0:1 1 lead.new {\"i\":1}\nd1:0:1 2 lead.new {\"i\":1}\nd1:0:2"));
  CHECK(list_count(h, "failed") == 1);

  /* ... and one from another process: the host takes the request. */
  wf_host *cl = open_client("dead");
  CHECK(wf_outbox_retry(cl, "d1:0:2", NULL) == WF_OK);
  CHECK(wf_outbox_retry(cl, "d1:0:1", NULL) == WF_NOTFOUND); /* delivered: not failed */
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(c.count == 6);
  CHECK(list_count(h, NULL) == 0);
  wf_host_close(cl);

  /* A non-retryable failure is a dead letter at once. */
  wf_subscriber_opts o;
  wf_subscriber_opts_init(&o);
  static const char *const nonretry[] = {"rejected", NULL};
  o.retry.non_retryable = nonretry;
  sub r = {.fail_all = 1, .fail_type = "rejected"};
  CHECK(wf_subscribe(h, "strict", "strict.*", on_message, &r, &o) == WF_OK);
  CHECK(wf_start(h, "emitter", "{\"n\":1,\"topic\":\"strict.x\"}", "d2", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(r.count == 1);
  CHECK(wf_outbox_list(h, "failed", 0, &e, &n) == WF_OK);
  CHECK(n == 1 && !strcmp(e[0].subscriber, "strict") && e[0].attempts == 1);
  wf_outbox_list_free(e, n);
  wf_host_close(h);
}

/* ---- 5. independence ------------------------------------------------------------------- */

static void test_independence(void) {
  now_ms = T0;
  wf_host *h = open_host("indep", 0, 0);
  sub ok = {0}, bad = {.fail_all = 1};
  CHECK(subscribe(h, "good", "order.*", &ok, 3, 1000) == WF_OK);
  CHECK(subscribe(h, "flaky", "order.*", &bad, 3, 1000) == WF_OK);
  CHECK(wf_start(h, "emitter", "{\"n\":2,\"topic\":\"order.paid\"}", "i1", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  while (step(h)) {
  }
  CHECK(ok.count == 2); /* once each, while the other failed 6 times */
  CHECK(bad.count == 6);
  CHECK(list_count(h, "failed") == 2);
  CHECK(list_count(h, "pending") == 0);
  wf_outbox_entry *e;
  size_t n;
  CHECK(wf_outbox_list(h, NULL, 0, &e, &n) == WF_OK);
  for (size_t i = 0; i < n; i++) CHECK(!strcmp(e[i].subscriber, "flaky"));
  wf_outbox_list_free(e, n);
  /* Retrying the failed one delivers to that subscriber only. */
  bad.fail_all = 0;
  CHECK(wf_outbox_retry(h, "i1:0:1", NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(ok.count == 2 && bad.count == 7);
  wf_host_close(h);
}

/* ---- 6. replay --------------------------------------------------------------------------- */

static void test_replay(void) {
  now_ms = T0;
  wf_host *h = open_host("replay", 1, 0);
  sub a = {0};
  CHECK(subscribe(h, "all", "*", &a, 3, 1000) == WF_OK);
  CHECK(wf_start(h, "emitter", "{\"n\":2,\"topic\":\"t.a\"}", "p1", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_start(h, "emitter", "{\"n\":1,\"topic\":\"t.b\"}", "p2", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK); /* cache of 1: one of them is evicted */
  CHECK(a.count == 3);
  CHECK(wf_signal(h, "p1", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_signal(h, "p2", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(a.count == 7); /* two "done" and two audit messages */
  wf_host_close(h);

  /* A new host replays p3 past its emits to take its event. */
  h = open_host("replay", 0, 0);
  CHECK(subscribe(h, "all", "*", &a, 3, 1000) == WF_OK);
  CHECK(wf_start(h, "emitter", "{\"n\":2,\"topic\":\"t.c\"}", "p3", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  wf_host_close(h);
  h = open_host("replay", 0, 0);
  CHECK(subscribe(h, "all", "*", &a, 3, 1000) == WF_OK);
  CHECK(wf_signal(h, "p3", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(test_status_of(h, "p3"), "completed"));
  CHECK(history_count(h, "p3", "emit") == 4);
  CHECK(a.count == 11);
  /* Each message exactly once (no failure, no crash), each id once. */
  const char *ids[] = {"p1:0:1", "p1:0:2", "p2:0:1", "p1:1:1", "p1:1:2", "p2:1:1", "p2:1:2",
                       "p3:0:1", "p3:0:2", "p3:1:1", "p3:1:2"};
  for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
    char want[64];
    snprintf(want, sizeof want, "%s 1 ", ids[i]);
    const char *p = strstr(a.log, want);
    CHECK(p && !strstr(p + 1, want));
  }
  CHECK(count_lines(a.log) == 11);
  wf_host_close(h);
}

/* ---- 7. no subscriber -------------------------------------------------------------------- */

static void test_unrouted(void) {
  now_ms = T0;
  wf_host *h = open_host("unrouted", 0, 0);
  CHECK(wf_start(h, "emitter", "{\"n\":2,\"topic\":\"audit.entry\"}", "u1", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  wf_outbox_entry *e;
  size_t n;
  CHECK(wf_outbox_list(h, "pending", 0, &e, &n) == WF_OK);
  CHECK(n == 2);
  if (n == 2) CHECK(!strcmp(e[0].status, "unrouted") && e[0].subscriber == NULL && !strcmp(e[0].msg_id, "u1:0:1"));
  wf_outbox_list_free(e, n);

  /* A subscriber registered while the host runs takes them, in order. */
  sub a = {0};
  CHECK(subscribe(h, "auditor", "audit.*", &a, 3, 1000) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(a.log, "u1:0:1 1 audit.entry {\"i\":1}\nu1:0:2 1 audit.entry {\"i\":2}\n"));
  CHECK(list_count(h, NULL) == 0);

  /* One registered by the next host takes what was emitted before. */
  CHECK(wf_signal(h, "u1", "go", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(list_count(h, "pending") == 1); /* order.done: nobody */
  wf_host_close(h);
  h = open_host("unrouted", 0, 0);
  sub b = {0};
  CHECK(subscribe(h, "orders", "order.done", &b, 3, 1000) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(b.log, "u1:1:1 1 order.done {\"n\":2}\n"));
  CHECK(list_count(h, NULL) == 0);
  wf_host_close(h);
}

/* ---- 8. attempt timeouts ------------------------------------------------------------------- */

static void test_timeout(void) {
  now_ms = T0;
  wf_host *h = open_host("timeout", 0, 0);
  sub a = {.hold = 1};
  CHECK(subscribe(h, "slow", "*", &a, 3, 100) == WF_OK);
  CHECK(wf_start(h, "emitter", "{\"n\":1,\"topic\":\"t.x\"}", "t1", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK); /* held: drain does not wait for it */
  CHECK(a.nheld == 1);
  int64_t due = 0;
  CHECK(wf_next_timer(h, &due) == WF_OK && due == T0 + 2000); /* the attempt's deadline */
  CHECK(step(h));
  CHECK(a.nheld == 1); /* timed out; the retry is due 100 ms later */
  CHECK(step(h));
  CHECK(a.nheld == 2 && strstr(a.log, "t1:0:1 2 "));
  wf_delivery_ok(a.held[0]); /* late: dropped */
  CHECK(list_count(h, "pending") == 1);
  wf_delivery_ok(a.held[1]);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(list_count(h, NULL) == 0);
  CHECK(a.count == 2);

  /* A delivery held across the close is dropped safely, and delivered again by the next host. */
  a = (sub){.hold = 1};
  CHECK(wf_start(h, "emitter", "{\"n\":1,\"topic\":\"t.y\"}", "t2", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(a.nheld == 1);
  wf_host_close(h);
  wf_delivery_ok(a.held[0]);
  h = open_host("timeout", 0, 0);
  sub b = {0};
  CHECK(subscribe(h, "slow", "*", &b, 3, 100) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  CHECK(!strcmp(b.log, "t2:0:1 1 t.y {\"i\":1}\n"));
  wf_host_close(h);
}

/* ---- 9. bad input ---------------------------------------------------------------------------- */

static void test_errors(void) {
  wf_host *h = open_host("errors", 0, 2000);
  sub a = {0};
  CHECK(wf_subscribe(h, "bad name", "*", on_message, &a, NULL) == WF_INVALID);
  CHECK(wf_subscribe(h, "ok", "order.", on_message, &a, NULL) == WF_INVALID);
  CHECK(strstr(wf_errmsg(h), "bad topic pattern"));
  CHECK(wf_subscribe(h, "ok", "*.x", on_message, &a, NULL) == WF_INVALID);
  CHECK(wf_subscribe(h, "ok", "order.*", NULL, &a, NULL) == WF_INVALID);
  wf_subscriber_opts o;
  wf_subscriber_opts_init(&o);
  o.retry.multiplier = 0.5;
  CHECK(wf_subscribe(h, "ok", "order.*", on_message, &a, &o) == WF_INVALID);
  CHECK(strstr(wf_errmsg(h), "multiplier"));
  wf_host *cl = open_client("errors");
  CHECK(wf_subscribe(cl, "ok", "*", on_message, &a, NULL) == WF_MISUSE);
  CHECK(wf_outbox_list(cl, "done", 0, NULL, NULL) == WF_MISUSE);
  wf_outbox_entry *e;
  size_t n;
  CHECK(wf_outbox_list(cl, "done", 0, &e, &n) == WF_INVALID);
  wf_host_close(cl);

  CHECK(wf_subscribe(h, "all", "*", on_message, &a, NULL) == WF_OK);
  CHECK(wf_start(h, "bad_emit", NULL, "b1", NULL, NULL, NULL) == WF_OK);
  CHECK(wf_host_drain(h) == WF_OK);
  wf_info *i = NULL;
  CHECK(wf_get(h, "b1", &i) == WF_OK);
  CHECK(i && !strcmp(i->status, "completed"));
  if (i && i->output_json) {
    CHECK(strstr(i->output_json, "bad topic \\\"order shipped\\\""));
    CHECK(strstr(i->output_json, "bad topic number"));
    CHECK(strstr(i->output_json, "the limit is 2000 (config max_payload)"));
    CHECK(strstr(i->output_json, "cannot be stored as JSON"));
    CHECK(strstr(i->output_json, "bad_emit.lua:")); /* the error points at the workflow's line */
  }
  wf_info_free(i);
  CHECK(!strcmp(a.log, "b1:0:1 1 ok.fine \"yes\"\n")); /* only the good one */
  wf_host_close(h);
}

int main(void) {
  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(wfdir, sizeof wfdir, "%s/wf", dir);
  mkdir(wfdir, 0755);
  test_write_file(wfdir, "emitter.lua",
                  "return workflow.define { name = 'emitter', run = function(ctx, input)\n"
                  "  for i = 1, input.n do ctx:emit(input.topic, { i = i }) end\n"
                  "  ctx:wait_for('go')\n"
                  "  ctx:emit('order.done', { n = input.n })\n"
                  "  ctx:emit('audit.closed', ctx.id)\n"
                  "  return input.n\n"
                  "end }\n");
  test_write_file(wfdir, "gated.lua",
                  "return workflow.define { name = 'gated', run = function(ctx, input)\n"
                  "  ctx.actions.gate {}\n"
                  "  for i = 1, 3 do ctx:emit('x.y', { i = i, pad = input.pad }) end\n"
                  "  return 3\n"
                  "end }\n");
  test_write_file(wfdir, "bad_emit.lua",
                  "return workflow.define { name = 'bad_emit', run = function(ctx)\n"
                  "  local out = {}\n"
                  "  local function try(...)\n"
                  "    local args = table.pack(...)\n"
                  "    local ok, e = pcall(function() ctx:emit(table.unpack(args, 1, args.n)) end)\n"
                  "    out[#out + 1] = ok and 'ok' or e\n"
                  "  end\n"
                  "  try('order shipped', 1)\n"
                  "  try(42, 1)\n"
                  "  try('big.one', string.rep('x', 3000))\n"
                  "  try('fn.one', { f = print })\n"
                  "  ctx:emit('ok.fine', 'yes')\n"
                  "  return table.concat(out, ' | ')\n"
                  "end }\n");
  test_order_and_commit();
  test_failed_commit();
  test_retries();
  test_dead_letters();
  test_independence();
  test_replay();
  test_unrouted();
  test_timeout();
  test_errors();
  TEST_MAIN_END();
}
