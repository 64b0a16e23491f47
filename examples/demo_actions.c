/*
 * demo_actions.c — a plugin for `wfhost run --plugin` with the actions the example
 * workflows call. They stand in for real services: each prints what it was asked to do and
 * answers with a plausible result. `ship` completes asynchronously, 300 ms later, from a
 * libuv timer, as an action that talks to a remote service would.
 *
 * It also subscribes to the outbox: `shipping_feed` receives every order.shipped message
 * (prints it) and refuses an order shipped to the address "nowhere", so that a message can be
 * seen retried and kept as a dead letter (`wfhost outbox --failed`).
 *
 *   gcc -shared -fPIC -o demo_actions.so examples/demo_actions.c -I host
 *   wfhost run --plugin ./demo_actions.so
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "wfhost.h"

static void say(wf_call *c) {
  fprintf(stderr, "  [demo] %-17s %s (key %s)\n", wf_call_action(c), wf_call_params(c), wf_call_key(c));
}

/* Reads a number field from params (the demo's params are small and flat). */
static double number_field(const char *json, const char *field) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", field);
  const char *p = strstr(json, pat);
  return p ? strtod(p + strlen(pat), NULL) : 0;
}

static void reply(wf_call *c, const char *fmt) {
  char buf[512];
  snprintf(buf, sizeof buf, fmt, wf_call_key(c));
  wf_call_ok(c, buf);
}

static void sent(wf_call *c, void *ud) {
  (void)ud;
  say(c);
  reply(c, "{\"sent\":true,\"message_id\":\"msg-%s\"}");
}

static void reserve_inventory(wf_call *c, void *ud) {
  (void)ud;
  say(c);
  if (strstr(wf_call_params(c), "\"sku\":\"out-of-stock\""))
    wf_call_ok(c, "{\"reserved\":false,\"missing\":[\"out-of-stock\"]}");
  else
    reply(c, "{\"reserved\":true,\"reservation\":\"res-%s\"}");
}

static void charge_payment(wf_call *c, void *ud) {
  (void)ud;
  say(c);
  if (number_field(wf_call_params(c), "amount") > 10000)
    wf_call_fail(c, "declined", "card declined: amount over the card's limit", WF_PERMANENT);
  else
    reply(c, "{\"id\":\"pay-%s\"}");
}

static void ok_action(wf_call *c, void *ud) {
  (void)ud;
  say(c);
  wf_call_ok(c, "{\"ok\":true}");
}

static void ship_done(uv_timer_t *t) {
  wf_call *c = t->data;
  reply(c, "{\"tracking\":\"TRK-%s\"}");
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

static void ship(wf_call *c, void *ud) {
  (void)ud;
  say(c);
  uv_timer_t *t = malloc(sizeof *t);
  if (!t) {
    wf_call_fail(c, "no_memory", "out of memory", WF_TRANSIENT);
    return;
  }
  uv_timer_init(wf_host_loop(wf_call_host(c)), t);
  t->data = c;
  uv_timer_start(t, ship_done, 300, 0);
}

static void shipping_feed(wf_delivery *d, const char *msg_id, const char *topic, const char *payload, int attempt,
                          void *ud) {
  (void)ud;
  fprintf(stderr, "  [demo] feed %s %s attempt %d %s\n", topic, msg_id, attempt, payload);
  if (strstr(payload, "\"address\":\"nowhere\""))
    wf_delivery_fail(d, "bad_address", "the feed refuses the address 'nowhere'");
  else
    wf_delivery_ok(d);
}

int wfhost_plugin_init(wf_host *h);
int wfhost_plugin_init(wf_host *h) {
  int rc = WF_OK;
  if (!rc) rc = wf_register_action(h, "notify", sent, NULL, NULL);
  if (!rc) rc = wf_register_action(h, "send_email", sent, NULL, NULL);
  if (!rc) rc = wf_register_action(h, "escalate", ok_action, NULL, NULL);
  if (!rc) rc = wf_register_action(h, "reserve_inventory", reserve_inventory, NULL, NULL);
  if (!rc) rc = wf_register_action(h, "release_inventory", ok_action, NULL, NULL);
  /* A payment service: five attempts, each given 5 s, and a breaker per customer (a
   * customer's failing card must not stop everyone's payments). */
  wf_action_opts pay;
  wf_action_opts_init(&pay);
  pay.retry.max_attempts = 5;
  pay.retry.attempt_timeout_ms = 5000;
  pay.breaker.key_param = "customer";
  if (!rc) rc = wf_register_action(h, "charge_payment", charge_payment, NULL, &pay);
  if (!rc) rc = wf_register_action(h, "refund_payment", ok_action, NULL, NULL);
  if (!rc) rc = wf_register_action(h, "ship", ship, NULL, NULL);
  if (!rc) rc = wf_register_action(h, "publish_report", ok_action, NULL, NULL); /* nightly_report */
  /* Two attempts, 200 ms apart. */
  wf_subscriber_opts feed;
  wf_subscriber_opts_init(&feed);
  feed.retry.max_attempts = 2;
  feed.retry.backoff = WF_BACKOFF_CONSTANT;
  feed.retry.initial_delay_ms = 200;
  feed.retry.jitter = WF_JITTER_NONE;
  if (!rc) rc = wf_subscribe(h, "shipping_feed", "order.shipped", shipping_feed, NULL, &feed);
  return rc;
}
