/*
 * wf_http.c — the built-in action `http.request`: one HTTP request per attempt, made with
 * libcurl's multi interface on the host's own libuv loop, so a thousand requests in flight
 * cost a thousand sockets and no thread.
 *
 *   params:  { method = "GET", url = "https://...", headers = { ["Name"] = "value" },
 *              body = "text", timeout = <ms> }
 *   result:  { status = 200, headers = { ["content-type"] = "..." }, body = "..." }
 *
 * How an answer is classed (what the step's retry policy then does with it):
 *   2xx, 3xx           the result (redirects are not followed: a 3xx is an answer too)
 *   429, 5xx           transient "http_<status>"; a Retry-After header is the retry hint
 *   other 4xx          permanent "http_<status>": asking again gets the same answer
 *   no answer          transient: http_connect, http_dns, http_tls, http_timeout, http_io,
 *                      http_error
 *   body too large     permanent http_too_large: over the host's max_payload (the result, with
 *                      its headers and JSON escapes, must fit in it too: result_too_large)
 *   bad params         permanent bad_params
 * The request's timeout is the shorter of params.timeout and what is left of the attempt
 * (wf_call_deadline), so curl gives up when the host stops waiting anyway.
 *
 * The wiring is curl's "multi socket" pattern: curl tells which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION: a uv_poll_t each) and when to call it back
 * (CURLMOPT_TIMERFUNCTION: one uv_timer_t); their callbacks hand the events to
 * curl_multi_socket_action, then finished transfers are collected with curl_multi_info_read.
 * A call is completed only there (or at once for bad params, when abandoned, or at close),
 * never from inside one of curl's callbacks, and exactly once: the request leaves the multi
 * handle and is freed before its call is completed.
 *
 * The multi handle (with its connection cache, so a workflow calling the same service
 * reuses connections) is made at the first request and goes at wf_http_close().
 */
#include <ctype.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <lauxlib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "wf_engine.h"

typedef struct http_mod http_mod;

/* A socket curl asked us to watch. Freed in its close callback. */
typedef struct http_sock {
  uv_poll_t poll;
  curl_socket_t fd;
  http_mod *m;
  struct http_sock *next, *prev; /* in m->socks while open */
} http_sock;

/* One request in flight: one attempt of one call. */
typedef struct http_req {
  struct http_req *next, *prev; /* in m->reqs */
  http_mod *m;
  wf_call *call;
  CURL *easy;
  struct curl_slist *hdrs;
  char *url;      /* for messages */
  char *resp;     /* the response body so far */
  size_t resp_len, resp_cap;
  size_t limit;   /* the largest body accepted */
  int too_large;
  char errbuf[CURL_ERROR_SIZE];
} http_req;

