/*
 * test_embed_example.c — how to embed wfhost in an application that runs its own libuv loop.
 * Copy it as a starting point; ctest runs it as a test, so it stays true to the library.
 *
 * The application:
 *   1. opens a host on its own loop (wf_config.loop) and loads a workflows directory;
 *   2. registers two C actions: `greet` answers at once, `lookup` answers later from a timer;
 *   3. starts an instance; the done callback says the start is durable (committed);
 *   4. runs ITS loop, polling the instance with wf_get() until it has finished;
 *   5. closes the host, then its loop, which must have no handle left behind.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "test_util.h" /* CHECK() and test_tmpdir(): the "doubles as a test" part */
#include "wfhost.h"

static const char *const workflow_src =
    "return workflow.define {\n"
    "  name = 'welcome',\n"
    "  run = function(ctx, input)\n"
    "    local hello = ctx.actions.greet { name = input.name }   -- answered at once\n"
    "    local customer = ctx.actions.lookup { name = input.name } -- answered later\n"
    "    return hello.greeting .. ', ' .. hello.to.name .. ' (' .. customer.tier .. ')'\n"
    "  end,\n"
    "}\n";

static char db_path[256], wf_dir[256]; /* test only: a throwaway directory for both */
static char greet_key[WF_ID_MAX + 32];   /* test only: what the actions saw */
static int lookup_attempt;

/* An action gets its params as JSON text and completes the call exactly once. This one
 * answers before returning; its result embeds the params it got, so it needs no JSON parser. */
static void greet(wf_call *call, void *ud) {
  (void)ud;
  char result[512];
  snprintf(result, sizeof result, "{\"greeting\":\"Hello\",\"to\":%s}", wf_call_params(call));
  snprintf(greet_key, sizeof greet_key, "%s", wf_call_key(call)); /* "<instance>:<step>" */
  wf_call_ok(call, result);
}

/* An action that answers later: it keeps the call (valid until completed) and completes it
 * from a timer on the same loop. Real code would send a request and answer from its reply. */
typedef struct {
  uv_timer_t timer;
  wf_call *call;
} pending_lookup;

static void free_handle(uv_handle_t *h) { free(h->data); }

static void lookup_reply(uv_timer_t *t) {
  pending_lookup *p = t->data;
  wf_call_ok(p->call, "{\"tier\":\"gold\"}"); /* or wf_call_fail(call, "type", "why", WF_PERMANENT) */
  uv_close((uv_handle_t *)&p->timer, free_handle);
}

static void lookup(wf_call *call, void *ud) {
  uv_loop_t *loop = ud;
  lookup_attempt = wf_call_attempt(call);
  pending_lookup *p = malloc(sizeof *p);
  p->call = call;
  uv_timer_init(loop, &p->timer);
  p->timer.data = p;
  uv_timer_start(&p->timer, lookup_reply, 20, 0);
}

/* The application's state. */
typedef struct {
  wf_host *host;
  char id[WF_ID_MAX + 1];
  int start_rc;     /* -1 until the done callback ran */
  int durable_seen; /* test only: another connection could read the instance then */
  uv_timer_t poll;
  int polls;
  char *output;     /* the instance's output JSON once completed */
} app_state;

/* Called once the start is durable: the instance's row is committed in the database. */
static void on_started(wf_host *h, int rc, const char *id, void *ud) {
  app_state *app = ud;
  app->start_rc = rc;
  /* Test only: prove it with a client handle (another connection, as `wfhost` would use). */
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.mode = WF_MODE_CLIENT;
  wf_host *client = NULL;
  wf_info *info = NULL;
  if (wf_host_open(db_path, &cfg, &client) == WF_OK && wf_get(client, id, &info) == WF_OK)
    app->durable_seen = 1;
  wf_info_free(info);
  wf_host_close(client);
  (void)h;
}

/* Polls the instance; once it has finished, keeps its output and stops the loop. (Stop the
 * loop rather than closing the host here: wf_host_close() runs the loop itself.) */
static void on_poll(uv_timer_t *t) {
  app_state *app = t->data;
  wf_info *info = NULL;
  int finished = 0;
  if (app->start_rc == WF_OK && wf_get(app->host, app->id, &info) == WF_OK) {
    finished = !strcmp(info->status, "completed") || !strcmp(info->status, "failed");
    if (finished) {
      printf("instance %s %s: %s\n", app->id, info->status, info->output_json ? info->output_json : info->error);
      app->output = info->output_json ? strdup(info->output_json) : NULL;
    }
    wf_info_free(info);
  }
  if (finished || ++app->polls > 500) { /* give up after about 5 seconds */
    uv_close((uv_handle_t *)&app->poll, NULL);
    uv_stop(t->loop);
  }
}

int main(void) {
  snprintf(wf_dir, sizeof wf_dir, "%s", test_tmpdir());
  snprintf(db_path, sizeof db_path, "%s/app.db", test_tmpdir());
  char path[300];
  snprintf(path, sizeof path, "%s/welcome.lua", wf_dir);
  FILE *f = fopen(path, "w");
  fputs(workflow_src, f);
  fclose(f);

  uv_loop_t app_loop; /* the application's loop, used for its own work too */
  uv_loop_init(&app_loop);

  wf_config cfg;
  wf_config_init(&cfg);
  cfg.loop = &app_loop; /* run on the application's loop instead of one the host owns */
  app_state app = {.start_rc = -1};
  int rc = wf_host_open(db_path, &cfg, &app.host);
  if (rc != WF_OK) fprintf(stderr, "open: %s\n", wf_errmsg(app.host));
  CHECK(rc == WF_OK);
  rc = wf_load_dir(app.host, wf_dir);
  if (rc != WF_OK) fprintf(stderr, "load: %s\n", wf_errmsg(app.host));
  CHECK(rc == WF_OK);
  CHECK(wf_register_action(app.host, "greet", greet, NULL, NULL) == WF_OK);
  CHECK(wf_register_action(app.host, "lookup", lookup, &app_loop, NULL) == WF_OK);
  CHECK(wf_host_start(app.host) == WF_OK); /* recover earlier work, take requests */

  /* Start an instance with a JSON input; NULL id: the host makes one (copied to app.id). */
  rc = wf_start(app.host, "welcome", "{\"name\":\"Ada\"}", NULL, app.id, on_started, &app);
  if (rc != WF_OK) fprintf(stderr, "start: %s\n", wf_errmsg(app.host));
  CHECK(rc == WF_OK);

  uv_timer_init(&app_loop, &app.poll);
  app.poll.data = &app;
  uv_timer_start(&app.poll, on_poll, 10, 10);
  uv_run(&app_loop, UV_RUN_DEFAULT); /* returns at uv_stop() in on_poll */

  wf_host_close(app.host);           /* closes the host's handles on our loop */
  uv_run(&app_loop, UV_RUN_DEFAULT); /* runs the remaining close callbacks */
  rc = uv_loop_close(&app_loop);
  if (rc != 0) fprintf(stderr, "uv_loop_close: %s (handles left on the loop)\n", uv_strerror(rc));
  CHECK(rc == 0);

  CHECK(app.start_rc == WF_OK);
  CHECK(app.durable_seen);
  CHECK(app.output && !strcmp(app.output, "\"Hello, Ada (gold)\""));
  char key[WF_ID_MAX + 32];
  snprintf(key, sizeof key, "%s:1", app.id); /* greet is the instance's first step */
  CHECK(!strcmp(greet_key, key));
  CHECK(lookup_attempt == 1);
  free(app.output);
  TEST_MAIN_END();
}
