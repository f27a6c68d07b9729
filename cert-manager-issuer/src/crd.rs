//! `SignetIssuer` and `SignetClusterIssuer` (group `signet.dev`, `v1alpha1`).

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The issuer's backend: the same shape as a `backends.<name>` entry of
/// signet's configuration (`type: vault`, `address`, ...), except that every
/// credential is a Secret reference `<key>_secret: {name, key}` in place of
/// the config file's `<key>_file` (file paths are refused).
fn backend_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "required": ["type"],
        "description": "A backend definition shaped like signet's `backends.<name>` config entries, with `<key>_secret: {name, key}` in place of every `<key>_file`.",
        "properties": { "type": { "type": "string", "description": "local, vault, aws_pca or gcp_cas (as compiled into signet)" } },
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// How the issuer uses its backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Direct,
    Delegated,
}

/// A delegated issuer's intermediate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntermediateSpec {
    /// e.g. `720h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// `ecdsa-p256` (default), `ecdsa-p384`, `rsa-2048`, `rsa-3072`, `rsa-4096`, `ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Fraction of the lifetime after which a new one is requested (default 2/3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<f64>,
    /// Subject CN of the intermediate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
}

/// What the issuer will sign.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerPolicy {
    /// Longest certificate lifetime (e.g. `2160h`); requests asking more get this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<String>,
    /// cert-manager usages a request may ask for; default
    /// digital signature, key encipherment, server auth, client auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_usages: Option<Vec<String>>,
    /// Whether `isCA: true` requests are signed (as CA:TRUE, pathLen 0).
    #[serde(default)]
    pub allow_ca: bool,
    /// Whether wildcard DNS names (`*.example.com`) are signed.
    #[serde(default)]
    pub allow_wildcards: bool,
    /// SAN patterns (signet syntax); default any DNS name, any IP, any SPIFFE
    /// ID of the trust domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_sans: Option<Vec<String>>,
    /// Signatures per second for this issuer (default 10, bursts of twice
    /// that); requests beyond it stay Pending and are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
}

/// Shared by both kinds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerSpec {
    #[schemars(schema_with = "backend_schema")]
    pub backend: serde_json::Value,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate: Option<IntermediateSpec>,
    #[serde(default)]
    pub policy: IssuerPolicy,
    /// SPIFFE trust domain for URI names; default `cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
}

/// A condition on an issuer's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IssuerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<IssuerCondition>,
}

/// A namespaced issuer; its Secret references are read from its namespace.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "signet.dev",
    version = "v1alpha1",
    kind = "SignetIssuer",
    namespaced,
    status = "IssuerStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
pub struct SignetIssuerSpec {
    #[serde(flatten)]
    pub issuer: IssuerSpec,
}

/// A cluster-wide issuer; its Secret references are read from signet's
/// cluster resource namespace.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "signet.dev",
    version = "v1alpha1",
    kind = "SignetClusterIssuer",
    status = "IssuerStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
pub struct SignetClusterIssuerSpec {
    #[serde(flatten)]
    pub issuer: IssuerSpec,
}

/// Both CRDs as YAML documents (what `signet crds` prints and the chart ships).
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt as _;
    let docs = [SignetIssuer::crd(), SignetClusterIssuer::crd()];
    let mut out = String::from("# Generated by `signet crds`; do not edit.\n");
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&d).unwrap_or_default());
    }
    out
}
