// Command meshpeer is a workload of the root-rotation proof: it keeps a
// certificate from a CA exactly as istio-agent gets one (istio's citadel
// client and SecretManagerClient, which make the key and CSR and check the
// answer), renews it at half its life, and all the while does mutual-TLS
// handshakes with every other peer (addresses in --peers-dir), verifying
// each side's chain with Go's crypto/x509 against the roots of its own
// latest CA answer, the way a proxy trusts the mesh roots. It rewrites
// --status (JSON) every second: handshakes that passed and failed, the
// first errors, renewals (and failed ones), and the issuers it was given.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/credentialfetcher/plugin"
	"istio.io/istio/security/pkg/nodeagent/cache"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
)

type peer struct {
	mu       sync.Mutex
	cert     *tls.Certificate
	roots    *x509.CertPool
	renewAt  time.Time
	td       string
	ok       int
	failed   int
	errors   []string
	renewals int
	renewErr int
	issuers  []string
	rootsN   int
}

func (p *peer) fail(what string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failed++
	if len(p.errors) < 20 {
		p.errors = append(p.errors, fmt.Sprintf("%s %s: %v", time.Now().UTC().Format(time.RFC3339), what, err))
	}
}

// verify checks a presented chain against the current roots, as a proxy
// does: a path to a root, and a SPIFFE ID of the trust domain.
func (p *peer) verify(raw [][]byte) error {
	if len(raw) == 0 {
		return errors.New("no certificate presented")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	p.mu.Lock()
	roots := p.roots
	p.mu.Unlock()
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return err
	}
	for _, u := range certs[0].URIs {
		if u.Scheme == "spiffe" && u.Host == p.td {
			return nil
		}
	}
	return errors.New("no SPIFFE ID of the trust domain")
}

func (p *peer) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // the chain is checked by verify, not by host name
		ClientAuth:         tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			p.mu.Lock()
			defer p.mu.Unlock()
			return p.cert, nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			p.mu.Lock()
			defer p.mu.Unlock()
			return p.cert, nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error { return p.verify(raw) },
	}
}

type options struct {
	addr, san, root, token, cluster, ns, sa string
	ttl                                     time.Duration
}

// renew asks the CA for a new certificate with a fresh client, as an agent
// (re)starting would, reading the mesh root and the token anew.
func (p *peer) renew(o options) error {
	opts := &security.Options{
		CAEndpoint:                     o.addr,
		CAEndpointSAN:                  o.san,
		ClusterID:                      o.cluster,
		TrustDomain:                    p.td,
		WorkloadNamespace:              o.ns,
		ServiceAccount:                 o.sa,
		SecretTTL:                      o.ttl,
		WorkloadRSAKeySize:             2048,
		ECCSigAlg:                      "ECDSA",
		CredFetcher:                    plugin.CreateTokenPlugin(o.token),
		SecretRotationGracePeriodRatio: 0.5,
	}
	client, err := citadel.NewCitadelClient(opts, &citadel.TLSOptions{RootCert: o.root})
	if err != nil {
		return err
	}
	defer client.Close()
	sm, err := cache.NewSecretManagerClient(client, opts)
	if err != nil {
		return err
	}
	defer sm.Close()
	item, err := sm.GenerateSecret(security.WorkloadKeyCertResourceName)
	if err != nil {
		return err
	}
	rootItem, err := sm.GenerateSecret(security.RootCertReqResourceName)
	if err != nil {
		return err
	}
	cert, err := tls.X509KeyPair(item.CertificateChain, item.PrivateKey)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := rootItem.RootCert; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return err
		}
		pool.AddCert(c)
		n++
	}
	issuer := "?"
	if len(cert.Certificate) > 1 {
		if c, err := x509.ParseCertificate(cert.Certificate[1]); err == nil {
			issuer = c.Subject.CommonName + " / " + c.Issuer.CommonName
		}
	}
	life := item.ExpireTime.Sub(item.CreatedTime)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cert, p.roots, p.rootsN = &cert, pool, n
	p.renewAt = item.CreatedTime.Add(life / 2)
	p.renewals++
	if len(p.issuers) == 0 || p.issuers[len(p.issuers)-1] != issuer {
		p.issuers = append(p.issuers, issuer)
	}
	return nil
}

