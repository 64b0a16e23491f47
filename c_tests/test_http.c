/*
 * test_http.c — the built-in action http.request against a small HTTP/1.1 server that runs
 * on the host's own loop: results, how each kind of failure is classed and retried (404 at
 * once, 503 and 429 again, Retry-After as the delay, timeouts, a refused connection, a body
 * over max_payload, bad params), and a request dropped when its instance is cancelled or the
 * host closes while it is in flight (run under ASan for the last two).
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "test_util.h"
#include "wfhost.h"

/* ---- the server ---------------------------------------------------------------------- */

/* Requests seen, by path (the query string left out). */
static struct { const char *path; int n; } counts[] = {
  {"/ok", 0}, {"/echo", 0}, {"/flaky", 0}, {"/limited", 0}, {"/dated", 0},
  {"/missing", 0}, {"/slow", 0}, {"/big", 0}, {"/hang", 0}, {NULL, 0}};

static int *count_of(const char *path) {
  for (int i = 0; counts[i].path; i++)
    if (!strcmp(counts[i].path, path)) return &counts[i].n;
  return NULL;
}

static int hang_c_seen, hang_p_seen; /* /hang?c (to cancel) and /hang?p (in flight at close) */
static int hang_c_dropped;           /* ... the client closed /hang?c's connection */

typedef struct conn {
  uv_tcp_t tcp;
  char *buf;
  size_t len, cap;
  int tag; /* 'c' for /hang?c */
  int handled; /* the request was read: what follows is ignored, until the end */
  struct conn *next, *prev;
} conn;

static uv_tcp_t server;
static conn *conns;

static void conn_closed(uv_handle_t *hd) {
  conn *c = hd->data;
  free(c->buf);
  free(c);
}

static void conn_close(conn *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  if (c->prev) c->prev->next = c->next;
  else conns = c->next;
  if (c->next) c->next->prev = c->prev;
  uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void wrote(uv_write_t *w, int status) {
  (void)status;
  conn *c = w->data;
  free(w);
  conn_close(c); /* every answer says Connection: close */
}

static void answer(conn *c, int status, const char *reason, const char *extra, const char *body, size_t blen) {
  size_t n = blen + 512 + (extra ? strlen(extra) : 0);
  uv_write_t *w = malloc(sizeof *w + n);
  char *out = (char *)(w + 1);
  int k = snprintf(out, n, "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\nConnection: close\r\n%s\r\n", status, reason,
                   blen, extra ? extra : "");
  memcpy(out + k, body, blen);
  uv_buf_t b = uv_buf_init(out, (unsigned)(k + blen));
  w->data = c;
  uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, wrote);
}

/* The value of request header name (lowercase) in head, copied to out, or "none". */
static void header_of(const char *head, const char *name, char *out, size_t n) {
  char pat[64];
  snprintf(pat, sizeof pat, "\r\n%s:", name);
  const char *p = strcasestr(head, pat);
  if (!p) {
    snprintf(out, n, "none");
    return;
  }
  p += strlen(pat);
  while (*p == ' ') p++;
  size_t k = strcspn(p, "\r\n");
  snprintf(out, n, "%.*s", (int)(k < n - 1 ? k : n - 1), p);
}

