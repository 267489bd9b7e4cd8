#!/usr/bin/env bash
# What the `metrics` feature costs: every side-by-side benchmark built twice (feature on, with
# a Prometheus recorder installed; feature off), the two builds run interleaved for ROUNDS
# rounds on this machine, and for each `ratio <name>` line (ours against fred in the same
# process) the median with the feature on divided by the median with it off:
#   ratio metrics_cost_<name> <on/off>      (1.0 = free; 0.95 = 5 % slower with metrics)
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
      "$OUT/$side/$b" --bench 2>/dev/null | grep -E '^(ratio|rate) ' | sed "s/^/$side /" >> "$OUT/lines"
    done
  done
  echo "round $r done"
done

python3 - "$OUT/lines" <<'EOF'
import sys, statistics
by = {}
for line in open(sys.argv[1]):
    side, kind, name, value = line.split()[:4]
    by.setdefault((kind, name), {}).setdefault(side, []).append(float(value))
for (kind, name), sides in sorted(by.items()):
    if "on" not in sides or "off" not in sides:
        continue
    on, off = statistics.median(sides["on"]), statistics.median(sides["off"])
    print(f"{kind} {name}: on {on:.3f} [{min(sides['on']):.3f}-{max(sides['on']):.3f}], "
          f"off {off:.3f} [{min(sides['off']):.3f}-{max(sides['off']):.3f}]")
    if off > 0:
        print(f"ratio metrics_cost_{name} {on / off:.3f}")
EOF