func (p *peer) status(path, name string) {
	p.mu.Lock()
	b, _ := json.Marshal(map[string]any{
		"name": name, "ok": p.ok, "failed": p.failed, "errors": p.errors,
		"renewals": p.renewals, "renewal_failures": p.renewErr, "issuers": p.issuers, "roots": p.rootsN,
	})
	p.mu.Unlock()
	tmp := path + ".tmp"
	if os.WriteFile(tmp, b, 0o644) == nil {
		_ = os.Rename(tmp, path)
	}
}

func main() {
	var o options
	flag.StringVar(&o.addr, "ca-addr", "", "CA address host:port")
	flag.StringVar(&o.san, "ca-san", "istiod.istio-system.svc", "name the CA's certificate must carry")
	flag.StringVar(&o.root, "root-cert", "", "mesh roots for the CA connection (re-read at each renewal)")
	flag.StringVar(&o.token, "token-file", "", "service-account token (aud istio-ca)")
	flag.StringVar(&o.cluster, "cluster-id", "Kubernetes", "clusterid header")
	flag.StringVar(&o.ns, "namespace", "default", "workload namespace")
	flag.StringVar(&o.sa, "service-account", "default", "workload service account")
	flag.DurationVar(&o.ttl, "ttl", time.Minute, "requested lifetime")
	td := flag.String("trust-domain", "cluster.local", "trust domain")
	name := flag.String("name", "peer", "this peer's name")
	peers := flag.String("peers-dir", "", "directory of <name>.addr files")
	status := flag.String("status", "", "status file (JSON)")
	every := flag.Duration("interval", 250*time.Millisecond, "time between handshake rounds")
	flag.Parse()

	p := &peer{td: *td}
	if err := p.renew(o); err != nil {
		fmt.Fprintln(os.Stderr, "meshpeer: first certificate:", err)
		os.Exit(1)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", p.tlsConfig())
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshpeer:", err)
		os.Exit(1)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err != nil {
					p.fail("accepting from "+c.RemoteAddr().String(), err)
					return
				}
				_, _ = c.Write([]byte("ok"))
			}(c)
		}
	}()
	addrFile := filepath.Join(*peers, *name+".addr")
	if err := os.WriteFile(addrFile+".tmp", []byte(ln.Addr().String()), 0o644); err == nil {
		_ = os.Rename(addrFile+".tmp", addrFile)
	}
	go func() {
		for {
			p.mu.Lock()
			due := time.Until(p.renewAt)
			p.mu.Unlock()
			time.Sleep(max(due, time.Second))
			if err := p.renew(o); err != nil {
				p.mu.Lock()
				p.renewErr++
				if len(p.errors) < 20 {
					p.errors = append(p.errors, fmt.Sprintf("%s renewing: %v", time.Now().UTC().Format(time.RFC3339), err))
				}
				p.mu.Unlock()
				time.Sleep(time.Second)
			}
		}
	}()
	go func() {
		for {
			p.status(*status, *name)
			time.Sleep(time.Second)
		}
	}()
	dialer := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: p.tlsConfig()}
	for {
		files, _ := filepath.Glob(filepath.Join(*peers, "*.addr"))
		for _, f := range files {
			if strings.TrimSuffix(filepath.Base(f), ".addr") == *name {
				continue
			}
			addr, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			c, err := dialer.DialContext(ctx, "tcp", string(addr))
			cancel()
			if err != nil {
				p.fail("dialing "+filepath.Base(f), err)
				continue
			}
			buf := make([]byte, 2)
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(buf)
			c.Close()
			if err != nil {
				p.fail("reading from "+filepath.Base(f), err)
				continue
			}
			p.mu.Lock()
			p.ok++
			p.mu.Unlock()
		}
		time.Sleep(*every)
	}
}
