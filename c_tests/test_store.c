/*
 * test_store.c — tests of the SQLite store through wf_store.h: opening and migrating,
 * refusing foreign or newer files, the instance, history, inbox, timer, request and catalog
 * tables, the host lock, transactions (including a commit that fails on a full disk) and
 * change detection between connections.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "test_util.h"
#include "wf_store.h"

/* Opens a fresh database in a new temporary directory; its path is written to path. */
static wf_store *open_fresh(char *path, size_t len) {
  snprintf(path, len, "%s/wf.db", test_tmpdir());
  wf_store *st = NULL;
  int rc = wf_store_open(path, WF_DURABILITY_FULL, &st);
  CHECK(rc == WF_OK);
  if (rc != WF_OK) {
    fprintf(stderr, "open %s: %s\n", path, wf_store_errmsg(st));
    exit(1);
  }
  return st;
}

static wf_instance_rec rec(const char *id, const char *workflow, const char *status,
                           int64_t created_at) {
  wf_instance_rec r = {.id = id,
                       .workflow = workflow,
                       .version = 1,
                       .status = status,
                       .input = "{\"n\":1}",
                       .data = "{}",
                       .created_at = created_at,
                       .updated_at = created_at};
  return r;
}

static int insert(wf_store *st, const char *id, const char *workflow, const char *status,
                  int64_t created_at) {
  wf_instance_rec r = rec(id, workflow, status, created_at);
  int created = -1;
  int rc = wf_store_insert_instance(st, &r, &created);
  return rc == WF_OK ? created : -1;
}

static int has(const char *haystack, const char *needle) {
  return haystack && strstr(haystack, needle) != NULL;
}

/* Runs one SQL statement on a separate raw connection and copies the first column of the
 * first row into out as text ("" if no row). Returns 0, or -1 on failure. */
static int raw_sql(const char *path, const char *sql, char out[64]) {
  sqlite3 *db = NULL;
  sqlite3_stmt *s;
  int ok = -1;
  out[0] = '\0';
  if (sqlite3_open(path, &db) == SQLITE_OK &&
      sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK) {
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && sqlite3_column_text(s, 0))
      snprintf(out, 64, "%s", (const char *)sqlite3_column_text(s, 0));
    ok = rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(s);
  }
  sqlite3_close(db);
  return ok;
}

static void test_open_and_reopen(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(insert(st, "a", "wf", "pending", 10) == 1);
  wf_store_close(st);
  char out[64];
  CHECK(raw_sql(path, "PRAGMA user_version", out) == 0 && atoi(out) == WF_STORE_SCHEMA_VERSION);
  CHECK(raw_sql(path, "PRAGMA journal_mode", out) == 0 && strcmp(out, "wal") == 0);
  CHECK(raw_sql(path, "SELECT count(*) FROM sqlite_schema WHERE type = 'table'", out) == 0 &&
        atoi(out) == 11); /* ten tables and sqlite_sequence */

  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_OK);
  wf_info *info = NULL;
  CHECK(wf_store_get_instance(st, "a", &info) == WF_OK);
  CHECK(info && strcmp(info->workflow, "wf") == 0 && info->created_at == 10);
  wf_info_free(info);
  wf_store_close(st);
  wf_store_close(NULL);
}

/* Drops the columns cols (NULL-terminated) of table, as a migration added them. */
static void drop_columns(const char *path, const char *table, const char *const *cols) {
  char out[64], sql[128];
  for (int i = 0; cols[i]; i++) {
    snprintf(sql, sizeof sql, "ALTER TABLE %s DROP COLUMN %s", table, cols[i]);
    CHECK(raw_sql(path, sql, out) == 0);
  }
}

/* Takes a fresh database back to schema 6: history rows of one entry each. */
static void drop_after_v6(const char *path) {
  drop_columns(path, "history", (const char *const[]){"seq2", "kind2", "name2", "data2", "at2", NULL});
}

/* Takes a fresh database back to schema 5: drops what versions 6 (children, runs) and 7 added. */
static void drop_after_v5(const char *path) {
  char out[64];
  drop_after_v6(path);
  CHECK(raw_sql(path, "DROP INDEX instances_parent", out) == 0);
  drop_columns(path, "instances", (const char *const[]){"parent_id", "parent_seq", "detached", "run", NULL});
}

/* Takes a fresh database back to schema 2: drops what versions 3 (schedules), 4 (catalog
 * sources, progress), 5 (the outbox), 6 and 7 added. */
static void drop_after_v2(const char *path) {
  char out[64];
  drop_after_v5(path);
  CHECK(raw_sql(path, "DROP TABLE schedules", out) == 0);
  CHECK(raw_sql(path, "ALTER TABLE catalog DROP COLUMN source", out) == 0);
  CHECK(raw_sql(path, "ALTER TABLE instances DROP COLUMN progress", out) == 0);
  CHECK(raw_sql(path, "ALTER TABLE instances DROP COLUMN progress_message", out) == 0);
  CHECK(raw_sql(path, "DROP TABLE outbox_deliveries", out) == 0);
  CHECK(raw_sql(path, "DROP TABLE outbox", out) == 0);
}

/* Schema versions 3 to 5 add schedules, the catalog's source files, the instances' progress and
 * the outbox. */
static void test_migration_from_v2(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(insert(st, "old", "wf", "waiting", 10) == 1);
  const char *const names[] = {"wf"};
  const int versions[] = {1};
  CHECK(wf_store_replace_catalog(st, names, versions, NULL, 1, 5) == WF_OK);
  wf_store_close(st);
  char out[64];
  drop_after_v2(path);
  CHECK(raw_sql(path, "PRAGMA user_version = 2", out) == 0);
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_OK);
  CHECK(raw_sql(path, "PRAGMA user_version", out) == 0 && atoi(out) == WF_STORE_SCHEMA_VERSION);
  wf_info *info = NULL;
  CHECK(wf_store_get_instance(st, "old", &info) == WF_OK && info && info->progress == -1);
  wf_info_free(info);
  int known = 0;
  CHECK(wf_store_catalog_has(st, "wf", &known) == WF_OK && known == 1);
  wf_instance_rec r = rec("old", "wf", "waiting", 10);
  r.has_progress = 1;
  r.progress = 40;
  r.progress_message = "copying";
  CHECK(wf_store_update_instance(st, &r) == WF_OK);
  CHECK(wf_store_get_instance(st, "old", &info) == WF_OK && info && info->progress == 40 &&
        info->progress_message && !strcmp(info->progress_message, "copying"));
  wf_info_free(info);
  wf_store_close(st);
}

