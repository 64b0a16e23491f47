/*
 * wf_histsize.c — the size of an instance's history. A workflow that loops forever would grow
 * its history without end, and every rebuild replays all of it; ctx:continue_as_new is the
 * cure. The host watches the growth:
 *
 *   - past cfg.history_warn entries it warns, once per instance per host run: a log line, and a
 *     `history_warning` entry (data: entries, warn, limit) that `wfhost show` turns into a line;
 *   - at cfg.history_limit entries the instance fails instead of journaling more: its next live
 *     command fails it, a note that journals (a state label, a patch) raises, and an instance
 *     whose action step goes on retrying fails when it is next advanced.
 *
 * The count is in->pos: positions run 1, 2, ... without gaps. The ids warned in this run are
 * kept in a small hash set (instances over the warning size are few).
 */
#include <inttypes.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wf_engine.h"

typedef struct warned_set {
  char **slot; /* open addressing; NULL: empty */
  size_t cap, n;
} warned_set;

static uint64_t hash_id(const char *s) {
  uint64_t x = 1469598103934665603ull;
  while (*s) x = (x ^ (unsigned char)*s++) * 1099511628211ull;
  return x;
}

/* Adds id; returns 1 if it was new. */
static int warned_add(warned_set *w, const char *id) {
  if ((w->n + 1) * 2 > w->cap) {
    size_t cap = w->cap ? w->cap * 2 : 64;
    char **slot = calloc(cap, sizeof *slot);
    if (!slot) abort();
    for (size_t i = 0; i < w->cap; i++) {
      if (!w->slot[i]) continue;
      size_t j = hash_id(w->slot[i]) & (cap - 1);
      while (slot[j]) j = (j + 1) & (cap - 1);
      slot[j] = w->slot[i];
    }
    free(w->slot);
    w->slot = slot;
    w->cap = cap;
  }
  size_t j = hash_id(id) & (w->cap - 1);
  for (; w->slot[j]; j = (j + 1) & (w->cap - 1))
    if (!strcmp(w->slot[j], id)) return 0;
  w->slot[j] = wf_strdup(id);
  w->n++;
  return 1;
}

void wf_histsize_free(wf_host *h) {
  warned_set *w = h->hist_warned;
  if (!w) return;
  for (size_t i = 0; i < w->cap; i++) free(w->slot[i]);
  free(w->slot);
  free(w);
  h->hist_warned = NULL;
}

/* v with thousands separators: 100000 -> "100,000". */
static void grouped(int64_t v, char *out, size_t n) {
  char digits[32];
  int len = snprintf(digits, sizeof digits, "%" PRId64, v < 0 ? 0 : v);
  size_t j = 0;
  for (int i = 0; i < len && j + 2 < n; i++) {
    if (i && (len - i) % 3 == 0) out[j++] = ',';
    out[j++] = digits[i];
  }
  out[j] = 0;
}

void wf_histsize_grew(wf_host *h, wf_instance *in) {
  if (in->pos < h->cfg.history_warn) return;
  if (!h->hist_warned) {
    h->hist_warned = calloc(1, sizeof(warned_set));
    if (!h->hist_warned) abort();
  }
  if (!warned_add(h->hist_warned, in->id)) return;
  char n[32], warn[32], limit[32], data[128];
  grouped(in->pos, n, sizeof n);
  grouped(h->cfg.history_warn, warn, sizeof warn);
  grouped(h->cfg.history_limit, limit, sizeof limit);
  wf_log(h, WF_LOG_WARN, in->id, NULL,
         "history has %s entries (warning at %s, limit %s, config history_warn and history_limit): consider "
         "ctx:continue_as_new to keep a long-running workflow's history bounded", n, warn, limit);
  snprintf(data, sizeof data, "{\"entries\":%" PRId64 ",\"warn\":%" PRId64 ",\"limit\":%" PRId64 "}", in->pos,
           h->cfg.history_warn, h->cfg.history_limit);
  wf_engine_history(h, in, 0, "history_warning", NULL, data);
}

int wf_histsize_full(wf_host *h, const wf_instance *in) {
  return in->pos >= h->cfg.history_limit;
}

void wf_histsize_message(wf_host *h, const wf_instance *in, char *buf, size_t n) {
  char limit[32];
  grouped(h->cfg.history_limit, limit, sizeof limit);
  snprintf(buf, n, "history of instance %s reached %s entries (config history_limit); use ctx:continue_as_new to "
           "keep a long-running workflow's history bounded", in->id, limit);
}

void wf_histsize_check_note(wf_host *h, wf_instance *in, lua_State *L) {
  if (in->dry || !wf_histsize_full(h, in)) return; /* a replay check journals nothing */
  char msg[400];
  wf_histsize_message(h, in, msg, sizeof msg);
  luaL_error(L, "%s", msg);
}
