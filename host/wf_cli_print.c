/*
 * wf_cli_print.c — the output of the `wfhost` command: JSON string escaping, times, the
 * cleaning of stored text for one terminal line, the table printer, and the text and JSON
 * renderings of instances and their histories. wf_cli.h declares what wf_cli.c calls.
 *
 * Everything printed comes from the database, which other processes and workflows wrote: the
 * human output never lets stored text drive the terminal (control characters and invalid
 * UTF-8 become '?'), and the --json output is valid JSON whatever the database holds.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "wf_cli.h"

#define HISTORY_DATA_MAX 100 /* code points of history data in the human view */

/* ---- text: UTF-8, JSON, times --------------------------------------------------------- */

/* The length of the valid UTF-8 sequence at s (1 to 4), or 0 if the byte starts none. */
static int utf8_seq(const unsigned char *s) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  int n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
  if (c >= 0xf5) n = 0;
  for (int i = 1; i < n; i++)
    if ((s[i] & 0xc0) != 0x80) return 0;
  if (n == 3 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0))) return 0; /* overlong, surrogate */
  if (n == 4 && ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90))) return 0;
  return n;
}

/* Writes s as a JSON string (null for NULL). Invalid UTF-8 becomes U+FFFD, so the output
 * is always valid JSON. */
void wf_cli_json_str(FILE *f, const char *s) {
  if (!s) {
    fputs("null", f);
    return;
  }
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p;) {
    unsigned c = *p;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c == '\n') fputs("\\n", f);
    else if (c == '\r') fputs("\\r", f);
    else if (c == '\t') fputs("\\t", f);
    else if (c < 0x20 || c == 0x7f) fprintf(f, "\\u%04x", c);
    else {
      int n = utf8_seq(p);
      if (n == 0) {
        fputs("\\ufffd", f);
        p++;
      } else {
        fwrite(p, 1, (size_t)n, f);
        p += n;
      }
      continue;
    }
    p++;
  }
  fputc('"', f);
}

/* A small JSON validator, to embed the library's JSON text raw only when it really is JSON:
 * the output of --json must parse whatever a database holds. The library's own check is
 * lua-cjson's decoder; the host configures it to refuse NaN, Infinity, hex and leading zeros,
 * but it still accepts forms that are not JSON (1., raw control characters inside strings,
 * invalid UTF-8), and an action's result is stored without any check. Each returns the
 * position after the value, or NULL. */
static const char *jv_value(const char *p, int depth);

static const char *jv_ws(const char *p) {
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
  return p;
}

static const char *jv_string(const char *p) {
  for (p++; *p != '"'; p++) {
    if ((unsigned char)*p < 0x20) return NULL;
    if ((unsigned char)*p >= 0x80) { /* JSON text is UTF-8: a bad sequence is not JSON */
      int n = utf8_seq((const unsigned char *)p);
      if (n == 0) return NULL;
      p += n - 1;
      continue;
    }
    if (*p == '\\') {
      p++;
      if (*p == 'u') {
        for (int i = 1; i <= 4; i++)
          if (!strchr("0123456789abcdefABCDEF", p[i]) || !p[i]) return NULL;
        p += 4;
      } else if (!*p || !strchr("\"\\/bfnrt", *p)) {
        return NULL;
      }
    }
  }
  return p + 1;
}

static const char *jv_digits(const char *p) {
  if (*p < '0' || *p > '9') return NULL;
  while (*p >= '0' && *p <= '9') p++;
  return p;
}

static const char *jv_number(const char *p) {
  if (*p == '-') p++;
  if (*p == '0') p++;
  else if (!(p = jv_digits(p))) return NULL;
  if (*p == '.' && !(p = jv_digits(p + 1))) return NULL;
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '+' || *p == '-') p++;
    if (!(p = jv_digits(p))) return NULL;
  }
  return p;
}