/* A database written by the first schema is migrated in place, its data kept. */
static void test_migration_from_v1(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(insert(st, "old", "wf", "waiting", 10) == 1);
  wf_store_close(st);
  char out[64];
  CHECK(raw_sql(path, "DROP TABLE breakers", out) == 0);
  drop_after_v2(path);
  CHECK(raw_sql(path, "PRAGMA user_version = 1", out) == 0);
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_OK);
  CHECK(raw_sql(path, "PRAGMA user_version", out) == 0 && atoi(out) == WF_STORE_SCHEMA_VERSION);
  wf_info *info = NULL;
  CHECK(wf_store_get_instance(st, "old", &info) == WF_OK && info && !strcmp(info->status, "waiting"));
  CHECK(info && info->progress == -1 && info->progress_message == NULL);
  wf_info_free(info);
  /* The new table works: a breaker written, read back. */
  wf_breaker_rec r = {.action = "charge", .key = "eur", .state = "open", .calls = 20, .failures = 12,
                      .open_until = 5000, .updated_at = 4000};
  CHECK(wf_store_begin(st) == WF_OK && wf_store_put_breaker(st, &r) == WF_OK && wf_store_commit(st) == WF_OK);
  r.state = "isolated"; /* a second write replaces the row */
  CHECK(wf_store_begin(st) == WF_OK && wf_store_put_breaker(st, &r) == WF_OK && wf_store_commit(st) == WF_OK);
  CHECK(raw_sql(path, "SELECT count(*) || state || calls || failures FROM breakers", out) == 0 &&
        !strcmp(out, "1isolated2012"));
  wf_store_close(st);
}

static int64_t outbox_ord;
static char outbox_seen[512];
static void note_delivery(void *ud, const wf_delivery_rec *d) {
  (void)ud;
  outbox_ord = d->ord;
  size_t n = strlen(outbox_seen);
  snprintf(outbox_seen + n, sizeof outbox_seen - n, "%s/%s/%s/%d/%s;", d->msg_id, d->subscriber ? d->subscriber : "-",
           d->status, d->attempts, d->last_error ? d->last_error : "-");
}

/* A database of schema version 4 gets the outbox; messages, deliveries and their states. */
static void test_outbox_store(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  wf_store_close(st);
  char out[64];
  drop_after_v5(path);
  CHECK(raw_sql(path, "DROP TABLE outbox_deliveries", out) == 0);
  CHECK(raw_sql(path, "DROP TABLE outbox", out) == 0);
  CHECK(raw_sql(path, "PRAGMA user_version = 4", out) == 0);
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_OK);
  CHECK(raw_sql(path, "PRAGMA user_version", out) == 0 && atoi(out) == WF_STORE_SCHEMA_VERSION);

  const char *subs[] = {"a", "b"};
  wf_message_rec m = {.msg_id = "i:1:1", .instance_id = "i", .topic = "t.x", .payload = "{}", .at = 100};
  int64_t ord1 = 0, ord2 = 0, again = -1;
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_add_message(st, &m, subs, 2, &ord1) == WF_OK && ord1 > 0);
  CHECK(wf_store_add_message(st, &m, subs, 2, &again) == WF_OK && again == 0); /* the same id: kept once */
  m.msg_id = "i:1:2";
  CHECK(wf_store_add_message(st, &m, NULL, 0, &ord2) == WF_OK && ord2 > ord1);
  CHECK(wf_store_commit(st) == WF_OK);

  outbox_seen[0] = 0;
  CHECK(wf_store_list_deliveries(st, NULL, 0, note_delivery, NULL) == WF_OK);
  CHECK(!strcmp(outbox_seen, "i:1:1/a/pending/0/-;i:1:1/b/pending/0/-;i:1:2/-/unrouted/0/-;"));
  outbox_seen[0] = 0;
  CHECK(wf_store_each_unrouted(st, note_delivery, NULL) == WF_OK && !strcmp(outbox_seen, "i:1:2/-/unrouted/0/-;"));

  /* a: delivered; b: failed twice, then a dead letter; the unrouted one routed to a. */
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_set_delivery(st, "a", ord1, NULL, 1, 0, NULL, 200) == WF_OK);
  CHECK(wf_store_set_delivery(st, "b", ord1, "pending", 2, 900, "boom", 200) == WF_OK);
  CHECK(wf_store_route_message(st, ord2, subs, 1, 300) == WF_OK);
  CHECK(wf_store_commit(st) == WF_OK);
  outbox_seen[0] = 0;
  CHECK(wf_store_next_deliveries(st, "b", 0, 10, note_delivery, NULL) == WF_OK && !strcmp(outbox_seen, "i:1:1/b/pending/2/-;"));
  outbox_seen[0] = 0;
  CHECK(wf_store_next_deliveries(st, "a", ord1, 10, note_delivery, NULL) == WF_OK && !strcmp(outbox_seen, "i:1:2/a/pending/0/-;"));
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_set_delivery(st, "b", ord1, "failed", 3, 0, "boom again", 400) == WF_OK);
  CHECK(wf_store_commit(st) == WF_OK);
  outbox_seen[0] = 0;
  CHECK(wf_store_list_deliveries(st, "failed", 0, note_delivery, NULL) == WF_OK &&
        !strcmp(outbox_seen, "i:1:1/b/failed/3/boom again;"));
  outbox_seen[0] = 0;
  CHECK(wf_store_list_deliveries(st, "pending", 0, note_delivery, NULL) == WF_OK &&
        !strcmp(outbox_seen, "i:1:2/a/pending/0/-;"));

  /* Requeued: pending, no attempt counted. Delivered: the message goes with its last row. */
  int n = -1;
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_requeue_deliveries(st, "i:1:1", "a", 500, &n) == WF_OK && n == 0);
  CHECK(wf_store_requeue_deliveries(st, "i:1:1", NULL, 500, &n) == WF_OK && n == 1);
  CHECK(wf_store_commit(st) == WF_OK);
  outbox_seen[0] = 0;
  CHECK(wf_store_next_deliveries(st, "b", 0, 10, note_delivery, NULL) == WF_OK && !strcmp(outbox_seen, "i:1:1/b/pending/0/-;"));
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_set_delivery(st, "b", ord1, NULL, 1, 0, NULL, 600) == WF_OK);
  CHECK(wf_store_set_delivery(st, "a", ord2, NULL, 1, 0, NULL, 600) == WF_OK);
  CHECK(wf_store_commit(st) == WF_OK);
  CHECK(raw_sql(path, "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM outbox_deliveries)", out) == 0 &&
        !strcmp(out, "0"));
  wf_store_close(st);
}