static void handle(conn *c, const char *method, char *target, const char *head, const char *body, size_t blen) {
  char *q = strchr(target, '?');
  if (q) *q++ = '\0';
  int *n = count_of(target);
  if (n) ++*n;
  if (!strcmp(target, "/ok")) {
    static const char b[] = "{\"hello\":\"world\"}";
    answer(c, 200, "OK", "Content-Type: application/json\r\nX-Multi: a\r\nX-Multi: b\r\n", b, strlen(b));
  } else if (!strcmp(target, "/echo")) {
    char test[128], ct[128], expect[128], out[512];
    header_of(head, "x-test", test, sizeof test);
    header_of(head, "content-type", ct, sizeof ct);
    header_of(head, "expect", expect, sizeof expect);
    int k = snprintf(out, sizeof out, "%s|%s|ct=%s|expect=%s|%.*s", method, test, ct, expect, (int)blen, body);
    answer(c, 200, "OK", "Content-Type: text/plain\r\n", out, (size_t)k);
  } else if (!strcmp(target, "/flaky")) {
    if (*n <= 2) answer(c, 503, "Service Unavailable", NULL, "overloaded\r\ntry later", 21);
    else answer(c, 200, "OK", NULL, "recovered", 9);
  } else if (!strcmp(target, "/limited")) {
    if (*n == 1) answer(c, 429, "Too Many Requests", "Retry-After: 2\r\n", "slow down", 9);
    else answer(c, 200, "OK", NULL, "thanks", 6);
  } else if (!strcmp(target, "/dated")) {
    if (*n == 1) {
      char extra[128], date[64];
      time_t at = time(NULL) + 2;
      struct tm tm;
      gmtime_r(&at, &tm);
      strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
      snprintf(extra, sizeof extra, "Retry-After: %s\r\n", date);
      answer(c, 503, "Service Unavailable", extra, "", 0);
    } else {
      answer(c, 200, "OK", NULL, "later", 5);
    }
  } else if (!strcmp(target, "/missing")) {
    answer(c, 404, "Not Found", NULL, "no such thing", 13);
  } else if (!strcmp(target, "/big")) {
    size_t len = 100 * 1024;
    char *b = malloc(len);
    memset(b, 'a', len);
    answer(c, 200, "OK", NULL, b, len);
    free(b);
  } else if (!strcmp(target, "/slow")) {
    /* Never answers. */
  } else if (!strcmp(target, "/hang")) {
    if (q && !strcmp(q, "c")) c->tag = 'c', hang_c_seen = 1;
    if (q && !strcmp(q, "p")) hang_p_seen = 1;
  } else {
    answer(c, 500, "Internal Server Error", NULL, "unknown path", 12);
  }
}

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *b) {
  conn *c = hd->data;
  if (c->cap - c->len < suggested + 1) {
    c->cap = c->len + suggested + 1;
    c->buf = realloc(c->buf, c->cap);
  }
  *b = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len - 1));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  (void)b;
  conn *c = s->data;
  if (nread < 0) {
    if (c->tag == 'c') hang_c_dropped = 1;
    conn_close(c);
    return;
  }
  if (c->handled) return;
  c->len += (size_t)nread;
  c->buf[c->len] = '\0';
  char *end = strstr(c->buf, "\r\n\r\n");
  if (!end) return;
  char cl[32];
  header_of(c->buf, "content-length", cl, sizeof cl);
  size_t blen = strcmp(cl, "none") ? strtoul(cl, NULL, 10) : 0;
  char *body = end + 4;
  if ((size_t)(c->buf + c->len - body) < blen) return;
  char method[16], target[256];
  if (sscanf(c->buf, "%15s %255s", method, target) != 2) {
    conn_close(c);
    return;
  }
  end[2] = '\0'; /* the head, ending with its last header's CRLF */
  c->handled = 1; /* reading on, to see the client close a request never answered */
  handle(c, method, target, c->buf, body, blen);
}

