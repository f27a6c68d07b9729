// Command agentclient asks a CA for a workload certificate exactly as
// istio-agent does: istio's citadel CA client (TLS checked against the mesh
// root and the CA's SAN, a service-account token per call, the `clusterid`
// header) driven by istio's SecretManagerClient, which makes the key and CSR
// and checks the answer. It writes cert-chain.pem, key.pem and root-cert.pem
// into --out and prints one JSON line with what it got; any refusal is a
// non-zero exit with the error.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/credentialfetcher/plugin"
	"istio.io/istio/security/pkg/nodeagent/cache"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
)

func main() {
	addr := flag.String("ca-addr", "", "CA address host:port (istio-agent's CA_ADDR)")
	san := flag.String("ca-san", "istiod.istio-system.svc", "name the CA's certificate must carry")
	root := flag.String("root-cert", "", "mesh root (istio-ca-root-cert's root-cert.pem)")
	token := flag.String("token-file", "", "service-account token (aud istio-ca)")
	cluster := flag.String("cluster-id", "Kubernetes", "clusterid header")
	td := flag.String("trust-domain", "cluster.local", "trust domain")
	ns := flag.String("namespace", "default", "workload namespace")
	sa := flag.String("service-account", "default", "workload service account")
	ttl := flag.Duration("ttl", 24*time.Hour, "requested lifetime (SECRET_TTL)")
	ecc := flag.Bool("ecc", true, "an EC P-256 key (ECC_SIGNATURE_ALGORITHM=ECDSA), else RSA 2048")
	out := flag.String("out", "", "directory for cert-chain.pem, key.pem, root-cert.pem")
	flag.Parse()

	opts := &security.Options{
		CAEndpoint:                     *addr,
		CAEndpointSAN:                  *san,
		ClusterID:                      *cluster,
		TrustDomain:                    *td,
		WorkloadNamespace:              *ns,
		ServiceAccount:                 *sa,
		SecretTTL:                      *ttl,
		WorkloadRSAKeySize:             2048,
		CredFetcher:                    plugin.CreateTokenPlugin(*token),
		SecretRotationGracePeriodRatio: 0.5,
	}
	if *ecc {
		opts.ECCSigAlg = "ECDSA"
	}
	client, err := citadel.NewCitadelClient(opts, &citadel.TLSOptions{RootCert: *root})
	fail(err)
	defer client.Close()
	sm, err := cache.NewSecretManagerClient(client, opts)
	fail(err)
	defer sm.Close()
	item, err := sm.GenerateSecret(security.WorkloadKeyCertResourceName)
	fail(err)
	rootItem, err := sm.GenerateSecret(security.RootCertReqResourceName)
	fail(err)
	fail(os.MkdirAll(*out, 0o700))
	fail(os.WriteFile(filepath.Join(*out, "cert-chain.pem"), item.CertificateChain, 0o644))
	fail(os.WriteFile(filepath.Join(*out, "key.pem"), item.PrivateKey, 0o600))
	fail(os.WriteFile(filepath.Join(*out, "root-cert.pem"), rootItem.RootCert, 0o644))
	line, _ := json.Marshal(map[string]any{
		"expires":  item.ExpireTime.UTC().Format(time.RFC3339),
		"lifetime": item.ExpireTime.Sub(item.CreatedTime).Round(time.Second).String(),
	})
	fmt.Println(string(line))
}

func fail(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "agentclient:", err)
		os.Exit(1)
	}
}