static void test_newer_schema_refused(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  wf_store_close(st);
  char out[64];
  CHECK(raw_sql(path, "PRAGMA user_version = 99", out) == 0);

  st = NULL;
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_SCHEMA);
  const char *msg = wf_store_errmsg(st);
  CHECK(has(msg, "newer"));
  CHECK(has(msg, "schema version 99"));
  CHECK(has(msg, path));
  CHECK(has(msg, "upgrade wfhost"));
  wf_store_close(st);
  CHECK(raw_sql(path, "PRAGMA user_version", out) == 0 && strcmp(out, "99") == 0);
}

static void test_garbage_refused(void) {
  char path[256];
  snprintf(path, sizeof path, "%s/garbage.db", test_tmpdir());
  FILE *f = fopen(path, "w");
  CHECK(f != NULL);
  for (int i = 0; f && i < 200; i++) fputs("this is not a database at all\n", f);
  if (f) fclose(f);

  wf_store *st = NULL;
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_IO);
  CHECK(has(wf_store_errmsg(st), path));
  CHECK(has(wf_store_errmsg(st), "not a database"));
  wf_store_close(st);

  snprintf(path, sizeof path, "%s/no/such/dir/wf.db", test_tmpdir());
  st = NULL;
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_IO);
  CHECK(has(wf_store_errmsg(st), path));
  wf_store_close(st);
}

static void test_insert_is_idempotent(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(insert(st, "x", "wf", "pending", 5) == 1);
  wf_instance_rec r = rec("x", "other", "running", 99);
  r.input = "{\"n\":2}";
  int created = -1;
  CHECK(wf_store_insert_instance(st, &r, &created) == WF_OK);
  CHECK(created == 0);
  wf_info *info = NULL;
  CHECK(wf_store_get_instance(st, "x", &info) == WF_OK);
  CHECK(info && strcmp(info->workflow, "wf") == 0 && strcmp(info->status, "pending") == 0);
  CHECK(info && strcmp(info->input_json, "{\"n\":1}") == 0 && info->created_at == 5);
  wf_info_free(info);
  wf_store_close(st);
}

static void test_update_get_list(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(insert(st, "i1", "order", "pending", 100) == 1);
  CHECK(insert(st, "i2", "order", "waiting", 200) == 1);
  CHECK(insert(st, "i3", "invoice", "waiting", 300) == 1);
  CHECK(insert(st, "i4", "invoice", "completed", 300) == 1);

  wf_instance_rec r = rec("i2", "order", "completed", 200);
  r.state = "approved";
  r.data = "{\"k\":true}";
  r.output = "{\"ok\":1}";
  r.waiting_for = "event Approve";
  r.updated_at = 250;
  CHECK(wf_store_update_instance(st, &r) == WF_OK);
  wf_info *info = NULL;
  CHECK(wf_store_get_instance(st, "i2", &info) == WF_OK);
  CHECK(info && strcmp(info->status, "completed") == 0 && strcmp(info->state, "approved") == 0);
  CHECK(info && strcmp(info->data_json, "{\"k\":true}") == 0);
  CHECK(info && strcmp(info->output_json, "{\"ok\":1}") == 0 && info->error == NULL);
  CHECK(info && strcmp(info->waiting_for, "event Approve") == 0);
  CHECK(info && info->created_at == 200 && info->updated_at == 250 && info->version == 1);
  wf_info_free(info);

  r.id = "nobody";
  CHECK(wf_store_update_instance(st, &r) == WF_NOTFOUND);
  info = NULL;
  CHECK(wf_store_get_instance(st, "nobody", &info) == WF_NOTFOUND && info == NULL);

  wf_info *list = NULL;
  size_t n = 0;
  CHECK(wf_store_list_instances(st, NULL, NULL, 0, &list, &n) == WF_OK);
  CHECK(n == 4 && strcmp(list[0].id, "i4") == 0 && strcmp(list[1].id, "i3") == 0 &&
        strcmp(list[2].id, "i2") == 0 && strcmp(list[3].id, "i1") == 0);
  wf_info_list_free(list, n);
  CHECK(wf_store_list_instances(st, "completed", NULL, 0, &list, &n) == WF_OK);
  CHECK(n == 2 && strcmp(list[0].id, "i4") == 0 && strcmp(list[1].id, "i2") == 0);
  wf_info_list_free(list, n);
  CHECK(wf_store_list_instances(st, NULL, "order", 0, &list, &n) == WF_OK);
  CHECK(n == 2 && strcmp(list[0].id, "i2") == 0 && strcmp(list[1].id, "i1") == 0);
  wf_info_list_free(list, n);
  CHECK(wf_store_list_instances(st, "waiting", "invoice", 0, &list, &n) == WF_OK);
  CHECK(n == 1 && strcmp(list[0].id, "i3") == 0);
  wf_info_list_free(list, n);
  CHECK(wf_store_list_instances(st, NULL, NULL, 3, &list, &n) == WF_OK);
  CHECK(n == 3 && strcmp(list[2].id, "i2") == 0);
  wf_info_list_free(list, n);
  CHECK(wf_store_list_instances(st, "failed", NULL, 0, &list, &n) == WF_OK);
  CHECK(n == 0 && list == NULL);

  wf_store_close(st);
}

static void collect_id(void *ud, const char *id) {
  char *buf = ud;
  strcat(buf, id);
  strcat(buf, " ");
}

static void test_each_instance(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(insert(st, "c", "wf", "running", 20) == 1);
  CHECK(insert(st, "b", "wf", "pending", 20) == 1);
  CHECK(insert(st, "a", "wf", "waiting", 10) == 1);
  CHECK(insert(st, "d", "wf", "pending", 5) == 1);
  char seen[128] = "";
  const char *const statuses[] = {"pending", "running", NULL};
  CHECK(wf_store_each_instance(st, statuses, collect_id, seen) == WF_OK);
  CHECK(strcmp(seen, "d b c ") == 0);
  seen[0] = '\0';
  const char *const none[] = {NULL};
  CHECK(wf_store_each_instance(st, none, collect_id, seen) == WF_OK);
  CHECK(seen[0] == '\0');
  wf_store_close(st);
}

