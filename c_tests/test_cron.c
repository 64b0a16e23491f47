/*
 * test_cron.c — the cron parser and next-firing computation (host/wf_cron.c): syntax, names,
 * macros, errors that name the bad field, day-of-month/day-of-week (Vixie OR), leap years,
 * time zones across daylight saving changes (Europe/Berlin, America/New_York), catching up
 * over a gap, TZ restored after each computation, and a brute-force cross-check in UTC.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"
#include "wf_cron.h"

/* "2024-03-31T01:00:00Z" -> ms */
static int64_t ms_of(const char *iso) {
  struct tm tm = {0};
  if (!strptime(iso, "%Y-%m-%dT%H:%M:%SZ", &tm)) {
    fprintf(stderr, "bad test time %s\n", iso);
    exit(2);
  }
  return (int64_t)timegm(&tm) * 1000;
}

static wf_cron parse_ok(const char *expr) {
  wf_cron c;
  char err[300] = "";
  int rc = wf_cron_parse(expr, &c, err, sizeof err);
  if (rc != 0) fprintf(stderr, "parse %s: %s\n", expr, err);
  CHECK(rc == 0);
  return c;
}

/* Checks that expr is refused with exactly the message want. */
static void parse_err(const char *expr, const char *want) {
  wf_cron c;
  char err[300] = "";
  int rc = wf_cron_parse(expr, &c, err, sizeof err);
  CHECK(rc == -1);
  if (strcmp(err, want) != 0) fprintf(stderr, "parse %s:\n  got  %s\n  want %s\n", expr, err, want);
  CHECK(!strcmp(err, want));
}

/* Checks the next firing of expr in tz strictly after `after`. */
static void next_is(const char *expr, const char *tz, const char *after, const char *want) {
  wf_cron c = parse_ok(expr);
  int64_t t = wf_cron_next(&c, tz, ms_of(after));
  char got[32];
  wf_cron_format(t, got);
  if (strcmp(got, want) != 0)
    fprintf(stderr, "next of \"%s\" in %s after %s:\n  got  %s\n  want %s\n", expr, tz ? tz : "UTC", after, got, want);
  CHECK(!strcmp(got, want));
}

/* Checks the sequence of firings of expr in tz after `after`: want is a NULL-ended list. */
static void sequence_is(const char *expr, const char *tz, const char *after, const char *const *want) {
  wf_cron c = parse_ok(expr);
  int64_t t = ms_of(after);
  for (int i = 0; want[i]; i++) {
    t = wf_cron_next(&c, tz, t);
    char got[32];
    wf_cron_format(t, got);
    if (strcmp(got, want[i]) != 0)
      fprintf(stderr, "\"%s\" in %s, firing %d after %s:\n  got  %s\n  want %s\n", expr, tz ? tz : "UTC", i + 1,
              after, got, want[i]);
    CHECK(!strcmp(got, want[i]));
  }
}

