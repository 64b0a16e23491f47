/*
 * wf_cron.c — cron expressions: parsing, and the next firing time in UTC or in a time zone
 * (see wf_cron.h for the syntax and the DST rules).
 *
 * Firings are searched in local wall-clock minutes with calendar arithmetic of our own (no
 * time zone involved), then each candidate is mapped to an instant. Only that mapping needs
 * the zone, through one question: the UTC offset at an instant (localtime_r's tm_gmtoff).
 * glibc offers zones only through the TZ environment variable, so a computation in a zone
 * sets TZ=":<zone>", calls tzset(), and restores TZ (or unsets it) before returning. That is
 * why these functions must run on one thread (the host's loop thread) with no other thread
 * using local time meanwhile; the host itself only ever formats times in UTC (gmtime_r).
 */
#include "wf_cron.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---- parsing ------------------------------------------------------------------------- */

static const char *const field_names[5] = {"minute", "hour", "day-of-month", "month", "day-of-week"};
static const int field_lo[5] = {0, 0, 1, 1, 0};
static const int field_hi[5] = {59, 23, 31, 12, 7};
static const char *const month_names[12] = {"jan", "feb", "mar", "apr", "may", "jun",
                                            "jul", "aug", "sep", "oct", "nov", "dec"};
static const char *const day_names[7] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