static void test_history(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_append_history(st, "h", 2, 1, "action", "charge", "{\"p\":1}", 20) == WF_OK);
  CHECK(wf_store_append_history(st, "h", 1, 0, "started", NULL, "{}", 10) == WF_OK);
  CHECK(wf_store_append_history(st, "h", 3, 1, "action_result", "charge", NULL, 30) == WF_OK);
  CHECK(wf_store_append_history(st, "other", 1, 0, "started", NULL, NULL, 5) == WF_OK);
  CHECK(wf_store_commit(st) == WF_OK);

  CHECK(wf_store_append_history(st, "h", 3, 9, "dup", NULL, NULL, 1) == WF_ERROR);
  CHECK(has(wf_store_errmsg(st), "append history: "));

  wf_history_entry *h = NULL;
  size_t n = 0;
  CHECK(wf_store_load_history(st, "h", &h, &n) == WF_OK);
  CHECK(n == 3);
  if (n == 3) {
    CHECK(h[0].pos == 1 && h[0].seq == 0 && strcmp(h[0].kind, "started") == 0 && !h[0].name);
    CHECK(h[1].pos == 2 && strcmp(h[1].name, "charge") == 0 &&
          strcmp(h[1].data_json, "{\"p\":1}") == 0 && h[1].at == 20);
    CHECK(h[2].pos == 3 && strcmp(h[2].kind, "action_result") == 0 && h[2].data_json == NULL);
  }
  wf_history_free(h, n);
  CHECK(wf_store_load_history(st, "nobody", &h, &n) == WF_OK && n == 0 && h == NULL);

  /* In a transaction, consecutive entries of one instance share a row; a read in the same
   * transaction sees every entry appended; a rollback leaves none. */
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_append_history(st, "p", 1, 0, "started", NULL, "{}", 1) == WF_OK);
  CHECK(wf_store_append_history(st, "p", 2, 1, "action", "a", "{\"x\":1}", 2) == WF_OK);
  CHECK(wf_store_append_history(st, "p", 3, 1, "action_result", "a", "{\"y\":2}", 3) == WF_OK);
  CHECK(wf_store_load_history(st, "p", &h, &n) == WF_OK && n == 3);
  wf_history_free(h, n);
  CHECK(wf_store_append_history(st, "p", 4, 2, "action", "b", NULL, 4) == WF_OK);
  CHECK(wf_store_append_history(st, "q", 1, 0, "started", NULL, "{}", 5) == WF_OK);
  CHECK(wf_store_append_history(st, "p", 5, 2, "action_result", "b", "7", 6) == WF_OK);
  CHECK(wf_store_commit(st) == WF_OK);
  CHECK(wf_store_load_history(st, "p", &h, &n) == WF_OK && n == 5);
  for (size_t i = 0; i < n; i++) CHECK(h[i].pos == (int64_t)i + 1 && h[i].at == (int64_t)(i < 4 ? i + 1 : 6));
  if (n == 5) {
    CHECK(!strcmp(h[1].kind, "action") && !strcmp(h[1].name, "a") && !strcmp(h[1].data_json, "{\"x\":1}") &&
          h[1].seq == 1);
    CHECK(!strcmp(h[2].kind, "action_result") && !strcmp(h[2].data_json, "{\"y\":2}") && h[2].seq == 1);
    CHECK(!strcmp(h[3].name, "b") && !h[3].data_json && h[4].seq == 2 && !strcmp(h[4].data_json, "7"));
  }
  wf_history_free(h, n);
  char out[64];
  wf_store_close(st);
  CHECK(raw_sql(path, "SELECT count(*) FROM history WHERE instance_id = 'p'", out) == 0 && !strcmp(out, "4"));
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_OK);

  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_append_history(st, "r", 1, 0, "started", NULL, "{}", 1) == WF_OK);
  wf_store_rollback(st);
  CHECK(wf_store_load_history(st, "r", &h, &n) == WF_OK && n == 0);

  /* A held entry that cannot be written fails the commit, which writes nothing. */
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_append_history(st, "s", 1, 0, "started", NULL, "{}", 1) == WF_OK);
  CHECK(wf_store_append_history(st, "h", 3, 9, "dup", NULL, NULL, 1) == WF_OK); /* held */
  CHECK(wf_store_commit(st) == WF_ERROR);
  CHECK(has(wf_store_errmsg(st), "append history: "));
  CHECK(wf_store_load_history(st, "s", &h, &n) == WF_OK && n == 0);
  wf_store_close(st);
}

/* Schema 7 lets a history row hold two entries; rows written before hold one each. */
static void test_migration_from_v6(void) {
  char path[256], out[64];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(wf_store_append_history(st, "old", 1, 0, "started", NULL, "{}", 1) == WF_OK);
  CHECK(wf_store_append_history(st, "old", 2, 1, "action", "a", "{}", 2) == WF_OK);
  wf_store_close(st);
  drop_after_v6(path);
  CHECK(raw_sql(path, "PRAGMA user_version = 6", out) == 0);
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_OK);
  CHECK(raw_sql(path, "PRAGMA user_version", out) == 0 && atoi(out) == WF_STORE_SCHEMA_VERSION);
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_append_history(st, "old", 3, 1, "action_result", "a", "1", 3) == WF_OK);
  CHECK(wf_store_append_history(st, "old", 4, 2, "action", "b", "{}", 4) == WF_OK);
  CHECK(wf_store_commit(st) == WF_OK);
  wf_history_entry *h = NULL;
  size_t n = 0;
  CHECK(wf_store_load_history(st, "old", &h, &n) == WF_OK && n == 4);
  for (size_t i = 0; i < n; i++) CHECK(h[i].pos == (int64_t)i + 1 && h[i].at == (int64_t)i + 1);
  wf_history_free(h, n);
  wf_store_close(st);
}

/* Records events as "id:instance:name:data " for comparison. */
static void collect_event(void *ud, const wf_event_rec *ev) {
  char *buf = ud;
  char one[128];
  snprintf(one, sizeof one, "%lld:%s:%s:%s ", (long long)ev->event_id, ev->instance_id, ev->name,
           ev->data ? ev->data : "NULL");
  strcat(buf, one);
}

static void test_inbox(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  int64_t e1 = 0, e2 = 0, e3 = 0;
  CHECK(wf_store_add_event(st, "a", "Submit", "{\"x\":1}", 1, &e1) == WF_OK);
  CHECK(wf_store_add_event(st, "b", "Other", NULL, 2, &e2) == WF_OK);
  CHECK(wf_store_add_event(st, "a", "Approve", "{}", 3, &e3) == WF_OK);
  CHECK(e1 == 1 && e2 == 2 && e3 == 3);

  char seen[512] = "";
  CHECK(wf_store_pending_events(st, "a", collect_event, seen) == WF_OK);
  CHECK(strcmp(seen, "1:a:Submit:{\"x\":1} 3:a:Approve:{} ") == 0);

  CHECK(wf_store_consume_event(st, e1, 7) == WF_OK);
  CHECK(wf_store_consume_event(st, e1, 8) == WF_NOTFOUND);
  CHECK(wf_store_consume_event(st, 999, 8) == WF_NOTFOUND);
  seen[0] = '\0';
  CHECK(wf_store_pending_events(st, "a", collect_event, seen) == WF_OK);
  CHECK(strcmp(seen, "3:a:Approve:{} ") == 0);

  seen[0] = '\0';
  CHECK(wf_store_events_after(st, 0, collect_event, seen) == WF_OK);
  CHECK(strcmp(seen, "2:b:Other:NULL 3:a:Approve:{} ") == 0);
  seen[0] = '\0';
  CHECK(wf_store_events_after(st, e2, collect_event, seen) == WF_OK);
  CHECK(strcmp(seen, "3:a:Approve:{} ") == 0);
  seen[0] = '\0';
  CHECK(wf_store_pending_events(st, "nobody", collect_event, seen) == WF_OK && !seen[0]);

  wf_store_close(st);
}

