/*
 * wf_store_sqlite.c — the SQLite implementation of the store interface (wf_store.h).
 *
 * One wf_store is one SQLite connection in WAL mode. The host holds one and writes through
 * it; client processes (the `wfhost` command) hold their own and write requests, so every
 * connection waits up to ten seconds for another process's write lock instead of failing.
 *
 * Every statement is prepared once at open and reset (with its bindings cleared) before the
 * function that ran it returns, so a statement never holds a read snapshot or a lock between
 * calls. Functions that call back into the engine first copy their result rows and reset
 * the statement, so a callback may call any store function, including the one running.
 *
 * Strings returned in wf_info and wf_history_entry are each malloc'd (or NULL) and arrays
 * are malloc'd, so that wf_info_free() and friends can free them field by field.
 */
#include "wf_store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <sqlite3.h>

/* Schema migrations: migrations[i] takes a database from user_version i to i + 1. A shipped
 * migration is never edited; a change to the schema is a new entry at the end. */
static const char *const migrations[] = {
    /* 1: everything. Instances keep rowids because their JSON columns can be large; the
     * tables of small rows are WITHOUT ROWID, one b-tree each, clustered by instance. The
     * inbox index holds only unconsumed events, which is all a wait ever looks up. */
    "CREATE TABLE instances (id TEXT NOT NULL PRIMARY KEY, workflow TEXT NOT NULL,"
    "  version INTEGER NOT NULL, status TEXT NOT NULL, state TEXT, input TEXT NOT NULL,"
    "  data TEXT NOT NULL, output TEXT, error TEXT, waiting_for TEXT,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE INDEX instances_status ON instances (status, created_at, id);"
    "CREATE INDEX instances_created ON instances (created_at, id);"
    "CREATE INDEX instances_workflow ON instances (workflow, created_at, id);"
    "CREATE TABLE history (instance_id TEXT NOT NULL, pos INTEGER NOT NULL,"
    "  seq INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT, data TEXT, at INTEGER NOT NULL,"
    "  PRIMARY KEY (instance_id, pos)) WITHOUT ROWID;"
    "CREATE TABLE inbox (event_id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  instance_id TEXT NOT NULL, name TEXT NOT NULL, data TEXT, at INTEGER NOT NULL,"
    "  consumed_seq INTEGER);"
    "CREATE INDEX inbox_pending ON inbox (instance_id, event_id) WHERE consumed_seq IS NULL;"
    "CREATE TABLE timers (instance_id TEXT NOT NULL, seq INTEGER NOT NULL,"
    "  due INTEGER NOT NULL, PRIMARY KEY (instance_id, seq)) WITHOUT ROWID;"
    "CREATE INDEX timers_due ON timers (due);"
    "CREATE TABLE requests (req_id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  instance_id TEXT NOT NULL, kind TEXT NOT NULL, at INTEGER NOT NULL);"
    "CREATE TABLE catalog (name TEXT NOT NULL, version INTEGER NOT NULL, at INTEGER NOT NULL,"
    "  PRIMARY KEY (name, version)) WITHOUT ROWID;",
    /* 2: circuit breakers, as the host last wrote them (for clients; restored at start). */
    "CREATE TABLE breakers (action TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL,"
    "  calls INTEGER NOT NULL, failures INTEGER NOT NULL, open_until INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL, PRIMARY KEY (action, key)) WITHOUT ROWID;",
    /* 3: schedules (wf_sched.c): what to start when, and where each one stands. next_at is
     * the durable next firing time, advanced in the batch that starts (or skips) a firing. */
    "CREATE TABLE schedules (id TEXT NOT NULL PRIMARY KEY, workflow TEXT NOT NULL,"
    "  cron TEXT NOT NULL, timezone TEXT, input TEXT NOT NULL, catch_up TEXT NOT NULL,"
    "  overlap TEXT NOT NULL, origin TEXT NOT NULL, next_at INTEGER NOT NULL, last_at INTEGER,"
    "  last_instance TEXT, missed INTEGER NOT NULL, overlapped INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);",
    /* 4: versioning and progress. The file each catalogued workflow version was loaded from;
     * an instance's progress (ctx:progress): a percent, NULL until set, and its message. */
    "ALTER TABLE catalog ADD COLUMN source TEXT;"
    "ALTER TABLE instances ADD COLUMN progress REAL;"
    "ALTER TABLE instances ADD COLUMN progress_message TEXT;",
    /* 5: the transactional outbox. A message is written in the batch of the step that emitted
     * it; ord (never reused) is the emit order. One delivery row per subscriber the message
     * is routed to; a message no subscriber matched yet stays unrouted (routed = 0). A
     * delivered message's row goes; a failed (dead-letter) one stays until retried. */
    "CREATE TABLE outbox (ord INTEGER PRIMARY KEY AUTOINCREMENT, msg_id TEXT NOT NULL UNIQUE,"
    "  instance_id TEXT NOT NULL, topic TEXT NOT NULL, payload TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL, routed INTEGER NOT NULL);"
    "CREATE INDEX outbox_unrouted ON outbox (ord) WHERE routed = 0;"
    "CREATE TABLE outbox_deliveries (subscriber TEXT NOT NULL, ord INTEGER NOT NULL,"
    "  status TEXT NOT NULL, attempts INTEGER NOT NULL, next_at INTEGER NOT NULL, last_error TEXT,"
    "  updated_at INTEGER NOT NULL, PRIMARY KEY (subscriber, ord)) WITHOUT ROWID;"
    "CREATE INDEX outbox_deliveries_ord ON outbox_deliveries (ord);",
    /* 6: child workflows and continue-as-new. A child's parent, the parent's command that
     * started it (0 once the parent no longer waits for it) and whether it outlives the
     * parent; the run of an instance (1, then one more at each ctx:continue_as_new). */
    "ALTER TABLE instances ADD COLUMN parent_id TEXT;"
    "ALTER TABLE instances ADD COLUMN parent_seq INTEGER;"
    "ALTER TABLE instances ADD COLUMN detached INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE instances ADD COLUMN run INTEGER NOT NULL DEFAULT 1;"
    "CREATE INDEX instances_parent ON instances (parent_id) WHERE parent_id IS NOT NULL;",
    /* 7: a history row may hold two consecutive entries, pos and pos + 1 (the columns ending
     * in 2; kind2 NULL: one entry), as a step's outcome and its next command usually are:
     * one B-tree insert where there were two. */
    "ALTER TABLE history ADD COLUMN seq2 INTEGER;"
    "ALTER TABLE history ADD COLUMN kind2 TEXT;"
    "ALTER TABLE history ADD COLUMN name2 TEXT;"
    "ALTER TABLE history ADD COLUMN data2 TEXT;"
    "ALTER TABLE history ADD COLUMN at2 INTEGER;",
};

_Static_assert(sizeof migrations / sizeof migrations[0] == WF_STORE_SCHEMA_VERSION,
               "one migration per schema version");

/* The statements, prepared once at open. The four list variants are indexed by
 * S_LIST_ALL + (status filter ? 1 : 0) + (workflow filter ? 2 : 0). */
enum {
  S_BEGIN, S_COMMIT, S_ROLLBACK, S_DATA_VERSION,
  S_INSERT_INSTANCE, S_HAS_INSTANCE, S_UPDATE_INSTANCE, S_GET_INSTANCE,
  S_LIST_ALL, S_LIST_STATUS, S_LIST_WORKFLOW, S_LIST_BOTH, S_EACH_INSTANCE,
  S_APPEND_HISTORY, S_APPEND_HISTORY2, S_LOAD_HISTORY,
  S_ADD_EVENT, S_CONSUME_EVENT, S_PENDING_EVENTS, S_EVENTS_AFTER,
  S_ADD_TIMER, S_DELETE_TIMER, S_EACH_TIMER,
  S_ADD_REQUEST, S_LIST_REQUESTS, S_DELETE_REQUESTS,
  S_SAVEPOINT, S_RELEASE, S_ROLLBACK_TO, S_CLEAR_CATALOG, S_ADD_CATALOG, S_CATALOG_HAS,
  S_PUT_BREAKER, S_EACH_BREAKER,
  S_PUT_SCHEDULE, S_ADVANCE_SCHEDULE, S_DELETE_SCHEDULE, S_EACH_SCHEDULE,
  S_EACH_CATALOG, S_ACTIVE_VERSIONS,
  S_PARENT_SEQ, S_UNLINK_CHILDREN, S_EACH_CHILD, S_HAS_EVENT, S_NEW_RUN, S_CLEAR_HISTORY, S_CLEAR_TIMERS,
  S_ADD_MESSAGE, S_ADD_DELIVERY, S_EACH_UNROUTED, S_SET_ROUTED, S_NEXT_DELIVERIES,
  S_UPDATE_DELIVERY, S_DELETE_DELIVERY, S_DELETE_MESSAGE, S_LIST_DELIVERIES, S_REQUEUE,
  S_COUNT
};