static void on_connection(uv_stream_t *srv, int status) {
  if (status < 0) return;
  conn *c = calloc(1, sizeof *c);
  uv_tcp_init(srv->loop, &c->tcp);
  c->tcp.data = c;
  c->next = conns;
  if (conns) conns->prev = c;
  conns = c;
  if (uv_accept(srv, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static int server_start(uv_loop_t *loop) {
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(loop, &server);
  CHECK(uv_tcp_bind(&server, (const struct sockaddr *)&a, 0) == 0);
  CHECK(uv_listen((uv_stream_t *)&server, 64, on_connection) == 0);
  struct sockaddr_in got;
  int len = sizeof got;
  uv_tcp_getsockname(&server, (struct sockaddr *)&got, &len);
  return ntohs(got.sin_port);
}

static void server_stop(void) {
  while (conns) conn_close(conns);
  uv_close((uv_handle_t *)&server, NULL);
}

/* A port nothing listens on: bound, read back, closed. */
static int closed_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bind(fd, (struct sockaddr *)&a, sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  close(fd);
  return ntohs(a.sin_port);
}

/* ---- the host ------------------------------------------------------------------------ */

static const char *const workflow_src =
  "-- Calls http.request with input.params and input.opts; returns what happened.\n"
  "return workflow.define { name = 'http_call', version = 1, run = function(ctx, input)\n"
  "  local ok, r = pcall(ctx.actions['http.request'], input.params, input.opts)\n"
  "  if ok then\n"
  "    local out = { ok = true, status = r.status, headers = r.headers, body = r.body }\n"
  "    if input.decode then out.decoded = json.decode(r.body) end\n"
  "    return out\n"
  "  end\n"
  "  return { ok = false, code = r.code, type = r.type, message = r.message, attempts = r.attempts,\n"
  "           retryable = r.retryable, cause = r.cause and r.cause.type }\n"
  "end }\n";

static wf_host *h;
static const char *waited[] = {"ok1", "echo1", "put1", "missing1", "flaky1", "limited1", "dated1", "slow1",
                               "slow2", "refused1", "big1", "bad1", "bad2", "bad3", "cancel1", NULL};
static int cancel_sent;
static uint64_t started_ms;

static int final(const char *id) {
  wf_info *i;
  if (wf_get(h, id, &i) != WF_OK) return 0;
  int f = !strcmp(i->status, "completed") || !strcmp(i->status, "failed") || !strcmp(i->status, "cancelled");
  wf_info_free(i);
  return f;
}

/* Every 10 ms: cancels cancel1 once its request is out, and stops the host once every
 * instance above has finished and /hang?p is in flight (or after 20 s, to fail). */
static void on_check(uv_timer_t *t) {
  if (hang_c_seen && !cancel_sent) {
    CHECK(wf_cancel(h, "cancel1", NULL, NULL) == WF_OK);
    cancel_sent = 1;
  }
  int done = hang_p_seen && hang_c_dropped;
  for (int i = 0; done && waited[i]; i++) done = final(waited[i]);
  if (done || uv_now(t->loop) - started_ms > 20000) {
    if (!done) fprintf(stderr, "test_http: gave up waiting\n");
    uv_timer_stop(t);
    wf_host_stop(h);
  }
}

static void start(const char *id, const char *input) {
  int rc = wf_start(h, "http_call", input, id, NULL, NULL, NULL);
  if (rc != WF_OK) fprintf(stderr, "start %s: %s\n", id, wf_errmsg(h));
  CHECK(rc == WF_OK);
}

static char *output_of(const char *id) {
  static char buf[8192];
  wf_info *i;
  buf[0] = '\0';
  if (wf_get(h, id, &i) == WF_OK) {
    snprintf(buf, sizeof buf, "%s %s", i->status, i->output_json ? i->output_json : "(no output)");
    wf_info_free(i);
  }
  return buf;
}

/* Checks that id's output contains every fragment (NULL-terminated); prints it if not. */
static void expect(const char *id, const char *const *frags) {
  const char *out = output_of(id);
  int good = !strncmp(out, "completed ", 10);
  for (int i = 0; frags[i]; i++) good = good && strstr(out, frags[i]);
  if (!good) fprintf(stderr, "%s: %s\n", id, out);
  CHECK(good);
}
#define EXPECT(id, ...) expect(id, (const char *const[]){__VA_ARGS__, NULL})

/* The history entries of kind for id: how many, and the data of the last. */
static int history(const char *id, const char *kind, char *data, size_t n) {
  wf_history_entry *e;
  size_t ne;
  int found = 0;
  if (data) data[0] = '\0';
  if (wf_history(h, id, &e, &ne) != WF_OK) return 0;
  for (size_t i = 0; i < ne; i++)
    if (!strcmp(e[i].kind, kind)) {
      found++;
      if (data) snprintf(data, n, "%s", e[i].data_json ? e[i].data_json : "");
    }
  wf_history_free(e, ne);
  return found;
}

static int64_t delay_of(const char *data) {
  const char *p = strstr(data, "\"delay_ms\":");
  return p ? strtoll(p + 11, NULL, 10) : -1;
}

int main(void) {
  char wfdir[256], db[256];
  const char *dir = test_tmpdir();
  snprintf(wfdir, sizeof wfdir, "%s/wf", dir);
  snprintf(db, sizeof db, "%s/http.db", dir);
  mkdir(wfdir, 0700);
  test_write_file(wfdir, "http_call.lua", workflow_src);

  wf_config cfg;
  wf_config_init(&cfg);
  cfg.log_level = WF_LOG_WARN;
  cfg.max_payload = 64 * 1024; /* /big answers 100 KiB */
  h = test_open_host(db, &cfg, wfdir);

  uv_loop_t *loop = wf_host_loop(h);
  int port = server_start(loop), refused = closed_port();
  char in[1024];
#define START(id, fmt, ...)                                                     \
  do {                                                                          \
    snprintf(in, sizeof in, fmt, __VA_ARGS__);                                  \
    start(id, in);                                                              \
  } while (0)
  const char *fast = "{\"retry\":{\"max_attempts\":5,\"initial_delay\":\"10ms\"}}";
  START("ok1", "{\"decode\":true,\"params\":{\"url\":\"http://127.0.0.1:%d/ok\"}}", port);
  START("echo1",
        "{\"params\":{\"method\":\"post\",\"url\":\"http://127.0.0.1:%d/echo\",\"headers\":{\"X-Test\":\"hi there\"},"
        "\"body\":\"payload-123\"}}",
        port);
  START("put1", "{\"params\":{\"method\":\"PUT\",\"url\":\"http://127.0.0.1:%d/echo\",\"body\":\"x\"}}", port);
  START("missing1", "{\"params\":{\"url\":\"http://127.0.0.1:%d/missing\"},\"opts\":%s}", port, fast);
  START("flaky1", "{\"params\":{\"url\":\"http://127.0.0.1:%d/flaky\"},\"opts\":%s}", port, fast);
  START("limited1", "{\"params\":{\"url\":\"http://127.0.0.1:%d/limited\"},\"opts\":%s}", port, fast);
  START("dated1", "{\"params\":{\"url\":\"http://127.0.0.1:%d/dated\"},\"opts\":%s}", port, fast);
  /* The attempt timeout of the call, 300 ms, bounds the request. */
  START("slow1",
        "{\"params\":{\"url\":\"http://127.0.0.1:%d/slow\"},"
        "\"opts\":{\"timeout\":\"300ms\",\"retry\":{\"max_attempts\":2,\"initial_delay\":\"10ms\"}}}",
        port);
  /* params.timeout, shorter than the attempt's 10 s: curl gives up itself. */
  START("slow2",
        "{\"params\":{\"url\":\"http://127.0.0.1:%d/slow\",\"timeout\":100},"
        "\"opts\":{\"retry\":{\"max_attempts\":1}}}",
        port);
  START("refused1",
        "{\"params\":{\"url\":\"http://127.0.0.1:%d/\"},"
        "\"opts\":{\"retry\":{\"max_attempts\":2,\"initial_delay\":\"10ms\"}}}",
        refused);
  START("big1", "{\"params\":{\"url\":\"http://127.0.0.1:%d/big\"},\"opts\":%s}", port, fast);
  START("bad1", "{\"params\":{\"method\":\"GET\"},\"opts\":%s}", fast);
  START("bad2", "{\"params\":{\"method\":\"BREW\",\"url\":\"http://127.0.0.1:%d/ok\"},\"opts\":%s}", port, fast);
  START("bad3", "{\"params\":{\"url\":\"http://127.0.0.1:%d/ok\",\"headers\":{\"X-Bad\":\"a\\r\\nInjected: 1\"}}}",
        port);
  START("cancel1", "{\"params\":{\"url\":\"http://127.0.0.1:%d/hang?c\"},\"opts\":{\"timeout\":\"30s\"}}", port);
  START("pending1", "{\"params\":{\"url\":\"http://127.0.0.1:%d/hang?p\"},\"opts\":{\"timeout\":\"60s\"}}", port);

  uv_timer_t check;
  uv_timer_init(loop, &check);
  started_ms = uv_now(loop);
  uv_timer_start(&check, on_check, 10, 10);
  CHECK(wf_host_run(h) == WF_OK);
  uv_close((uv_handle_t *)&check, NULL);

  /* Results: status, lowercased headers (repeated ones joined), body. */
  EXPECT("ok1", "\"ok\":true", "\"status\":200", "\"content-type\":\"application\\/json\"", "\"x-multi\":\"a, b\"",
         "\"decoded\":{\"hello\":\"world\"}");
  CHECK(counts[0].n == 1);
  /* The method (any case), a request header and the body reach the server; curl adds no
   * Content-Type or Expect of its own. */
  EXPECT("echo1", "\"body\":\"POST|hi there|ct=none|expect=none|payload-123\"");
  EXPECT("put1", "\"body\":\"PUT|none|ct=none|expect=none|x\"");

  /* A 404 is permanent: raised at once, after one request. */
  EXPECT("missing1", "\"ok\":false", "\"code\":\"http_404\"", "\"attempts\":1", "\"retryable\":false",
         "HTTP 404: no such thing");
  CHECK(*count_of("/missing") == 1);

  /* 503 twice, then 200: retried to success; the body excerpt is on one line. */
  EXPECT("flaky1", "\"ok\":true", "\"status\":200", "\"body\":\"recovered\"");
  CHECK(*count_of("/flaky") == 3);
  char data[2048];
  CHECK(history("flaky1", "attempt_failed", data, sizeof data) == 2);
  CHECK(strstr(data, "\"type\":\"http_503\"") && strstr(data, "\"class\":\"transient\"") &&
        strstr(data, "HTTP 503: overloaded  try later"));

  /* 429 with Retry-After: 2 (seconds): the next attempt comes 2 s later, not 10 ms. */
  EXPECT("limited1", "\"ok\":true", "\"body\":\"thanks\"");
  CHECK(*count_of("/limited") == 2);
  CHECK(history("limited1", "retry_scheduled", data, sizeof data) == 1);
  CHECK(delay_of(data) == 2000);
  CHECK(history("limited1", "attempt_failed", data, sizeof data) == 1 && strstr(data, "\"type\":\"http_429\""));

  /* Retry-After as an HTTP date 2 s ahead, in whole seconds: 1 to 2 s from when it is read
   * (a little under 1 s if the second turned over between the server and the client). */
  EXPECT("dated1", "\"ok\":true", "\"body\":\"later\"");
  CHECK(history("dated1", "retry_scheduled", data, sizeof data) == 1);
  int64_t d = delay_of(data);
  if (d < 900 || d > 2000) fprintf(stderr, "dated1: %s\n", data);
  CHECK(d >= 900 && d <= 2000);

  /* Timeouts are transient: tried again, then the workflow gets retries_exhausted. */
  EXPECT("slow1", "\"ok\":false", "\"code\":\"retries_exhausted\"", "\"attempts\":2");
  EXPECT("slow2", "\"ok\":false", "\"code\":\"retries_exhausted\"", "\"attempts\":1", "\"type\":\"http_timeout\"");
  CHECK(*count_of("/slow") == 3);

  /* A refused connection is transient. */
  EXPECT("refused1", "\"ok\":false", "\"code\":\"retries_exhausted\"", "\"attempts\":2", "\"type\":\"http_connect\"",
         "\"cause\":\"http_connect\"");
  CHECK(history("refused1", "attempt_failed", data, sizeof data) == 2 && strstr(data, "\"class\":\"transient\""));

  /* A body over max_payload is permanent. */
  EXPECT("big1", "\"ok\":false", "\"code\":\"http_too_large\"", "\"attempts\":1");
  CHECK(*count_of("/big") == 1);

  /* Bad params are permanent and never reach the server. */
  EXPECT("bad1", "\"code\":\"bad_params\"", "\"attempts\":1", "url is required");
  EXPECT("bad2", "\"code\":\"bad_params\"", "\"attempts\":1", "method must be one of");
  EXPECT("bad3", "\"code\":\"bad_params\"", "CR, LF");
  CHECK(counts[0].n == 1);

  /* A cancelled instance's request is dropped: the connection is closed. */
  CHECK(hang_c_dropped);
  CHECK(history("cancel1", "cancel", NULL, 0) == 1);
  CHECK(history("cancel1", "withdrawn", NULL, 0) == 1);
  CHECK(final("cancel1"));

  /* One breaker per origin, whatever the paths: the test server's. */
  {
    wf_breaker_info *b;
    size_t nb, mine = 0;
    char origin[64];
    snprintf(origin, sizeof origin, "http://127.0.0.1:%d", port);
    CHECK(wf_breakers(h, &b, &nb) == WF_OK);
    for (size_t i = 0; i < nb; i++) mine += !strcmp(b[i].action, "http.request") && !strcmp(b[i].key, origin);
    CHECK(mine == 1);
    wf_breakers_free(b, nb);
  }

  /* pending1's request is still out: closing the host drops it (ASan: nothing leaks). */
  CHECK(!final("pending1"));
  server_stop();
  wf_host_close(h);
  TEST_MAIN_END();
}
