#!/usr/bin/env bash
# Two signet builds side by side (`serve --dev`, REST and gRPC), one load
# generator, rounds alternating between them so that a noisy moment of a
# shared host lands on both; prints every round and the median ratio
# new/old. For "did this change cost anything":
#
#   scripts/bench-ab.sh OLD/signet target/release/signet target/release/signet-bench [ROUNDS]
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,7s/^# \{0,1\}//p' "$0" >&2; exit 2; }
OLD=$1 NEW=$2 LOADGEN=$3 ROUNDS=${4:-3}
W=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
declare -A REST GRPC PID
for v in old new; do
  bin=$OLD
  [ $v = new ] && bin=$NEW
  r=$(port)
  g=$(port)
  "$bin" serve --dev --data-dir "$W/$v" --rest-addr "127.0.0.1:$r" --grpc-addr "127.0.0.1:$g" >"$W/$v.log" 2>&1 &
  PID[$v]=$!
  REST[$v]=https://127.0.0.1:$r
  GRPC[$v]=https://127.0.0.1:$g
done
trap 'kill "${PID[old]}" "${PID[new]}" 2>/dev/null; rm -rf "$W"' EXIT
for v in old new; do
  for _ in $(seq 300); do
    curl -sf --cacert "$W/$v/root.pem" "${REST[$v]}/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

for round in $(seq "$ROUNDS"); do
  for kind in rest grpc; do
    for v in old new; do
      report="$W/$v-$kind-$round.json"
      if [ $kind = rest ]; then
        "$LOADGEN" load --target signet-rest --url "${REST[$v]}" --ca "$W/$v/root.pem" \
          --duration 8s --warmup 2s --json "$report" >/dev/null 2>&1
      else
        "$LOADGEN" load --target signet-grpc --url "${GRPC[$v]}" --ca "$W/$v/root.pem" \
          --dev-issuer "$W/$v" --duration 8s --warmup 2s --json "$report" >/dev/null 2>&1
      fi
      python3 - "$report" "$kind" "$v" "$round" <<'PY' | tee -a "$W/rounds.txt"
import json, sys
d = json.load(open(sys.argv[1]))
lat = d.get("latency_ms") or {}
print(f"{sys.argv[2]} {sys.argv[3]} round {sys.argv[4]}: rps={d['throughput']:.1f} "
      f"p50={lat.get('p50')} p99={lat.get('p99')} errors={sum(d['errors'].values())}")
PY
    done
  done
done

python3 - "$W/rounds.txt" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\w+) (\w+) round \d+: rps=([\d.]+)", line)
    if m:
        runs.setdefault((m[1], m[2]), []).append(float(m[3]))
for kind in ("rest", "grpc"):
    old = statistics.median(runs[(kind, "old")])
    new = statistics.median(runs[(kind, "new")])
    print(f"{kind}: median {old:.0f}/s old, {new:.0f}/s new, new/old {new / old:.3f}")
PY