static void collect_timer(void *ud, const char *id, int64_t seq, int64_t due) {
  char *buf = ud;
  char one[64];
  snprintf(one, sizeof one, "%s/%lld@%lld ", id, (long long)seq, (long long)due);
  strcat(buf, one);
}

static void test_timers(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(wf_store_add_timer(st, "x", 1, 300) == WF_OK);
  CHECK(wf_store_add_timer(st, "y", 2, 100) == WF_OK);
  CHECK(wf_store_add_timer(st, "x", 3, 200) == WF_OK);
  char seen[256] = "";
  CHECK(wf_store_each_timer(st, collect_timer, seen) == WF_OK);
  CHECK(strcmp(seen, "y/2@100 x/3@200 x/1@300 ") == 0);

  CHECK(wf_store_add_timer(st, "x", 1, 50) == WF_OK);
  CHECK(wf_store_delete_timer(st, "y", 2) == WF_OK);
  CHECK(wf_store_delete_timer(st, "y", 2) == WF_OK);
  seen[0] = '\0';
  CHECK(wf_store_each_timer(st, collect_timer, seen) == WF_OK);
  CHECK(strcmp(seen, "x/1@50 x/3@200 ") == 0);
  wf_store_close(st);
}

struct req_seen {
  wf_store *st;
  char buf[256];
  int add_one; /* the callback writes one request of its own, once */
};

static void collect_request(void *ud, int64_t req_id, const char *id, const char *kind) {
  struct req_seen *r = ud;
  char one[64];
  snprintf(one, sizeof one, "%lld:%s:%s ", (long long)req_id, id, kind);
  strcat(r->buf, one);
  if (r->add_one) {
    r->add_one = 0;
    CHECK(wf_store_add_request(r->st, "late", "cancel", 9) == WF_OK);
  }
}

static void test_requests(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(wf_store_add_request(st, "a", "cancel", 1) == WF_OK);
  CHECK(wf_store_add_request(st, "b", "retry", 2) == WF_OK);
  struct req_seen seen = {.st = st, .add_one = 1};
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_take_requests(st, collect_request, &seen) == WF_OK);
  CHECK(wf_store_commit(st) == WF_OK);
  CHECK(strcmp(seen.buf, "1:a:cancel 2:b:retry ") == 0);

  /* The request written during the walk was not handed out, so it is kept. */
  seen.buf[0] = '\0';
  CHECK(wf_store_take_requests(st, collect_request, &seen) == WF_OK);
  CHECK(strcmp(seen.buf, "3:late:cancel ") == 0);
  seen.buf[0] = '\0';
  CHECK(wf_store_take_requests(st, collect_request, &seen) == WF_OK);
  CHECK(seen.buf[0] == '\0');
  wf_store_close(st);
}

/* Appends "name@version:source:count " to the buffer ud. */
static void collect_version(void *ud, const char *name, int version, const char *source, int64_t count) {
  char *buf = ud;
  size_t len = strlen(buf);
  snprintf(buf + len, 256 - len, "%s@%d:%s:%lld ", name, version, source ? source : "-", (long long)count);
}

/* The versions unfinished instances run, with their counts; finished ones do not count. */
static void test_active_versions(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(insert(st, "a", "order", "waiting", 1) == 1);
  CHECK(insert(st, "b", "order", "suspended", 2) == 1);
  CHECK(insert(st, "c", "order", "completed", 3) == 1);
  CHECK(insert(st, "d", "invoice", "running", 4) == 1);
  wf_instance_rec r = rec("b", "order", "suspended", 2);
  r.version = 2;
  CHECK(wf_store_update_instance(st, &r) == WF_OK);
  char buf[256] = "";
  CHECK(wf_store_active_versions(st, collect_version, buf) == WF_OK);
  CHECK(!strcmp(buf, "invoice@1:-:1 order@1:-:1 order@2:-:1 "));
  wf_store_close(st);
}

static void test_catalog(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  int known = 9;
  CHECK(wf_store_catalog_has(st, "order", &known) == WF_OK && known == -1);
  const char *const names[] = {"order", "order", "invoice"};
  const int versions[] = {1, 2, 1};
  const char *const sources[] = {"w/order@1.lua", "w/order@2.lua", NULL};
  CHECK(wf_store_replace_catalog(st, names, versions, sources, 3, 100) == WF_OK);
  char seen_cat[256] = "";
  CHECK(wf_store_each_catalog(st, collect_version, seen_cat) == WF_OK);
  CHECK(!strcmp(seen_cat, "invoice@1:-:0 order@1:w/order@1.lua:0 order@2:w/order@2.lua:0 "));
  CHECK(wf_store_catalog_has(st, "order", &known) == WF_OK && known == 1);
  CHECK(wf_store_catalog_has(st, "invoice", &known) == WF_OK && known == 1);
  CHECK(wf_store_catalog_has(st, "refund", &known) == WF_OK && known == 0);

  const char *const fewer[] = {"refund"};
  const int one[] = {3};
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_replace_catalog(st, fewer, one, NULL, 1, 200) == WF_OK);
  CHECK(wf_store_commit(st) == WF_OK);
  CHECK(wf_store_catalog_has(st, "order", &known) == WF_OK && known == 0);
  CHECK(wf_store_catalog_has(st, "refund", &known) == WF_OK && known == 1);

  /* A failing entry leaves the previous catalog whole. */
  const char *const bad[] = {"ok", NULL};
  const int two[] = {1, 1};
  CHECK(wf_store_replace_catalog(st, bad, two, NULL, 2, 300) == WF_ERROR);
  CHECK(has(wf_store_errmsg(st), "replace catalog"));
  CHECK(wf_store_catalog_has(st, "refund", &known) == WF_OK && known == 1);

  CHECK(wf_store_replace_catalog(st, NULL, NULL, NULL, 0, 400) == WF_OK);
  CHECK(wf_store_catalog_has(st, "refund", &known) == WF_OK && known == -1);
  wf_store_close(st);
}

