#!/usr/bin/env bash
# The events figures in docs/performance.md ("Events end to end"): the seeds' 500 events/s to
# 100 wildcard subscribers over WebSocket, QUIC and SSE, batching off and on, and the room
# comparison, interleaved, three rounds; then the relay's write syscalls per delivery (perf,
# root or perf_event_paranoid <= 1). Build first:
#   cargo build --release --bin edgerelay --bin edgerelay-load
# Usage: benches/load/events.sh [OUT]   (about 12 minutes on 2 cores)
set -euo pipefail
OUT=${1:-target/load-events}
BIN=${CARGO_TARGET_DIR:-target}/release/edgerelay-load
BATCH=(--relay-env EDGERELAY_EVENTS__BATCH_DELAY_MS=10)
mkdir -p "$OUT"
run() { # transport batching(off|on) extra-args...
  local t=$1 cfg=$2; shift 2
  local tr=$t sse=() env=()
  [ "$t" = sse ] && { tr=ws; sse=(--sse); }
  [ "$cfg" = on ] && env=("${BATCH[@]}")
  "$BIN" --transport "$tr" "${env[@]}" "$@" events --subscribers 100 --rate 500 "${sse[@]}"
}
for round in 1 2 3; do
  for cfg in off on; do
    for t in ws quic sse; do
      echo "== round $round batching $cfg $t load $(cut -d' ' -f1-3 /proc/loadavg)"
      run $t $cfg --quiet --duration 10 --json "$OUT/ev-$t-$cfg-$round.json"
    done
  done
  echo "== round $round rooms load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$BIN" --transport ws --quiet --duration 10 --json "$OUT/rooms-ws-$round.json" \
    fanout --subscribers 100 --rooms 1 --publishers 1 --rate 500 --codec postcard
done
# Syscalls of the relay during 5 s of publishing (about 250,000 deliveries).
EV=syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_sendmsg,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex
for round in 1 2; do
  for cfg in off on; do
    for t in ws quic sse; do
      log="$OUT/perf-$t-$cfg-$round.out"
      run $t $cfg --duration 12 > "$log" 2>&1 &
      gen=$!
      for _ in $(seq 60); do grep -q publishing "$log" && break; sleep 0.5; done
      sleep 2
      echo "== perf round $round batching $cfg $t load $(cut -d' ' -f1-3 /proc/loadavg)"
      perf stat -e "$EV" -p "$(pgrep -P $gen edgerelay | head -1)" -- sleep 5 2>&1 | grep syscalls
      wait $gen
    done
  done
done
