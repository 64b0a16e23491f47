/*
 * wfbench.c — the benchmark workloads of wfhost (issue 7), run in-process through the
 * public API only (wfhost.h), as an embedding application would.
 *
 *   wfbench [options] WORKLOAD N
 *
 *   w1 N      start N workflows of three `echo` steps at once, wait for all N results
 *   seq N     N such workflows one at a time after a warm-up: latency start -> completed
 *   w2 N      park N workflows on wait_for("go"), then signal each and wait for all
 *   park N    park N instances (setup process), then time a restarted host (second process):
 *             ready, RSS, latency to resume one random (evicted) instance
 *   replay N  instances that ran N (default 1000) echo steps and wait; after a restart, time
 *             signal -> completed (the rebuild replays every step); also the same signal on a
 *             live instance for comparison
 *
 * Options: --workflows DIR (default: the bench/workflows directory of the source tree),
 *          --tmp DIR (where the fresh per-run temp directory is made; default $TMPDIR or /tmp),
 *          --durability full|normal, --batch N (park: starts per drain), --warmup N (seq),
 *          --keep (keep the temp directory). WFBENCH_VERBOSE=1 prints each park batch.
 *
 * Each run prints a few lines for people and one line `RESULT {json}` for machines. Every
 * workload verifies its outcome through wf_list()/wf_get(); a run that fails to verify prints
 * "verified":false,"met":false and exits with status 1. Peak RSS is VmHWM of the process that
 * ran the workload, read before the verification step (which allocates the lists it reads).
 * park and replay re-execute this binary (/proc/self/exe) for their phases so that the
 * restarted host is a fresh process.
 */
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "wfhost.h"

#ifndef WFB_WORKFLOWS_DIR
#define WFB_WORKFLOWS_DIR "bench/workflows"
#endif

static struct {
  const char *wfdir;
  const char *tmpbase;
  int durability;
  int keep;
  int batch;
  int warmup;
  const char *dir; /* phases: the coordinator's temp directory */
} opt = {WFB_WORKFLOWS_DIR, NULL, WF_DURABILITY_FULL, 0, 10000, 20, NULL};

static const char *prog;

/* ---- small helpers --------------------------------------------------------------------- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "wfbench: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A field of /proc/self/status in MB ("VmHWM:" peak RSS, "VmRSS:" current RSS). */
static double proc_mb(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  double kb = -1;
  size_t n = strlen(key);
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, key, n)) kb = strtod(line + n, NULL);
  if (f) fclose(f);
  if (kb < 0) { /* no procfs: ru_maxrss is the peak in KB on Linux */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    kb = (double)ru.ru_maxrss;
  }
  return kb / 1024.0;
}

static const char *durability_name(void) {
  return opt.durability == WF_DURABILITY_NORMAL ? "normal" : "full";
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  remove(path);
  return 0;
}

static char tmpdir_buf[4096];

static const char *make_tmpdir(const char *tag) {
  const char *base = opt.tmpbase ? opt.tmpbase : getenv("TMPDIR");
  if (!base || !*base) base = "/tmp";
  snprintf(tmpdir_buf, sizeof tmpdir_buf, "%s/wfbench-%s.XXXXXX", base, tag);
  if (!mkdtemp(tmpdir_buf)) die("mkdtemp %s: %s", tmpdir_buf, strerror(errno));
  return tmpdir_buf;
}

static void remove_tmpdir(const char *dir) {
  if (!opt.keep) nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  else printf("  (kept %s)\n", dir);
}

static long long file_size(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? (long long)sb.st_size : 0;
}

/* Log lines below WARN are dropped by the host (log_level); warnings and errors are shown. */
static void log_cb(void *ud, wf_log_level lvl, const char *inst, const char *msg, const char *fields) {
  (void)ud, (void)fields;
  fprintf(stderr, "wfbench: host %s%s%s%s\n", lvl >= WF_LOG_ERROR ? "error: " : "warning: ",
          inst ? inst : "", inst ? ": " : "", msg);
}

static wf_host *open_host(const char *db) {
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.durability = (wf_durability)opt.durability;
  cfg.log = log_cb;
  cfg.log_level = WF_LOG_WARN;
  wf_host *h;
  int rc = wf_host_open(db, &cfg, &h);
  if (rc != WF_OK) die("open %s: %s", db, wf_errmsg(h));
  rc = wf_load_dir(h, opt.wfdir);
  if (rc != WF_OK) die("load %s: %s", opt.wfdir, wf_errmsg(h));
  return h;
}

static void drain(wf_host *h) {
  int rc = wf_host_drain(h);
  if (rc != WF_OK) die("drain: %s", wf_errmsg(h));
}

typedef struct {
  size_t ok, failed;
} counter;