/* The host's HTTP client (h->http). */
struct http_mod {
  wf_host *h;
  CURLM *multi;
  uv_timer_t timer;  /* curl's timeout */
  http_req *reqs;    /* in flight */
  http_sock *socks;  /* watched */
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;
static void global_init(void) { global_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* ---- completing a request ------------------------------------------------------------ */

static void req_free(http_req *r) {
  http_mod *m = r->m;
  if (r->prev) r->prev->next = r->next;
  else m->reqs = r->next;
  if (r->next) r->next->prev = r->prev;
  if (r->easy) {
    curl_multi_remove_handle(m->multi, r->easy);
    curl_easy_cleanup(r->easy);
  }
  curl_slist_free_all(r->hdrs);
  free(r->url);
  free(r->resp);
  free(r);
}

/* At most n bytes of s as one line of text for a message: control characters become spaces
 * and a UTF-8 sequence is never cut in two (the message is JSON text later). */
static void excerpt(const char *s, size_t len, char *out, size_t n) {
  size_t k = len < n - 1 ? len : n - 1;
  if (k < len)
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--; /* s[k] continues a sequence */
  for (size_t i = 0; i < k; i++) out[i] = (unsigned char)s[i] < 0x20 ? ' ' : s[i];
  out[k] = '\0';
}

/* The Retry-After header in ms from now (delta-seconds or an HTTP date), or -1. */
static int64_t retry_after_ms(CURL *easy) {
  struct curl_header *hd;
  if (curl_easy_header(easy, "Retry-After", 0, CURLH_HEADER, -1, &hd) != CURLHE_OK) return -1;
  const char *v = hd->value;
  while (*v == ' ' || *v == '\t') v++;
  if (isdigit((unsigned char)*v)) {
    char *end;
    long long secs = strtoll(v, &end, 10);
    while (*end == ' ' || *end == '\t') end++;
    if (*end) return -1;
    return secs > INT64_MAX / 1000 ? INT64_MAX / 1000 : (int64_t)secs * 1000;
  }
  /* A date is the server's wall clock, so it is compared with the real one, not the host's
   * (which a test may have replaced with a virtual clock). */
  time_t at = curl_getdate(v, NULL);
  if (at == -1) return -1;
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  int64_t ms = (int64_t)at * 1000 - ((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000);
  return ms > 0 ? ms : 0;
}

/* The result JSON of a finished exchange (malloc'd), or NULL if it cannot be encoded. */
static char *result_json(wf_host *h, http_req *r, long status) {
  lua_State *L = h->L;
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
  lua_newtable(L);
  /* Names lowercased (HTTP names are case-insensitive, a table key is not); a header sent
   * more than once is joined with ", ", as RFC 9110 allows for list-valued fields. */
  for (struct curl_header *hd = NULL; (hd = curl_easy_nextheader(r->easy, CURLH_HEADER, -1, hd));) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (const char *p = hd->name; *p; p++) luaL_addchar(&b, (char)tolower((unsigned char)*p));
    luaL_pushresult(&b);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TSTRING) {
      lua_pushliteral(L, ", ");
      lua_pushstring(L, hd->value);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushstring(L, hd->value);
    }
    lua_rawset(L, -3);
  }
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, r->resp ? r->resp : "", r->resp_len);
  lua_setfield(L, -2, "body");
  char *out = NULL;
  if (wf_lua_callmod(h, "encode", 1, 1) == 0) out = wf_strdup(lua_tostring(L, -1));
  lua_pop(L, 1);
  return out;
}

/* The error type of a transfer that got no complete answer. */
static const char *curl_type(CURLcode rc, wf_error_class *cls) {
  *cls = WF_TRANSIENT;
  switch (rc) {
  case CURLE_OPERATION_TIMEDOUT: return "http_timeout";
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY: return "http_dns";
  case CURLE_COULDNT_CONNECT: return "http_connect";
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_SHUTDOWN_FAILED: return "http_tls";
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
  case CURLE_HTTP2:
  case CURLE_HTTP2_STREAM:
  case CURLE_WEIRD_SERVER_REPLY: return "http_io";
  case CURLE_URL_MALFORMAT:
  case CURLE_UNSUPPORTED_PROTOCOL:
    *cls = WF_PERMANENT;
    return "bad_params";
  default: return "http_error";
  }
}

/* A transfer finished (rc from curl): classify it, free the request, complete its call. */
static void req_done(http_req *r, CURLcode rc) {
  wf_host *h = r->m->h;
  wf_call *c = r->call;
  long status = 0;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  char msg[512], type[32];
  char *result = NULL;
  wf_error_class cls = WF_TRANSIENT;
  int64_t after = -1;
  int ok = 0;
  if (rc == CURLE_WRITE_ERROR && r->too_large) {
    snprintf(type, sizeof type, "http_too_large");
    snprintf(msg, sizeof msg, "%s: the response body is over %zu bytes (config max_payload)", r->url, r->limit);
    cls = WF_PERMANENT;
  } else if (rc != CURLE_OK) {
    snprintf(type, sizeof type, "%s", curl_type(rc, &cls));
    snprintf(msg, sizeof msg, "%s: %s", r->url, r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
  } else if (status >= 200 && status < 400) {
    result = result_json(h, r, status);
    ok = result != NULL;
    if (!ok) {
      snprintf(type, sizeof type, "http_error");
      snprintf(msg, sizeof msg, "%s: the response cannot be encoded as JSON", r->url);
      cls = WF_PERMANENT;
    }
  } else {
    char body[161];
    excerpt(r->resp ? r->resp : "", r->resp_len, body, sizeof body);
    snprintf(type, sizeof type, "http_%ld", status);
    snprintf(msg, sizeof msg, "%s answered HTTP %ld%s%s", r->url, status, body[0] ? ": " : "", body);
    cls = status >= 400 && status < 500 && status != 429 ? WF_PERMANENT : WF_TRANSIENT;
    if (cls == WF_TRANSIENT) after = retry_after_ms(r->easy);
  }
  req_free(r);
  if (ok) wf_call_ok(c, result);
  else if (after >= 0) wf_call_fail_after(c, type, msg, after);
  else wf_call_fail(c, type, msg, cls);
  free(result);
}

/* Completes the transfers curl has finished. Called after curl_multi_socket_action, outside
 * curl's callbacks. */
static void check_done(http_mod *m) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(m->multi, &left))) {
    if (msg->msg != CURLMSG_DONE) continue;
    http_req *r = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    req_done(r, msg->data.result);
  }
}