/* The columns read into a wf_info, in the order info_fill() expects. */
#define INFO_COLS \
  "SELECT id, workflow, version, status, state, input, data, output, error, waiting_for, " \
  "created_at, updated_at, progress, progress_message, parent_id, run FROM instances "
#define NEWEST_FIRST " ORDER BY created_at DESC, id DESC LIMIT ?3"

/* each_instance takes at most this many statuses (there are seven). */
#define MAX_STATUSES 8

static const char *const stmt_sql[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_DATA_VERSION] = "PRAGMA data_version",
    [S_INSERT_INSTANCE] =
        "INSERT INTO instances (id, workflow, version, status, state, input, data, output, "
        "error, waiting_for, created_at, updated_at, parent_id, parent_seq, detached, progress, "
        "progress_message) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, "
        "?16, ?17) ON CONFLICT (id) DO NOTHING",
    [S_HAS_INSTANCE] = "SELECT 1 FROM instances WHERE id = ?1",
    [S_UPDATE_INSTANCE] = "UPDATE instances SET status = ?2, state = ?3, data = ?4, output = ?5, "
                          "error = ?6, waiting_for = ?7, updated_at = ?8, version = ?9, progress = ?10, "
                          "progress_message = ?11 WHERE id = ?1",
    [S_GET_INSTANCE] = INFO_COLS "WHERE id = ?1",
    [S_LIST_ALL] = INFO_COLS NEWEST_FIRST,
    [S_LIST_STATUS] = INFO_COLS "WHERE status = ?1" NEWEST_FIRST,
    [S_LIST_WORKFLOW] = INFO_COLS "WHERE workflow = ?2" NEWEST_FIRST,
    [S_LIST_BOTH] = INFO_COLS "WHERE status = ?1 AND workflow = ?2" NEWEST_FIRST,
    [S_EACH_INSTANCE] = "SELECT id FROM instances WHERE status IN (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
                        "ORDER BY created_at, id",
    [S_APPEND_HISTORY] = "INSERT INTO history (instance_id, pos, seq, kind, name, data, at) "
                         "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [S_APPEND_HISTORY2] = "INSERT INTO history (instance_id, pos, seq, kind, name, data, at, seq2, kind2, "
                          "name2, data2, at2) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    [S_LOAD_HISTORY] = "SELECT pos, seq, kind, name, data, at, seq2, kind2, name2, data2, at2 FROM history "
                       "WHERE instance_id = ?1 ORDER BY pos",
    [S_ADD_EVENT] = "INSERT INTO inbox (instance_id, name, data, at) VALUES (?1, ?2, ?3, ?4)",
    [S_CONSUME_EVENT] =
        "UPDATE inbox SET consumed_seq = ?2 WHERE event_id = ?1 AND consumed_seq IS NULL",
    [S_PENDING_EVENTS] = "SELECT event_id, instance_id, name, data, at FROM inbox "
                         "WHERE instance_id = ?1 AND consumed_seq IS NULL ORDER BY event_id",
    [S_EVENTS_AFTER] = "SELECT event_id, instance_id, name, data, at FROM inbox "
                       "WHERE event_id > ?1 AND consumed_seq IS NULL ORDER BY event_id",
    /* sqlite_sequence keeps the largest id ever assigned, even after its row is deleted. */
    [S_ADD_TIMER] = "INSERT INTO timers (instance_id, seq, due) VALUES (?1, ?2, ?3) "
                    "ON CONFLICT (instance_id, seq) DO UPDATE SET due = excluded.due",
    [S_DELETE_TIMER] = "DELETE FROM timers WHERE instance_id = ?1 AND seq = ?2",
    [S_EACH_TIMER] = "SELECT instance_id, seq, due FROM timers ORDER BY due, instance_id, seq",
    [S_ADD_REQUEST] = "INSERT INTO requests (instance_id, kind, at) VALUES (?1, ?2, ?3)",
    [S_LIST_REQUESTS] = "SELECT req_id, instance_id, kind FROM requests ORDER BY req_id",
    [S_DELETE_REQUESTS] = "DELETE FROM requests WHERE req_id <= ?1",
    [S_SAVEPOINT] = "SAVEPOINT wf_catalog",
    [S_RELEASE] = "RELEASE wf_catalog",
    [S_ROLLBACK_TO] = "ROLLBACK TO wf_catalog",
    [S_CLEAR_CATALOG] = "DELETE FROM catalog",
    [S_ADD_CATALOG] = "INSERT OR REPLACE INTO catalog (name, version, at, source) VALUES (?1, ?2, ?3, ?4)",
    [S_CATALOG_HAS] = "SELECT EXISTS (SELECT 1 FROM catalog WHERE name = ?1), "
                      "EXISTS (SELECT 1 FROM catalog)",
    [S_PUT_BREAKER] = "INSERT OR REPLACE INTO breakers (action, key, state, calls, failures, "
                      "open_until, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [S_EACH_BREAKER] = "SELECT action, key, state, calls, failures, open_until, updated_at "
                       "FROM breakers ORDER BY action, key",
    /* The definition of a schedule is replaced; where it stands is kept, and its next firing
     * too unless the expression or the zone changed. An unchanged definition writes nothing. */
    [S_PUT_SCHEDULE] =
        "INSERT INTO schedules (id, workflow, cron, timezone, input, catch_up, overlap, origin, next_at,"
        " missed, overlapped, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, 0, ?10, ?10)"
        " ON CONFLICT (id) DO UPDATE SET workflow = excluded.workflow, cron = excluded.cron,"
        " timezone = excluded.timezone, input = excluded.input, catch_up = excluded.catch_up,"
        " overlap = excluded.overlap, origin = excluded.origin, updated_at = excluded.updated_at,"
        " next_at = CASE WHEN cron = excluded.cron AND timezone IS excluded.timezone THEN next_at"
        " ELSE excluded.next_at END"
        " WHERE workflow IS NOT excluded.workflow OR cron IS NOT excluded.cron"
        " OR timezone IS NOT excluded.timezone OR input IS NOT excluded.input"
        " OR catch_up IS NOT excluded.catch_up OR overlap IS NOT excluded.overlap"
        " OR origin IS NOT excluded.origin",
    [S_ADVANCE_SCHEDULE] =
        "UPDATE schedules SET next_at = ?2, last_at = coalesce(?3, last_at),"
        " last_instance = coalesce(?4, last_instance), missed = missed + ?5,"
        " overlapped = overlapped + ?6, updated_at = ?7 WHERE id = ?1",
    [S_DELETE_SCHEDULE] = "DELETE FROM schedules WHERE id = ?1",
    [S_EACH_SCHEDULE] = "SELECT id, workflow, cron, timezone, input, catch_up, overlap, origin, next_at,"
                        " last_at, last_instance, missed, overlapped, created_at, updated_at"
                        " FROM schedules ORDER BY id",
    [S_EACH_CATALOG] = "SELECT name, version, source FROM catalog ORDER BY name, version",
    /* Unfinished instances: the statuses an instance leaves only by running again. */
    [S_ACTIVE_VERSIONS] = "SELECT workflow, version, count(*) FROM instances "
                          "WHERE status IN ('pending', 'running', 'waiting', 'suspended') "
                          "GROUP BY workflow, version ORDER BY workflow, version",
    [S_PARENT_SEQ] = "SELECT coalesce(max(parent_seq), 0) FROM instances WHERE id = ?1",
    [S_UNLINK_CHILDREN] = "UPDATE instances SET parent_seq = 0 WHERE parent_id = ?1 AND parent_seq > 0 "
                          "AND (?2 = 0 OR parent_seq = ?2)",
    [S_EACH_CHILD] = "SELECT id, detached FROM instances WHERE parent_id = ?1 "
                     "AND status NOT IN ('completed', 'failed', 'cancelled') ORDER BY created_at, id",
    [S_HAS_EVENT] = "SELECT count(*) FROM inbox WHERE instance_id = ?1 AND name = ?2 AND consumed_seq IS NULL",
    [S_NEW_RUN] = "UPDATE instances SET run = ?2, input = ?3 WHERE id = ?1",
    [S_CLEAR_HISTORY] = "DELETE FROM history WHERE instance_id = ?1",
    [S_CLEAR_TIMERS] = "DELETE FROM timers WHERE instance_id = ?1",
    [S_ADD_MESSAGE] = "INSERT INTO outbox (msg_id, instance_id, topic, payload, created_at, routed) "
                      "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (msg_id) DO NOTHING",
    [S_ADD_DELIVERY] = "INSERT INTO outbox_deliveries (subscriber, ord, status, attempts, next_at, updated_at) "
                       "VALUES (?1, ?2, 'pending', 0, ?3, ?3) ON CONFLICT (subscriber, ord) DO NOTHING",
    [S_EACH_UNROUTED] = "SELECT ord, msg_id, instance_id, topic, payload, created_at FROM outbox "
                        "WHERE routed = 0 ORDER BY ord",
    [S_SET_ROUTED] = "UPDATE outbox SET routed = 1 WHERE ord = ?1",
    [S_NEXT_DELIVERIES] = "SELECT d.ord, m.msg_id, m.instance_id, m.topic, m.payload, d.attempts, d.next_at "
                          "FROM outbox_deliveries d JOIN outbox m ON m.ord = d.ord "
                          "WHERE d.subscriber = ?1 AND d.ord > ?2 AND d.status = 'pending' "
                          "ORDER BY d.ord LIMIT ?3",
    [S_UPDATE_DELIVERY] = "UPDATE outbox_deliveries SET status = ?3, attempts = ?4, next_at = ?5, "
                          "last_error = ?6, updated_at = ?7 WHERE subscriber = ?1 AND ord = ?2",
    [S_DELETE_DELIVERY] = "DELETE FROM outbox_deliveries WHERE subscriber = ?1 AND ord = ?2",
    [S_DELETE_MESSAGE] = "DELETE FROM outbox WHERE ord = ?1 AND routed = 1 AND NOT EXISTS "
                         "(SELECT 1 FROM outbox_deliveries WHERE ord = ?1)",
    /* ?1: NULL for every row, 'pending' (with the unrouted), 'failed'. */
    [S_LIST_DELIVERIES] =
        "SELECT m.ord, m.msg_id, m.instance_id, m.topic, m.payload, d.subscriber, "
        "COALESCE(d.status, 'unrouted'), COALESCE(d.attempts, 0), COALESCE(d.next_at, 0), d.last_error, "
        "m.created_at, COALESCE(d.updated_at, m.created_at) "
        "FROM outbox m LEFT JOIN outbox_deliveries d ON d.ord = m.ord "
        "WHERE ?1 IS NULL OR COALESCE(d.status, 'unrouted') = ?1 OR (?1 = 'pending' AND d.status IS NULL) "
        "ORDER BY m.ord, d.subscriber LIMIT ?2",
    [S_REQUEUE] = "UPDATE outbox_deliveries SET status = 'pending', attempts = 0, next_at = ?3, updated_at = ?3 "
                  "WHERE status = 'failed' AND ord = (SELECT ord FROM outbox WHERE msg_id = ?1) "
                  "AND (?2 IS NULL OR subscriber = ?2)",
};

