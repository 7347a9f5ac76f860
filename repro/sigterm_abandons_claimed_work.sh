#!/bin/bash
# SIGTERM (graceful shutdown) while a claimed request whose client hung up
# still runs: the server exits at once, the work is cut short mid-statement
# and its idempotency key stays `running` (until its 10 s lease expires).
#
# README: "A request that claimed its key runs to its end even when the
# client hangs up"; "Ctrl-C (or SIGTERM) lets in-flight requests finish".
# axum's graceful shutdown waits for connections, not for the task the
# layer spawned; the runtime is dropped and the task with it.
#
# Needs PostgreSQL (postgres://postgres@127.0.0.1:5432) and a built
# target/debug/invoicing. Exit 1 when the fault shows.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/debug/invoicing
ADMIN=postgres://postgres@127.0.0.1:5432/test
NAME=ah_sigterm_$$
DB=postgres://postgres@127.0.0.1:5432/$NAME
PORT=${PORT:-38121}
psql $ADMIN -qc "CREATE DATABASE $NAME" || exit 2
trap 'psql $ADMIN -qc "DROP DATABASE IF EXISTS $NAME WITH (FORCE)"' EXIT
$BIN --listen 127.0.0.1:$PORT --database-url $DB > /tmp/$NAME.log 2>&1 &
SRV=$!
for _ in $(seq 50); do curl -s -o /dev/null localhost:$PORT/diagram && break; sleep 0.1; done
KEY=sigterm-1
# Hold a lock on `invoices` for 5 s: the claim (idem_keys) goes through, the
# handler's INSERT waits.
psql $DB -qc "BEGIN; LOCK TABLE invoices IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(5); COMMIT;" >/dev/null &
LOCKER=$!
sleep 0.5
curl -s -m 1 -o /dev/null -X POST localhost:$PORT/invoices -H 'Content-Type: application/json' \
  -H "Idempotency-Key: $KEY" -d '{"customer": "ACME", "amount_cents": 100, "currency": "EUR"}'
echo "client hung up after 1 s; key is $(psql $DB -Atc "select state from idem_keys where idem_key = '$KEY'")"
kill -TERM $SRV
wait $SRV
echo "server exited ($?) right after SIGTERM"
wait $LOCKER
sleep 0.5
STATE=$(psql $DB -Atc "select state from idem_keys where idem_key = '$KEY'")
ROWS=$(psql $DB -Atc "select count(*) from invoices where request_key = '$KEY'")
echo "after the lock is gone: key '$STATE', invoices for the key: $ROWS"
if [ "$STATE" = "running" ] && [ "$ROWS" = "0" ]; then
  echo "FAULT: the claimed request was abandoned by the graceful shutdown; its key is left running"
  exit 1
fi
echo OK
