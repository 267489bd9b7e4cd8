#!/usr/bin/env bash
# What the `metrics` feature costs: every side-by-side benchmark built twice (feature on, with
# a Prometheus recorder installed; feature off), the two builds run interleaved for ROUNDS
# rounds on this machine, and for each `ratio <name>` line (ours against fred in the same
# process) the value with the feature on divided by the value with it off:
#   ratio metrics_cost_<name> <on/off>      (1.0 = free; 0.95 = 5 % slower with metrics)
# as the median over rounds of each round's back-to-back on/off pair; for a time per
# operation (`*_ns`), `info metrics_cost_<name>_added <ns>` instead.
#
# ./scripts/bench-metrics.sh [ROUNDS]   (default 3; release builds; about 4 minutes a round)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
BENCHES=(counter cache lock idempotency snapshot ratelimit)
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

build() { # $1: on|off, then cargo feature flags
  local side="$1"; shift
  mkdir -p "$OUT/$side"
  for b in "${BENCHES[@]}"; do
    local exe
    exe="$(cargo bench --bench "$b" --no-run --message-format=json "$@" 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["bench"]:
        print(m["executable"])' | tail -1)"
    cp "$exe" "$OUT/$side/$b"
  done
}
echo "building: metrics on"
build on
echo "building: metrics off"
build off --no-default-features --features tls

for r in $(seq 1 "$ROUNDS"); do
  # Alternate which side goes first, round by round.
  if (( r % 2 )); then order=(on off); else order=(off on); fi
  for b in "${BENCHES[@]}"; do
    for side in "${order[@]}"; do
      "$OUT/$side/$b" --bench 2>/dev/null | grep -E '^(ratio|rate) ' | sed "s/^/$side $r /" >> "$OUT/lines"
    done
  done
  echo "round $r done"
done

python3 - "$OUT/lines" <<'EOF'
import sys, statistics
# (kind, name) -> round -> side -> value
by = {}
for line in open(sys.argv[1]):
    side, rnd, kind, name, value = line.split()[:5]
    by.setdefault((kind, name), {}).setdefault(rnd, {})[side] = float(value)
for (kind, name), rounds in sorted(by.items()):
    # Both sides of this ratio are ours: the feature moves them alike.
    if name.endswith("woken_vs_polling"):
        continue
    pairs = [(r["on"], r["off"]) for r in rounds.values() if "on" in r and "off" in r and r["off"] > 0]
    if not pairs:
        continue
    on = statistics.median(p[0] for p in pairs)
    off = statistics.median(p[1] for p in pairs)
    print(f"{kind} {name}: on {on:.3f} [{min(p[0] for p in pairs):.3f}-{max(p[0] for p in pairs):.3f}], "
          f"off {off:.3f} [{min(p[1] for p in pairs):.3f}-{max(p[1] for p in pairs):.3f}]")
    if name.endswith("_ns"):
        # A time per operation: what the feature adds, in nanoseconds.
        print(f"info metrics_cost_{name}_added {on - off:.1f}")
        continue
    # Each round's on/off pair ran back to back; the median of those paired ratios is
    # steadier than the ratio of medians on a noisy machine.
    paired = sorted(a / b for a, b in pairs)
    print(f"ratio metrics_cost_{name} {statistics.median(paired):.3f} "
          f"(paired rounds {paired[0]:.3f}-{paired[-1]:.3f})")
EOF
