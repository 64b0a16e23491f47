#!/bin/sh
# The `make run` demo: the wfhost command running the example workflows end to end on an
# embedded SQLite database — starts, events, timers, an asynchronous action, a crash
# (kill -9) and a restart, completion, the history of each instance, and schedules.
#   scripts/demo.sh BUILD_DIR
set -eu
build=${1:-build}
wfhost="$build/wfhost"
dir="$build/demo"
rm -rf "$dir"
mkdir -p "$dir"
export WFHOST_DB="$dir/wfhost.db"
host=
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

start_host() {
  "$wfhost" run --workflows workflows --plugin "$build/demo_actions.so" 2>>"$dir/host.log" &
  host=$!
  sleep 0.3
}
stop_host() { kill -TERM "$host" 2>/dev/null || true; wait "$host" 2>/dev/null || true; }
trap 'kill -9 $host 2>/dev/null || true' EXIT

# Waits until instance $1 has status $2 (at most 20 s).
wait_for() {
  i=0
  until "$wfhost" --json show "$1" | grep -q "\"status\":\"$2\""; do
    i=$((i + 1)); [ $i -lt 200 ] || { echo "timed out waiting for $1 to be $2"; cat "$dir/host.log"; exit 1; }
    sleep 0.1
  done
}

say "checking the workflow files"
"$wfhost" check workflows

say "starting the host on $WFHOST_DB (its log: $dir/host.log)"
start_host

say "an invoice: submitted, then approved"
"$wfhost" start invoice_approval '{"id":"INV-1","amount":1250}' --id inv-1
"$wfhost" signal inv-1 Submit '{"user":"ada"}'
"$wfhost" signal inv-1 Approve '{"user":"grace"}'

say "an invoice nobody decides on: escalated when its 2 s window times out"
"$wfhost" start invoice_approval '{"id":"INV-2","amount":90,"approval_window":"2s"}' --id inv-2
"$wfhost" signal inv-2 Submit '{"user":"ada"}'

say "an order: reserve, charge, a 1 s cooling-off timer, then an asynchronous shipment"
"$wfhost" start order_fulfillment \
  '{"id":"A-17","customer":"c-9","address":"1 Main St","cooling_off":"1s","items":[{"sku":"tea","qty":2,"price":4.5}]}' \
  --id order-1

say "an onboarding with a reminder every second"
"$wfhost" start user_onboarding '{"email":"ada@example.com","remind_every":"1s","max_reminders":5}' --id user-1
sleep 1.5

say "simulating a crash: kill -9 the host, then start a new one"
kill -9 "$host"; wait "$host" 2>/dev/null || true
"$wfhost" signal user-1 EmailVerified '{}'   # durable even while no host runs
start_host

wait_for inv-1 completed
wait_for inv-2 completed
wait_for order-1 completed
wait_for user-1 completed

say "all instances"
"$wfhost" list

say "the history of inv-2 (events, a timeout, an action)"
"$wfhost" show inv-2

say "the history of user-1 (timers and reminders across the crash)"
"$wfhost" show user-1

say "schedules: nightly_report declares one in its file; an operator adds and removes another"
"$wfhost" schedule add invoice_approval '0 9 * * mon-fri' '{"id":"INV-DAILY","amount":0}' --id weekday-invoice --tz America/New_York
"$wfhost" schedule list
"$wfhost" schedule rm weekday-invoice

stop_host
trap - EXIT
say "done: the host stopped gracefully; the database is $WFHOST_DB"