struct wf_store {
  sqlite3 *db;                 /* NULL only if sqlite3_open_v2 could not even allocate it */
  char *path;                  /* the database path, for messages and the lock file */
  int lock_fd;                 /* the host lock file, -1 until wf_store_lock_host() */
  int64_t data_version;        /* PRAGMA data_version as last seen by wf_store_changed() */
  sqlite3_stmt *stmt[S_COUNT]; /* all NULL until open has migrated the schema */
  int wal_frames;              /* frames in the WAL after the last commit (the host's own) */
  int sync_commits;            /* a file in WAL mode, durability FULL: each commit fsyncs the WAL */
  int in_txn;                  /* between wf_store_begin and its commit or rollback */
  struct {                     /* an appended history entry not written yet (history_hold) */
    int used;
    int64_t pos, seq, at;
    char *id, *kind, *name, *data; /* in buf */
    char *buf;
    size_t cap;
  } held;
  char errmsg[4608];           /* the last failure; room for a path of PATH_MAX */
};

/* Maps an SQLite result code to a wfhost code: the database could not be read or written,
 * another process holds it, or anything else. */
static int map_rc(int rc) {
  switch (rc & 0xff) {
  case SQLITE_FULL: case SQLITE_IOERR: case SQLITE_CANTOPEN: case SQLITE_NOTADB:
  case SQLITE_CORRUPT: case SQLITE_READONLY:
    return WF_IO;
  case SQLITE_BUSY:
    return WF_BUSY;
  default:
    return WF_ERROR;
  }
}

/* Sets the message of the last failure and returns code. */
static int set_err(wf_store *st, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_err(wf_store *st, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(st->errmsg, sizeof st->errmsg, fmt, ap);
  va_end(ap);
  return code;
}

/* Records the failure of operation op with SQLite code rc and the connection's message.
 * Call it before resetting the failed statement. */
static int fail(wf_store *st, int rc, const char *op) {
  return set_err(st, map_rc(rc), "%s: %s", op,
                 st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
}

static int oom(wf_store *st, const char *op) {
  return set_err(st, WF_ERROR, "%s: out of memory", op);
}

/* Returns a statement to its idle state: no snapshot held, no parameter bound. */
static void finish(sqlite3_stmt *s) {
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
}

static int history_flush(wf_store *st);

/* Before any statement but a history append, a held history entry is written, so that every
 * statement (a read of the history, a savepoint, ...) sees the history as appended. */
static int flush_before(wf_store *st, sqlite3_stmt *s) {
  if (!st->held.used || s == st->stmt[S_APPEND_HISTORY] || s == st->stmt[S_APPEND_HISTORY2]) return WF_OK;
  return history_flush(st);
}

/* Binds arguments to parameters 1, 2, ... of s as described by types: 't' a string (NULL
 * binds SQL NULL; it must stay valid until s is finished), 'I' an int64_t, 'i' an int, 'd' a
 * double (a negative one binds SQL NULL: "not set"). On failure s is finished and the error
 * recorded. */
static int vbind(wf_store *st, sqlite3_stmt *s, const char *op, const char *types, va_list ap) {
  int rc = SQLITE_OK;
  int code = flush_before(st, s);
  if (code != WF_OK) return code;
  for (int i = 0; types[i] && rc == SQLITE_OK; i++) {
    if (types[i] == 't')
      rc = sqlite3_bind_text(s, i + 1, va_arg(ap, const char *), -1, SQLITE_STATIC);
    else if (types[i] == 'I')
      rc = sqlite3_bind_int64(s, i + 1, va_arg(ap, int64_t));
    else if (types[i] == 'd') {
      double d = va_arg(ap, double);
      rc = d < 0 ? sqlite3_bind_null(s, i + 1) : sqlite3_bind_double(s, i + 1, d);
    } else
      rc = sqlite3_bind_int(s, i + 1, va_arg(ap, int));
  }
  if (rc == SQLITE_OK) return WF_OK;
  code = fail(st, rc, op);
  finish(s);
  return code;
}

static int bind(wf_store *st, sqlite3_stmt *s, const char *op, const char *types, ...) {
  va_list ap;
  va_start(ap, types);
  int code = vbind(st, s, op, types, ap);
  va_end(ap);
  return code;
}

/* Runs a bound statement that returns no rows, then finishes it. */
static int run(wf_store *st, sqlite3_stmt *s, const char *op) {
  int code = flush_before(st, s);
  if (code != WF_OK) return code;
  int rc = sqlite3_step(s);
  code = rc == SQLITE_DONE || rc == SQLITE_ROW ? WF_OK : fail(st, rc, op);
  finish(s);
  return code;
}

/* Runs a bound query that returns one row of integers, storing its first ncol columns in
 * out[], then finishes it. */
static int query_ints(wf_store *st, sqlite3_stmt *s, const char *op, int ncol, int64_t *out) {
  int rc = sqlite3_step(s);
  for (int c = 0; c < ncol; c++) out[c] = rc == SQLITE_ROW ? sqlite3_column_int64(s, c) : 0;
  int code = rc == SQLITE_ROW ? WF_OK : fail(st, rc, op);
  finish(s);
  return code;
}

/* Binds (as bind()) and runs statement idx, which returns no rows. */
static int exec_stmt(wf_store *st, int idx, const char *op, const char *types, ...) {
  /* Some errors (FULL, IOERR, NOMEM) make SQLite roll the whole transaction back and go on in
   * autocommit: a later write would then commit on its own, outside the batch. */
  if (st->in_txn && sqlite3_get_autocommit(st->db))
    return set_err(st, WF_IO, "%s: the transaction was rolled back by an earlier error", op);
  va_list ap;
  va_start(ap, types);
  int code = vbind(st, st->stmt[idx], op, types, ap);
  va_end(ap);
  return code == WF_OK ? run(st, st->stmt[idx], op) : code;
}

/* Copies column c of the current row, or returns NULL for SQL NULL; sets *nomem if a
 * non-NULL value could not be copied. */
static char *col_dup(sqlite3_stmt *s, int c, int *nomem) {
  const char *t = (const char *)sqlite3_column_text(s, c);
  char *p = t ? strdup(t) : NULL;
  *nomem |= t && !p;
  return p;
}

static void info_clear(void *elem) {
  wf_info *i = elem;
  char *fields[] = {i->id,        i->workflow,    i->status, i->state,       i->input_json,
                    i->data_json, i->output_json, i->error,  i->waiting_for, i->progress_message,
                    i->parent_id};
  for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++) free(fields[k]);
}

/* Fills a wf_info from the current row of an INFO_COLS query. Returns 0, or -1 out of
 * memory (with the element cleared). */
static int info_fill(sqlite3_stmt *s, void *elem) {
  wf_info *i = elem;
  int nomem = 0;
  i->id = col_dup(s, 0, &nomem);
  i->workflow = col_dup(s, 1, &nomem);
  i->version = sqlite3_column_int(s, 2);
  i->status = col_dup(s, 3, &nomem);
  i->state = col_dup(s, 4, &nomem);
  i->input_json = col_dup(s, 5, &nomem);
  i->data_json = col_dup(s, 6, &nomem);
  i->output_json = col_dup(s, 7, &nomem);
  i->error = col_dup(s, 8, &nomem);
  i->waiting_for = col_dup(s, 9, &nomem);
  i->created_at = sqlite3_column_int64(s, 10);
  i->updated_at = sqlite3_column_int64(s, 11);
  i->progress = sqlite3_column_type(s, 12) == SQLITE_NULL ? -1 : sqlite3_column_double(s, 12);
  i->progress_message = col_dup(s, 13, &nomem);
  i->parent_id = col_dup(s, 14, &nomem);
  i->run = sqlite3_column_int(s, 15);
  if (nomem) info_clear(i);
  return nomem ? -1 : 0;
}

/* Reads the rows of a bound query into a malloc'd array of elements of size bytes, each
 * filled by fill (-1: out of memory, element left cleared), and finishes s. An empty result
 * is *out == NULL, *n == 0; on failure nothing is returned. */
static int read_array(wf_store *st, sqlite3_stmt *s, const char *op, size_t size,
                      int (*fill)(sqlite3_stmt *, void *), void (*clear)(void *), void **out,
                      size_t *n) {
  char *list = NULL;
  size_t count = 0, cap = 0;
  int rc;
  *out = NULL;
  *n = 0;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    if (count == cap) {
      size_t ncap = cap ? cap * 2 : 8;
      char *grown = realloc(list, ncap * size);
      if (!grown) break;
      list = grown;
      cap = ncap;
    }
    if (fill(s, list + count * size) != 0) break;
    count++;
  }
  int code = rc == SQLITE_DONE ? WF_OK : rc == SQLITE_ROW ? oom(st, op) : fail(st, rc, op);
  finish(s);
  if (code != WF_OK) {
    for (size_t i = 0; i < count; i++) clear(list + i * size);
    free(list);
    return code;
  }
  *out = list;
  *n = count;
  return WF_OK;
}