/* The host stops waiting for the call: the transfer is dropped and the call completed (the
 * host drops the outcome). */
static void on_abandon(wf_call *c, void *ud) {
  (void)c;
  http_req *r = ud;
  wf_call *call = r->call;
  req_free(r);
  wf_call_fail(call, "abandoned", "the host stopped waiting for the request", WF_TRANSIENT);
}

/* ---- curl on the loop ---------------------------------------------------------------- */

static void on_timer(uv_timer_t *t) {
  http_mod *m = t->data;
  int running;
  curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(m);
}

/* CURLMOPT_TIMERFUNCTION: call curl back in timeout_ms (-1: never). */
static int curl_timer(CURLM *multi, long timeout_ms, void *ud) {
  (void)multi;
  http_mod *m = ud;
  if (timeout_ms < 0) uv_timer_stop(&m->timer);
  else uv_timer_start(&m->timer, on_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

static void on_poll(uv_poll_t *p, int status, int events) {
  http_sock *s = p->data;
  http_mod *m = s->m;
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  int running;
  curl_multi_socket_action(m->multi, s->fd, flags, &running);
  check_done(m);
}

static void sock_closed(uv_handle_t *hd) { free(hd->data); }

static void sock_close(http_mod *m, http_sock *s) {
  if (s->prev) s->prev->next = s->next;
  else m->socks = s->next;
  if (s->next) s->next->prev = s->prev;
  uv_close((uv_handle_t *)&s->poll, sock_closed);
}

/* CURLMOPT_SOCKETFUNCTION: watch fd for what curl wants, or stop. */
static int curl_socket(CURL *easy, curl_socket_t fd, int what, void *ud, void *sockp) {
  (void)easy;
  http_mod *m = ud;
  http_sock *s = sockp;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      curl_multi_assign(m->multi, fd, NULL);
      sock_close(m, s);
    }
    return 0;
  }
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s) abort();
    if (uv_poll_init_socket(m->h->loop, &s->poll, fd) != 0) {
      free(s);
      return -1; /* curl fails the transfers on this socket */
    }
    s->fd = fd;
    s->m = m;
    s->poll.data = s;
    s->next = m->socks;
    if (m->socks) m->socks->prev = s;
    m->socks = s;
    curl_multi_assign(m->multi, fd, s);
  }
  int events = (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
  uv_poll_start(&s->poll, events, on_poll);
  return 0;
}

static size_t on_write(char *data, size_t size, size_t n, void *ud) {
  http_req *r = ud;
  size_t len = size * n;
  if (len > r->limit - r->resp_len) {
    r->too_large = 1;
    return 0; /* curl ends the transfer with CURLE_WRITE_ERROR */
  }
  if (r->resp_len + len > r->resp_cap) {
    size_t cap = r->resp_cap ? r->resp_cap : 16384;
    while (cap < r->resp_len + len) cap *= 2;
    r->resp = wf_xrealloc(r->resp, cap);
    r->resp_cap = cap;
  }
  memcpy(r->resp + r->resp_len, data, len);
  r->resp_len += len;
  return len;
}

static http_mod *mod_get(wf_host *h) {
  if (h->http) return h->http;
  pthread_once(&global_once, global_init);
  if (global_rc != CURLE_OK) return NULL;
  http_mod *m = calloc(1, sizeof *m);
  if (!m) abort();
  m->h = h;
  m->multi = curl_multi_init();
  if (!m->multi) {
    free(m);
    return NULL;
  }
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, curl_socket);
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, curl_timer);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
  uv_timer_init(h->loop, &m->timer);
  m->timer.data = m;
  h->http = m;
  return m;
}

/* ---- the action ---------------------------------------------------------------------- */

/* RFC 9110 token characters: what a header name may be made of. */
static int is_token(const char *s, size_t len) {
  if (!len) return 0;
  for (size_t i = 0; i < len; i++)
    if (!isalnum((unsigned char)s[i]) && !strchr("!#$%&'*+-.^_`|~", s[i])) return 0;
  return 1;
}