static void test_lock_host(void) {
  char path[256];
  wf_store *st1 = open_fresh(path, sizeof path);
  wf_store *st2 = NULL;
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st2) == WF_OK);
  CHECK(wf_store_lock_host(st1) == WF_OK);
  CHECK(wf_store_lock_host(st1) == WF_OK);
  CHECK(wf_store_lock_host(st2) == WF_BUSY);
  char expect[64];
  snprintf(expect, sizeof expect, "(pid %ld)", (long)getpid());
  CHECK(has(wf_store_errmsg(st2), "another wfhost host is running on"));
  CHECK(has(wf_store_errmsg(st2), path));
  CHECK(has(wf_store_errmsg(st2), expect));
  wf_store_close(st1);
  CHECK(wf_store_lock_host(st2) == WF_OK);
  wf_store_close(st2);
}

static void test_commit_and_rollback(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  wf_store *other = NULL;
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &other) == WF_OK);

  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(insert(st, "gone", "wf", "pending", 1) == 1);
  CHECK(wf_store_append_history(st, "gone", 1, 0, "started", NULL, NULL, 1) == WF_OK);
  wf_store_rollback(st);
  wf_info *info = NULL;
  CHECK(wf_store_get_instance(st, "gone", &info) == WF_NOTFOUND);
  wf_history_entry *h = NULL;
  size_t n = 9;
  CHECK(wf_store_load_history(st, "gone", &h, &n) == WF_OK && n == 0);
  wf_store_rollback(st); /* no transaction: harmless */

  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(insert(st, "kept", "wf", "pending", 1) == 1);
  CHECK(wf_store_get_instance(other, "kept", &info) == WF_NOTFOUND);
  CHECK(wf_store_commit(st) == WF_OK);
  CHECK(wf_store_get_instance(other, "kept", &info) == WF_OK);
  wf_info_free(info);
  wf_store_close(other);
  wf_store_close(st);
}

/* A commit that cannot write its WAL frames (the file size limit stands in for a full disk)
 * fails with WF_IO, leaves nothing behind, and the connection goes on working. */
static void test_commit_failure(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  size_t big_len = 1 << 20;
  char *big = malloc(big_len + 3);
  memset(big, 'x', big_len + 2);
  big[0] = big[big_len + 1] = '"';
  big[big_len + 2] = '\0';

  CHECK(wf_store_begin(st) == WF_OK);
  wf_instance_rec r = rec("big", "wf", "pending", 1);
  r.input = big;
  int created = 0;
  CHECK(wf_store_insert_instance(st, &r, &created) == WF_OK && created == 1);

  struct rlimit saved, small;
  getrlimit(RLIMIT_FSIZE, &saved);
  small = saved;
  small.rlim_cur = 256 * 1024;
  signal(SIGXFSZ, SIG_IGN);
  CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);
  int rc = wf_store_commit(st);
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, SIG_DFL);
  CHECK(rc == WF_IO);
  CHECK(has(wf_store_errmsg(st), "commit failed: "));
  free(big);

  wf_info *info = NULL;
  CHECK(wf_store_get_instance(st, "big", &info) == WF_NOTFOUND);
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(insert(st, "small", "wf", "pending", 2) == 1);
  CHECK(wf_store_commit(st) == WF_OK);
  wf_store_close(st);

  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_OK);
  CHECK(wf_store_get_instance(st, "small", &info) == WF_OK);
  wf_info_free(info);
  wf_store_close(st);
}

/* Writes fail in the middle of a transaction (the WAL cannot grow): once SQLite has given the
 * transaction up, every later write is refused too, so no part of the batch is committed on
 * its own; after the rollback the store holds nothing of it. */
static void test_failure_inside_transaction(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(insert(st, "before", "wf", "pending", 1) == 1);
  size_t big_len = 256 * 1024;
  char *big = malloc(big_len + 3);
  memset(big, 'x', big_len + 2);
  big[0] = big[big_len + 1] = '"';
  big[big_len + 2] = '\0';

  struct rlimit saved, small;
  getrlimit(RLIMIT_FSIZE, &saved);
  small = saved;
  small.rlim_cur = 512 * 1024;
  signal(SIGXFSZ, SIG_IGN);
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);
  int failed_at = -1;
  char id[32];
  for (int i = 0; i < 64 && failed_at < 0; i++) {
    snprintf(id, sizeof id, "big-%d", i);
    wf_instance_rec r = rec(id, "wf", "pending", 10 + i);
    r.input = big;
    int created = 0;
    if (wf_store_insert_instance(st, &r, &created) != WF_OK) failed_at = i;
  }
  CHECK(failed_at >= 0);
  /* A small write after the failure must not go through on its own. */
  int rc_after = wf_store_append_history(st, "before", 1, 0, "started", NULL, NULL, 1);
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, SIG_DFL);
  CHECK(rc_after != WF_OK);
  wf_store_rollback(st);
  free(big);

  wf_history_entry *h = NULL;
  size_t n = 0;
  CHECK(wf_store_load_history(st, "before", &h, &n) == WF_OK && n == 0);
  wf_history_free(h, n);
  wf_info *info = NULL;
  CHECK(wf_store_get_instance(st, "big-0", &info) == WF_NOTFOUND);
  CHECK(wf_store_begin(st) == WF_OK); /* the connection is usable again */
  CHECK(wf_store_append_history(st, "before", 1, 0, "started", NULL, NULL, 1) == WF_OK);
  CHECK(wf_store_commit(st) == WF_OK);
  wf_store_close(st);
}

static void test_changed(void) {
  char path[256];
  wf_store *st = open_fresh(path, sizeof path);
  wf_store *other = NULL;
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &other) == WF_OK);
  CHECK(wf_store_changed(st) == 0);

  CHECK(wf_store_begin(other) == WF_OK);
  CHECK(wf_store_add_request(other, "a", "cancel", 1) == WF_OK);
  CHECK(wf_store_commit(other) == WF_OK);
  CHECK(wf_store_changed(st) == 1);
  CHECK(wf_store_changed(st) == 0);

  /* A connection's own commits are not changes by another. */
  CHECK(wf_store_add_request(st, "b", "cancel", 2) == WF_OK);
  CHECK(wf_store_changed(st) == 0);
  CHECK(wf_store_changed(other) == 1);
  wf_store_close(other);
  wf_store_close(st);
}

static void test_durability_normal(void) {
  char path[256];
  snprintf(path, sizeof path, "%s/normal.db", test_tmpdir());
  wf_store *st = NULL;
  CHECK(wf_store_open(path, WF_DURABILITY_NORMAL, &st) == WF_OK);
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(insert(st, "n", "wf", "pending", 1) == 1);
  CHECK(wf_store_commit(st) == WF_OK);
  wf_store_close(st);
  st = NULL;
  CHECK(wf_store_open(path, (wf_durability)7, &st) == WF_INVALID);
  wf_store_close(st);
}

/* Several processes opening one fresh file at once all succeed: one migrates, the others
 * see the migrated schema once they get the write lock. */