static void test_syntax(void) {
  wf_cron c = parse_ok("1-30/5 * * * *");
  CHECK(c.minute == (1ull << 1 | 1ull << 6 | 1ull << 11 | 1ull << 16 | 1ull << 21 | 1ull << 26));
  c = parse_ok("5/15 0,12 * * *");
  CHECK(c.minute == (1ull << 5 | 1ull << 20 | 1ull << 35 | 1ull << 50));
  CHECK(c.hour == (1u << 0 | 1u << 12));
  c = parse_ok("*/15 * * * *");
  CHECK(c.minute == (1ull << 0 | 1ull << 15 | 1ull << 30 | 1ull << 45));
  CHECK(c.dom_star && c.dow_star);
  CHECK(c.dom == 0xfffffffeu && c.month == 0x1ffeu && c.dow == 0x7fu);
  c = parse_ok("0 9 * JAN,Mar,dec Mon-FRI");
  CHECK(c.month == (1u << 1 | 1u << 3 | 1u << 12));
  CHECK(c.dow == 0x3eu);
  CHECK(!c.dow_star && c.dom_star);
  c = parse_ok("0 0 * * 7");
  CHECK(c.dow == 1u); /* 7 is Sunday */
  c = parse_ok("0 0 * * 5-7");
  CHECK(c.dow == (1u << 5 | 1u << 6 | 1u << 0));
  c = parse_ok("0 0 * * sun,7,0");
  CHECK(c.dow == 1u);
  c = parse_ok("  0\t0  1  1  *  "); /* any blanks between and around fields */
  CHECK(c.minute == 1 && c.hour == 1 && c.dom == 2 && c.month == 2);

  /* Macros are their five-field equivalents. */
  static const char *const pairs[][2] = {
      {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
      {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
      {"@hourly", "0 * * * *"}, {"@DAILY", "0 0 * * *"},
  };
  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    wf_cron a = parse_ok(pairs[i][0]), b = parse_ok(pairs[i][1]);
    CHECK(!memcmp(&a, &b, sizeof a));
  }
}

static void test_errors(void) {
  parse_err("*/0 * * * *", "cron \"*/0 * * * *\": minute: step must be >= 1");
  parse_err("60 * * * *", "cron \"60 * * * *\": minute: 60 is out of range (0-59)");
  parse_err("0 24 * * *", "cron \"0 24 * * *\": hour: 24 is out of range (0-23)");
  parse_err("0 0 0 * *", "cron \"0 0 0 * *\": day-of-month: 0 is out of range (1-31)");
  parse_err("0 0 * 13 *", "cron \"0 0 * 13 *\": month: 13 is out of range (1-12)");
  parse_err("0 0 * * 8", "cron \"0 0 * * 8\": day-of-week: 8 is out of range (0-7)");
  parse_err("5-1 * * * *", "cron \"5-1 * * * *\": minute: range 5-1 goes backwards");
  parse_err("0 0 * foo *", "cron \"0 0 * foo *\": month: unknown name 'foo' (jan, feb, ..., dec)");
  parse_err("0 0 * * funday",
            "cron \"0 0 * * funday\": day-of-week: unknown name 'funday' (sun, mon, tue, wed, thu, fri, sat)");
  parse_err("x * * * *", "cron \"x * * * *\": minute: 'x' is not a number");
  parse_err("1,,2 * * * *", "cron \"1,,2 * * * *\": minute: empty item in a list");
  parse_err("*/ * * * *", "cron \"*/ * * * *\": minute: a step needs a number after '/'");
  parse_err("*/60 * * * *", "cron \"*/60 * * * *\": minute: step 60 is larger than the field's range");
  parse_err("1-2x * * * *", "cron \"1-2x * * * *\": minute: unexpected 'x' in '1-2x'");
  parse_err("0 0 1-", "cron \"0 0 1-\": expected 5 fields (minute hour day-of-month month day-of-week), got 3");
  parse_err("* * * *", "cron \"* * * *\": expected 5 fields (minute hour day-of-month month day-of-week), got 4");
  parse_err("0 0 * * * 2025",
            "cron \"0 0 * * * 2025\": expected 5 fields (minute hour day-of-month month day-of-week), got 6");
  parse_err("", "cron \"\": empty expression");
  parse_err("@reboot",
            "cron \"@reboot\": unknown macro '@reboot' (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)");
  parse_err("@daily 5", "cron \"@daily 5\": unknown macro '@daily' (@yearly, @annually, @monthly, @weekly, @daily, "
                        "@midnight, @hourly)");
  parse_err("0 0 30 2 *", "cron \"0 0 30 2 *\": day-of-month: no such day in the months of the month field: it would never fire");
  parse_err("0 0 31 4,6,9,11 *",
            "cron \"0 0 31 4,6,9,11 *\": day-of-month: no such day in the months of the month field: it would never fire");
  parse_ok("0 0 29 2 *");  /* leap days exist */
  parse_ok("0 0 30 2 mon"); /* both restricted: Mondays of February fire */
}

static void test_next_utc(void) {
  next_is("*/15 * * * *", NULL, "2024-01-01T00:00:00Z", "2024-01-01T00:15:00Z"); /* strictly after */
  next_is("*/15 * * * *", NULL, "2024-01-01T00:07:30Z", "2024-01-01T00:15:00Z");
  next_is("*/15 * * * *", "UTC", "2024-01-01T23:59:59Z", "2024-01-02T00:00:00Z");
  next_is("59 23 31 12 *", NULL, "2024-12-31T23:59:00Z", "2025-12-31T23:59:00Z");
  next_is("0 0 31 * *", NULL, "2024-01-31T00:00:00Z", "2024-03-31T00:00:00Z");
  next_is("@yearly", NULL, "2024-06-01T00:00:00Z", "2025-01-01T00:00:00Z");
  next_is("@monthly", NULL, "2024-02-15T10:00:00Z", "2024-03-01T00:00:00Z");
  next_is("@weekly", NULL, "2024-09-01T00:00:00Z", "2024-09-08T00:00:00Z"); /* Sunday to Sunday */
  next_is("0 0 * * 7", NULL, "2024-09-02T00:00:00Z", "2024-09-08T00:00:00Z");
  /* February 29: the next leap year, and 2100 is not one. */
  next_is("0 0 29 2 *", NULL, "2024-03-01T00:00:00Z", "2028-02-29T00:00:00Z");
  next_is("0 0 29 2 *", NULL, "2096-03-01T00:00:00Z", "2104-02-29T00:00:00Z");
  next_is("0 12 29 feb thu", NULL, "2024-02-28T00:00:00Z", "2024-02-29T12:00:00Z"); /* OR: a Thursday too */
  /* Both day fields restricted: either matches (the 13th, or a Friday). */
  static const char *const or_days[] = {"2024-09-06T12:00:00Z", "2024-09-13T12:00:00Z", "2024-09-20T12:00:00Z",
                                        "2024-09-27T12:00:00Z", "2024-10-04T12:00:00Z", "2024-10-11T12:00:00Z",
                                        "2024-10-13T12:00:00Z", NULL};
  sequence_is("0 12 13 * fri", NULL, "2024-09-01T00:00:00Z", or_days);
  /* The first seven days OR Mondays; with '*' in the day of month (even "*\/1"), Mondays only. */
  static const char *const first_week[] = {"2024-09-01T00:00:00Z", "2024-09-02T00:00:00Z", "2024-09-03T00:00:00Z",
                                           "2024-09-04T00:00:00Z", "2024-09-05T00:00:00Z", "2024-09-06T00:00:00Z",
                                           "2024-09-07T00:00:00Z", "2024-09-09T00:00:00Z", "2024-09-16T00:00:00Z",
                                           NULL};
  sequence_is("0 0 1-7 * mon", NULL, "2024-08-31T12:00:00Z", first_week);
  static const char *const mondays[] = {"2024-09-02T00:00:00Z", "2024-09-09T00:00:00Z", NULL};
  sequence_is("0 0 */1 * mon", NULL, "2024-08-31T12:00:00Z", mondays);
  /* A day-of-month with '*' and a step, with a weekday: both must match (Vixie). */
  next_is("0 0 */2 * 1", NULL, "2024-09-01T00:00:00Z", "2024-09-09T00:00:00Z"); /* 9th: odd day, a Monday */
  /* Before the epoch. */
  next_is("0 0 1 1 *", NULL, "1969-06-01T00:00:00Z", "1970-01-01T00:00:00Z");
}

/* Brute force: the first minute after `after` whose UTC fields match, checked field by field. */
static int64_t brute_next(const char *expr, int64_t after, int64_t horizon) {
  wf_cron c = parse_ok(expr);
  for (int64_t t = (after / 60000 + 1) * 60000; t < after + horizon; t += 60000) {
    time_t s = (time_t)(t / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    int dom = c.dom >> tm.tm_mday & 1, dow = c.dow >> tm.tm_wday & 1;
    int day = c.dom_star || c.dow_star ? dom && dow : dom || dow;
    if ((c.minute >> tm.tm_min & 1) && (c.hour >> tm.tm_hour & 1) && (c.month >> (tm.tm_mon + 1) & 1) && day)
      return t;
  }
  return -1;
}

static void test_brute_force(void) {
  static const char *const exprs[] = {"*/7 * * * *", "1-30/5 3,9-11 * * *", "0 0 1-7 * mon", "15 14 1 * *",
                                      "0 22 * * 1-5", "23 0-20/2 * * *", "5 4 * * sun", "0 0,12 1 */2 *",
                                      "0 12 13 * fri", "30 6 */3 * 2", "@hourly", "0 0 15 * wed"};
  static const char *const starts[] = {"2023-12-31T23:58:00Z", "2024-02-28T13:37:12Z", "2024-07-01T00:00:00Z"};
  int64_t horizon = (int64_t)100 * 86400000;
  for (size_t i = 0; i < sizeof exprs / sizeof exprs[0]; i++) {
    wf_cron c = parse_ok(exprs[i]);
    for (size_t j = 0; j < sizeof starts / sizeof starts[0]; j++) {
      int64_t t = ms_of(starts[j]);
      for (int k = 0; k < 20; k++) { /* twenty firings in a row */
        int64_t want = brute_next(exprs[i], t, horizon), got = wf_cron_next(&c, NULL, t);
        if (got != want) fprintf(stderr, "\"%s\" after %lld: got %lld, brute force %lld\n", exprs[i], (long long)t,
                                 (long long)got, (long long)want);
        CHECK(got == want);
        if (want < 0) break;
        t = want;
      }
    }
  }
}

static void test_zones(void) {
  /* Europe/Berlin, spring forward 2024-03-31: 02:00 CET -> 03:00 CEST (01:00Z). 02:30 does not
   * exist: it fires at 03:00, then at 02:30 CEST the next day. */
  static const char *const berlin_230[] = {"2024-03-30T01:30:00Z", "2024-03-31T01:00:00Z", "2024-04-01T00:30:00Z", NULL};
  sequence_is("30 2 * * *", "Europe/Berlin", "2024-03-29T12:00:00Z", berlin_230);
  next_is("0 3 * * *", "Europe/Berlin", "2024-03-30T12:00:00Z", "2024-03-31T01:00:00Z");
  /* Every half hour: 02:00, 02:30 and 03:00 are one firing, at 03:00 CEST. */
  static const char *const berlin_half[] = {"2024-03-31T00:30:00Z", "2024-03-31T01:00:00Z", "2024-03-31T01:30:00Z", NULL};
  sequence_is("*/30 * * * *", "Europe/Berlin", "2024-03-31T00:15:00Z", berlin_half);
  /* Fall back 2024-10-27: 03:00 CEST -> 02:00 CET (01:00Z); 02:00-02:59 happens twice and
   * fires in its first occurrence only. */
  static const char *const berlin_back[] = {"2024-10-27T00:30:00Z", "2024-10-28T01:30:00Z", NULL};
  sequence_is("30 2 * * *", "Europe/Berlin", "2024-10-26T12:00:00Z", berlin_back);
  static const char *const berlin_back_half[] = {"2024-10-27T00:00:00Z", "2024-10-27T00:30:00Z",
                                                 "2024-10-27T02:00:00Z", "2024-10-27T02:30:00Z", NULL};
  sequence_is("*/30 * * * *", "Europe/Berlin", "2024-10-26T23:45:00Z", berlin_back_half);
  /* From inside the second 02:00-03:00: its times already fired in the first. */
  next_is("*/30 * * * *", "Europe/Berlin", "2024-10-27T01:10:00Z", "2024-10-27T02:00:00Z");
  /* Midnight local is 22:00Z in summer, 23:00Z in winter. */
  next_is("@daily", "Europe/Berlin", "2024-06-01T00:00:00Z", "2024-06-01T22:00:00Z");
  next_is("@daily", "Europe/Berlin", "2024-12-01T00:00:00Z", "2024-12-01T23:00:00Z");

  /* America/New_York: 2024-03-10 02:00 EST -> 03:00 EDT (07:00Z); 2024-11-03 02:00 EDT ->
   * 01:00 EST (06:00Z), so 01:00-01:59 repeats. */
  next_is("30 2 * * *", "America/New_York", "2024-03-09T12:00:00Z", "2024-03-10T07:00:00Z");
  next_is("30 2 * * *", "America/New_York", "2024-03-10T07:00:00Z", "2024-03-11T06:30:00Z");
  static const char *const ny_back[] = {"2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z", NULL};
  sequence_is("30 1 * * *", "America/New_York", "2024-11-02T12:00:00Z", ny_back);
  static const char *const ny_hourly[] = {"2024-11-03T04:00:00Z", "2024-11-03T05:00:00Z", "2024-11-03T07:00:00Z",
                                          "2024-11-03T08:00:00Z", NULL}; /* 00:00, 01:00 EDT, 02:00, 03:00 EST */
  sequence_is("0 * * * *", "America/New_York", "2024-11-03T03:30:00Z", ny_hourly);
  /* A weekday in local time: Friday 23:00 in New York is Saturday in UTC. */
  next_is("0 23 * * fri", "America/New_York", "2024-09-01T00:00:00Z", "2024-09-07T03:00:00Z");
  /* Feb 29 in a zone. */
  next_is("0 0 29 2 *", "Europe/Berlin", "2024-03-01T00:00:00Z", "2028-02-28T23:00:00Z");

  /* Zone names. */
  char err[400];
  CHECK(wf_tz_check(NULL, err, sizeof err) == 0);
  CHECK(wf_tz_check("UTC", err, sizeof err) == 0);
  CHECK(wf_tz_check("Europe/Berlin", err, sizeof err) == 0);
  CHECK(wf_tz_check("Etc/UTC", err, sizeof err) == 0);
  CHECK(wf_tz_check("Europe/Berln", err, sizeof err) == -1);
  CHECK(!strncmp(err, "unknown time zone \"Europe/Berln\": no zone file ", 47));
  CHECK(wf_tz_check("../../etc/passwd", err, sizeof err) == -1);
  CHECK(strstr(err, "bad time zone name") != NULL);
  CHECK(wf_tz_check("Europe", err, sizeof err) == -1); /* a directory */
  CHECK(wf_tz_check("Europe/Berlin extra", err, sizeof err) == -1);

  /* TZ is restored (or left unset) after a computation in a zone. */
  wf_cron c = parse_ok("0 * * * *");
  setenv("TZ", "America/Denver", 1);
  tzset();
  wf_cron_next(&c, "Europe/Berlin", ms_of("2024-01-01T00:00:00Z"));
  CHECK(getenv("TZ") && !strcmp(getenv("TZ"), "America/Denver"));
  unsetenv("TZ");
  tzset();
  wf_cron_next(&c, "Asia/Tokyo", ms_of("2024-01-01T00:00:00Z"));
  CHECK(getenv("TZ") == NULL);
}

static void test_walk(void) {
  wf_cron c = parse_ok("*/15 * * * *");
  int64_t count, last;
  int64_t next = wf_cron_walk(&c, NULL, ms_of("2024-01-01T00:15:00Z"), ms_of("2024-01-01T01:07:00Z"), &count, &last);
  CHECK(count == 4);
  CHECK(last == ms_of("2024-01-01T01:00:00Z"));
  CHECK(next == ms_of("2024-01-01T01:15:00Z"));
  /* Nothing due yet. */
  next = wf_cron_walk(&c, NULL, ms_of("2024-01-01T00:15:00Z"), ms_of("2024-01-01T00:10:00Z"), &count, &last);
  CHECK(count == 0 && last == 0 && next == ms_of("2024-01-01T00:15:00Z"));
  /* Across a DST change in a zone: the collapsed gap counts once. */
  next = wf_cron_walk(&c, "Europe/Berlin", ms_of("2024-03-31T00:30:00Z"), ms_of("2024-03-31T01:20:00Z"), &count, &last);
  CHECK(count == 4); /* 01:30 CET, 01:45 CET, 03:00 CEST (for 02:00 to 03:00), 03:15 CEST */
  CHECK(last == ms_of("2024-03-31T01:15:00Z"));
  CHECK(next == ms_of("2024-03-31T01:30:00Z"));
  /* Two years of minutes: counting stops at a million; the latest and the next stay exact. */
  wf_cron every = parse_ok("* * * * *");
  next = wf_cron_walk(&every, NULL, ms_of("2022-01-01T00:00:00Z"), ms_of("2024-01-01T00:00:30Z"), &count, &last);
  CHECK(count == 1000000);
  CHECK(last == ms_of("2024-01-01T00:00:00Z"));
  CHECK(next == ms_of("2024-01-01T00:01:00Z"));
}

int main(void) {
  test_syntax();
  test_errors();
  test_next_utc();
  test_brute_force();
  test_zones();
  test_walk();
  TEST_MAIN_END();
}
