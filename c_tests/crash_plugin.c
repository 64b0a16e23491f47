/*
 * crash_plugin.c — the action that test_crash.c's host child calls, as a plugin for
 * `wfhost run --plugin`.
 *
 * `record` leaves a durable trace of every invocation: it appends one line
 *
 *     <idempotency key> <attempt> <params JSON>\n
 *
 * to the file named by the environment variable WF_CRASH_LOG (opened O_APPEND, written
 * with one write(), fsync'ed and closed, so the line survives a SIGKILL of the host right
 * after), then completes the call with {"key":"<idempotency key>"}: at once if
 * WF_CRASH_DELAY_MS is 0 or unset, else that many milliseconds later from a libuv timer on
 * the host's loop (the call is "in flight" meanwhile, which is where the test kills the host).
 *
 * If WF_CRASH_DB names the host's database, `record` also checks, through a client handle
 * of its own, what the journal says at the moment of the call, and appends a line to
 * "<WF_CRASH_LOG>.violations" for each broken rule:
 *   - the step's intent (its `action` entry) is committed: the durability barrier;
 *   - the step's outcome is not: a step whose result is committed is never invoked again;
 *   - attempt N follows exactly N-1 committed `action_lost` entries: attempt 1 is the first
 *     call, and each call repeated after a crash is announced in the journal first.
 * (`record` never fails, so no retry policy ever re-invokes it. An attempt in flight at a kill
 * is lost, and a lost attempt uses an attempt, so `record` allows many: scenario 3 kills the
 * host again and again while the same steps are in flight.)
 *
 * `feed`, an outbox subscriber to every topic, appends "<message id> <attempt>\n" to
 * "<WF_CRASH_LOG>.outbox" (fsync'ed) for each delivery, checks that the message's emit is
 * committed, and completes after WF_CRASH_DELAY_MS like `record`.
 *
 * `flaky` fails its first attempt (transient) and succeeds on the next ones; each invocation
 * appends "<key> <attempt> <wall ms>\n" to "<WF_CRASH_LOG>.flaky", fsync'ed first, so the
 * test sees when each attempt ran, across kills.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "wfhost.h"

static const char *log_path, *db_path;
static unsigned delay_ms;
static wf_host *reader; /* client handle on db_path, opened at the first call */
static int reader_failed;

static void complete(wf_call *c) {
  char out[WF_ID_MAX + 64];
  snprintf(out, sizeof out, "{\"key\":\"%s\"}", wf_call_key(c));
  wf_call_ok(c, out);
}

static void on_delay(uv_timer_t *t) {
  wf_call *c = t->data;
  complete(c);
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

/* Appends the line; 0, or -1 with errno set. */
static int append_line(wf_call *c) {
  const char *key = wf_call_key(c), *params = wf_call_params(c);
  size_t cap = strlen(key) + strlen(params) + 32;
  char *line = malloc(cap);
  if (!line) return -1;
  int n = snprintf(line, cap, "%s %d %s\n", key, wf_call_attempt(c), params);
  int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  int rc = -1;
  if (fd >= 0) {
    ssize_t w = write(fd, line, (size_t)n); /* one write: lines of concurrent calls never interleave */
    if (w == n && fsync(fd) == 0) rc = 0;
    else if (w >= 0 && w != n) errno = EIO;
    int e = errno;
    close(fd);
    errno = e;
  }
  free(line);
  return rc;
}

static void violation_of(const char *key, int attempt, const char *what) {
  char path[4096], line[1024];
  snprintf(path, sizeof path, "%s.violations", log_path);
  int n = snprintf(line, sizeof line, "%s %d: %s\n", key, attempt, what);
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  if (write(fd, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1)) > 0) fsync(fd);
  close(fd);
}

static void violation(wf_call *c, const char *what) { violation_of(wf_call_key(c), wf_call_attempt(c), what); }

static void close_reader(void) {
  wf_host_close(reader);
  reader = NULL;
}

/* The client handle on db_path (opened at the first use), or NULL after reporting why. */
static wf_host *get_reader(const char *key, int attempt) {
  char msg[600];
  if (!db_path || reader_failed) return NULL;
  if (!reader) {
    wf_config cfg;
    wf_config_init(&cfg);
    cfg.mode = WF_MODE_CLIENT;
    if (wf_host_open(db_path, &cfg, &reader) != WF_OK) {
      snprintf(msg, sizeof msg, "cannot open %s to check the journal: %s", db_path, wf_errmsg(reader));
      violation_of(key, attempt, msg);
      wf_host_close(reader);
      reader = NULL;
      reader_failed = 1;
      return NULL;
    }
    atexit(close_reader);
  }
  return reader;
}

