#!/usr/bin/env bash
# The card, end to end: start cserverd with 8 workers and the log at /tmp/myserver.log, run
# 1000 concurrent users, show the grep counts from the log, stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
log=/tmp/myserver.log
pidfile=$(mktemp -u /tmp/cserverd-demo.XXXXXX.pid)
out=$(mktemp /tmp/cserverd-demo.XXXXXX.out)

if [ -e "$log" ]; then
    mv -f "$log" "$log.old"
    echo "(moved the previous $log to $log.old so the counts below are this run's)"
fi
echo "\$ cserverd --workers 8 --log $log &"
"$bin/cserverd" --workers 8 --log "$log" --pid-file "$pidfile" >"$out" 2>&1 &
server=$!
stop() {
    if kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server"
        wait "$server" || true
    fi
    rm -f "$out"
}
trap stop EXIT
for _ in $(seq 1 100); do
    grep -q '^listening on' "$out" && break
    kill -0 "$server" 2>/dev/null || { cat "$out"; exit 1; }
    sleep 0.05
done
cat "$out"
echo
echo "\$ cclient --threads 1000 --user arijort"
"$bin/cclient" --threads 1000 --user arijort
echo
# The README's counting patterns (see "The log" there): anchored on the record's own quote, so a
# message that contains these words is not counted.
echo "\$ grep -c ' recvd message \"' $log"
grep -c ' recvd message "' "$log"
echo "\$ grep -c ' -- completed req \"' $log"
grep -c ' -- completed req "' "$log"
echo
echo "\$ cserverctl status"
"$bin/cserverctl" status
echo
echo "\$ kill -TERM \$(cat $pidfile)   # graceful stop"
stop
trap - EXIT
tail -n 2 "$log"