static const struct {
  const char *name, *expr;
} macros[] = {
    {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
    {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
};

typedef struct parser {
  const char *expr; /* the whole expression, for messages */
  char *err;
  size_t errlen;
} parser;

/* Writes "cron "<expr>": <field>: <message>" to the parser's err; returns -1. */
static int perr(parser *p, int field, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int perr(parser *p, int field, const char *fmt, ...) {
  char msg[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (field >= 0)
    snprintf(p->err, p->errlen, "cron \"%s\": %s: %s", p->expr, field_names[field], msg);
  else
    snprintf(p->err, p->errlen, "cron \"%s\": %s", p->expr, msg);
  return -1;
}

/* Reads a number or (months, days of week) a name at *s; advances *s. */
static int parse_value(parser *p, int f, const char **s, int *v) {
  const char *q = *s;
  if (isdigit((unsigned char)*q)) {
    long n = 0;
    while (isdigit((unsigned char)*q)) {
      n = n * 10 + (*q++ - '0');
      if (n > 1000) return perr(p, f, "number %.*s is too large", (int)strspn(*s, "0123456789"), *s);
    }
    *v = (int)n;
  } else if (isalpha((unsigned char)*q)) {
    size_t len = 0;
    while (isalpha((unsigned char)q[len])) len++;
    const char *const *names = f == 3 ? month_names : f == 4 ? day_names : NULL;
    int count = f == 3 ? 12 : 7, found = -1;
    for (int i = 0; names && len == 3 && i < count && found < 0; i++)
      if (!strncasecmp(q, names[i], 3)) found = i;
    if (found < 0) {
      if (!names) return perr(p, f, "'%.*s' is not a number", (int)len, q);
      return perr(p, f, "unknown name '%.*s' (%s)", (int)len, q,
                  f == 3 ? "jan, feb, ..., dec" : "sun, mon, tue, wed, thu, fri, sat");
    }
    *v = f == 3 ? found + 1 : found;
    q += len;
  } else {
    if (*q) return perr(p, f, "unexpected '%c'", *q);
    return perr(p, f, "a value is missing");
  }
  if (*v < field_lo[f] || *v > field_hi[f])
    return perr(p, f, "%d is out of range (%d-%d)", *v, field_lo[f], field_hi[f]);
  *s = q;
  return 0;
}

/* Parses one field (the text of len bytes at s) into a bit set. */
static int parse_field(parser *p, int f, const char *s, size_t len, uint64_t *bits) {
  char buf[128];
  if (len >= sizeof buf) return perr(p, f, "the field is too long");
  memcpy(buf, s, len);
  buf[len] = 0;
  *bits = 0;
  for (char *item = buf, *next; item; item = next) {
    next = strchr(item, ',');
    if (next) *next++ = 0;
    if (!*item) return perr(p, f, "empty item in a list");
    const char *q = item;
    int a, b, step = 1;
    if (*q == '*') {
      a = field_lo[f];
      b = field_hi[f];
      q++;
    } else {
      if (parse_value(p, f, &q, &a)) return -1;
      b = a;
      if (*q == '-') {
        q++;
        if (parse_value(p, f, &q, &b)) return -1;
        if (b < a) return perr(p, f, "range %d-%d goes backwards", a, b);
      } else if (*q == '/') {
        b = field_hi[f]; /* "a/n": from a to the field's end */
      }
    }
    if (*q == '/') {
      q++;
      if (!isdigit((unsigned char)*q)) return perr(p, f, "a step needs a number after '/'");
      long n = 0;
      while (isdigit((unsigned char)*q) && n <= 1000) n = n * 10 + (*q++ - '0');
      if (n < 1) return perr(p, f, "step must be >= 1");
      if (n > field_hi[f]) return perr(p, f, "step %ld is larger than the field's range", n);
      step = (int)n;
    }
    if (*q) return perr(p, f, "unexpected '%c' in '%s'", *q, item);
    for (int v = a; v <= b; v += step) *bits |= (uint64_t)1 << v;
  }
  return 0;
}

static int days_in_month(int y, int m) {
  static const int d[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 ? 28 + leap : d[m - 1];
}

int wf_cron_parse(const char *expr, wf_cron *out, char *err, size_t errlen) {
  parser p = {expr ? expr : "", err, errlen};
  memset(out, 0, sizeof *out);
  if (!expr) return perr(&p, -1, "no expression");
  const char *s = expr;
  while (isspace((unsigned char)*s)) s++;
  if (*s == '@') {
    size_t len = strcspn(s, " \t\r\n");
    const char *rest = s + len;
    while (isspace((unsigned char)*rest)) rest++;
    for (size_t i = 0; i < sizeof macros / sizeof macros[0]; i++) {
      if (len == strlen(macros[i].name) && !strncasecmp(s, macros[i].name, len) && !*rest) {
        int rc = wf_cron_parse(macros[i].expr, out, err, errlen);
        return rc;
      }
    }
    return perr(&p, -1, "unknown macro '%.*s' (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)",
                (int)len, s);
  }
  const char *start[6];
  size_t len[6];
  int n = 0;
  while (*s) {
    if (n == 6) break;
    start[n] = s;
    len[n] = strcspn(s, " \t\r\n");
    s += len[n++];
    while (isspace((unsigned char)*s)) s++;
  }
  if (n == 0) return perr(&p, -1, "empty expression");
  if (n != 5 || *s)
    return perr(&p, -1, "expected 5 fields (minute hour day-of-month month day-of-week), got %s%d",
                *s ? "more than " : "", n);
  uint64_t bits[5];
  for (int f = 0; f < 5; f++)
    if (parse_field(&p, f, start[f], len[f], &bits[f])) return -1;
  out->minute = bits[0];
  out->hour = (uint32_t)bits[1];
  out->dom = (uint32_t)bits[2];
  out->month = (uint32_t)bits[3];
  out->dow = (uint32_t)((bits[4] | (bits[4] >> 7)) & 0x7f); /* 7 is Sunday too */
  out->dom_star = start[2][0] == '*';
  out->dow_star = start[4][0] == '*';
  if (out->dom_star || out->dow_star) {
    /* Both day fields must match: some day of the month field must exist in a month of the
     * month field (February has 29 days in leap years). */
    int feasible = 0;
    for (int m = 1; m <= 12 && !feasible; m++)
      for (int d = 1; d <= days_in_month(2000, m) && !feasible; d++)
        feasible = (out->month >> m & 1) && (out->dom >> d & 1);
    if (!feasible) return perr(&p, 2, "no such day in the months of the month field: it would never fire");
  }
  return 0;
}

/* ---- calendar arithmetic (proleptic Gregorian, days since 1970-01-01) ------------------ */

static int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = floor_div(y, 400);
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
  z += 719468;
  int64_t era = floor_div(z, 146097);
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = yoe + era * 400 + (*m <= 2);
}

/* The first wall-clock minute >= w (minutes since 1970-01-01T00:00 of the wall clock) that
 * matches, or -1 if none before limit. */
static int64_t next_wall(const wf_cron *c, int64_t w, int64_t limit) {
  while (w < limit) {
    int64_t days = floor_div(w, 1440), y;
    int mod = (int)(w - days * 1440), hr = mod / 60, mi = mod % 60, m, d;
    civil_from_days(days, &y, &m, &d);
    if (!(c->month >> m & 1)) {
      w = (m == 12 ? days_from_civil(y + 1, 1, 1) : days_from_civil(y, m + 1, 1)) * 1440;
      continue;
    }
    int dow = (int)((days % 7 + 11) % 7); /* 1970-01-01 was a Thursday (4) */
    int dom_ok = c->dom >> d & 1, dow_ok = c->dow >> dow & 1;
    if (!((c->dom_star || c->dow_star) ? dom_ok && dow_ok : dom_ok || dow_ok)) {
      w = (days + 1) * 1440;
      continue;
    }
    if (!(c->hour >> hr & 1)) {
      w = days * 1440 + (hr + 1) * 60;
      continue;
    }
    uint64_t later = c->minute & ~(((uint64_t)1 << mi) - 1); /* minutes >= mi */
    if (!later) {
      w = days * 1440 + (hr + 1) * 60;
      continue;
    }
    return days * 1440 + hr * 60 + __builtin_ctzll(later);
  }
  return -1;
}

/* ---- time zones ---------------------------------------------------------------------- */

static int is_utc(const char *tz) { return !tz || !*tz || !strcmp(tz, "UTC"); }

static const char *zoneinfo_dir(void) {
  const char *d = getenv("TZDIR");
  return d && *d ? d : "/usr/share/zoneinfo";
}

int wf_tz_check(const char *tz, char *err, size_t errlen) {
  if (is_utc(tz)) return 0;
  size_t n = strlen(tz);
  int ok = n <= 200 && tz[0] != '/' && !strstr(tz, "..");
  for (size_t i = 0; i < n && ok; i++)
    ok = isalnum((unsigned char)tz[i]) || strchr("_+-/", tz[i]);
  if (!ok) {
    snprintf(err, errlen, "bad time zone name \"%.200s\": use an IANA name such as Europe/Berlin or America/New_York", tz);
    return -1;
  }
  char path[512], magic[4] = {0};
  snprintf(path, sizeof path, "%s/%s", zoneinfo_dir(), tz);
  struct stat st;
  FILE *f = stat(path, &st) == 0 && S_ISREG(st.st_mode) ? fopen(path, "rb") : NULL;
  size_t got = f ? fread(magic, 1, 4, f) : 0;
  if (f) fclose(f);
  if (got != 4 || memcmp(magic, "TZif", 4) != 0) {
    snprintf(err, errlen, "unknown time zone \"%s\": no zone file %s (IANA names such as Europe/Berlin, "
             "America/New_York, UTC; the tzdata package provides them)", tz, path);
    return -1;
  }
  return 0;
}

/* TZ set to a zone for the time of a computation. */
typedef struct tz_switch {
  int active;
  int had;     /* TZ was set before */
  char *saved; /* its value */
} tz_switch;

static void tz_enter(tz_switch *s, const char *tz) {
  memset(s, 0, sizeof *s);
  if (is_utc(tz)) return;
  const char *old = getenv("TZ");
  s->had = old != NULL;
  s->saved = old ? strdup(old) : NULL;
  char buf[256];
  snprintf(buf, sizeof buf, ":%s", tz); /* ':' = a file of the zoneinfo directory */
  setenv("TZ", buf, 1);
  tzset();
  s->active = 1;
}

static void tz_leave(tz_switch *s) {
  if (!s->active) return;
  if (s->had && s->saved) setenv("TZ", s->saved, 1);
  else unsetenv("TZ");
  tzset();
  free(s->saved);
  s->active = 0;
}

/* The zone's UTC offset (seconds) at instant t (seconds), under the TZ set by tz_enter. */
static int64_t offset_at(int64_t t) {
  time_t tt = (time_t)t;
  struct tm tm;
  if (!localtime_r(&tt, &tm)) return 0;
  return tm.tm_gmtoff;
}

/* The instant (seconds) at which the wall clock reads w (seconds): the first of two if the
 * time occurs twice, the end of the gap if it does not occur. Assumes at most one offset
 * change within a day of w. */
static int64_t wall_to_instant(int64_t w) {
  int64_t o1 = offset_at(w - 86400), o2 = offset_at(w + 86400);
  int64_t c1 = w - o1, c2 = w - o2, best = INT64_MAX;
  if (c1 + offset_at(c1) == w) best = c1;
  if (c2 + offset_at(c2) == w && c2 < best) best = c2;
  if (best != INT64_MAX) return best;
  /* A gap: the wall clock jumps over w between lo and hi; find the first second past it. */
  int64_t lo = c1 < c2 ? c1 : c2, hi = c1 < c2 ? c2 : c1;
  while (hi - lo > 1) {
    int64_t mid = lo + (hi - lo) / 2;
    if (mid + offset_at(mid) < w) lo = mid;
    else hi = mid;
  }
  return hi;
}

#define SEARCH_YEARS 30 /* Feb 29 on a given weekday recurs within 28 years */

/* The next firing after `after` (ms), with TZ already switched if zoned. */
static int64_t next_in(const wf_cron *c, int zoned, int64_t after) {
  int64_t after_s = floor_div(after, 1000);
  int64_t wall_s = zoned ? after_s + offset_at(after_s) : after_s;
  int64_t w = floor_div(wall_s, 60) + 1;
  int64_t limit = w + (int64_t)SEARCH_YEARS * 366 * 1440;
  for (;;) {
    w = next_wall(c, w, limit);
    if (w < 0) return -1;
    if (!zoned) return w * 60000;
    int64_t t = wall_to_instant(w * 60) * 1000;
    if (t > after) return t;
    w++; /* the first occurrence of a repeated time is already past: it fired then */
  }
}

int64_t wf_cron_next(const wf_cron *c, const char *tz, int64_t after) {
  tz_switch s;
  tz_enter(&s, tz);
  int64_t t = next_in(c, s.active, after);
  tz_leave(&s);
  return t;
}

/* The latest firing at or before now, or -1 (TZ already switched if zoned): looks back over
 * doubling windows until one holds a firing, then walks to the last one. */
static int64_t latest_until(const wf_cron *c, int zoned, int64_t now) {
  for (int64_t back = 60000; back <= (int64_t)SEARCH_YEARS * 366 * 86400000; back *= 2) {
    int64_t g = next_in(c, zoned, now - back);
    if (g < 0 || g > now) continue;
    for (int64_t n; (n = next_in(c, zoned, g)) >= 0 && n <= now;) g = n;
    return g;
  }
  return -1;
}

#define WALK_MAX 1000000

int64_t wf_cron_walk(const wf_cron *c, const char *tz, int64_t first, int64_t now, int64_t *count,
                     int64_t *last) {
  tz_switch s;
  tz_enter(&s, tz);
  int64_t f = first, n = 0, l = 0;
  while (f >= 0 && f <= now && n < WALK_MAX) {
    n++;
    l = f;
    f = next_in(c, s.active, f);
  }
  if (f >= 0 && f <= now) { /* the rest is skipped uncounted */
    l = latest_until(c, s.active, now);
    f = next_in(c, s.active, now);
  }
  *count = n;
  *last = l;
  tz_leave(&s);
  return f;
}

void wf_cron_format(int64_t ms, char out[32]) {
  time_t t = (time_t)floor_div(ms, 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}