static const char *jv_value(const char *p, int depth) {
  if (depth > 512) return NULL;
  p = jv_ws(p);
  switch (*p) {
  case '"': return jv_string(p);
  case 't': return strncmp(p, "true", 4) ? NULL : p + 4;
  case 'f': return strncmp(p, "false", 5) ? NULL : p + 5;
  case 'n': return strncmp(p, "null", 4) ? NULL : p + 4;
  case '[':
  case '{': {
    char close = *p == '[' ? ']' : '}';
    int obj = *p == '{';
    p = jv_ws(p + 1);
    if (*p == close) return p + 1;
    for (;;) {
      if (obj) {
        if (*p != '"' || !(p = jv_string(p))) return NULL;
        p = jv_ws(p);
        if (*p++ != ':') return NULL;
      }
      if (!(p = jv_value(p, depth + 1))) return NULL;
      p = jv_ws(p);
      if (*p == close) return p + 1;
      if (*p++ != ',') return NULL;
      p = jv_ws(p);
    }
  }
  default: return jv_number(p);
  }
}

/* Writes JSON text as is when valid, null for NULL, and as a JSON string otherwise. */
static void json_raw(FILE *f, const char *s) {
  const char *end = s ? jv_value(s, 0) : NULL;
  if (!s) fputs("null", f);
  else if (end && !*jv_ws(end)) fputs(s, f);
  else wf_cli_json_str(f, s);
}

/* Formats ms since the epoch as ISO-8601 UTC: "2026-01-02T03:04:05.678Z" (with_ms) or
 * "2026-01-02T03:04:05Z". */
static void fmt_time(int64_t ms, int with_ms, char out[40]) {
  int64_t sec = ms / 1000, rem = ms % 1000;
  if (rem < 0) rem += 1000, sec--;
  time_t t = (time_t)sec;
  struct tm tm;
  if (!gmtime_r(&t, &tm)) {
    snprintf(out, 40, "%" PRId64, ms);
    return;
  }
  size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
  if (with_ms) snprintf(out + n, 40 - n, ".%03dZ", (int)rem);
  else snprintf(out + n, 40 - n, "Z");
}

/* A time as a JSON string, or null for 0 (not recorded). */
static void json_time(FILE *f, int64_t ms) {
  char t[40];
  if (!ms) {
    fputs("null", f);
    return;
  }
  fmt_time(ms, 1, t);
  fprintf(f, "\"%s\"", t);
}

/* A copy of s fit for one terminal line: line breaks and tabs become spaces, other control
 * characters and invalid UTF-8 '?';
 * at most max code points (0: no limit), ending with "…" when cut. NULL becomes "-". */
static char *one_line(const char *s, size_t max) {
  if (!s) s = "-";
  size_t len = strlen(s);
  char *o = malloc(len + 4);
  if (!o) abort();
  size_t j = 0, cps = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p;) {
    if (max && cps == max) {
      memcpy(o + j, "\xe2\x80\xa6", 3); /* … */
      j += 3;
      break;
    }
    int n = utf8_seq(p);
    if (*p == '\n' || *p == '\t' || *p == '\r') {
      o[j++] = ' ';
      p++;
    } else if (n == 0 || *p < 0x20 || *p == 0x7f) {
      o[j++] = '?';
      p++;
    } else {
      memcpy(o + j, p, (size_t)n);
      j += (size_t)n;
      p += n;
    }
    cps++;
  }
  o[j] = 0;
  return o;
}

/* Display width of a one_line() string: its code points. */
static size_t width(const char *s) {
  size_t w = 0;
  for (; *s; s++)
    if (((unsigned char)*s & 0xc0) != 0x80) w++;
  return w;
}

/* ---- tables --------------------------------------------------------------------------- */

/* A table of one-line cells, printed with column widths fitted to the content. */
typedef struct table {
  int ncols;
  size_t nrows, cap;
  char **cells; /* nrows * ncols, owned */
} table;

static void table_add(table *t, const char *const *row) {
  if (t->nrows == t->cap) {
    t->cap = t->cap ? t->cap * 2 : 16;
    t->cells = realloc(t->cells, t->cap * (size_t)t->ncols * sizeof *t->cells);
    if (!t->cells) abort();
  }
  for (int i = 0; i < t->ncols; i++) t->cells[t->nrows * (size_t)t->ncols + (size_t)i] = (char *)row[i];
  t->nrows++;
}