/* A result row copied out of its statement, so that callbacks may re-enter the store (even
 * the function running) while the caller walks the rows. Unused columns are NULL. */
#define ROW_MAX_COLS 15 /* the widest query read this way: schedules */
typedef struct row {
  sqlite3_value *v[ROW_MAX_COLS];
} row;

static void row_clear(void *elem) {
  for (int c = 0; c < ROW_MAX_COLS; c++) sqlite3_value_free(((row *)elem)->v[c]);
}

static int row_fill(sqlite3_stmt *s, void *elem) {
  row *r = elem;
  int nomem = 0;
  int ncol = sqlite3_column_count(s);
  for (int c = 0; c < ROW_MAX_COLS; c++) {
    r->v[c] = c < ncol ? sqlite3_value_dup(sqlite3_column_value(s, c)) : NULL;
    nomem |= c < ncol && !r->v[c];
  }
  if (nomem) row_clear(r);
  return nomem ? -1 : 0;
}

/* Reads all rows of a bound query; free them with rows_free(). */
static int read_rows(wf_store *st, sqlite3_stmt *s, const char *op, row **out, size_t *n) {
  void *list;
  int code = read_array(st, s, op, sizeof(row), row_fill, row_clear, &list, n);
  *out = list;
  return code;
}

static void rows_free(row *rows, size_t n) {
  for (size_t i = 0; i < n; i++) row_clear(&rows[i]);
  free(rows);
}

#define TEXT(r, c) ((const char *)sqlite3_value_text((r).v[c]))
#define INT(r, c) ((int64_t)sqlite3_value_int64((r).v[c]))

/* Runs sql (setup statements, not a hot path), copying the first column of the first row
 * into first (if not NULL; "" when there is no row). */
static int first_cb(void *ud, int ncol, char **vals, char **names) {
  (void)names;
  char *first = ud;
  if (first && first[0] == '\0' && ncol > 0 && vals[0]) snprintf(first, 64, "%s", vals[0]);
  return 0;
}

static int exec_sql(wf_store *st, const char *sql, char first[64]) {
  if (first) first[0] = '\0';
  return sqlite3_exec(st->db, sql, first_cb, first, NULL);
}

static int read_user_version(wf_store *st, long *v) {
  char buf[64];
  int rc = exec_sql(st, "PRAGMA user_version", buf);
  *v = rc == SQLITE_OK ? strtol(buf, NULL, 10) : 0;
  return rc;
}

static int newer_schema(wf_store *st, long v) {
  return set_err(st, WF_SCHEMA,
                 "database %s has schema version %ld, newer than this wfhost supports (%d): "
                 "upgrade wfhost",
                 st->path, v, WF_STORE_SCHEMA_VERSION);
}

/* Applies pending migrations, each in its own write transaction. user_version is read again
 * under the write lock because another process may be migrating the same file. */
static int migrate(wf_store *st) {
  for (;;) {
    long v;
    int rc = read_user_version(st, &v);
    if (rc != SQLITE_OK) return fail(st, rc, "read schema version");
    if (v > WF_STORE_SCHEMA_VERSION) return newer_schema(st, v);
    if (v == WF_STORE_SCHEMA_VERSION) return WF_OK;
    rc = exec_sql(st, "BEGIN IMMEDIATE", NULL);
    if (rc != SQLITE_OK) return fail(st, rc, "begin migration");
    rc = read_user_version(st, &v);
    if (rc == SQLITE_OK && v > WF_STORE_SCHEMA_VERSION) {
      exec_sql(st, "ROLLBACK", NULL);
      return newer_schema(st, v);
    }
    if (rc == SQLITE_OK && v < WF_STORE_SCHEMA_VERSION) {
      char set[64];
      snprintf(set, sizeof set, "PRAGMA user_version = %ld", v + 1);
      rc = exec_sql(st, migrations[v], NULL);
      if (rc == SQLITE_OK) rc = exec_sql(st, set, NULL);
    }
    if (rc == SQLITE_OK) rc = exec_sql(st, "COMMIT", NULL);
    if (rc != SQLITE_OK) {
      int code = set_err(st, map_rc(rc), "migrate database %s to schema version %ld: %s",
                         st->path, v + 1, sqlite3_errmsg(st->db));
      exec_sql(st, "ROLLBACK", NULL);
      return code;
    }
  }
}