static void test_concurrent_first_open(void) {
  char path[256];
  snprintf(path, sizeof path, "%s/race.db", test_tmpdir());
  enum { N = 4 };
  pid_t pids[N];
  for (int i = 0; i < N; i++) {
    pids[i] = fork();
    if (pids[i] == 0) {
      wf_store *st = NULL;
      char id[16];
      snprintf(id, sizeof id, "p%d", i);
      int rc = wf_store_open(path, WF_DURABILITY_FULL, &st);
      if (rc == WF_OK) rc = insert(st, id, "wf", "pending", i) == 1 ? WF_OK : WF_ERROR;
      if (rc != WF_OK) fprintf(stderr, "child %d: %s\n", i, wf_store_errmsg(st));
      wf_store_close(st);
      _exit(rc);
    }
  }
  for (int i = 0; i < N; i++) {
    int status = -1;
    CHECK(pids[i] > 0 && waitpid(pids[i], &status, 0) == pids[i]);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  wf_store *st = NULL;
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_OK);
  wf_info *list = NULL;
  size_t n = 0;
  CHECK(wf_store_list_instances(st, NULL, NULL, 0, &list, &n) == WF_OK && n == N);
  wf_info_list_free(list, n);
  wf_store_close(st);
}

/* Schedules: a definition rewritten keeps where the schedule stands (its next firing too,
 * unless the expression or zone changed); advancing adds to the counters; a database of
 * schema 2 gets the table. */
typedef struct sched_seen {
  int n;
  char id[64], cron[64], last_instance[64], tz[64];
  int64_t next_at, last_at, missed, overlapped, created_at;
} sched_seen;
static void see_schedule(void *ud, const wf_schedule_rec *r) {
  sched_seen *s = ud;
  s->n++;
  snprintf(s->id, sizeof s->id, "%s", r->id);
  snprintf(s->cron, sizeof s->cron, "%s", r->cron);
  snprintf(s->tz, sizeof s->tz, "%s", r->timezone ? r->timezone : "(utc)");
  snprintf(s->last_instance, sizeof s->last_instance, "%s", r->last_instance ? r->last_instance : "(none)");
  s->next_at = r->next_at;
  s->last_at = r->last_at;
  s->missed = r->missed;
  s->overlapped = r->overlapped;
  s->created_at = r->created_at;
}

static void test_schedules(void) {
  char path[256], out[64];
  wf_store *st = open_fresh(path, sizeof path);
  wf_store_close(st);
  drop_after_v2(path);
  CHECK(raw_sql(path, "PRAGMA user_version = 2", out) == 0);
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_OK);
  CHECK(raw_sql(path, "PRAGMA user_version", out) == 0 && atoi(out) == WF_STORE_SCHEMA_VERSION);
  wf_schedule_rec r = {.id = "nightly", .workflow = "report", .cron = "0 2 * * *", .timezone = NULL,
                       .input = "{}", .catch_up = "skip", .overlap = "skip", .origin = "operator",
                       .next_at = 1000, .updated_at = 10};
  CHECK(wf_store_put_schedule(st, &r) == WF_OK);
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(wf_store_advance_schedule(st, "nightly", 2000, 1000, "nightly@x", 2, 1, 20) == WF_OK);
  CHECK(wf_store_advance_schedule(st, "nightly", 3000, 0, NULL, 1, 0, 30) == WF_OK);
  CHECK(wf_store_advance_schedule(st, "gone", 3000, 0, NULL, 1, 0, 30) == WF_NOTFOUND);
  CHECK(wf_store_commit(st) == WF_OK);
  sched_seen s = {0};
  CHECK(wf_store_each_schedule(st, see_schedule, &s) == WF_OK);
  CHECK(s.n == 1 && s.next_at == 3000 && s.last_at == 1000 && !strcmp(s.last_instance, "nightly@x"));
  CHECK(s.missed == 3 && s.overlapped == 1 && s.created_at == 10);
  /* The same definition again: nothing moves. A new input: the next firing stays. */
  r.next_at = 9999;
  CHECK(wf_store_put_schedule(st, &r) == WF_OK);
  r.input = "{\"a\":1}";
  CHECK(wf_store_put_schedule(st, &r) == WF_OK);
  memset(&s, 0, sizeof s);
  CHECK(wf_store_each_schedule(st, see_schedule, &s) == WF_OK);
  CHECK(s.n == 1 && s.next_at == 3000 && s.missed == 3);
  /* Another zone: the next firing is the new one; the counters stay. */
  r.timezone = "Europe/Berlin";
  CHECK(wf_store_put_schedule(st, &r) == WF_OK);
  memset(&s, 0, sizeof s);
  CHECK(wf_store_each_schedule(st, see_schedule, &s) == WF_OK);
  CHECK(s.next_at == 9999 && !strcmp(s.tz, "Europe/Berlin") && s.missed == 3);
  int deleted = 0;
  CHECK(wf_store_delete_schedule(st, "nightly", &deleted) == WF_OK && deleted == 1);
  CHECK(wf_store_delete_schedule(st, "nightly", &deleted) == WF_OK && deleted == 0);
  memset(&s, 0, sizeof s);
  CHECK(wf_store_each_schedule(st, see_schedule, &s) == WF_OK && s.n == 0);
  wf_store_close(st);
}

/* Children and runs: a child's link to its parent, unlinking, the unfinished children, an
 * unconsumed event by name, a new run that clears the history and timers; a database of
 * schema 5 gets the columns. */
static char children_seen[256];
static void note_child(void *ud, const char *id, int detached) {
  (void)ud;
  size_t n = strlen(children_seen);
  snprintf(children_seen + n, sizeof children_seen - n, "%s%s;", id, detached ? "(d)" : "");
}

