#!/usr/bin/env bash
# Reruns every cell of issue 24's proof through the packet-level emulator and writes one
# Markdown report: outages of 2/5/10/30 s, five short outages in a row and a handover to 4g
# (so wifi -> 4g among them) under every profile, over QUIC, QUIC+hook, WT+hook, WS and WS+hook,
# the current client and (for before/after) the client as it was before issue 24; the `train`
# profile's latency bench; QUIC reconnects with and without 0-RTT; an idle client's packets per
# minute; and the exactly-once tests. Meant for a quiet machine: the figures are timings.
#
# Run as root from the repository root (the emulator needs network namespaces and /dev/net/tun):
#
#   netsim/run-matrix.sh                                  # everything, 3 rounds
#   NETSIM_RUNS=1 NETSIM_PROFILES=wifi,edge-of-cell NETSIM_OUTAGES=2,5 \
#     MATRIX_STEPS=outages,keepalive netsim/run-matrix.sh # a reduced run
#
# Environment (all optional):
#   NETSIM_RUNS      rounds (default 3); the outage configurations are interleaved per round
#   NETSIM_PROFILES  profiles (default: all)
#   NETSIM_OUTAGES   outages (default 2,5,10,30,repeated,handover,quiet2,quiet5; quietN: an N s
#                    outage with everything published in its first 0.5 s)
#   MATRIX_CONFIGS   outage-bench client configurations, in columns side by side (default
#                    now,former): now (today's defaults), former (NETSIM_FORMER_CLIENT=1: idle
#                    timeout 8 s, keep-alive 2 s, no stall probe), nowatch (NETSIM_NO_RECEIVE_WATCH=1),
#                    noanswer (NETSIM_NO_HEARTBEAT_ANSWER=1: the relay's quic.answer_heartbeats off),
#                    noprobe (NETSIM_NO_FADE_PROBE=1: the relay's quic.probe_fades off),
#                    0rtt (NETSIM_0RTT=1)
#   MATRIX_STEPS     default build,outages,train,reconnect,keepalive,tests
#   MATRIX_DEBUG=1   unoptimised benches (`cargo test --bench`): only to try the script where a
#                    release build would take too long; its figures are not comparable
#   MATRIX_OUT       the report (default target/netsim-matrix/matrix-<UTC time>.md); the raw
#                    output of every step goes next to it, in <report>.d/
#
# Each step's command, wall time and load average are in the report, so any figure can be
# traced to what produced it. A failed step is reported and the script goes on; it exits
# non-zero at the end if any step failed (a broken exactly-once check fails its bench).
set -uo pipefail

cd "$(dirname "$0")/.."
RUNS=${NETSIM_RUNS:-3}
# The bench's outages plus quiet fades (everything published in the outage's first 0.5 s, so the
# relay's probe timer backs off: the receive-only case of issue 24).
export NETSIM_OUTAGES=${NETSIM_OUTAGES:-2,5,10,30,repeated,handover,quiet2,quiet5}
CONFIGS=${MATRIX_CONFIGS:-now,former}
STEPS=${MATRIX_STEPS:-build,outages,train,reconnect,keepalive,tests}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${MATRIX_OUT:-target/netsim-matrix/matrix-$STAMP.md}
RAW="$OUT.d"
mkdir -p "$(dirname "$OUT")" "$RAW"
unset NETSIM_FORMER_CLIENT NETSIM_NO_RECEIVE_WATCH NETSIM_NO_HEARTBEAT_ANSWER NETSIM_NO_FADE_PROBE NETSIM_0RTT NETSIM_NO_STALL_PROBE NETSIM_VARIANTS NETSIM_LOG
failed=()
# The benches through cargo: optimised (`cargo bench`) unless MATRIX_DEBUG=1.
if [[ ${MATRIX_DEBUG:-0} == 1 ]]; then BENCH=(cargo test -p netsim); else BENCH=(cargo bench -p netsim); fi