static int has_header(struct curl_slist *l, const char *name) {
  size_t n = strlen(name);
  for (; l; l = l->next)
    if (!strncasecmp(l->data, name, n) && (l->data[n] == ':' || l->data[n] == ';')) return 1;
  return 0;
}

/* Reads params.headers (the table on top of L) into *list; returns NULL or what is wrong. */
static const char *read_headers(lua_State *L, struct curl_slist **list) {
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    size_t nlen, vlen;
    if (lua_type(L, -2) != LUA_TSTRING || (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)) {
      lua_pop(L, 2);
      return "headers must map names to strings";
    }
    const char *name = lua_tolstring(L, -2, &nlen);
    const char *val = lua_tolstring(L, -1, &vlen);
    if (!is_token(name, nlen)) {
      lua_pop(L, 2);
      return "a header name must be a token (letters, digits, !#$%&'*+-.^_`|~)";
    }
    if (strlen(val) != vlen || strpbrk(val, "\r\n")) {
      lua_pop(L, 2);
      return "a header value must not contain CR, LF or NUL";
    }
    /* "Name;" is how curl is told to send a header with an empty value. */
    char *line = wf_xmalloc(nlen + vlen + 3);
    if (vlen) snprintf(line, nlen + vlen + 3, "%s: %s", name, val);
    else snprintf(line, nlen + 2, "%s;", name);
    struct curl_slist *l = curl_slist_append(*list, line);
    free(line);
    if (!l) abort();
    *list = l;
    lua_pop(L, 1);
  }
  return NULL;
}

static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", NULL};

/* Sets up r->easy from the params table on top of L; returns NULL or what is wrong. */
static const char *setup(http_req *r, lua_State *L, int64_t budget_ms) {
  CURL *e = r->easy;
  char method[16] = "GET";
  int t = lua_getfield(L, -1, "method");
  if (t == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (len >= sizeof method) len = 0;
    for (size_t i = 0; i < len; i++) method[i] = (char)toupper((unsigned char)s[i]);
    method[len] = '\0';
    int known = 0;
    for (int i = 0; methods[i]; i++) known |= !strcmp(method, methods[i]);
    if (!known) return "method must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
  } else if (t != LUA_TNIL && t != LUA_TLIGHTUSERDATA) {
    return "method must be a string";
  }
  lua_pop(L, 1);

  if (lua_getfield(L, -1, "url") != LUA_TSTRING) return "url is required (a string)";
  const char *url = lua_tostring(L, -1);
  if (strncasecmp(url, "http://", 7) && strncasecmp(url, "https://", 8)) return "url must start with http:// or https://";
  r->url = wf_strdup(url);
  lua_pop(L, 1);

  t = lua_getfield(L, -1, "timeout");
  if (t == LUA_TNUMBER) {
    double ms = lua_tonumber(L, -1);
    if (!(ms > 0)) return "timeout must be a number of milliseconds > 0";
    if (ms < (double)budget_ms) budget_ms = ms < 1 ? 1 : (int64_t)ms;
  } else if (t != LUA_TNIL && t != LUA_TLIGHTUSERDATA) {
    return "timeout must be a number of milliseconds";
  }
  lua_pop(L, 1);

  t = lua_getfield(L, -1, "headers");
  if (t == LUA_TTABLE) {
    const char *err = read_headers(L, &r->hdrs);
    if (err) return err;
  } else if (t != LUA_TNIL && t != LUA_TLIGHTUSERDATA) {
    return "headers must be a table of names to values";
  }
  lua_pop(L, 1);

  t = lua_getfield(L, -1, "body");
  if (t == LUA_TSTRING) {
    size_t len;
    const char *body = lua_tolstring(L, -1, &len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body);
    if (strcmp(method, "POST")) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    /* curl would label the body a form and, for a large one, wait for a 100 Continue
     * that many servers never send. Neither unless the workflow asks. */
    if (!has_header(r->hdrs, "Content-Type")) r->hdrs = curl_slist_append(r->hdrs, "Content-Type:");
    if (!has_header(r->hdrs, "Expect")) r->hdrs = curl_slist_append(r->hdrs, "Expect:");
  } else if (t != LUA_TNIL && t != LUA_TLIGHTUSERDATA) {
    return "body must be a string (encode a table with json.encode)";
  } else if (!strcmp(method, "HEAD")) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (!strcmp(method, "POST")) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, "");
  } else if (strcmp(method, "GET")) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }
  lua_pop(L, 1);

  curl_easy_setopt(e, CURLOPT_URL, r->url);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "wfhost/" WFHOST_VERSION);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(budget_ms > 0 ? budget_ms : 1));
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  return NULL;
}