static void test_children_store(void) {
  char path[256], out[64];
  wf_store *st = open_fresh(path, sizeof path);
  CHECK(insert(st, "old", "wf", "waiting", 5) == 1);
  wf_store_close(st);
  drop_after_v5(path);
  CHECK(raw_sql(path, "PRAGMA user_version = 5", out) == 0);
  CHECK(wf_store_open(path, WF_DURABILITY_FULL, &st) == WF_OK);
  CHECK(raw_sql(path, "PRAGMA user_version", out) == 0 && atoi(out) == WF_STORE_SCHEMA_VERSION);
  wf_info *info = NULL;
  CHECK(wf_store_get_instance(st, "old", &info) == WF_OK && info && info->run == 1 && !info->parent_id);
  wf_info_free(info);

  CHECK(wf_store_begin(st) == WF_OK);
  const char *ids[] = {"p/1", "p/2", "p/3"};
  for (int i = 0; i < 3; i++) {
    wf_instance_rec r = rec(ids[i], "kid", i == 2 ? "completed" : "pending", 10 + i);
    r.parent_id = "p";
    r.parent_seq = i + 1;
    r.detached = i == 1;
    int made = 0;
    CHECK(wf_store_insert_instance(st, &r, &made) == WF_OK && made);
  }
  int64_t seq = -1;
  CHECK(wf_store_parent_seq(st, "p/2", &seq) == WF_OK && seq == 2);
  CHECK(wf_store_parent_seq(st, "old", &seq) == WF_OK && seq == 0);
  CHECK(wf_store_parent_seq(st, "absent", &seq) == WF_OK && seq == 0);
  children_seen[0] = 0;
  CHECK(wf_store_each_child(st, "p", note_child, NULL) == WF_OK);
  CHECK(!strcmp(children_seen, "p/1;p/2(d);")); /* p/3 has ended */
  CHECK(wf_store_unlink_children(st, "p", 2) == WF_OK);
  CHECK(wf_store_parent_seq(st, "p/2", &seq) == WF_OK && seq == 0);
  CHECK(wf_store_parent_seq(st, "p/1", &seq) == WF_OK && seq == 1);
  CHECK(wf_store_unlink_children(st, "p", 0) == WF_OK);
  CHECK(wf_store_parent_seq(st, "p/1", &seq) == WF_OK && seq == 0);
  CHECK(wf_store_get_instance(st, "p/1", &info) == WF_OK && info && info->parent_id &&
        !strcmp(info->parent_id, "p")); /* the lineage stays */
  wf_info_free(info);

  int has = -1;
  int64_t eid = 0;
  CHECK(wf_store_add_event(st, "old", "\x1f" "cancel", "null", 20, &eid) == WF_OK);
  CHECK(wf_store_has_event(st, "old", "\x1f" "cancel", &has) == WF_OK && has == 1);
  CHECK(wf_store_has_event(st, "old", "go", &has) == WF_OK && has == 0);
  CHECK(wf_store_consume_event(st, eid, 0) == WF_OK);
  CHECK(wf_store_has_event(st, "old", "\x1f" "cancel", &has) == WF_OK && has == 0);

  CHECK(wf_store_append_history(st, "old", 1, 0, "started", NULL, "{}", 1) == WF_OK);
  CHECK(wf_store_add_timer(st, "old", 1, 500) == WF_OK);
  CHECK(wf_store_new_run(st, "old", 2, "{\"n\":2}") == WF_OK);
  CHECK(wf_store_commit(st) == WF_OK);
  CHECK(wf_store_get_instance(st, "old", &info) == WF_OK && info && info->run == 2 &&
        !strcmp(info->input_json, "{\"n\":2}"));
  wf_info_free(info);
  wf_history_entry *h = NULL;
  size_t nh = 9;
  CHECK(wf_store_load_history(st, "old", &h, &nh) == WF_OK && nh == 0);
  wf_history_free(h, nh);
  CHECK(raw_sql(path, "SELECT count(*) FROM timers WHERE instance_id = 'old'", out) == 0 && atoi(out) == 0);
  wf_store_close(st);
}

static long long file_size(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

/* The host's store keeps its WAL at 16 MiB of allocated blocks, so that commits overwrite
 * instead of growing the file: a log several times the reserve's size written one commit at
 * a time, checkpointed as the engine does, never grows the file, and all of it is there after a
 * reopen. A store that cannot reserve (the file size limit stands in for a full disk) still
 * opens, with its WAL as it was. Not in durability NORMAL, which syncs at checkpoints only. */
static void test_wal_reserve(void) {
  char path[256], wal[300], out[64];
  wf_store *st = open_fresh(path, sizeof path);
  snprintf(wal, sizeof wal, "%s-wal", path);
  long long before = file_size(wal);
  CHECK(before >= 0 && before < (16 << 20));
  CHECK(wf_store_lock_host(st) == WF_OK);
  CHECK(file_size(wal) == (16 << 20));
  char *input = malloc(3 * 4096 + 3);
  memset(input, 'y', 3 * 4096 + 2);
  input[0] = input[3 * 4096 + 1] = '"';
  input[3 * 4096 + 2] = '\0';
  int ok = 1;
  for (int i = 0; i < 3000 && ok; i++) { /* about 5 frames each: 15,000 frames in all */
    char id[32];
    snprintf(id, sizeof id, "w%04d", i);
    wf_instance_rec r = rec(id, "wf", "pending", i);
    r.input = input;
    int created = 0;
    ok = wf_store_begin(st) == WF_OK && wf_store_insert_instance(st, &r, &created) == WF_OK && created &&
         wf_store_commit(st) == WF_OK && wf_store_checkpoint(st, 0, NULL) == WF_OK &&
         file_size(wal) == (16 << 20);
  }
  CHECK(ok);
  free(input);
  wf_store_close(st);
  CHECK(raw_sql(path, "SELECT count(*) FROM instances WHERE length(input) = 3 * 4096 + 2", out) == 0);
  CHECK(!strcmp(out, "3000"));

  st = open_fresh(path, sizeof path); /* a new directory */
  snprintf(wal, sizeof wal, "%s-wal", path);
  before = file_size(wal);
  struct rlimit saved, small;
  getrlimit(RLIMIT_FSIZE, &saved);
  small = saved;
  small.rlim_cur = 1 << 20;
  signal(SIGXFSZ, SIG_IGN);
  CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);
  CHECK(wf_store_lock_host(st) == WF_OK);
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, SIG_DFL);
  CHECK(file_size(wal) == before);
  CHECK(wf_store_begin(st) == WF_OK);
  CHECK(insert(st, "after", "wf", "pending", 1) == 1);
  CHECK(wf_store_commit(st) == WF_OK);
  wf_store_close(st);

  snprintf(path, sizeof path, "%s/normal.db", test_tmpdir());
  CHECK(wf_store_open(path, WF_DURABILITY_NORMAL, &st) == WF_OK);
  CHECK(wf_store_lock_host(st) == WF_OK);
  snprintf(wal, sizeof wal, "%s-wal", path);
  CHECK(file_size(wal) < (16 << 20));
  wf_store_close(st);
}

int main(void) {
  test_open_and_reopen();
  test_schedules();
  test_migration_from_v1();
  test_migration_from_v2();
  test_newer_schema_refused();
  test_outbox_store();
  test_children_store();
  test_garbage_refused();
  test_insert_is_idempotent();
  test_update_get_list();
  test_each_instance();
  test_history();
  test_migration_from_v6();
  test_inbox();
  test_timers();
  test_requests();
  test_catalog();
  test_active_versions();
  test_lock_host();
  test_wal_reserve();
  test_commit_and_rollback();
  test_commit_failure();
  test_failure_inside_transaction();
  test_changed();
  test_durability_normal();
  test_concurrent_first_open();
  TEST_MAIN_END();
}