/* A table whose first row is the header head (ncols names). */
static table table_with_head(int ncols, const char *const *head) {
  table t = {.ncols = ncols};
  char *row[16];
  for (int i = 0; i < ncols; i++) row[i] = one_line(head[i], 0);
  table_add(&t, (const char *const *)row);
  return t;
}

/* Prints the table, each line after indent; right_align is a mask of the columns aligned
 * right (numbers). Frees the table. */
static void table_print(table *t, const char *indent, unsigned right_align) {
  size_t w[16] = {0};
  for (size_t r = 0; r < t->nrows; r++)
    for (int i = 0; i < t->ncols; i++) {
      size_t cw = width(t->cells[r * (size_t)t->ncols + (size_t)i]);
      if (cw > w[i]) w[i] = cw;
    }
  for (size_t r = 0; r < t->nrows; r++) {
    /* Padding is written only before something visible: no trailing blanks. */
    size_t pending = strlen(indent);
    for (int i = 0; i < t->ncols; i++) {
      const char *s = t->cells[r * (size_t)t->ncols + (size_t)i];
      size_t pad = w[i] - width(s);
      if (right_align & (1u << i)) pending += pad;
      if (*s) {
        printf("%*s%s", (int)pending, "", s);
        pending = 0;
      }
      if (!(right_align & (1u << i))) pending += pad;
      pending += 2;
    }
    fputc('\n', stdout);
  }
  for (size_t k = 0; k < t->nrows * (size_t)t->ncols; k++) free(t->cells[k]);
  free(t->cells);
}

/* ---- instances as JSON ------------------------------------------------------------------ */

/* Writes an instance as a JSON object, left open so that `show` can add its history. */
static void json_info_fields(FILE *f, const wf_info *in) {
  fputs("{\"id\":", f);
  wf_cli_json_str(f, in->id);
  fputs(",\"workflow\":", f);
  wf_cli_json_str(f, in->workflow);
  /* Version 0: a pending instance whose version the host has not chosen yet. */
  if (in->version) fprintf(f, ",\"version\":%d,\"status\":", in->version);
  else fputs(",\"version\":null,\"status\":", f);
  wf_cli_json_str(f, in->status);
  fputs(",\"state\":", f);
  wf_cli_json_str(f, in->state);
  fputs(",\"waiting_for\":", f);
  wf_cli_json_str(f, in->waiting_for);
  if (in->progress >= 0) fprintf(f, ",\"progress\":%.15g,\"progress_message\":", in->progress);
  else fputs(",\"progress\":null,\"progress_message\":", f);
  wf_cli_json_str(f, in->progress_message);
  fputs(",\"parent\":", f);
  wf_cli_json_str(f, in->parent_id);
  fprintf(f, ",\"run\":%d", in->run);
  fputs(",\"created_at\":", f);
  json_time(f, in->created_at);
  fputs(",\"updated_at\":", f);
  json_time(f, in->updated_at);
  fputs(",\"input\":", f);
  json_raw(f, in->input_json);
  fputs(",\"data\":", f);
  json_raw(f, in->data_json);
  fputs(",\"output\":", f);
  json_raw(f, in->output_json);
  fputs(",\"error\":", f);
  wf_cli_json_str(f, in->error);
}

void wf_cli_print_list_json(const wf_info *list, size_t n) {
  fputc('[', stdout);
  for (size_t i = 0; i < n; i++) {
    fputs(i ? ",\n  " : "\n  ", stdout);
    json_info_fields(stdout, &list[i]);
    fputc('}', stdout);
  }
  fputs(n ? "\n]\n" : "]\n", stdout);
}

void wf_cli_print_show_json(const wf_info *in, const wf_history_entry *hist, size_t nh) {
  json_info_fields(stdout, in);
  fputs(",\"history\":[", stdout);
  for (size_t i = 0; i < nh; i++) {
    printf("%s{\"pos\":%" PRId64 ",\"seq\":%" PRId64 ",\"kind\":", i ? "," : "", hist[i].pos, hist[i].seq);
    wf_cli_json_str(stdout, hist[i].kind);
    fputs(",\"name\":", stdout);
    wf_cli_json_str(stdout, hist[i].name);
    fputs(",\"at\":", stdout);
    json_time(stdout, hist[i].at);
    fputs(",\"data\":", stdout);
    json_raw(stdout, hist[i].data_json);
    fputc('}', stdout);
  }
  fputs("]}\n", stdout);
}

