#!/usr/bin/env bash
# Prepares an OpenBao (or Vault) PKI mount for signet and writes a token for it.
#
#   bao server -dev -dev-root-token-id=root &          # or your own server
#   BAO_ADDR=http://127.0.0.1:8200 BAO_TOKEN=root ./setup-openbao.sh ./signet-vault
#
# Creates: mount `pki` with a root CA (skipped if the mount exists), role
# `mesh` for workload leaves, policy `signet` (what signet needs, nothing
# more), and a renewable token with that policy in <dir>/token. Writes the
# root to <dir>/root.pem. Works with `vault` too: set BAO_BIN=vault.
set -euo pipefail
out=${1:?usage: setup-openbao.sh OUTPUT_DIR}
bao=${BAO_BIN:-bao}
export VAULT_ADDR=${BAO_ADDR:-${VAULT_ADDR:-http://127.0.0.1:8200}}
export VAULT_TOKEN=${BAO_TOKEN:-${VAULT_TOKEN:?set BAO_TOKEN to an admin token}}
mkdir -p "$out"

if ! "$bao" secrets list -format=json | grep -q '"pki/"'; then
  "$bao" secrets enable -path=pki -max-lease-ttl=87600h pki >/dev/null
  "$bao" write -field=certificate pki/root/generate/internal \
    common_name="signet example root" key_type=ec key_bits=256 ttl=87600h > "$out/root.pem"
else
  "$bao" read -field=certificate pki/cert/ca > "$out/root.pem"
fi

# Leaves for the mesh: the names come from signet's request, never from the
# CSR; no CN required; SPIFFE IDs allowed; EC, RSA or Ed25519 keys.
"$bao" write pki/roles/mesh \
  key_type=any allow_any_name=true allowed_uri_sans="spiffe://*" \
  require_cn=false use_csr_common_name=false use_csr_sans=false \
  key_usage=DigitalSignature server_flag=true client_flag=true \
  max_ttl=72h >/dev/null

"$bao" policy write signet - >/dev/null <<'HCL'
# direct mode: sign leaves with role "mesh"
path "pki/sign/mesh" { capabilities = ["create", "update"] }
# delegated mode: sign signet's intermediate
path "pki/root/sign-intermediate" { capabilities = ["create", "update"] }
# trust bundle
path "pki/issuers" { capabilities = ["list"] }
path "pki/issuer/+/json" { capabilities = ["read"] }
path "pki/cert/ca_chain" { capabilities = ["read"] }
# the layout check: which issuer the role signs with
path "pki/roles/mesh" { capabilities = ["read"] }
HCL

"$bao" token create -policy=signet -ttl=768h -renewable=true -field=token > "$out/token"
chmod 600 "$out/token"
echo "wrote $out/token and $out/root.pem"
