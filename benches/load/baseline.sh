#!/usr/bin/env bash
# The baseline in docs/performance.md ("Load generator"): three runs of each measurement, JSON
# summaries (and step charts) in OUT. Build first:
#   cargo build --release --bin edgerelay --bin edgerelay-load
# Usage: benches/load/baseline.sh [OUT]   (about 15 minutes on 2 cores)
set -euo pipefail
OUT=${1:-target/load-baseline}
BIN=${CARGO_TARGET_DIR:-target}/release/edgerelay-load
mkdir -p "$OUT"
for run in 1 2 3; do
  for t in ws quic; do
    # CPU per million deliveries: 100-byte messages, 100 subscribers per room, 20,000 deliveries/s.
    "$BIN" --transport $t --duration 10 --quiet --json "$OUT/cpu-$t-$run.json" \
      fanout --subscribers 1000 --rooms 10 --publishers 4 --rate 200 --payload 100
    # The same shape at 100,000 deliveries/s, and one room of 100 at 40,000/s: with several
    # messages per subscriber and commit batch, writers write several frames per system call.
    "$BIN" --transport $t --duration 10 --quiet --json "$OUT/cpu100k-$t-$run.json" \
      fanout --subscribers 1000 --rooms 10 --publishers 4 --rate 1000 --payload 100
    "$BIN" --transport $t --duration 10 --quiet --json "$OUT/dense-$t-$run.json" \
      fanout --subscribers 100 --rooms 1 --publishers 4 --rate 400 --payload 100
    if [ $t = ws ]; then
      # 500,000 deliveries/s offered: the relay's CPU when the pair is saturated.
      "$BIN" --transport $t --duration 10 --quiet --json "$OUT/cpu500k-$t-$run.json" \
        fanout --subscribers 1000 --rooms 10 --publishers 4 --rate 5000 --payload 100
    fi
    # Memory per idle connection.
    "$BIN" --transport $t --duration 5 --quiet --json "$OUT/idle-$t-$run.json" \
      idle --connections 2000
    # Highest sustainable fanout with p99 < 50 ms, then latency at half that rate. 16 steps
    # reach 778,000 deliveries/s (12 stopped at 202,000, under the WebSocket target).
    "$BIN" --transport $t --duration 5 --quiet --json "$OUT/step-$t-$run.json" \
      step --subscribers 1000 --rooms 10 --publishers 4 --payload 100 --rate 50 --factor 1.4 \
      --steps 16 --p99-bound-ms 50 --drain 5 --half --chart "$OUT/step-$t-$run.png"
  done
done