/* ---- instances as text ------------------------------------------------------------------ */

static char *fmt_cell(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *fmt_cell(const char *fmt, ...) {
  char buf[64];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return one_line(buf, 0);
}

/* A percentage as "42%" or "42.5%". */
static void fmt_percent(double p, char out[16]) {
  if (p == (double)(int)p) snprintf(out, 16, "%d%%", (int)p);
  else snprintf(out, 16, "%.1f%%", p);
}

/* v with thousands separators: 100000 -> "100,000". */
static void fmt_grouped(long long v, char out[32]) {
  char digits[24];
  int len = snprintf(digits, sizeof digits, "%lld", v < 0 ? 0 : v), j = 0;
  for (int i = 0; i < len; i++) {
    if (i && (len - i) % 3 == 0) out[j++] = ',';
    out[j++] = digits[i];
  }
  out[j] = 0;
}

void wf_cli_print_list(const wf_info *list, size_t n) {
  /* The PROGRESS column only when an instance reports progress. */
  int progress = 0;
  for (size_t k = 0; k < n; k++) progress |= list[k].progress >= 0;
  table t = {.ncols = progress ? 8 : 7};
  const char *head[] = {"ID", "WORKFLOW", "VERSION", "STATUS", "STATE", "PROGRESS", "UPDATED", "WAITING FOR"};
  char *row[8];
  for (int i = 0, j = 0; i < 8; i++)
    if (i != 5 || progress) row[j++] = one_line(head[i], 0);
  table_add(&t, (const char *const *)row);
  for (size_t k = 0; k < n; k++) {
    char when[40], pct[16];
    fmt_time(list[k].updated_at, 0, when);
    fmt_percent(list[k].progress, pct);
    int j = 0;
    row[j++] = one_line(list[k].id, 0);
    row[j++] = one_line(list[k].workflow, 0);
    row[j++] = list[k].version ? fmt_cell("%d", list[k].version) : one_line(NULL, 0);
    row[j++] = one_line(list[k].status, 0);
    row[j++] = one_line(list[k].state, 0);
    if (progress) row[j++] = one_line(list[k].progress >= 0 ? pct : NULL, 0);
    row[j++] = one_line(list[k].updated_at ? when : NULL, 0);
    row[j++] = one_line(list[k].waiting_for, 0);
    table_add(&t, (const char *const *)row);
  }
  table_print(&t, "", 1u << 2 | (progress ? 1u << 5 : 0));
}

/* One labelled field of `show`; multi-line values continue under the value column. Other
 * control characters and invalid UTF-8 are shown as '?', so no stored text can drive the
 * terminal. */
static void show_field(const char *label, const char *value) {
  if (!value) return;
  printf("%-13s", label);
  for (const unsigned char *p = (const unsigned char *)value; *p;) {
    int n = utf8_seq(p);
    if (*p == '\n') {
      if (p[1]) fputs("\n             ", stdout);
      while (p[1] == '\t') { /* Lua tracebacks indent with tabs */
        fputs("  ", stdout);
        p++;
      }
    } else if (*p == '\t') {
      fputc(' ', stdout);
    } else if (n == 0 || *p < 0x20 || *p == 0x7f) {
      fputc('?', stdout);
    } else {
      fwrite(p, 1, (size_t)n, stdout);
      p += n;
      continue;
    }
    p++;
  }
  fputc('\n', stdout);
}

void wf_cli_print_show(const wf_info *in, const wf_history_entry *hist, size_t nh) {
  char wf[300], created[40], updated[40];
  if (in->version) snprintf(wf, sizeof wf, "%s@%d", in->workflow ? in->workflow : "?", in->version);
  else snprintf(wf, sizeof wf, "%s (version chosen when the host starts it)", in->workflow ? in->workflow : "?");
  fmt_time(in->created_at, 1, created);
  fmt_time(in->updated_at, 1, updated);
  show_field("id:", in->id);
  show_field("workflow:", wf);
  show_field("status:", in->status);
  show_field("state:", in->state ? in->state : "-");
  if (in->parent_id) show_field("parent:", in->parent_id);
  if (in->run > 1) {
    char run[64];
    snprintf(run, sizeof run, "%d (ctx:continue_as_new; the history is this run's)", in->run);
    show_field("run:", run);
  }
  if (in->progress >= 0) {
    char pct[16], line[400];
    fmt_percent(in->progress, pct);
    snprintf(line, sizeof line, "%s%s%.300s", pct, in->progress_message ? " " : "",
             in->progress_message ? in->progress_message : "");
    show_field("progress:", line);
  }
  if (in->waiting_for) show_field("waiting for:", in->waiting_for);
  show_field("created:", in->created_at ? created : "-");
  show_field("updated:", in->updated_at ? updated : "-");
  show_field("input:", in->input_json ? in->input_json : "null");
  show_field("data:", in->data_json ? in->data_json : "{}");
  show_field("output:", in->output_json);
  show_field("error:", in->error);
  /* The host journals a history_warning entry when the history passed its warning size. */
  const wf_history_entry *warned = NULL;
  for (size_t k = 0; k < nh; k++)
    if (!strcmp(hist[k].kind, "history_warning")) warned = &hist[k];
  if (warned) {
    const char *w = warned->data_json ? strstr(warned->data_json, "\"warn\":") : NULL;
    const char *l = warned->data_json ? strstr(warned->data_json, "\"limit\":") : NULL;
    char count[32], warn[32], limit[32], line[200];
    fmt_grouped((long long)nh, count);
    fmt_grouped(w ? strtoll(w + 7, NULL, 10) : 0, warn);
    fmt_grouped(l ? strtoll(l + 8, NULL, 10) : 0, limit);
    snprintf(line, sizeof line, "%s entries (warning at %s, limit %s): consider ctx:continue_as_new", count, warn,
             limit);
    show_field("history:", line);
  }
  printf("\nhistory (%zu %s):\n", nh, nh == 1 ? "entry" : "entries");
  if (!nh) return;
  const char *head[] = {"POS", "TIME", "SEQ", "KIND", "NAME", "DATA"};
  table t = table_with_head(6, head);
  char *row[6];
  for (size_t k = 0; k < nh; k++) {
    char when[40];
    fmt_time(hist[k].at, 1, when);
    row[0] = fmt_cell("%" PRId64, hist[k].pos);
    row[1] = one_line(when, 0);
    row[2] = hist[k].seq ? fmt_cell("%" PRId64, hist[k].seq) : one_line("", 0);
    row[3] = one_line(hist[k].kind, 0);
    row[4] = hist[k].name ? one_line(hist[k].name, 0) : one_line("", 0);
    row[5] = hist[k].data_json ? one_line(hist[k].data_json, HISTORY_DATA_MAX) : one_line("", 0);
    table_add(&t, (const char *const *)row);
  }
  table_print(&t, "  ", 1u << 0 | 1u << 2);
}

/* ---- circuit breakers -------------------------------------------------------------------- */

void wf_cli_print_breakers(const wf_breaker_info *list, size_t n) {
  const char *head[] = {"ACTION", "KEY", "STATE", "CALLS", "FAILURES", "OPEN UNTIL", "UPDATED"};
  table t = table_with_head(7, head);
  char *row[7];
  for (size_t k = 0; k < n; k++) {
    char until[40], when[40];
    fmt_time(list[k].open_until, 0, until);
    fmt_time(list[k].updated_at, 0, when);
    row[0] = one_line(list[k].action, 0);
    row[1] = one_line(*list[k].key ? list[k].key : NULL, 0);
    row[2] = one_line(list[k].state, 0);
    row[3] = fmt_cell("%" PRId64, list[k].calls);
    row[4] = list[k].calls ? fmt_cell("%" PRId64 " (%.0f%%)", list[k].failures, 100 * list[k].failure_ratio)
                           : fmt_cell("%" PRId64, list[k].failures);
    row[5] = one_line(list[k].open_until ? until : NULL, 0);
    row[6] = one_line(list[k].updated_at ? when : NULL, 0);
    table_add(&t, (const char *const *)row);
  }
  table_print(&t, "", (1u << 3) | (1u << 4));
}

void wf_cli_print_breakers_json(const wf_breaker_info *list, size_t n) {
  fputc('[', stdout);
  for (size_t i = 0; i < n; i++) {
    fputs(i ? ",\n  {\"action\":" : "\n  {\"action\":", stdout);
    wf_cli_json_str(stdout, list[i].action);
    fputs(",\"key\":", stdout);
    wf_cli_json_str(stdout, list[i].key);
    fputs(",\"state\":", stdout);
    wf_cli_json_str(stdout, list[i].state);
    printf(",\"calls\":%" PRId64 ",\"failures\":%" PRId64 ",\"failure_ratio\":%.4f,\"open_until\":", list[i].calls,
           list[i].failures, list[i].failure_ratio);
    json_time(stdout, list[i].open_until);
    fputs(",\"updated_at\":", stdout);
    json_time(stdout, list[i].updated_at);
    fputc('}', stdout);
  }
  fputs(n ? "\n]\n" : "]\n", stdout);
}

/* ---- schedules --------------------------------------------------------------------------- */

void wf_cli_print_schedules(const wf_schedule_info *list, size_t n) {
  const char *head[] = {"ID", "WORKFLOW", "CRON", "ZONE", "NEXT", "LAST", "LAST INSTANCE", "SKIPPED"};
  table t = table_with_head(8, head);
  char *row[8];
  for (size_t k = 0; k < n; k++) {
    const wf_schedule_info *s = &list[k];
    char next[40], last[40];
    fmt_time(s->next_at, 0, next);
    fmt_time(s->last_at, 0, last);
    row[0] = one_line(s->id, 0);
    row[1] = one_line(s->workflow, 0);
    row[2] = one_line(s->cron, 0);
    row[3] = one_line(s->timezone, 0);
    row[4] = one_line(s->next_at ? next : NULL, 0);
    row[5] = one_line(s->last_at ? last : NULL, 0);
    row[6] = one_line(s->last_instance, 0);
    /* missed (catch-up) + overlapping, and which when any */
    row[7] = s->missed || s->overlapped
                 ? fmt_cell("%" PRId64 " (%" PRId64 " missed, %" PRId64 " overlap)", s->missed + s->overlapped,
                            s->missed, s->overlapped)
                 : fmt_cell("0");
    table_add(&t, (const char *const *)row);
  }
  table_print(&t, "", 1u << 7);
}

void wf_cli_print_schedules_json(const wf_schedule_info *list, size_t n) {
  fputc('[', stdout);
  for (size_t i = 0; i < n; i++) {
    const wf_schedule_info *s = &list[i];
    fputs(i ? ",\n  {\"id\":" : "\n  {\"id\":", stdout);
    wf_cli_json_str(stdout, s->id);
    fputs(",\"workflow\":", stdout);
    wf_cli_json_str(stdout, s->workflow);
    fputs(",\"cron\":", stdout);
    wf_cli_json_str(stdout, s->cron);
    fputs(",\"timezone\":", stdout);
    wf_cli_json_str(stdout, s->timezone);
    fputs(",\"input\":", stdout);
    json_raw(stdout, s->input_json);
    fputs(",\"catch_up\":", stdout);
    wf_cli_json_str(stdout, s->catch_up);
    fputs(",\"overlap\":", stdout);
    wf_cli_json_str(stdout, s->overlap);
    fputs(",\"origin\":", stdout);
    wf_cli_json_str(stdout, s->origin);
    fputs(",\"next_at\":", stdout);
    json_time(stdout, s->next_at);
    fputs(",\"last_at\":", stdout);
    json_time(stdout, s->last_at);
    fputs(",\"last_instance\":", stdout);
    wf_cli_json_str(stdout, s->last_instance);
    printf(",\"missed\":%" PRId64 ",\"overlapped\":%" PRId64 "}", s->missed, s->overlapped);
  }
  fputs(n ? "\n]\n" : "]\n", stdout);
}

void wf_cli_print_schedule_added(const wf_schedule_info *s) {
  char next[40];
  fmt_time(s->next_at, 0, next);
  int zoned = strcmp(s->timezone, "UTC") != 0;
  printf("%s: next firing at %s%s%s%s\n", s->id, s->next_at ? next : "(never)", zoned ? " (cron in " : "",
         zoned ? s->timezone : "", zoned ? ")" : "");
}
/* ---- workflow versions ------------------------------------------------------------------- */

void wf_cli_print_workflows(const wf_workflow_info *list, size_t n) {
  const char *head[] = {"WORKFLOW", "VERSION", "LOADED", "ACTIVE", "FILE"};
  table t = table_with_head(5, head);
  char *row[5];
  for (size_t k = 0; k < n; k++) {
    row[0] = one_line(list[k].name, 0);
    row[1] = fmt_cell("%d", list[k].version);
    row[2] = one_line(list[k].newest ? "newest" : list[k].loaded ? "yes" : "NOT LOADED", 0);
    row[3] = fmt_cell("%lld", (long long)list[k].active);
    row[4] = one_line(list[k].source, 0);
    table_add(&t, (const char *const *)row);
  }
  table_print(&t, "", 1u << 1 | 1u << 3);
}

void wf_cli_print_workflows_json(const wf_workflow_info *list, size_t n) {
  fputc('[', stdout);
  for (size_t i = 0; i < n; i++) {
    fputs(i ? ",\n  {\"workflow\":" : "\n  {\"workflow\":", stdout);
    wf_cli_json_str(stdout, list[i].name);
    printf(",\"version\":%d,\"loaded\":%s,\"newest\":%s,\"active\":%lld,\"file\":", list[i].version,
           list[i].loaded ? "true" : "false", list[i].newest ? "true" : "false", (long long)list[i].active);
    wf_cli_json_str(stdout, list[i].source);
    fputc('}', stdout);
  }
  fputs(n ? "\n]\n" : "]\n", stdout);
}

/* ---- the outbox ---------------------------------------------------------------------------- */

void wf_cli_print_outbox(const wf_outbox_entry *list, size_t n) {
  const char *head[] = {"MESSAGE", "TOPIC", "INSTANCE", "SUBSCRIBER", "STATUS", "ATTEMPTS", "NEXT ATTEMPT", "LAST ERROR"};
  table t = table_with_head(8, head);
  char *row[8];
  for (size_t k = 0; k < n; k++) {
    const wf_outbox_entry *e = &list[k];
    char next[40];
    fmt_time(e->next_at, 0, next);
    row[0] = one_line(e->msg_id, 0);
    row[1] = one_line(e->topic, 0);
    row[2] = one_line(e->instance_id, 0);
    row[3] = one_line(e->subscriber, 0);
    row[4] = one_line(e->status, 0);
    row[5] = fmt_cell("%d", e->attempts);
    row[6] = one_line(!strcmp(e->status, "pending") ? next : NULL, 0);
    row[7] = one_line(e->last_error, 80);
    table_add(&t, (const char *const *)row);
  }
  table_print(&t, "", 1u << 5);
}

void wf_cli_print_outbox_json(const wf_outbox_entry *list, size_t n) {
  fputc('[', stdout);
  for (size_t i = 0; i < n; i++) {
    const wf_outbox_entry *e = &list[i];
    fputs(i ? ",\n  {\"id\":" : "\n  {\"id\":", stdout);
    wf_cli_json_str(stdout, e->msg_id);
    fputs(",\"topic\":", stdout);
    wf_cli_json_str(stdout, e->topic);
    fputs(",\"instance\":", stdout);
    wf_cli_json_str(stdout, e->instance_id);
    fputs(",\"subscriber\":", stdout);
    wf_cli_json_str(stdout, e->subscriber);
    fputs(",\"status\":", stdout);
    wf_cli_json_str(stdout, e->status);
    printf(",\"attempts\":%d,\"next_attempt\":", e->attempts);
    json_time(stdout, !strcmp(e->status, "pending") ? e->next_at : 0);
    fputs(",\"last_error\":", stdout);
    wf_cli_json_str(stdout, e->last_error);
    fputs(",\"created_at\":", stdout);
    json_time(stdout, e->created_at);
    fputs(",\"payload\":", stdout);
    json_raw(stdout, e->payload_json);
    fputc('}', stdout);
  }
  fputs(n ? "\n]\n" : "]\n", stdout);
}