has_step() { [[ ",$STEPS," == *",$1,"* ]]; }
# A report section's title, and its closing line (the last step's command, time and load).
heading() { printf '## %s\n\n' "$1" >>"$OUT"; }
footer() { printf '%s%s\n\n' "$STEP_LINE" "${1:-}" >>"$OUT"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

if [[ $(id -u) -ne 0 ]]; then
    echo "run-matrix: the emulator needs root (network namespaces, /dev/net/tun)" >&2
    exit 2
fi

{
    echo "# netsim matrix, issue 24"
    echo
    echo "- started $(date -u '+%Y-%m-%d %H:%M:%S') UTC on $(hostname), $(nproc) cores, load average $(loadavg)"
    echo "- commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "- benches: \`${BENCH[*]}\`"
    echo "- NETSIM_RUNS=$RUNS NETSIM_PROFILES=${NETSIM_PROFILES:-all} NETSIM_OUTAGES=$NETSIM_OUTAGES MATRIX_CONFIGS=$CONFIGS"
    echo "- raw output: $RAW/"
    echo
} >"$OUT"

# Runs one step: `step <name> <log> <command...>`; appends its command, time and load to the
# report.
step() {
    local name=$1 log=$2
    shift 2
    local start=$SECONDS before
    before=$(loadavg)
    echo "== $name: $*" >&2
    if "$@" >"$log" 2>"$log.stderr"; then
        status=ok
    else
        status="FAILED (exit $?)"
        failed+=("$name")
    fi
    local took=$((SECONDS - start))
    echo "   $status in ${took}s" >&2
    STEP_LINE="\`$*\`: $status in $took s (load average $before → $(loadavg))"
}

if has_step build; then
    step build "$RAW/build.log" "${BENCH[@]}" --benches --no-run
    echo "**Build** $STEP_LINE" >>"$OUT"
    echo >>"$OUT"
fi

if has_step outages; then
    heading "Outages through the emulator (\`netsim/benches/outages.rs\`)"
    echo "Milliseconds from the network's return to holding all 100 messages: the median of the rounds and every value; ↻n: the connection dropped in n rounds; ✗n: n rounds failed (see the raw log). Configurations are interleaved per round." >>"$OUT"
    echo >>"$OUT"
    for round in $(seq 1 "$RUNS"); do
        for config in ${CONFIGS//,/ }; do
            case $config in
                now) env=() ;;
                former) env=(NETSIM_FORMER_CLIENT=1) ;;
                nowatch) env=(NETSIM_NO_RECEIVE_WATCH=1) ;;
                noanswer) env=(NETSIM_NO_HEARTBEAT_ANSWER=1) ;;
                noprobe) env=(NETSIM_NO_FADE_PROBE=1) ;;
                0rtt) env=(NETSIM_0RTT=1) ;;
                *) echo "run-matrix: unknown configuration $config" >&2; exit 2 ;;
            esac
            step "outages $config round $round" "$RAW/outages-$config-$round.log" \
                env "${env[@]}" NETSIM_RUNS=1 "${BENCH[@]}" --bench outages
            echo "- $config, round $round: $STEP_LINE" >>"$OUT"
        done
    done
    echo >>"$OUT"
    python3 - "$RAW" "$CONFIGS" >>"$OUT" <<'PY'
import glob, os, re, statistics, sys

raw, configs = sys.argv[1], sys.argv[2].split(",")
# "round 0 2 s wifi QUIC+hook: 42 ms", or ": FAILED <why>" (which may hold colons itself).
line = re.compile(r"^round \d+ ([^:]+) (\S+) (\S+): (.*)$")
cells, outages, profiles = {}, [], []
for config in configs:
    for path in sorted(glob.glob(os.path.join(raw, f"outages-{config}-*.log"))):
        for text in open(path, encoding="utf-8"):
            m = line.match(text.rstrip("\n"))
            if not m:
                continue
            outage, profile, variant, result = m.groups()
            if outage not in outages:
                outages.append(outage)
            if profile not in profiles:
                profiles.append(profile)
            cells.setdefault((outage, profile, variant, config), []).append(result)

VARIANTS = ["QUIC", "QUIC+hook", "WT+hook", "WS", "WS+hook"]

def values(results):
    """(milliseconds with None for a failure, reconnects); >30 s counts as infinite."""
    ms, dropped = [], 0
    for r in results:
        m = re.match(r"(\d+) ms", r)
        if m:
            ms.append(int(m.group(1)))
            dropped += "reconnected" in r
        elif "not caught up" in r:
            ms.append(float("inf"))
        else:
            ms.append(None)
    return ms, dropped

def median(results):
    ms = [v for v in values(results)[0] if v is not None]
    return sorted(ms)[len(ms) // 2] if ms else None

def show(v):
    return ">30000" if v == float("inf") else str(v)

def cell(results):
    if not results:
        return "n/a"
    ms, dropped = values(results)
    ok = [v for v in ms if v is not None]
    text = ""
    if ok:
        text = show(median(results))
        if len(ok) > 1:
            text += " (" + " / ".join(show(v) for v in ok) + ")"
    if dropped:
        text += f" ↻{dropped}"
    if len(ok) < len(ms):
        text += f" ✗{len(ms) - len(ok)}"
    return text

columns = [(v, c) for v in VARIANTS for c in configs]
for outage in outages:
    print(f"**{outage}**\n")
    print("| profile | " + " | ".join(v if len(configs) == 1 else f"{v} {c}" for v, c in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for profile in profiles:
        row = [cell(cells.get((outage, profile, v, c), [])) for v, c in columns]
        print(f"| {profile} | " + " | ".join(row) + " |")
    print()

# The goal of issue 24, checked on the first configuration: QUIC (raw and WT) at least as fast
# as WebSocket, like for like (hook against hook), and caught up within 1 s but on satellite.
config = configs[0]
print(f"**Goal check ({config})**: QUIC ≤ WS compares medians like for like (QUIC/WS without the hook, QUIC+hook and WT+hook against WS+hook); `< 1 s` is the best QUIC variant's median (not required on satellite).\n")
print("| outage | profile | QUIC ≤ WS | QUIC+hook ≤ WS+hook | WT+hook ≤ WS+hook | best QUIC < 1 s |")
print("|---|---|:-:|:-:|:-:|:-:|")
misses = 0
for outage in outages:
    for profile in profiles:
        med = {v: median(cells.get((outage, profile, v, config), [])) for v in VARIANTS}
        def le(a, b):
            global misses
            if med[a] is None or med[b] is None:
                return "n/a"
            if med[a] <= med[b]:
                return "yes"
            misses += 1
            return f"**no** ({show(med[a])} > {show(med[b])})"
        quic = [med[v] for v in ("QUIC", "QUIC+hook", "WT+hook") if med[v] is not None]
        best = min(quic) if quic else None
        fast = "n/a" if best is None else ("yes" if best < 1000 else ("(satellite)" if profile == "satellite" else f"**no** ({show(best)})"))
        print(f"| {outage} | {profile} | {le('QUIC', 'WS')} | {le('QUIC+hook', 'WS+hook')} | {le('WT+hook', 'WS+hook')} | {fast} |")
print(f"\nComparisons where QUIC's median is behind WebSocket's: {misses}.\n")
PY
fi

if has_step train; then
    heading "\`train\` latency (\`netsim/benches/profiles.rs\`), $RUNS runs"
    echo '```' >>"$OUT"
    for round in $(seq 1 "$RUNS"); do
        step "train round $round" "$RAW/train-$round.log" \
            env NETSIM_PROFILES=train NETSIM_CHART="$RAW/train-$round.png" "${BENCH[@]}" --bench profiles
        if [[ $round -eq 1 ]]; then grep -E '^ +profile' "$RAW/train-$round.log" >>"$OUT"; fi
        grep -E '^ +train ' "$RAW/train-$round.log" | sed "s/^/round $round /" >>"$OUT"
    done
    printf '```\n\n' >>"$OUT"
    footer " (each run)"
fi

if has_step reconnect; then
    heading "QUIC reconnects, 0-RTT against a full handshake (\`netsim/benches/reconnect.rs\`)"
    step reconnect "$RAW/reconnect.log" "${BENCH[@]}" --bench reconnect
    grep -E '^\|' "$RAW/reconnect.log" >>"$OUT"
    echo >>"$OUT"
    footer
fi

if has_step keepalive; then
    heading "An idle client's packets per minute (\`netsim/benches/keepalive.rs\`)"
    step keepalive "$RAW/keepalive.log" "${BENCH[@]}" --bench keepalive
    echo '```' >>"$OUT"
    grep -vE '^(running|test |$)' "$RAW/keepalive.log" >>"$OUT"
    printf '```\n\n' >>"$OUT"
    footer
fi

if has_step tests; then
    heading "Every message once, in order (\`netsim/tests\`)"
    # One test at a time: each runs every profile at once, and several together on a small
    # machine miss their setup deadlines (a subscriber that never joined), which proves nothing.
    step tests "$RAW/tests.log" cargo test -p netsim --test blackout --test fades --test presence --test guarantees \
        --test ns -- --test-threads=1
    grep -E '^test |^test result' "$RAW/tests.log" | sed 's/^/    /' >>"$OUT"
    echo >>"$OUT"
    footer
fi

{
    echo "Finished $(date -u '+%Y-%m-%d %H:%M:%S') UTC, load average $(loadavg); ${SECONDS} s in all."
    if ((${#failed[@]})); then echo; echo "**Failed steps:** ${failed[*]} (see $RAW/)"; fi
} >>"$OUT"
echo "report: $OUT" >&2
((${#failed[@]} == 0))