static void on_done(wf_host *h, int rc, const char *id, void *ud) {
  counter *c = ud;
  if (rc == WF_OK) {
    c->ok++;
  } else {
    c->failed++;
    fprintf(stderr, "wfbench: request for %s failed: %s\n", id, wf_errmsg(h));
  }
}

/* Number of instances of workflow in status (wf_list, no limit). */
static size_t count_status(wf_host *h, const char *status, const char *workflow) {
  wf_info *list;
  size_t n;
  if (wf_list(h, status, workflow, 0, &list, &n) != WF_OK) die("list: %s", wf_errmsg(h));
  wf_info_list_free(list, n);
  return n;
}

/* Reads an integer field "key":N from a flat JSON object (the workflows' outputs). */
static long long json_int(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = json ? strstr(json, pat) : NULL;
  return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n). */
static double pct(const double *v, size_t n, double p) {
  size_t r = (size_t)ceil(p / 100.0 * (double)n);
  if (r < 1) r = 1;
  if (r > n) r = n;
  return v[r - 1];
}

/* ---- the RESULT line ------------------------------------------------------------------- */

typedef struct {
  char buf[4096];
  size_t n;
} jbuf;

static void jraw(jbuf *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void jraw(jbuf *j, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(j->buf + j->n, sizeof j->buf - j->n, fmt, ap);
  va_end(ap);
  if (k > 0) j->n += (size_t)k;
  if (j->n >= sizeof j->buf) die("RESULT line too long");
}

static void jsep(jbuf *j) {
  if (j->n && j->buf[j->n - 1] != '{') jraw(j, ",");
}
static void jnum(jbuf *j, const char *key, double v, int decimals) {
  jsep(j);
  jraw(j, "\"%s\":%.*f", key, decimals, v);
}
static void jint(jbuf *j, const char *key, long long v) {
  jsep(j);
  jraw(j, "\"%s\":%lld", key, v);
}
static void jstr(jbuf *j, const char *key, const char *v) {
  jsep(j);
  jraw(j, "\"%s\":\"%s\"", key, v);
}
static void jbool(jbuf *j, const char *key, int v) {
  jsep(j);
  jraw(j, "\"%s\":%s", key, v < 0 ? "null" : v ? "true" : "false");
}

static jbuf *result_begin(const char *workload, long long n) {
  static jbuf j;
  j.n = 0;
  jraw(&j, "{");
  jstr(&j, "workload", workload);
  jint(&j, "n", n);
  jstr(&j, "durability", durability_name());
  return &j;
}

/* Ends the line: the targets object (already formatted, or NULL), verified, met. met < 0
 * means no target applies to this line. */
static int result_end(jbuf *j, const char *targets, int verified, int met) {
  jsep(j);
  jraw(j, "\"target\":%s", targets ? targets : "null");
  jbool(j, "verified", verified);
  jbool(j, "met", !verified ? 0 : met);
  jraw(j, "}");
  printf("RESULT %s\n", j->buf);
  fflush(stdout);
  return verified ? 0 : 1;
}

static void row(const char *label, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void row(const char *label, const char *fmt, ...) {
  char v[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(v, sizeof v, fmt, ap);
  va_end(ap);
  printf("  %-40s %s\n", label, v);
}

static void fail_check(int *verified, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_check(int *verified, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "wfbench: VERIFY FAILED: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  *verified = 0;
}

/* ---- phases: key/value files between a coordinator and its child processes ------------- */

typedef struct {
  char key[32][48];
  double val[32];
  int n;
} kvset;

static void kv_write(const char *phase, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void kv_write(const char *phase, const char *fmt, ...) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s.kv", opt.dir, phase);
  FILE *f = fopen(path, "a");
  if (!f) die("write %s: %s", path, strerror(errno));
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fputc('\n', f);
  fclose(f);
}

static kvset kv_read(const char *dir, const char *phase) {
  kvset s = {.n = 0};
  char path[4200], key[48];
  double v;
  snprintf(path, sizeof path, "%s/%s.kv", dir, phase);
  FILE *f = fopen(path, "r");
  if (!f) return s;
  while (s.n < 32 && fscanf(f, "%47s %lf", key, &v) == 2) {
    snprintf(s.key[s.n], sizeof s.key[s.n], "%s", key);
    s.val[s.n++] = v;
  }
  fclose(f);
  return s;
}

static double kv(const kvset *s, const char *key) {
  for (int i = 0; i < s->n; i++)
    if (!strcmp(s->key[i], key)) return s->val[i];
  return NAN;
}

/* Runs this binary with a phase and waits for it; returns its exit status. */
static int run_phase(const char *phase, long long n, const char *dir) {
  char nbuf[32];
  snprintf(nbuf, sizeof nbuf, "%lld", n);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) die("fork: %s", strerror(errno));
  if (pid == 0) {
    char batch[32], warm[32];
    snprintf(batch, sizeof batch, "%d", opt.batch);
    snprintf(warm, sizeof warm, "%d", opt.warmup);
    const char *argv[] = {prog, "--workflows", opt.wfdir, "--durability", durability_name(),
                          "--batch", batch, "--warmup", warm, "--dir", dir, phase, nbuf, NULL};
    execv("/proc/self/exe", (char *const *)argv);
    execv(prog, (char *const *)argv);
    fprintf(stderr, "wfbench: exec: %s\n", strerror(errno));
    _exit(127);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) die("waitpid: %s", strerror(errno));
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  fprintf(stderr, "wfbench: phase %s died (signal %d)\n", phase, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return 1;
}

/* ---- w1: N workflows at once ---------------------------------------------------------- */

static int bench_w1(long long n) {
  const char *dir = make_tmpdir("w1");
  char db[4200];
  snprintf(db, sizeof db, "%s/w1.db", dir);
  wf_host *h = open_host(db);
  drain(h); /* the host is up (recovery done, catalog written) before the clock starts */

  counter c = {0, 0};
  char input[64];
  double t0 = mono();
  for (long long i = 0; i < n; i++) {
    snprintf(input, sizeof input, "{\"n\":%lld}", i);
    if (wf_start(h, "bench3", input, NULL, NULL, on_done, &c) != WF_OK) die("start: %s", wf_errmsg(h));
  }
  double t_sub = mono();
  drain(h);
  double t1 = mono();
  double hwm = proc_mb("VmHWM:");

  int verified = 1;
  if (c.ok != (size_t)n) fail_check(&verified, "%zu of %lld starts acknowledged (%zu failed)", c.ok, n, c.failed);
  wf_info *list;
  size_t cnt;
  if (wf_list(h, "completed", "bench3", 0, &list, &cnt) != WF_OK) die("list: %s", wf_errmsg(h));
  if (cnt != (size_t)n) fail_check(&verified, "%zu of %lld instances completed", cnt, n);
  size_t bad = 0;
  for (size_t i = 0; i < cnt; i++)
    if (json_int(list[i].output_json, "steps") != 3 || json_int(list[i].output_json, "n") != json_int(list[i].input_json, "n"))
      bad++;
  if (bad) fail_check(&verified, "%zu outputs are wrong", bad);
  wf_info_list_free(list, cnt);
  wf_host_close(h);
  remove_tmpdir(dir);

  double wall = t1 - t0;
  double wfps = (double)n / wall, sps = 3.0 * (double)n / wall;
  printf("w1  N=%lld  durability=%s\n", n, durability_name());
  row("wall, first start to last result", "%.3f s", wall);
  row("  of which wf_start() calls", "%.3f s", t_sub - t0);
  row("workflows/s", "%.0f", wfps);
  row("steps/s (3 echo steps each)", "%.0f", sps);
  row("peak RSS (VmHWM)", "%.1f MB", hwm);
  row("verified (all completed, outputs right)", "%s", verified ? "yes" : "NO");

  jbuf *j = result_begin("w1", n);
  jnum(j, "wall_s", wall, 4);
  jnum(j, "start_calls_s", t_sub - t0, 4);
  jnum(j, "wf_per_s", wfps, 0);
  jnum(j, "steps_per_s", sps, 0);
  jnum(j, "peak_rss_mb", hwm, 1);
  if (n == 10000 && opt.durability == WF_DURABILITY_FULL)
    return result_end(j, "{\"steps_per_s\":30000,\"peak_rss_mb\":64}", verified, sps >= 30000 && hwm <= 64);
  return result_end(j, NULL, verified, -1);
}

/* ---- seq: one at a time --------------------------------------------------------------- */

static int bench_seq(long long n) {
  const char *dir = make_tmpdir("seq");
  char db[4200];
  snprintf(db, sizeof db, "%s/seq.db", dir);
  wf_host *h = open_host(db);
  drain(h);

  double *lat = calloc((size_t)n, sizeof *lat);
  char (*ids)[WF_ID_MAX + 1] = calloc((size_t)n, sizeof *ids);
  if (!lat || !ids) die("out of memory");
  counter c = {0, 0};
  char input[64], wid[WF_ID_MAX + 1];
  for (int i = 0; i < opt.warmup; i++) {
    snprintf(input, sizeof input, "{\"n\":%d}", -1 - i);
    if (wf_start(h, "bench3", input, NULL, wid, on_done, &c) != WF_OK) die("start: %s", wf_errmsg(h));
    drain(h);
  }
  int verified = 1;
  for (long long i = 0; i < n; i++) {
    snprintf(input, sizeof input, "{\"n\":%lld}", i);
    double t0 = mono();
    if (wf_start(h, "bench3", input, NULL, ids[i], on_done, &c) != WF_OK) die("start: %s", wf_errmsg(h));
    drain(h);
    lat[i] = (mono() - t0) * 1e3;
  }
  double hwm = proc_mb("VmHWM:");
  if (c.ok != (size_t)(n + opt.warmup)) fail_check(&verified, "%zu starts acknowledged", c.ok);
  for (long long i = 0; i < n; i++) {
    wf_info *info;
    if (wf_get(h, ids[i], &info) != WF_OK) {
      fail_check(&verified, "%s: %s", ids[i], wf_errmsg(h));
      continue;
    }
    if (strcmp(info->status, "completed") || json_int(info->output_json, "n") != i)
      fail_check(&verified, "%s is %s with output %s", ids[i], info->status, info->output_json ? info->output_json : "-");
    wf_info_free(info);
  }
  wf_host_close(h);
  remove_tmpdir(dir);

  double sum = 0;
  for (long long i = 0; i < n; i++) sum += lat[i];
  qsort(lat, (size_t)n, sizeof *lat, cmp_double);
  double med = pct(lat, (size_t)n, 50), p99 = pct(lat, (size_t)n, 99);
  printf("seq  N=%lld (after %d warm-up runs)  durability=%s\n", n, opt.warmup, durability_name());
  row("latency start -> completed, median", "%.3f ms", med);
  row("p90 / p99 / max", "%.3f / %.3f / %.3f ms", pct(lat, (size_t)n, 90), p99, lat[n - 1]);
  row("min / mean", "%.3f / %.3f ms", lat[0], sum / (double)n);
  row("peak RSS (VmHWM)", "%.1f MB", hwm);
  row("verified (each completed, output right)", "%s", verified ? "yes" : "NO");

  jbuf *j = result_begin("seq", n);
  jint(j, "warmup", opt.warmup);
  jnum(j, "median_ms", med, 3);
  jnum(j, "p90_ms", pct(lat, (size_t)n, 90), 3);
  jnum(j, "p99_ms", p99, 3);
  jnum(j, "max_ms", lat[n - 1], 3);
  jnum(j, "min_ms", lat[0], 3);
  jnum(j, "mean_ms", sum / (double)n, 3);
  jnum(j, "peak_rss_mb", hwm, 1);
  free(lat);
  free(ids);
  if (opt.durability == WF_DURABILITY_FULL)
    return result_end(j, "{\"median_ms\":1.0,\"p99_ms\":3.0}", verified, med <= 1.0 && p99 <= 3.0);
  return result_end(j, NULL, verified, -1);
}

/* ---- w2: park N on an event, then signal all ------------------------------------------ */

static int bench_w2(long long n) {
  const char *dir = make_tmpdir("w2");
  char db[4200];
  snprintf(db, sizeof db, "%s/w2.db", dir);
  wf_host *h = open_host(db);
  drain(h);

  char (*ids)[WF_ID_MAX + 1] = calloc((size_t)n, sizeof *ids);
  if (!ids) die("out of memory");
  counter cs = {0, 0}, cg = {0, 0};
  char input[64], data[64];
  double t0 = mono();
  for (long long i = 0; i < n; i++) {
    snprintf(input, sizeof input, "{\"n\":%lld}", i);
    if (wf_start(h, "bench_wait", input, NULL, ids[i], on_done, &cs) != WF_OK) die("start: %s", wf_errmsg(h));
  }
  drain(h);
  double t1 = mono();
  int verified = 1;
  size_t parked = count_status(h, "waiting", "bench_wait");
  if (cs.ok != (size_t)n || parked != (size_t)n)
    fail_check(&verified, "%zu starts acknowledged, %zu of %lld waiting", cs.ok, parked, n);

  double t2 = mono();
  for (long long i = 0; i < n; i++) {
    snprintf(data, sizeof data, "{\"k\":%lld}", i);
    if (wf_signal(h, ids[i], "go", data, on_done, &cg) != WF_OK) die("signal %s: %s", ids[i], wf_errmsg(h));
  }
  double t_sub = mono();
  drain(h);
  double t3 = mono();
  double hwm = proc_mb("VmHWM:");

  if (cg.ok != (size_t)n) fail_check(&verified, "%zu of %lld signals acknowledged", cg.ok, n);
  wf_info *list;
  size_t cnt;
  if (wf_list(h, "completed", "bench_wait", 0, &list, &cnt) != WF_OK) die("list: %s", wf_errmsg(h));
  if (cnt != (size_t)n) fail_check(&verified, "%zu of %lld completed", cnt, n);
  size_t bad = 0;
  for (size_t i = 0; i < cnt; i++)
    if (json_int(list[i].output_json, "go") != json_int(list[i].output_json, "n") || json_int(list[i].output_json, "n") < 0)
      bad++;
  if (bad) fail_check(&verified, "%zu outputs got the wrong event", bad);
  wf_info_list_free(list, cnt);
  wf_host_close(h);
  remove_tmpdir(dir);
  free(ids);

  double park_s = t1 - t0, done_s = t3 - t2;
  printf("w2  N=%lld  durability=%s\n", n, durability_name());
  row("park all (start N, drain)", "%.3f s", park_s);
  row("first signal to last result", "%.3f s", done_s);
  row("  of which wf_signal() calls", "%.3f s", t_sub - t2);
  row("events/s", "%.0f", (double)n / done_s);
  row("peak RSS (VmHWM)", "%.1f MB", hwm);
  row("verified (N waiting, then N completed)", "%s", verified ? "yes" : "NO");

  jbuf *j = result_begin("w2", n);
  jnum(j, "park_s", park_s, 4);
  jnum(j, "signal_to_done_s", done_s, 4);
  jnum(j, "signal_calls_s", t_sub - t2, 4);
  jnum(j, "events_per_s", (double)n / done_s, 0);
  jnum(j, "peak_rss_mb", hwm, 1);
  if (n == 2000 && opt.durability == WF_DURABILITY_FULL)
    return result_end(j, "{\"signal_to_done_s\":0.2}", verified, done_s <= 0.2);
  if (n == 20000 && opt.durability == WF_DURABILITY_FULL)
    return result_end(j, "{\"signal_to_done_s\":2.0}", verified, done_s <= 2.0);
  return result_end(j, NULL, verified, -1);
}

/* ---- park: N parked instances, a restarted host --------------------------------------- */

static void park_id(char *out, size_t n, long long k) { snprintf(out, n, "park-%08lld", k); }

static int phase_park_setup(long long n) {
  char db[4200];
  snprintf(db, sizeof db, "%s/park.db", opt.dir);
  wf_host *h = open_host(db);
  drain(h);
  counter c = {0, 0};
  char id[64], input[64];
  double t0 = mono(), worst = 0;
  for (long long k = 0; k < n;) {
    double tb = mono();
    long long end = k + opt.batch < n ? k + opt.batch : n;
    for (; k < end; k++) {
      park_id(id, sizeof id, k);
      snprintf(input, sizeof input, "{\"n\":%lld}", k);
      if (wf_start(h, "bench_wait", input, id, NULL, on_done, &c) != WF_OK) die("start: %s", wf_errmsg(h));
    }
    double tsub = mono();
    drain(h);
    if (mono() - tb > worst) worst = mono() - tb;
    if (getenv("WFBENCH_VERBOSE"))
      fprintf(stderr, "  batch to %lld: start calls %.3f s, drain %.3f s, RSS %.1f MB\n", k, tsub - tb, mono() - tsub,
              proc_mb("VmRSS:"));
    if (c.ok != (size_t)k) die("park setup: %zu of %lld starts acknowledged", c.ok, k);
  }
  double t1 = mono();
  double hwm = proc_mb("VmHWM:"), rss = proc_mb("VmRSS:");
  double tc = mono();
  wf_host_close(h);
  double close_s = mono() - tc;
  printf("  setup: %lld instances parked in %.1f s (%.0f/s, batches of %d, slowest batch %.2f s), host RSS %.1f MB (peak %.1f), close %.2f s\n",
         n, t1 - t0, (double)n / (t1 - t0), opt.batch, worst, rss, hwm, close_s);
  kv_write("setup", "setup_s %.4f", t1 - t0);
  kv_write("setup", "setup_peak_rss_mb %.2f", hwm);
  kv_write("setup", "setup_rss_mb %.2f", rss);
  kv_write("setup", "close_s %.4f", close_s);
  return 0;
}

#define PARK_EXTRA 20 /* further random resumes, for a median */

static uint64_t rng_state;
static uint64_t rnd(void) { /* splitmix64 */
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static int phase_park_restart(long long n) {
  char db[4200], id[64], data[64];
  snprintf(db, sizeof db, "%s/park.db", opt.dir);
  double t0 = mono();
  wf_host *h = open_host(db);
  double t_open = mono();
  if (wf_host_start(h) != WF_OK) die("start: %s", wf_errmsg(h));
  drain(h);
  double t_ready = mono();
  double rss_ready = proc_mb("VmRSS:");

  rng_state = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
  long long picked[1 + PARK_EXTRA];
  double lat[1 + PARK_EXTRA];
  int verified = 1;
  counter c = {0, 0};
  for (int r = 0; r < 1 + PARK_EXTRA; r++) {
    long long k;
    int dup;
    do {
      k = (long long)(rnd() % (uint64_t)n);
      dup = 0;
      for (int q = 0; q < r; q++) dup |= picked[q] == k;
    } while (dup && n > 1 + PARK_EXTRA);
    picked[r] = k;
    park_id(id, sizeof id, k);
    snprintf(data, sizeof data, "{\"k\":%lld}", k);
    double ts = mono();
    if (wf_signal(h, id, "go", data, on_done, &c) != WF_OK) die("signal %s: %s", id, wf_errmsg(h));
    drain(h);
    lat[r] = (mono() - ts) * 1e3;
  }
  double hwm = proc_mb("VmHWM:");

  for (int r = 0; r < 1 + PARK_EXTRA; r++) {
    wf_info *info;
    park_id(id, sizeof id, picked[r]);
    if (wf_get(h, id, &info) != WF_OK) {
      fail_check(&verified, "%s: %s", id, wf_errmsg(h));
      continue;
    }
    if (strcmp(info->status, "completed") || json_int(info->output_json, "go") != picked[r])
      fail_check(&verified, "%s is %s, output %s", id, info->status, info->output_json ? info->output_json : "-");
    wf_info_free(info);
  }
  size_t waiting = count_status(h, "waiting", "bench_wait");
  if (waiting != (size_t)(n - 1 - PARK_EXTRA))
    fail_check(&verified, "%zu instances waiting, expected %lld", waiting, n - 1 - PARK_EXTRA);
  wf_host_close(h);

  double first = lat[0];
  qsort(lat + 1, PARK_EXTRA, sizeof *lat, cmp_double);
  printf("  restart: open+load %.3f s, ready (open to first drain) %.3f s, RSS at ready %.1f MB\n",
         t_open - t0, t_ready - t0, rss_ready);
  printf("  resume one random instance (park-%08lld): %.3f ms; %d more: median %.3f ms, max %.3f ms\n",
         picked[0], first, PARK_EXTRA, lat[1 + PARK_EXTRA / 2], lat[PARK_EXTRA]);
  kv_write("restart", "open_s %.4f", t_open - t0);
  kv_write("restart", "ready_s %.4f", t_ready - t0);
  kv_write("restart", "ready_rss_mb %.2f", rss_ready);
  kv_write("restart", "peak_rss_mb %.2f", hwm);
  kv_write("restart", "resume_ms %.4f", first);
  kv_write("restart", "resume_median_ms %.4f", lat[1 + PARK_EXTRA / 2]);
  kv_write("restart", "resume_max_ms %.4f", lat[PARK_EXTRA]);
  kv_write("restart", "verified %d", verified);
  return verified ? 0 : 1;
}

static int bench_park(long long n) {
  if (n < 2 + PARK_EXTRA) die("park: N must be at least %d", 2 + PARK_EXTRA);
  const char *dir = make_tmpdir("park");
  char dirc[4096], db[4200], wal[4300];
  snprintf(dirc, sizeof dirc, "%s", dir);
  snprintf(db, sizeof db, "%s/park.db", dirc);
  snprintf(wal, sizeof wal, "%s-wal", db);
  printf("park  N=%lld  durability=%s  cache_size=default (10000)\n", n, durability_name());
  int rc = run_phase("park-setup", n, dirc);
  if (rc != 0) die("park setup failed (%d)", rc);
  long long dbsize = file_size(db), walsize = file_size(wal);
  /* The host closed cleanly, so the WAL was checkpointed into the database: what is left of it
   * is the file the host keeps reserved (16 MiB), not data. */
  printf("  database %.1f MB = %.0f bytes per parked instance (+ WAL file %.1f MB, reserved)\n",
         (double)dbsize / 1048576.0, (double)dbsize / (double)n, (double)walsize / 1048576.0);
  int rc2 = run_phase("park-restart", n, dirc);
  kvset s = kv_read(dirc, "setup"), r = kv_read(dirc, "restart");
  remove_tmpdir(dirc);
  int verified = rc2 == 0 && kv(&r, "verified") == 1;

  double rss = fmax(kv(&s, "setup_peak_rss_mb"), kv(&r, "peak_rss_mb"));
  row("host peak RSS (setup host holding N parked)", "%.1f MB", kv(&s, "setup_peak_rss_mb"));
  row("restarted host peak RSS", "%.1f MB", kv(&r, "peak_rss_mb"));
  row("restart to ready", "%.3f s", kv(&r, "ready_s"));
  row("resume one random evicted instance", "%.3f ms", kv(&r, "resume_ms"));
  row("verified (resumed completed, rest waiting)", "%s", verified ? "yes" : "NO");

  jbuf *j = result_begin("park", n);
  jnum(j, "setup_s", kv(&s, "setup_s"), 3);
  jnum(j, "setup_per_s", (double)n / kv(&s, "setup_s"), 0);
  jnum(j, "setup_peak_rss_mb", kv(&s, "setup_peak_rss_mb"), 1);
  jnum(j, "db_mb", (double)dbsize / 1048576.0, 1);
  jnum(j, "wal_mb", (double)walsize / 1048576.0, 1);
  jnum(j, "db_bytes_per_instance", (double)dbsize / (double)n, 0);
  jnum(j, "ready_s", kv(&r, "ready_s"), 4);
  jnum(j, "ready_rss_mb", kv(&r, "ready_rss_mb"), 1);
  jnum(j, "restart_peak_rss_mb", kv(&r, "peak_rss_mb"), 1);
  jnum(j, "peak_rss_mb", rss, 1);
  jnum(j, "resume_ms", kv(&r, "resume_ms"), 3);
  jnum(j, "resume_median_ms", kv(&r, "resume_median_ms"), 3);
  jnum(j, "resume_max_ms", kv(&r, "resume_max_ms"), 3);
  if (n == 100000 && opt.durability == WF_DURABILITY_FULL)
    return result_end(j, "{\"peak_rss_mb\":150}", verified, rss <= 150);
  if (n == 1000000 && opt.durability == WF_DURABILITY_FULL)
    return result_end(j, "{\"peak_rss_mb\":300,\"ready_s\":2.0,\"resume_ms\":5.0}", verified,
                      rss <= 300 && kv(&r, "ready_s") <= 2.0 && kv(&r, "resume_ms") <= 5.0);
  return result_end(j, NULL, verified, -1);
}

/* ---- replay: rebuild an instance with a long history ---------------------------------- */

#define REPLAY_N 5 /* instances rebuilt after the restart, one at a time; the first is the figure */

static long long expected_sum(long long steps) { return steps * (steps + 1) / 2; }

static int check_loop_done(wf_host *h, const char *id, long long steps, long long k, int *verified) {
  wf_info *info;
  if (wf_get(h, id, &info) != WF_OK) {
    fail_check(verified, "%s: %s", id, wf_errmsg(h));
    return 0;
  }
  int ok = !strcmp(info->status, "completed") && json_int(info->output_json, "sum") == expected_sum(steps) &&
           json_int(info->output_json, "go") == k;
  if (!ok) fail_check(verified, "%s is %s, output %s", id, info->status, info->output_json ? info->output_json : "-");
  wf_info_free(info);
  return ok;
}

static int phase_replay_setup(long long steps) {
  char db[4200], id[64], input[64];
  snprintf(db, sizeof db, "%s/replay.db", opt.dir);
  wf_host *h = open_host(db);
  drain(h);
  counter c = {0, 0};
  snprintf(input, sizeof input, "{\"steps\":%lld}", steps);
  double t0 = mono();
  for (int i = 0; i <= REPLAY_N; i++) { /* replay-0..4 are rebuilt after the restart; replay-5 stays live */
    snprintf(id, sizeof id, "replay-%d", i);
    if (wf_start(h, "bench_loop", input, id, NULL, on_done, &c) != WF_OK) die("start: %s", wf_errmsg(h));
  }
  drain(h);
  double t1 = mono();
  int verified = 1;
  size_t waiting = count_status(h, "waiting", "bench_loop");
  if (waiting != REPLAY_N + 1) fail_check(&verified, "%zu of %d instances waiting after %lld steps", waiting, REPLAY_N + 1, steps);
  wf_history_entry *e;
  size_t nh = 0;
  if (wf_history(h, "replay-0", &e, &nh) == WF_OK) wf_history_free(e, nh);

  /* For comparison: the same signal to a live instance (its coroutine is in memory). */
  snprintf(id, sizeof id, "replay-%d", REPLAY_N);
  double ts = mono();
  if (wf_signal(h, id, "go", "{\"k\":99}", on_done, &c) != WF_OK) die("signal: %s", wf_errmsg(h));
  drain(h);
  double live_ms = (mono() - ts) * 1e3;
  check_loop_done(h, id, steps, 99, &verified);
  wf_host_close(h);
  printf("  setup: %d instances ran %lld echo steps each in %.2f s; history of each: %zu entries\n", REPLAY_N + 1,
         steps, t1 - t0, nh);
  kv_write("setup", "setup_s %.4f", t1 - t0);
  kv_write("setup", "history_entries %zu", nh);
  kv_write("setup", "live_ms %.4f", live_ms);
  kv_write("setup", "verified %d", verified);
  return verified ? 0 : 1;
}

static int phase_replay_restart(long long steps) {
  char db[4200], id[64], data[64];
  snprintf(db, sizeof db, "%s/replay.db", opt.dir);
  double t0 = mono();
  wf_host *h = open_host(db);
  if (wf_host_start(h) != WF_OK) die("start: %s", wf_errmsg(h));
  drain(h);
  double ready = mono() - t0;
  int verified = 1;
  counter c = {0, 0};
  double lat[REPLAY_N];
  for (int i = 0; i < REPLAY_N; i++) {
    snprintf(id, sizeof id, "replay-%d", i);
    snprintf(data, sizeof data, "{\"k\":%d}", i);
    double ts = mono();
    if (wf_signal(h, id, "go", data, on_done, &c) != WF_OK) die("signal: %s", wf_errmsg(h));
    drain(h);
    lat[i] = (mono() - ts) * 1e3;
  }
  for (int i = 0; i < REPLAY_N; i++) {
    snprintf(id, sizeof id, "replay-%d", i);
    check_loop_done(h, id, steps, i, &verified);
  }
  wf_host_close(h);
  double first = lat[0];
  qsort(lat, REPLAY_N, sizeof *lat, cmp_double);
  printf("  restart: ready in %.3f s; signal -> completed with a rebuild: first %.3f ms, median of %d %.3f ms\n",
         ready, first, REPLAY_N, lat[REPLAY_N / 2]);
  kv_write("restart", "ready_s %.4f", ready);
  kv_write("restart", "replay_ms %.4f", first);
  kv_write("restart", "replay_median_ms %.4f", lat[REPLAY_N / 2]);
  kv_write("restart", "verified %d", verified);
  return verified ? 0 : 1;
}

static int bench_replay(long long steps) {
  const char *dir = make_tmpdir("replay");
  char dirc[4096];
  snprintf(dirc, sizeof dirc, "%s", dir);
  printf("replay  steps=%lld  durability=%s\n", steps, durability_name());
  int rc1 = run_phase("replay-setup", steps, dirc);
  int rc2 = rc1 == 0 ? run_phase("replay-restart", steps, dirc) : 1;
  kvset s = kv_read(dirc, "setup"), r = kv_read(dirc, "restart");
  remove_tmpdir(dirc);
  int verified = rc1 == 0 && rc2 == 0 && kv(&s, "verified") == 1 && kv(&r, "verified") == 1;
  row("signal -> completed, rebuilt by replay", "%.3f ms", kv(&r, "replay_ms"));
  row("signal -> completed, live (no replay)", "%.3f ms", kv(&s, "live_ms"));
  row("verified (sum of steps, event data)", "%s", verified ? "yes" : "NO");

  jbuf *j = result_begin("replay", steps);
  jint(j, "history_entries", (long long)kv(&s, "history_entries"));
  jnum(j, "replay_ms", kv(&r, "replay_ms"), 3);
  jnum(j, "replay_median_ms", kv(&r, "replay_median_ms"), 3);
  jnum(j, "live_ms", kv(&s, "live_ms"), 3);
  jnum(j, "restart_ready_s", kv(&r, "ready_s"), 4);
  jnum(j, "setup_s", kv(&s, "setup_s"), 3);
  if (steps == 1000 && opt.durability == WF_DURABILITY_FULL)
    return result_end(j, "{\"replay_ms\":20}", verified, kv(&r, "replay_ms") <= 20);
  return result_end(j, NULL, verified, -1);
}

/* ---- main ----------------------------------------------------------------------------- */

static void usage(void) {
  fprintf(stderr,
          "usage: wfbench [--workflows DIR] [--tmp DIR] [--durability full|normal] [--batch N]\n"
          "               [--warmup N] [--keep] w1|seq|w2|park|replay N\n");
  exit(2);
}

int main(int argc, char **argv) {
  prog = argv[0];
  setvbuf(stdout, NULL, _IOLBF, 0);
  int i = 1;
  for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
    const char *o = argv[i];
    if (!strcmp(o, "--keep")) { opt.keep = 1; continue; }
    if (i + 1 >= argc) usage();
    const char *v = argv[++i];
    if (!strcmp(o, "--workflows")) opt.wfdir = v;
    else if (!strcmp(o, "--tmp")) opt.tmpbase = v;
    else if (!strcmp(o, "--dir")) opt.dir = v;
    else if (!strcmp(o, "--batch")) opt.batch = atoi(v);
    else if (!strcmp(o, "--warmup")) opt.warmup = atoi(v);
    else if (!strcmp(o, "--durability")) {
      if (!strcmp(v, "full")) opt.durability = WF_DURABILITY_FULL;
      else if (!strcmp(v, "normal")) opt.durability = WF_DURABILITY_NORMAL;
      else usage();
    } else usage();
  }
  if (argc - i != 2) usage();
  const char *w = argv[i];
  long long n = atoll(argv[i + 1]);
  if (n < 1 || opt.batch < 1 || opt.warmup < 0) usage();
  if (!strcmp(w, "w1")) return bench_w1(n);
  if (!strcmp(w, "seq")) return bench_seq(n);
  if (!strcmp(w, "w2")) return bench_w2(n);
  if (!strcmp(w, "park")) return bench_park(n);
  if (!strcmp(w, "replay")) return bench_replay(n);
  if (!opt.dir) usage();
  if (!strcmp(w, "park-setup")) return phase_park_setup(n);
  if (!strcmp(w, "park-restart")) return phase_park_restart(n);
  if (!strcmp(w, "replay-setup")) return phase_replay_setup(n);
  if (!strcmp(w, "replay-restart")) return phase_replay_restart(n);
  usage();
}