static int open_failed(wf_store *st, int rc) {
  return set_err(st, map_rc(rc), "cannot open database %s: %s", st->path,
                 st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
}

int wf_store_open(const char *path, wf_durability durability, wf_store **out) {
  wf_store *st = calloc(1, sizeof *st);
  *out = st;
  if (!st) return WF_ERROR;
  st->lock_fd = -1;
  if (!path || !*path) return set_err(st, WF_INVALID, "open store: no database path given");
  if (durability != WF_DURABILITY_FULL && durability != WF_DURABILITY_NORMAL)
    return set_err(st, WF_INVALID, "open store: unknown durability %d", (int)durability);
  st->path = strdup(path);
  if (!st->path) return oom(st, "open store");

  int rc = sqlite3_open_v2(path, &st->db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) return open_failed(st, rc);
  sqlite3_busy_timeout(st->db, 10000);

  /* Read the version before anything writes to the file: a database from a newer wfhost is
   * left exactly as it was, and a file that is not a database fails here. */
  long v;
  rc = read_user_version(st, &v);
  if (rc != SQLITE_OK) return open_failed(st, rc);
  if (v > WF_STORE_SCHEMA_VERSION) return newer_schema(st, v);

  /* Switching a new file to WAL takes an exclusive lock, and SQLite may answer BUSY at once
   * (without its busy handler) when several processes open a new file together. */
  char mode[64];
  for (int tries = 0;; tries++) {
    rc = exec_sql(st, "PRAGMA journal_mode = WAL", mode);
    if ((rc & 0xff) != SQLITE_BUSY || tries == 1000) break;
    sqlite3_sleep(10);
  }
  if (rc != SQLITE_OK) return open_failed(st, rc);
  st->sync_commits = !strcmp(mode, "wal") && durability == WF_DURABILITY_FULL;
  if (strcmp(mode, "wal") != 0 && strcmp(mode, "memory") != 0)
    return set_err(st, WF_IO, "cannot use WAL mode on database %s (journal mode stays %s)", path,
                   mode);
  /* FULL syncs the WAL on every commit (a committed step survives power loss); NORMAL only
   * at checkpoints. journal_size_limit truncates a WAL that a long reader let grow. */
  rc = exec_sql(st,
                durability == WF_DURABILITY_NORMAL
                    ? "PRAGMA synchronous = NORMAL; PRAGMA journal_size_limit = 67108864"
                    : "PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 67108864",
                NULL);
  if (rc != SQLITE_OK) return open_failed(st, rc);

  int code = migrate(st);
  if (code != WF_OK) return code;

  for (int i = 0; i < S_COUNT; i++) {
    rc = sqlite3_prepare_v3(st->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &st->stmt[i],
                            NULL);
    if (rc != SQLITE_OK) return fail(st, rc, "prepare statement");
  }
  wf_store_changed(st);
  return WF_OK;
}

void wf_store_close(wf_store *st) {
  if (!st) return;
  /* The host's reserved WAL stays for the next host (reserve_wal): with no size limit, the
   * last connection's close checkpoints it and keeps the file instead of cutting it to 0. */
  if (st->lock_fd >= 0 && st->sync_commits) exec_sql(st, "PRAGMA journal_size_limit = -1", NULL);
  for (int i = 0; i < S_COUNT; i++) sqlite3_finalize(st->stmt[i]);
  free(st->held.buf);
  /* An open transaction is rolled back by the close. */
  sqlite3_close_v2(st->db);
  if (st->lock_fd >= 0) close(st->lock_fd);
  free(st->path);
  free(st);
}

const char *wf_store_errmsg(const wf_store *st) {
  if (!st) return "out of memory";
  return st->errmsg[0] ? st->errmsg : "no error";
}

/* The lock is flock() on "<db>.lock": it conflicts between any two open file descriptions,
 * is released by the kernel when the holder dies, and keeps no state in the database. */
static void reserve_wal(wf_store *st);

static int wal_hook(void *ud, sqlite3 *db, const char *name, int frames) {
  (void)db, (void)name;
  ((wf_store *)ud)->wal_frames = frames;
  return SQLITE_OK;
}

int wf_store_lock_host(wf_store *st) {
  if (st->lock_fd >= 0) return WF_OK;
  size_t len = strlen(st->path) + sizeof ".lock";
  char *lock_path = malloc(len);
  if (!lock_path) return oom(st, "lock host");
  snprintf(lock_path, len, "%s.lock", st->path);
  int fd = open(lock_path, O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (fd < 0) {
    int code = set_err(st, WF_IO, "cannot open lock file %s: %s", lock_path, strerror(errno));
    free(lock_path);
    return code;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno, code;
    if (e == EWOULDBLOCK) {
      char pid[32] = "";
      if (pread(fd, pid, sizeof pid - 1, 0) <= 0) pid[0] = '\0';
      pid[strspn(pid, "0123456789")] = '\0';
      code = set_err(st, WF_BUSY, "another wfhost host is running on %s (pid %s)", st->path,
                     pid[0] ? pid : "unknown");
    } else {
      code = set_err(st, WF_IO, "cannot lock %s: %s", lock_path, strerror(e));
    }
    close(fd);
    free(lock_path);
    return code;
  }
  free(lock_path);
  /* The pid only serves a rival's message, so failing to write it does not fail the lock. */
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
  ssize_t written = ftruncate(fd, 0) == 0 ? pwrite(fd, buf, (size_t)n, 0) : -1;
  (void)written;
  st->lock_fd = fd;
  /* The host checkpoints itself (wf_store_checkpoint), off the commit path. */
  sqlite3_wal_autocheckpoint(st->db, 0);
  sqlite3_wal_hook(st->db, wal_hook, st);
  if (st->sync_commits) reserve_wal(st);
  return WF_OK;
}

/* The WAL the host keeps allocated, and the frames that fit in it (a frame is a 24-byte
 * header and a 4 KiB page; the file starts with a 32-byte header). */
#define WAL_RESERVE (16 << 20)
#define WAL_RESERVE_FRAMES ((WAL_RESERVE - 32) / (24 + 4096))

/* An fsync that only overwrites blocks of a file costs about half one that also grows it (the
 * file's new size must be made durable too), and a commit in durability FULL is such an fsync
 * of the WAL. So the host writes zeros past the end of a WAL smaller than
 * WAL_RESERVE, once at start, and checkpoints before the log outgrows it: SQLite then writes
 * the log again from its start (a WAL restart) into blocks that already exist. Bytes past the
 * log's last frame are never read (a zero frame header ends the log), and the write lock, held
 * meanwhile, keeps other processes from appending frames there. The file is kept when the
 * host closes, so a restarted host finds it ready. Only an optimisation: if writing fails (a
 * full disk), the file is cut back and the WAL simply grows as it would have. */
static void reserve_wal(wf_store *st) {
  sqlite3_file *wal = NULL;
  sqlite3_int64 size = 0;
  int persist = 1; /* the file outlives the host's connection (wf_store_close) */
  sqlite3_file_control(st->db, "main", SQLITE_FCNTL_PERSIST_WAL, &persist);
  if (sqlite3_file_control(st->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal) != SQLITE_OK || !wal ||
      !wal->pMethods || wal->pMethods->xFileSize(wal, &size) != SQLITE_OK || size >= WAL_RESERVE)
    return;
  if (wf_store_begin(st) != WF_OK) return;
  static const char zeros[1 << 16];
  int rc = SQLITE_OK;
  for (sqlite3_int64 off = size; rc == SQLITE_OK && off < WAL_RESERVE; off += sizeof zeros) {
    sqlite3_int64 n = WAL_RESERVE - off < (sqlite3_int64)sizeof zeros ? WAL_RESERVE - off : (sqlite3_int64)sizeof zeros;
    rc = wal->pMethods->xWrite(wal, zeros, (int)n, off);
  }
  if (rc == SQLITE_OK) rc = wal->pMethods->xSync(wal, SQLITE_SYNC_NORMAL);
  if (rc != SQLITE_OK) wal->pMethods->xTruncate(wal, size);
  wf_store_rollback(st);
}

int wf_store_checkpoint(wf_store *st, int idle, int *pending) {
  if (pending) *pending = st->wal_frames >= 1000;
  /* Under load, before the log outgrows the reserved WAL (reserve_wal). */
  if (st->wal_frames < (idle ? 1000 : WAL_RESERVE_FRAMES * 9 / 10)) return WF_OK;
  int log = 0, done = 0;
  int rc = sqlite3_wal_checkpoint_v2(st->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
  if (rc != SQLITE_OK && rc != SQLITE_BUSY)
    return set_err(st, map_rc(rc), "checkpoint: %s", sqlite3_errmsg(st->db));
  if (rc == SQLITE_OK && log >= 0) st->wal_frames = log - done; /* BUSY reports -1: keep it */
  if (pending) *pending = st->wal_frames >= 1000;
  return WF_OK;
}

int wf_store_begin(wf_store *st) {
  int code = run(st, st->stmt[S_BEGIN], "begin transaction");
  st->in_txn = code == WF_OK;
  return code;
}

/* A failed COMMIT may leave the transaction open (SQLite rolls back on some errors only), so
 * it is rolled back here: the connection is then usable and the batch is simply not written. */
int wf_store_commit(wf_store *st) {
  sqlite3_stmt *s = st->stmt[S_COMMIT];
  int code = st->held.used ? history_flush(st) : WF_OK;
  st->in_txn = 0;
  if (code != WF_OK) {
    wf_store_rollback(st);
    return code;
  }
  int rc = sqlite3_step(s);
  code = rc == SQLITE_DONE ? WF_OK : set_err(st, map_rc(rc), "commit failed: %s", sqlite3_errmsg(st->db));
  finish(s);
  if (code != WF_OK) wf_store_rollback(st);
  return code;
}

void wf_store_rollback(wf_store *st) {
  if (st) st->in_txn = st->held.used = 0;
  if (!st || !st->db || sqlite3_get_autocommit(st->db)) return;
  sqlite3_step(st->stmt[S_ROLLBACK]);
  finish(st->stmt[S_ROLLBACK]);
}

/* data_version changes when another connection commits, never for this connection's own
 * commits. */
int wf_store_changed(wf_store *st) {
  int64_t v;
  if (query_ints(st, st->stmt[S_DATA_VERSION], "read data version", 1, &v) != WF_OK) return 0;
  int changed = v != st->data_version;
  st->data_version = v;
  return changed;
}

int wf_store_insert_instance(wf_store *st, const wf_instance_rec *r, int *created) {
  int code = exec_stmt(st, S_INSERT_INSTANCE, "insert instance", "ttitttttttIItIidt", r->id,
                       r->workflow, r->version, r->status, r->state, r->input, r->data,
                       r->output, r->error, r->waiting_for, r->created_at, r->updated_at,
                       r->parent_id, r->parent_seq, r->detached, r->has_progress ? r->progress : -1.0,
                       r->has_progress ? r->progress_message : NULL);
  if (created) *created = code == WF_OK && sqlite3_changes(st->db) > 0;
  return code;
}

int wf_store_has_instance(wf_store *st, const char *id, int *exists) {
  sqlite3_stmt *s = st->stmt[S_HAS_INSTANCE];
  int code = bind(st, s, "has instance", "t", id);
  if (code != WF_OK) return code;
  int rc = sqlite3_step(s);
  *exists = rc == SQLITE_ROW;
  code = rc == SQLITE_ROW || rc == SQLITE_DONE ? WF_OK : fail(st, rc, "has instance");
  finish(s);
  return code;
}

int wf_store_update_instance(wf_store *st, const wf_instance_rec *r) {
  int code = exec_stmt(st, S_UPDATE_INSTANCE, "update instance", "tttttttIidt", r->id, r->status,
                       r->state, r->data, r->output, r->error, r->waiting_for, r->updated_at,
                       r->version, r->has_progress ? r->progress : -1.0,
                       r->has_progress ? r->progress_message : NULL);
  if (code == WF_OK && sqlite3_changes(st->db) == 0)
    code = set_err(st, WF_NOTFOUND, "update instance: no instance with id %s", r->id);
  return code;
}

/* The instance is read as an array of one, so *out is a plain malloc'd wf_info. */
int wf_store_get_instance(wf_store *st, const char *id, wf_info **out) {
  const char *op = "get instance";
  sqlite3_stmt *s = st->stmt[S_GET_INSTANCE];
  void *found = NULL;
  size_t n = 0;
  *out = NULL;
  int code = bind(st, s, op, "t", id);
  if (code == WF_OK)
    code = read_array(st, s, op, sizeof(wf_info), info_fill, info_clear, &found, &n);
  if (code == WF_OK && n == 0) return set_err(st, WF_NOTFOUND, "no instance with id %s", id);
  *out = found;
  return code;
}

/* An empty result is *out == NULL, *n == 0. */
int wf_store_list_instances(wf_store *st, const char *status, const char *workflow, int limit,
                            wf_info **out, size_t *n) {
  const char *op = "list instances";
  sqlite3_stmt *s = st->stmt[S_LIST_ALL + (status ? 1 : 0) + (workflow ? 2 : 0)];
  void *list = NULL;
  *out = NULL;
  *n = 0;
  int code = bind(st, s, op, "tti", status, workflow, limit > 0 ? limit : -1);
  if (code == WF_OK)
    code = read_array(st, s, op, sizeof(wf_info), info_fill, info_clear, &list, n);
  *out = list;
  return code;
}

/* statuses may hold at most MAX_STATUSES entries; NULL is an empty list. Unbound
 * parameters are NULL, which matches no status. */
int wf_store_each_instance(wf_store *st, const char *const *statuses, wf_store_id_fn fn, void *ud) {
  const char *op = "list instances by status";
  sqlite3_stmt *s = st->stmt[S_EACH_INSTANCE];
  int k = 0;
  while (statuses && statuses[k]) k++;
  if (k > MAX_STATUSES)
    return set_err(st, WF_INVALID, "%s: more than %d statuses", op, MAX_STATUSES);
  /* Binding static text to an existing parameter cannot fail. */
  for (int i = 0; i < k; i++) sqlite3_bind_text(s, i + 1, statuses[i], -1, SQLITE_STATIC);
  row *rows;
  size_t n;
  int code = read_rows(st, s, op, &rows, &n);
  for (size_t i = 0; i < n; i++) fn(ud, TEXT(rows[i], 0));
  rows_free(rows, n);
  return code;
}

/* History entries are appended one by one, but a step's outcome and the command it issues
 * next are consecutive entries of one instance, appended in a row: in a transaction, an entry
 * is held until the next append, and the two share a row if they follow each other (same
 * instance, pos and pos + 1); else the held one is written alone. Any other statement, the
 * commit included, writes a held entry first; a rollback drops it. */
static int history_write(wf_store *st, const char *id, int64_t pos, int64_t seq, const char *kind,
                         const char *name, const char *data, int64_t at) {
  return exec_stmt(st, S_APPEND_HISTORY, "append history", "tIItttI", id, pos, seq, kind, name, data, at);
}

static int history_flush(wf_store *st) {
  st->held.used = 0;
  return history_write(st, st->held.id, st->held.pos, st->held.seq, st->held.kind, st->held.name,
                       st->held.data, st->held.at);
}

/* Copies the entry into held (its strings into one buffer, reused from entry to entry). */
static int history_hold(wf_store *st, const char *id, int64_t pos, int64_t seq, const char *kind,
                        const char *name, const char *data, int64_t at) {
  const char *src[4] = {id, kind, name, data};
  size_t len[4], total = 0;
  for (int i = 0; i < 4; i++) total += len[i] = src[i] ? strlen(src[i]) + 1 : 0;
  if (total > st->held.cap) {
    char *b = realloc(st->held.buf, total);
    if (!b) return oom(st, "append history");
    st->held.buf = b;
    st->held.cap = total;
  }
  char *p = st->held.buf, **dst[4] = {&st->held.id, &st->held.kind, &st->held.name, &st->held.data};
  for (int i = 0; i < 4; i++) {
    *dst[i] = src[i] ? memcpy(p, src[i], len[i]) : NULL;
    p += len[i];
  }
  st->held.pos = pos, st->held.seq = seq, st->held.at = at;
  st->held.used = 1;
  return WF_OK;
}

int wf_store_append_history(wf_store *st, const char *id, int64_t pos, int64_t seq,
                            const char *kind, const char *name, const char *data, int64_t at) {
  /* Outside a transaction, or in one SQLite has given up (exec_stmt refuses then), at once. */
  if (!st->in_txn || sqlite3_get_autocommit(st->db)) return history_write(st, id, pos, seq, kind, name, data, at);
  if (!st->held.used) return history_hold(st, id, pos, seq, kind, name, data, at);
  if (pos == st->held.pos + 1 && !strcmp(id, st->held.id)) {
    st->held.used = 0;
    return exec_stmt(st, S_APPEND_HISTORY2, "append history", "tIItttIItttI", id, st->held.pos,
                     st->held.seq, st->held.kind, st->held.name, st->held.data, st->held.at, seq, kind,
                     name, data, at);
  }
  int code = history_flush(st);
  return code == WF_OK ? history_hold(st, id, pos, seq, kind, name, data, at) : code;
}

/* An instance without history (or an unknown one) gives *out == NULL, *n == 0. A row holding
 * two entries gives both. */
int wf_store_load_history(wf_store *st, const char *id, wf_history_entry **out, size_t *n) {
  const char *op = "load history";
  sqlite3_stmt *s = st->stmt[S_LOAD_HISTORY];
  wf_history_entry *list = NULL;
  size_t count = 0, cap = 0;
  *out = NULL;
  *n = 0;
  int code = bind(st, s, op, "t", id), rc = SQLITE_DONE, nomem = 0;
  while (code == WF_OK && !nomem && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    if (count + 2 > cap) {
      size_t ncap = cap ? cap * 2 : 16;
      wf_history_entry *grown = realloc(list, ncap * sizeof *list);
      if (!grown) {
        nomem = 1;
        break;
      }
      list = grown;
      cap = ncap;
    }
    for (int second = 0; second < 2; second++) {
      int c = second ? 6 : 1; /* seq, kind, name, data, at of the first entry, or of the second */
      if (second && sqlite3_column_type(s, c + 1) == SQLITE_NULL) break;
      wf_history_entry *e = &list[count++];
      e->pos = sqlite3_column_int64(s, 0) + second;
      e->seq = sqlite3_column_int64(s, c);
      e->kind = col_dup(s, c + 1, &nomem);
      e->name = col_dup(s, c + 2, &nomem);
      e->data_json = col_dup(s, c + 3, &nomem);
      e->at = sqlite3_column_int64(s, c + 4);
    }
  }
  if (code == WF_OK) code = nomem ? oom(st, op) : rc == SQLITE_DONE ? WF_OK : fail(st, rc, op);
  finish(s);
  if (code != WF_OK) {
    wf_history_free(list, count);
    return code;
  }
  *out = list;
  *n = count;
  return WF_OK;
}

int wf_store_add_event(wf_store *st, const char *id, const char *name, const char *data,
                       int64_t at, int64_t *event_id) {
  int code = exec_stmt(st, S_ADD_EVENT, "add event", "tttI", id, name, data, at);
  if (code == WF_OK && event_id) *event_id = sqlite3_last_insert_rowid(st->db);
  return code;
}

/* WF_NOTFOUND if the event does not exist or was consumed already: consuming twice would
 * deliver one event to two waits. */
int wf_store_consume_event(wf_store *st, int64_t event_id, int64_t seq) {
  int code = exec_stmt(st, S_CONSUME_EVENT, "consume event", "II", event_id, seq);
  if (code == WF_OK && sqlite3_changes(st->db) == 0)
    code = set_err(st, WF_NOTFOUND, "consume event: event %lld does not exist or was consumed",
                   (long long)event_id);
  return code;
}

/* Runs a bound inbox query and calls fn for each event. */
static int each_event(wf_store *st, sqlite3_stmt *s, const char *op, wf_store_event_fn fn,
                      void *ud) {
  row *rows;
  size_t n;
  int code = read_rows(st, s, op, &rows, &n);
  for (size_t i = 0; i < n; i++) {
    wf_event_rec ev = {INT(rows[i], 0), TEXT(rows[i], 1), TEXT(rows[i], 2), TEXT(rows[i], 3),
                       INT(rows[i], 4)};
    fn(ud, &ev);
  }
  rows_free(rows, n);
  return code;
}

int wf_store_pending_events(wf_store *st, const char *id, wf_store_event_fn fn, void *ud) {
  const char *op = "read pending events";
  sqlite3_stmt *s = st->stmt[S_PENDING_EVENTS];
  int code = bind(st, s, op, "t", id);
  return code == WF_OK ? each_event(st, s, op, fn, ud) : code;
}

int wf_store_events_after(wf_store *st, int64_t after, wf_store_event_fn fn, void *ud) {
  const char *op = "read new events";
  sqlite3_stmt *s = st->stmt[S_EVENTS_AFTER];
  int code = bind(st, s, op, "I", after);
  return code == WF_OK ? each_event(st, s, op, fn, ud) : code;
}

/* Adding a timer that exists moves it to the new due time. */
int wf_store_add_timer(wf_store *st, const char *id, int64_t seq, int64_t due) {
  return exec_stmt(st, S_ADD_TIMER, "add timer", "tII", id, seq, due);
}

/* Deleting a timer that does not exist is not an error. */
int wf_store_delete_timer(wf_store *st, const char *id, int64_t seq) {
  return exec_stmt(st, S_DELETE_TIMER, "delete timer", "tI", id, seq);
}

int wf_store_each_timer(wf_store *st, wf_store_timer_fn fn, void *ud) {
  row *rows;
  size_t n;
  int code = read_rows(st, st->stmt[S_EACH_TIMER], "read timers", &rows, &n);
  for (size_t i = 0; i < n; i++) fn(ud, TEXT(rows[i], 0), INT(rows[i], 1), INT(rows[i], 2));
  rows_free(rows, n);
  return code;
}

int wf_store_add_request(wf_store *st, const char *id, const char *kind, int64_t at) {
  return exec_stmt(st, S_ADD_REQUEST, "add request", "ttI", id, kind, at);
}

/* Only the requests handed to fn are deleted, so a request written between the read and
 * the delete (possible when no transaction is open) is kept for the next call. */
int wf_store_take_requests(wf_store *st, wf_store_request_fn fn, void *ud) {
  const char *op = "take requests";
  row *rows;
  size_t n;
  int code = read_rows(st, st->stmt[S_LIST_REQUESTS], op, &rows, &n);
  if (code != WF_OK || n == 0) return code;
  for (size_t i = 0; i < n; i++) fn(ud, INT(rows[i], 0), TEXT(rows[i], 1), TEXT(rows[i], 2));
  int64_t last = INT(rows[n - 1], 0);
  rows_free(rows, n);
  return exec_stmt(st, S_DELETE_REQUESTS, op, "I", last);
}

int wf_store_put_breaker(wf_store *st, const wf_breaker_rec *r) {
  return exec_stmt(st, S_PUT_BREAKER, "write breaker", "tttIIII", r->action, r->key, r->state, r->calls,
                   r->failures, r->open_until, r->updated_at);
}

int wf_store_each_breaker(wf_store *st, wf_store_breaker_fn fn, void *ud) {
  row *rows;
  size_t n;
  int code = read_rows(st, st->stmt[S_EACH_BREAKER], "read breakers", &rows, &n);
  if (code != WF_OK) return code;
  for (size_t i = 0; i < n; i++) {
    wf_breaker_rec r = {.action = TEXT(rows[i], 0), .key = TEXT(rows[i], 1), .state = TEXT(rows[i], 2),
                        .calls = INT(rows[i], 3), .failures = INT(rows[i], 4),
                        .open_until = INT(rows[i], 5), .updated_at = INT(rows[i], 6)};
    fn(ud, &r);
  }
  rows_free(rows, n);
  return WF_OK;
}

/* Runs in a savepoint so that the catalog is replaced whole or not at all, inside the
 * caller's transaction or, without one, as a transaction of its own. */
int wf_store_replace_catalog(wf_store *st, const char *const *names, const int *versions,
                             const char *const *sources, size_t n, int64_t at) {
  const char *op = "replace catalog";
  int code = run(st, st->stmt[S_SAVEPOINT], op);
  if (code != WF_OK) return code;
  code = run(st, st->stmt[S_CLEAR_CATALOG], op);
  for (size_t i = 0; i < n && code == WF_OK; i++)
    code = exec_stmt(st, S_ADD_CATALOG, op, "tiIt", names[i], versions[i], at, sources ? sources[i] : NULL);
  if (code == WF_OK) return run(st, st->stmt[S_RELEASE], op);
  /* Undo and close the savepoint; the first failure is the one reported. */
  sqlite3_step(st->stmt[S_ROLLBACK_TO]);
  finish(st->stmt[S_ROLLBACK_TO]);
  sqlite3_step(st->stmt[S_RELEASE]);
  finish(st->stmt[S_RELEASE]);
  return code;
}

int wf_store_catalog_has(wf_store *st, const char *name, int *known) {
  const char *op = "read catalog";
  sqlite3_stmt *s = st->stmt[S_CATALOG_HAS];
  int64_t has[2] = {0, 0};
  int code = bind(st, s, op, "t", name);
  if (code == WF_OK) code = query_ints(st, s, op, 2, has);
  *known = has[0] ? 1 : has[1] ? 0 : -1;
  return code;
}

int wf_store_each_catalog(wf_store *st, wf_store_version_fn fn, void *ud) {
  row *rows;
  size_t n;
  int code = read_rows(st, st->stmt[S_EACH_CATALOG], "read catalog", &rows, &n);
  if (code != WF_OK) return code;
  for (size_t i = 0; i < n; i++) fn(ud, TEXT(rows[i], 0), (int)INT(rows[i], 1), TEXT(rows[i], 2), 0);
  rows_free(rows, n);
  return WF_OK;
}

int wf_store_active_versions(wf_store *st, wf_store_version_fn fn, void *ud) {
  row *rows;
  size_t n;
  int code = read_rows(st, st->stmt[S_ACTIVE_VERSIONS], "count active instances", &rows, &n);
  if (code != WF_OK) return code;
  for (size_t i = 0; i < n; i++) fn(ud, TEXT(rows[i], 0), (int)INT(rows[i], 1), NULL, INT(rows[i], 2));
  rows_free(rows, n);
  return WF_OK;
}

int wf_store_snapshot(wf_store *st, const char *path) {
  sqlite3_stmt *s = NULL;
  int rc = sqlite3_prepare_v2(st->db, "VACUUM INTO ?1", -1, &s, NULL);
  if (rc == SQLITE_OK) rc = sqlite3_bind_text(s, 1, path, -1, SQLITE_TRANSIENT);
  if (rc == SQLITE_OK) rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(st->db);
  int code = rc == SQLITE_OK ? WF_OK : set_err(st, map_rc(rc), "snapshot to %s: %s", path, sqlite3_errmsg(st->db));
  sqlite3_finalize(s);
  return code;
}

int wf_store_put_schedule(wf_store *st, const wf_schedule_rec *r) {
  return exec_stmt(st, S_PUT_SCHEDULE, "write schedule", "ttttttttII", r->id, r->workflow, r->cron, r->timezone,
                   r->input, r->catch_up, r->overlap, r->origin, r->next_at, r->updated_at);
}

/* last_at 0 and last_instance NULL keep the row's values. WF_NOTFOUND if the row is gone (an
 * operator removed the schedule). */
int wf_store_advance_schedule(wf_store *st, const char *id, int64_t next_at, int64_t last_at,
                              const char *last_instance, int64_t missed, int64_t overlapped, int64_t at) {
  sqlite3_stmt *s = st->stmt[S_ADVANCE_SCHEDULE];
  const char *op = "advance schedule";
  if (st->in_txn && sqlite3_get_autocommit(st->db))
    return set_err(st, WF_IO, "%s: the transaction was rolled back by an earlier error", op);
  int code = bind(st, s, op, "tIItIII", id, next_at, last_at, last_instance, missed, overlapped, at);
  if (code == WF_OK && !last_at) sqlite3_bind_null(s, 3); /* binding NULL to a bound parameter cannot fail */
  if (code == WF_OK) code = run(st, s, op);
  if (code == WF_OK && sqlite3_changes(st->db) == 0) code = set_err(st, WF_NOTFOUND, "%s: no schedule %s", op, id);
  return code;
}

int wf_store_delete_schedule(wf_store *st, const char *id, int *deleted) {
  int code = exec_stmt(st, S_DELETE_SCHEDULE, "delete schedule", "t", id);
  if (deleted) *deleted = code == WF_OK && sqlite3_changes(st->db) > 0;
  return code;
}

int wf_store_each_schedule(wf_store *st, wf_store_schedule_fn fn, void *ud) {
  row *rows;
  size_t n;
  int code = read_rows(st, st->stmt[S_EACH_SCHEDULE], "read schedules", &rows, &n);
  if (code != WF_OK) return code;
  for (size_t i = 0; i < n; i++) {
    row *w = &rows[i];
    wf_schedule_rec r = {.id = TEXT(*w, 0), .workflow = TEXT(*w, 1), .cron = TEXT(*w, 2), .timezone = TEXT(*w, 3),
                         .input = TEXT(*w, 4), .catch_up = TEXT(*w, 5), .overlap = TEXT(*w, 6),
                         .origin = TEXT(*w, 7), .next_at = INT(*w, 8), .last_at = INT(*w, 9),
                         .last_instance = TEXT(*w, 10), .missed = INT(*w, 11), .overlapped = INT(*w, 12),
                         .created_at = INT(*w, 13), .updated_at = INT(*w, 14)};
    fn(ud, &r);
  }
  rows_free(rows, n);
  return WF_OK;
}

/* ---- outbox -------------------------------------------------------------------------- */

/* A message that exists already (the same id) is left as it is and *ord is 0: an emit is
 * written once, whatever replays it. */
int wf_store_add_message(wf_store *st, const wf_message_rec *m, const char *const *subscribers, size_t n,
                         int64_t *ord) {
  const char *op = "add outbox message";
  *ord = 0;
  int code = exec_stmt(st, S_ADD_MESSAGE, op, "ttttIi", m->msg_id, m->instance_id, m->topic, m->payload, m->at,
                       n > 0);
  if (code != WF_OK || sqlite3_changes(st->db) == 0) return code;
  *ord = sqlite3_last_insert_rowid(st->db);
  for (size_t i = 0; i < n && code == WF_OK; i++)
    code = exec_stmt(st, S_ADD_DELIVERY, op, "tII", subscribers[i], *ord, m->at);
  return code;
}

int wf_store_each_unrouted(wf_store *st, wf_store_delivery_fn fn, void *ud) {
  row *rows;
  size_t n;
  int code = read_rows(st, st->stmt[S_EACH_UNROUTED], "read unrouted messages", &rows, &n);
  for (size_t i = 0; i < n; i++) {
    wf_delivery_rec d = {.ord = INT(rows[i], 0), .msg_id = TEXT(rows[i], 1), .instance_id = TEXT(rows[i], 2),
                         .topic = TEXT(rows[i], 3), .payload = TEXT(rows[i], 4), .status = "unrouted",
                         .created_at = INT(rows[i], 5), .updated_at = INT(rows[i], 5)};
    fn(ud, &d);
  }
  rows_free(rows, n);
  return code;
}

int wf_store_route_message(wf_store *st, int64_t ord, const char *const *subscribers, size_t n, int64_t at) {
  const char *op = "route outbox message";
  int code = WF_OK;
  for (size_t i = 0; i < n && code == WF_OK; i++) code = exec_stmt(st, S_ADD_DELIVERY, op, "tII", subscribers[i], ord, at);
  return code == WF_OK && n ? exec_stmt(st, S_SET_ROUTED, op, "I", ord) : code;
}

int wf_store_next_deliveries(wf_store *st, const char *subscriber, int64_t after, int limit, wf_store_delivery_fn fn,
                             void *ud) {
  const char *op = "read pending deliveries";
  sqlite3_stmt *s = st->stmt[S_NEXT_DELIVERIES];
  int code = bind(st, s, op, "tIi", subscriber, after, limit);
  if (code != WF_OK) return code;
  row *rows;
  size_t n;
  code = read_rows(st, s, op, &rows, &n);
  for (size_t i = 0; i < n; i++) {
    wf_delivery_rec d = {.ord = INT(rows[i], 0), .msg_id = TEXT(rows[i], 1), .instance_id = TEXT(rows[i], 2),
                         .topic = TEXT(rows[i], 3), .payload = TEXT(rows[i], 4), .subscriber = subscriber,
                         .status = "pending", .attempts = (int)INT(rows[i], 5), .next_at = INT(rows[i], 6)};
    fn(ud, &d);
  }
  rows_free(rows, n);
  return code;
}

/* A delivered message's delivery row goes, and the message with its last one. */
int wf_store_set_delivery(wf_store *st, const char *subscriber, int64_t ord, const char *status, int attempts,
                          int64_t next_at, const char *error, int64_t at) {
  const char *op = "write outbox delivery";
  if (status) return exec_stmt(st, S_UPDATE_DELIVERY, op, "tItiItI", subscriber, ord, status, attempts, next_at, error, at);
  int code = exec_stmt(st, S_DELETE_DELIVERY, op, "tI", subscriber, ord);
  return code == WF_OK ? exec_stmt(st, S_DELETE_MESSAGE, op, "I", ord) : code;
}

int wf_store_list_deliveries(wf_store *st, const char *status, int limit, wf_store_delivery_fn fn, void *ud) {
  const char *op = "list outbox";
  sqlite3_stmt *s = st->stmt[S_LIST_DELIVERIES];
  int code = bind(st, s, op, "ti", status, limit > 0 ? limit : -1);
  if (code != WF_OK) return code;
  row *rows;
  size_t n;
  code = read_rows(st, s, op, &rows, &n);
  for (size_t i = 0; i < n; i++) {
    wf_delivery_rec d = {.ord = INT(rows[i], 0), .msg_id = TEXT(rows[i], 1), .instance_id = TEXT(rows[i], 2),
                         .topic = TEXT(rows[i], 3), .payload = TEXT(rows[i], 4), .subscriber = TEXT(rows[i], 5),
                         .status = TEXT(rows[i], 6), .attempts = (int)INT(rows[i], 7), .next_at = INT(rows[i], 8),
                         .last_error = TEXT(rows[i], 9), .created_at = INT(rows[i], 10),
                         .updated_at = INT(rows[i], 11)};
    fn(ud, &d);
  }
  rows_free(rows, n);
  return code;
}

int wf_store_requeue_deliveries(wf_store *st, const char *msg_id, const char *subscriber, int64_t at, int *n) {
  int code = exec_stmt(st, S_REQUEUE, "requeue outbox deliveries", "ttI", msg_id, subscriber, at);
  if (n) *n = code == WF_OK ? sqlite3_changes(st->db) : 0;
  return code;
}

/* ---- child workflows and runs ----------------------------------------------------------- */

int wf_store_parent_seq(wf_store *st, const char *id, int64_t *seq) {
  const char *op = "read parent link";
  sqlite3_stmt *s = st->stmt[S_PARENT_SEQ];
  int code = bind(st, s, op, "t", id);
  return code == WF_OK ? query_ints(st, s, op, 1, seq) : code;
}

int wf_store_unlink_children(wf_store *st, const char *parent_id, int64_t seq) {
  return exec_stmt(st, S_UNLINK_CHILDREN, "unlink children", "tI", parent_id, seq);
}

int wf_store_each_child(wf_store *st, const char *parent_id, wf_store_child_fn fn, void *ud) {
  const char *op = "read children";
  sqlite3_stmt *s = st->stmt[S_EACH_CHILD];
  int code = bind(st, s, op, "t", parent_id);
  if (code != WF_OK) return code;
  row *rows;
  size_t n;
  code = read_rows(st, s, op, &rows, &n);
  if (code != WF_OK) return code;
  for (size_t i = 0; i < n; i++) fn(ud, TEXT(rows[i], 0), (int)INT(rows[i], 1));
  rows_free(rows, n);
  return WF_OK;
}

int wf_store_has_event(wf_store *st, const char *id, const char *name, int *has) {
  const char *op = "look for an event";
  sqlite3_stmt *s = st->stmt[S_HAS_EVENT];
  int64_t n = 0;
  int code = bind(st, s, op, "tt", id, name);
  if (code == WF_OK) code = query_ints(st, s, op, 1, &n);
  *has = n > 0;
  return code;
}

int wf_store_new_run(wf_store *st, const char *id, int run, const char *input) {
  int code = exec_stmt(st, S_NEW_RUN, "start a new run", "tit", id, run, input);
  if (code == WF_OK) code = exec_stmt(st, S_CLEAR_HISTORY, "clear history", "t", id);
  if (code == WF_OK) code = exec_stmt(st, S_CLEAR_TIMERS, "clear timers", "t", id);
  return code;
}