static void action_http(wf_call *c, void *ud) {
  (void)ud;
  wf_host *h = wf_call_host(c);
  http_mod *m = mod_get(h);
  if (!m) {
    wf_call_fail(c, "http_error", "libcurl could not be initialised", WF_TRANSIENT);
    return;
  }
  lua_State *L = h->L;
  lua_pushstring(L, wf_call_params(c));
  if (wf_lua_callmod(h, "decode", 1, 1) != 0 || !lua_istable(L, -1)) {
    lua_pop(L, 1);
    wf_call_fail(c, "bad_params", "http.request expects params { url = \"...\", method =, headers =, body =, timeout = }",
                 WF_PERMANENT);
    return;
  }
  http_req *r = calloc(1, sizeof *r);
  if (!r) abort();
  r->m = m;
  r->call = c;
  r->limit = h->cfg.max_payload;
  r->easy = curl_easy_init();
  r->next = m->reqs;
  if (m->reqs) m->reqs->prev = r;
  m->reqs = r;
  int top = lua_gettop(L);
  const char *err = r->easy ? setup(r, L, wf_call_deadline(c) - wf_now(h)) : "libcurl could not make a handle";
  char msg[200];
  if (err) snprintf(msg, sizeof msg, "http.request: %s", err);
  lua_settop(L, top - 1);
  if (err) {
    wf_error_class cls = r->easy ? WF_PERMANENT : WF_TRANSIENT;
    req_free(r);
    wf_call_fail(c, cls == WF_PERMANENT ? "bad_params" : "http_error", msg, cls);
    return;
  }
  if (curl_multi_add_handle(m->multi, r->easy) != CURLM_OK) {
    curl_easy_cleanup(r->easy);
    r->easy = NULL;
    req_free(r);
    wf_call_fail(c, "http_error", "libcurl refused the request", WF_TRANSIENT);
    return;
  }
  wf_call_on_abandon(c, on_abandon, r);
}

/* The breaker key of a request: its origin, "scheme://host:port" (lowercased by curl), so that
 * one failing service opens its own circuit, not every other one's, and the requests to one
 * service (whatever their paths and queries) count together. */
static char *origin_of(wf_host *h, const char *params) {
  char *url = wf_json_get(h, params, "url");
  if (!url) return NULL;
  char *key = NULL, *scheme = NULL, *host = NULL, *port = NULL;
  CURLU *u = curl_url();
  if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
    size_t n = strlen(scheme) + strlen(host) + strlen(port) + 8;
    key = wf_xmalloc(n);
    snprintf(key, n, "%s://%s:%s", scheme, host, port);
    for (char *p = key; *p; p++) *p = (char)tolower((unsigned char)*p);
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  free(url);
  return key;
}

void wf_http_register(wf_host *h) {
  wf_register_action(h, "http.request", action_http, NULL, NULL);
  wf_action_find(h, "http.request")->breaker_key = origin_of; /* one breaker per origin */
}

/* ---- closing ------------------------------------------------------------------------- */

static void timer_closed(uv_handle_t *hd) { free(hd->data); }

/* Called by wf_host_close() before the engine shuts down. The requests in flight are dropped
 * and their calls completed here, while the host still knows them: the engine, as it shuts
 * down, only lets go of its calls and then reads each instance's pointer to its call again,
 * so a call completed on the loop after that would be freed under it. Each step is released
 * from its call first (as a cancellation does), so the outcome is ignored and nothing is
 * journaled: the store still has the attempt in flight, and the next host finds it lost
 * and tries again, as after a crash. */
void wf_http_close(wf_host *h) {
  http_mod *m = h->http;
  if (!m) return;
  h->http = NULL;
  while (m->reqs) {
    http_req *r = m->reqs;
    wf_call *c = r->call;
    req_free(r);
    /* Its outcome is dropped: the next host sees the attempt as lost and retries it. */
    wf_call_on_abandon(c, NULL, NULL);
    wf_action_abandon(h, c);
    wf_call_fail(c, "abandoned", "the host closed while the request was in flight", WF_TRANSIENT);
  }
  curl_multi_cleanup(m->multi);
  while (m->socks) sock_close(m, m->socks);
  uv_close((uv_handle_t *)&m->timer, timer_closed);
}