/* Checks the journal as committed now against this call (see the top of the file). */
static void check_journal(wf_call *c) {
  char msg[600];
  if (!get_reader(wf_call_key(c), wf_call_attempt(c))) return;
  const char *colon = strrchr(wf_call_key(c), ':');
  int64_t seq = colon ? strtoll(colon + 1, NULL, 10) : -1;
  wf_history_entry *e;
  size_t n;
  if (wf_history(reader, wf_call_instance(c), &e, &n) != WF_OK) {
    snprintf(msg, sizeof msg, "cannot read the history: %s", wf_errmsg(reader));
    violation(c, msg);
    return;
  }
  int intents = 0, outcomes = 0, lost = 0;
  for (size_t i = 0; i < n; i++) {
    if (e[i].seq != seq) continue;
    if (!strcmp(e[i].kind, "action")) intents++;
    else if (!strcmp(e[i].kind, "action_result") || !strcmp(e[i].kind, "action_error")) outcomes++;
    else if (!strcmp(e[i].kind, "action_lost")) lost++;
  }
  wf_history_free(e, n);
  if (intents != 1) {
    snprintf(msg, sizeof msg, "invoked with %d committed intents (`action` entries) for step %lld", intents,
             (long long)seq);
    violation(c, msg);
  }
  if (outcomes) {
    snprintf(msg, sizeof msg, "invoked although the step's outcome is committed");
    violation(c, msg);
  }
  if (lost != wf_call_attempt(c) - 1) {
    snprintf(msg, sizeof msg, "attempt %d, but %d action_lost entries are committed", wf_call_attempt(c), lost);
    violation(c, msg);
  }
}

static void record(wf_call *c, void *ud) {
  (void)ud;
  check_journal(c);
  if (append_line(c) != 0) {
    char msg[512];
    snprintf(msg, sizeof msg, "cannot append to WF_CRASH_LOG '%s': %s", log_path, strerror(errno));
    wf_call_fail(c, "record_log", msg, WF_PERMANENT);
    return;
  }
  if (delay_ms == 0) {
    complete(c);
    return;
  }
  uv_timer_t *t = malloc(sizeof *t);
  if (!t) {
    wf_call_fail(c, "no_memory", "out of memory", WF_TRANSIENT);
    return;
  }
  uv_timer_init(wf_host_loop(wf_call_host(c)), t);
  t->data = c;
  uv_timer_start(t, on_delay, delay_ms, 0);
}

static void flaky(wf_call *c, void *ud) {
  (void)ud;
  char path[1024], line[WF_ID_MAX + 96];
  snprintf(path, sizeof path, "%s.flaky", log_path);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int n = snprintf(line, sizeof line, "%s %d %lld\n", wf_call_key(c), wf_call_attempt(c),
                   (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, line, (size_t)n) != n || fsync(fd) != 0) {
    if (fd >= 0) close(fd);
    wf_call_fail(c, "flaky_log", strerror(errno), WF_PERMANENT);
    return;
  }
  close(fd);
  if (wf_call_attempt(c) == 1) wf_call_fail(c, "unavailable", "the first attempt always fails", WF_TRANSIENT);
  else wf_call_ok(c, "{\"ok\":true}");
}

/* ---- the outbox subscriber ---- */

static void feed_done(uv_timer_t *t) {
  wf_delivery_ok(t->data);
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

/* `feed` subscribes to every topic: it appends "<message id> <attempt>\n" to
 * "<WF_CRASH_LOG>.outbox" (fsync'ed), checks through the client handle that the message's
 * emit is committed (the durability barrier), and completes after WF_CRASH_DELAY_MS. */
static void feed(wf_delivery *d, const char *msg_id, const char *topic, const char *payload, int attempt, void *ud) {
  (void)topic, (void)payload, (void)ud;
  wf_host *r = get_reader(msg_id, attempt);
  if (r) {
    wf_history_entry *e;
    size_t n;
    int found = 0;
    char want[WF_ID_MAX + 64];
    snprintf(want, sizeof want, "\"id\":\"%s\"", msg_id);
    if (wf_history(r, wf_delivery_instance(d), &e, &n) == WF_OK) {
      for (size_t i = 0; i < n; i++)
        found |= !strcmp(e[i].kind, "emit") && e[i].data_json && strstr(e[i].data_json, want) != NULL;
      wf_history_free(e, n);
    }
    if (!found) violation_of(msg_id, attempt, "delivered before its emit was committed");
  }
  char path[4096], line[WF_ID_MAX + 64];
  snprintf(path, sizeof path, "%s.outbox", log_path);
  int len = snprintf(line, sizeof line, "%s %d\n", msg_id, attempt);
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, line, (size_t)len) != len || fsync(fd) != 0) {
    if (fd >= 0) close(fd);
    wf_delivery_fail(d, "feed_log", strerror(errno));
    return;
  }
  close(fd);
  uv_timer_t *t = delay_ms ? malloc(sizeof *t) : NULL;
  if (!t) {
    wf_delivery_ok(d);
    return;
  }
  uv_timer_init(wf_host_loop(wf_delivery_host(d)), t);
  t->data = d;
  uv_timer_start(t, feed_done, delay_ms, 0);
}

int wfhost_plugin_init(wf_host *h) {
  log_path = getenv("WF_CRASH_LOG");
  if (!log_path || !*log_path) {
    fprintf(stderr, "crash_plugin: set WF_CRASH_LOG to the file that `record` appends to\n");
    return WF_INVALID;
  }
  db_path = getenv("WF_CRASH_DB");
  if (db_path && !*db_path) db_path = NULL;
  const char *d = getenv("WF_CRASH_DELAY_MS");
  delay_ms = d && *d ? (unsigned)strtoul(d, NULL, 10) : 0;
  wf_action_opts opts;
  wf_action_opts_init(&opts);
  opts.retry.max_attempts = 1000;
  int rc = wf_register_action(h, "record", record, NULL, &opts);
  if (rc == WF_OK) rc = wf_register_action(h, "flaky", flaky, NULL, NULL);
  return rc == WF_OK ? wf_subscribe(h, "feed", "*", feed, NULL, NULL) : rc;
}
