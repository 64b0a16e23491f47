/*
 * test_util.h — the small helper shared by the C tests in c_tests/: a CHECK macro that
 * reports and counts failures without stopping the test, fresh temporary directories, and
 * the summary line that ends main().
 *
 *   int main(void) {
 *     char dir[256];
 *     snprintf(dir, sizeof dir, "%s", test_tmpdir());
 *     CHECK(1 + 1 == 2);
 *     TEST_MAIN_END();
 *   }
 *
 * Directories made by test_tmpdir() are removed by TEST_MAIN_END() when every check passed,
 * and kept (for a look) when one failed.
 */
#ifndef WF_TEST_UTIL_H
#define WF_TEST_UTIL_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wfhost.h"

static int test_checks __attribute__((unused));
static int test_failures __attribute__((unused));

/* Checks cond; on failure prints file:line and the expression, and counts the failure. */
#define CHECK(cond)                                                            \
  do {                                                                         \
    test_checks++;                                                             \
    if (!(cond)) {                                                             \
      test_failures++;                                                         \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                          \
  } while (0)

#define TEST_MAX_TMPDIRS 64
static char test_tmpdirs[TEST_MAX_TMPDIRS][32] __attribute__((unused));
static int test_ntmpdirs __attribute__((unused));

/* Makes a fresh directory under /tmp and returns its path. The string stays valid until the
 * program ends; exits the test if no directory can be made. */
static inline const char *test_tmpdir(void) {
  if (test_ntmpdirs == TEST_MAX_TMPDIRS) {
    fprintf(stderr, "test_tmpdir: more than %d directories\n", TEST_MAX_TMPDIRS);
    exit(2);
  }
  char *dir = test_tmpdirs[test_ntmpdirs];
  strcpy(dir, "/tmp/wftest.XXXXXX");
  if (!mkdtemp(dir)) {
    perror("test_tmpdir: mkdtemp");
    exit(2);
  }
  test_ntmpdirs++;
  return dir;
}

static inline int test_rm_entry(const char *path, const struct stat *sb, int flag,
                                struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

static inline void test_cleanup_tmpdirs(void) {
  for (int i = 0; i < test_ntmpdirs; i++)
    nftw(test_tmpdirs[i], test_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Ends main(): prints "N checks, N failed" and returns 1 if any check failed, else 0. */
#define TEST_MAIN_END()                                                  \
  do {                                                                   \
    printf("%d checks, %d failed\n", test_checks, test_failures);        \
    if (test_failures == 0) test_cleanup_tmpdirs();                      \
    return test_failures ? 1 : 0;                                        \
  } while (0)

/* Writes src to dir/name (a workflow file for a test); exits on failure. */
static inline void test_write_file(const char *dir, const char *name, const char *src) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f || fputs(src, f) < 0 || fclose(f) != 0) {
    perror(path);
    exit(2);
  }
}

/* Where the log in db's WAL ends: the offset of the first frame whose header is zeros (the host
 * reserves its WAL with zeros past the log, so a full disk is simulated by a file size limit
 * at this offset, not at the file's size). For a WAL not yet restarted, as in a test. */
static inline long long test_wal_log_end(const char *db) {
  char path[512];
  snprintf(path, sizeof path, "%s-wal", db);
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  long long off = 32;
  unsigned char hdr[24];
  while (fseek(f, off, SEEK_SET) == 0 && fread(hdr, 1, sizeof hdr, f) == sizeof hdr &&
         (hdr[0] | hdr[1] | hdr[2] | hdr[3]))
    off += 24 + 4096;
  fclose(f);
  return off;
}

/* Opens a host on db with cfg and loads the workflows of dir, reporting failures as checks. */
static inline wf_host *test_open_host(const char *db, const wf_config *cfg, const char *dir) {
  wf_host *h;
  int rc = wf_host_open(db, cfg, &h);
  if (rc != WF_OK) fprintf(stderr, "open: %s\n", wf_errmsg(h));
  CHECK(rc == WF_OK);
  rc = wf_load_dir(h, dir);
  if (rc != WF_OK) fprintf(stderr, "load: %s\n", wf_errmsg(h));
  CHECK(rc == WF_OK);
  return h;
}

/* An instance's status, or "absent" (a static buffer: valid until the next call). */
static inline const char *test_status_of(wf_host *h, const char *id) {
  static char buf[64];
  wf_info *i;
  if (wf_get(h, id, &i) != WF_OK) return "absent";
  snprintf(buf, sizeof buf, "%s", i->status);
  wf_info_free(i);
  return buf;
}

/* Starts an instance, reporting a failure as a check. */
static inline void test_start(wf_host *h, const char *wf, const char *input, const char *id) {
  int rc = wf_start(h, wf, input, id, NULL, NULL, NULL);
  if (rc != WF_OK) fprintf(stderr, "start %s: %s\n", wf, wf_errmsg(h));
  CHECK(rc == WF_OK);
}

/* The committed row of an instance; never NULL (a row with status "absent" if there is none,
 * which fails a check). Free it with wf_info_free(). */
static inline wf_info *test_info_of(wf_host *h, const char *id) {
  wf_info *i = NULL;
  if (wf_get(h, id, &i) != WF_OK) {
    fprintf(stderr, "  no instance %s: %s\n", id, wf_errmsg(h));
    CHECK(0);
    i = calloc(1, sizeof *i);
    if (!i) abort();
    i->status = strdup("absent");
  }
  return i;
}

/* How many history entries of the instance have this kind (and name, unless NULL); -1 if
 * its history cannot be read. */
static inline int test_count_history(wf_host *h, const char *id, const char *kind, const char *name) {
  wf_history_entry *e;
  size_t n;
  int found = 0;
  if (wf_history(h, id, &e, &n) != WF_OK) return -1;
  for (size_t i = 0; i < n; i++)
    if (!strcmp(e[i].kind, kind) && (!name || (e[i].name && !strcmp(e[i].name, name)))) found++;
  wf_history_free(e, n);
  return found;
}

#endif /* WF_TEST_UTIL_H */
