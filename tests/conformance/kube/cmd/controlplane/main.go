// Command controlplane runs a real Kubernetes control plane for signet's
// conformance tests in one process: an embedded etcd and kube-apiserver
// (k8s.io/kubernetes/cmd/kube-apiserver/app), on 127.0.0.1 with certificates
// it generates, RBAC and Node authorization, NodeRestriction, and a
// service-account token issuer, so that TokenRequest and TokenReview are
// real. There is no controller manager, scheduler or kubelet: tests create
// the service accounts, nodes and pods they need.
//
// It writes into --dir: ca.pem (the cluster CA, which signs the serving and
// client certificates), admin.kubeconfig (system:masters), and prints
// "controlplane ready https://127.0.0.1:<port>" once /readyz answers. It
// stops when stdin closes or on SIGTERM.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	dir := flag.String("dir", "", "work directory (certificates, etcd data, kubeconfig)")
	extra := flag.String("apiserver-args", "", "extra kube-apiserver flags, space-separated")
	flag.Parse()
	if *dir == "" {
		log.Fatal("--dir is required")
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		log.Fatal(err)
	}
	pki, err := makePKI(*dir)
	if err != nil {
		log.Fatal(err)
	}
	etcdURL, stopEtcd, err := startEtcd(filepath.Join(*dir, "etcd"))
	if err != nil {
		log.Fatal(err)
	}
	defer stopEtcd()
	port, err := freePort()
	if err != nil {
		log.Fatal(err)
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", port)
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--advertise-address=127.0.0.1",
		// A loopback address cannot be the kubernetes Service's endpoint.
		"--endpoint-reconciler-type=none",
		"--tls-cert-file=" + pki.servingCert,
		"--tls-private-key-file=" + pki.servingKey,
		"--client-ca-file=" + pki.ca,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		// No controller manager: service accounts are created by the tests,
		// and pods must not wait for token mounts.
		"--disable-admission-plugins=ServiceAccount",
		"--service-account-issuer=" + server,
		"--service-account-key-file=" + pki.saPublic,
		"--service-account-signing-key-file=" + pki.saKey,
		"--api-audiences=" + server,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		// Istio's ClusterTrustBundle client still speaks v1beta1.
		"--runtime-config=certificates.k8s.io/v1beta1=true",
		"--profiling=false",
		"--v=0",
	}
	if *extra != "" {
		args = append(args, strings.Fields(*extra)...)
	}
	cmd := app.NewAPIServerCommand()
	cmd.SetArgs(args)
	apiErr := make(chan error, 1)
	go func() { apiErr <- cmd.Execute() }()

	ready := make(chan error, 1)
	go func() { ready <- waitReady(server, pki) }()
	select {
	case err := <-ready:
		if err != nil {
			log.Fatalf("kube-apiserver not ready: %v", err)
		}
	case err := <-apiErr:
		log.Fatalf("kube-apiserver stopped before it was ready: %v", err)
	}
	if err := writeKubeconfig(filepath.Join(*dir, "admin.kubeconfig"), server, pki); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("controlplane ready %s\n", server)

	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-done:
	case <-sig:
	case err := <-apiErr:
		log.Fatalf("kube-apiserver stopped: %v", err)
	}
}

type pkiFiles struct {
	ca, caKey, servingCert, servingKey, adminCert, adminKey, saKey, saPublic string
}

func makePKI(dir string) (*pkiFiles, error) {
	p := &pkiFiles{
		ca:          filepath.Join(dir, "ca.pem"),
		caKey:       filepath.Join(dir, "ca-key.pem"),
		servingCert: filepath.Join(dir, "apiserver.pem"),
		servingKey:  filepath.Join(dir, "apiserver-key.pem"),
		adminCert:   filepath.Join(dir, "admin.pem"),
		adminKey:    filepath.Join(dir, "admin-key.pem"),
		saKey:       filepath.Join(dir, "sa-key.pem"),
		saPublic:    filepath.Join(dir, "sa.pub"),
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "conformance cluster CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	if err := writeCert(p.ca, caDER); err != nil {
		return nil, err
	}
	if err := writeKey(p.caKey, caKey); err != nil {
		return nil, err
	}
	issue := func(certPath, keyPath string, tmpl *x509.Certificate) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl.SerialNumber = serial()
		tmpl.NotBefore = now.Add(-time.Hour)
		tmpl.NotAfter = now.Add(24 * time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		if err := writeCert(certPath, der); err != nil {
			return err
		}
		return writeKey(keyPath, key)
	}
	if err := issue(p.servingCert, p.servingKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return nil, err
	}
	if err := issue(p.adminCert, p.adminKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "conformance-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := writeKey(p.saKey, saKey); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.saPublic, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return nil, err
	}
	return p, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func writeCert(path string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startEtcd(dir string) (string, func(), error) {
	cfg := embed.NewConfig()
	cfg.Name = "conformance"
	cfg.Dir = dir
	cfg.LogLevel = "error"
	cport, err := freePort()
	if err != nil {
		return "", nil, err
	}
	pport, err := freePort()
	if err != nil {
		return "", nil, err
	}
	cu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", cport))
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", pport))
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return "", nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return "", nil, fmt.Errorf("etcd did not become ready")
	}
	return cu.String(), e.Close, nil
}

func waitReady(server string, p *pkiFiles) error {
	cert, err := tls.LoadX509KeyPair(p.adminCert, p.adminKey)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(p.ca)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs:      pool,
			Certificates: []tls.Certificate{cert},
		}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		resp, err := client.Get(server + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		} else {
			last = err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return last
}

func writeKubeconfig(path, server string, p *pkiFiles) error {
	text := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: conformance
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: admin
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: admin
  context:
    cluster: conformance
    user: admin
current-context: admin
`, server, p.ca, p.adminCert, p.adminKey)
	return os.WriteFile(path, []byte(text), 0o600)
}
