#!/usr/bin/env bash
# A/B of two signet binaries on the same local configuration, side by side in
# one run (alternating rounds, so a noisy moment of a shared host lands on
# both): REST and Istio gRPC throughput at 32 connections, and the server's
# CPU time per certificate. For checking one change; scripts/bench.sh is the
# full comparison with the peers.
#
#   scripts/bench-ab.sh BEFORE_BIN AFTER_BIN [ROUNDS] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1 AFTER=$2 ROUNDS=${3:-3} DURATION=${4:-10s}
LOADGEN=${LOADGEN:-target/release/signet-bench}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { for _ in $(seq 300); do curl -sf -o /dev/null --cacert "$2" "$1" && return 0; sleep 0.1; done; return 1; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

DEV="$WORK/dev"
"$AFTER" serve --dev --data-dir "$DEV" --rest-addr "127.0.0.1:$(free_port)" --grpc-addr "127.0.0.1:$(free_port)" >"$WORK/dev.log" 2>&1 &
pid=$!
for _ in $(seq 300); do [ -f "$DEV/jwks.json" ] && [ -f "$DEV/root.pem" ] && break; sleep 0.1; done
sleep 1; kill $pid; wait $pid 2>/dev/null || true
TOKEN="ab-$(openssl rand -hex 16)"; printf %s "$TOKEN" >"$WORK/token"
printf 'tokens:\n  - principal: bench\n    sha256: %s\n' "$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)" >"$WORK/tokens.yaml"
REST=$(free_port) GRPC=$(free_port) ADMIN=$(free_port)
cat >"$WORK/signet.yaml" <<YAML
trust_domain: cluster.local
admin: { listen: "127.0.0.1:$ADMIN" }
backends:
  local: { type: local, cert_file: $DEV/intermediate.pem, key_file: $DEV/intermediate-key.pem, chain_file: $DEV/root.pem }
authorities:
  mesh: { backend: local, policy: { default_ttl: 24h, max_ttl: 24h } }
frontends:
  rest:
    listen: 127.0.0.1:$REST
    authority: mesh
    auth: { tokens_file: $WORK/tokens.yaml }
    principals: [{ name: "token:bench", allowed_sans: ["spiffe://cluster.local/**"] }]
  istio:
    listen: 127.0.0.1:$GRPC
    authority: mesh
    auth: { jwt: [{ issuer: signet-dev, cluster: Kubernetes, jwks_file: $DEV/jwks.json }] }
YAML
printf '%-7s %-6s %-5s %10s %14s %7s\n' round binary path signs/s "cpu us/cert" errors
for r in $(seq "$ROUNDS"); do
  for which in before after; do
    bin=$BEFORE; [ $which = after ] && bin=$AFTER
    "$bin" serve --config "$WORK/signet.yaml" >"$WORK/$which.log" 2>&1 &
    spid=$!
    wait_ok "http://127.0.0.1:$ADMIN/readyz" /dev/null || { tail -5 "$WORK/$which.log" >&2; exit 1; }
    for path in rest grpc; do
      c0=$(cpu_s $spid)
      if [ $path = rest ]; then
        "$LOADGEN" load --target signet-rest --url "https://127.0.0.1:$REST" --ca "$DEV/root.pem" --token-file "$WORK/token" \
          --connections 32 --duration "$DURATION" --warmup 2s --json "$WORK/out.json" >/dev/null
      else
        "$LOADGEN" load --target signet-grpc --url "https://127.0.0.1:$GRPC" --ca "$DEV/root.pem" --dev-issuer "$DEV" \
          --connections 32 --duration "$DURATION" --warmup 2s --json "$WORK/out.json" >/dev/null
      fi
      c1=$(cpu_s $spid)
      python3 - "$WORK/out.json" "$c0" "$c1" "$r" "$which" "$path" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1])); c0, c1 = float(sys.argv[2]), float(sys.argv[3])
# CPU covers the 2 s warm-up and the window; requests in both are
# estimated at the window's rate.
n = rep["throughput"] * (rep["elapsed_s"] + 2.0)
print(f"{sys.argv[4]:<7} {sys.argv[5]:<6} {sys.argv[6]:<5} {rep['throughput']:10.0f} {1e6*(c1-c0)/max(n,1):14.0f} {sum(rep['errors'].values()):7d}")
PY
    done
    kill $spid; wait $spid 2>/dev/null || true
  done
done
