// Package authtest makes the credentials tests need to prove that natsmesh
// connects to secured NATS servers: a certificate authority with server and
// client certificates (TLS, mutual TLS), NKey users, and an operator with an
// account whose users authenticate with credentials files (JWT plus NKey
// seed). Everything is generated in the test, written under t.TempDir, and
// applied to embedded servers as natstest options.
package authtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// PKI is a throwaway certificate authority and the certificates it signed,
// as PEM files.
type PKI struct {
	CA         string // the authority's certificate
	ServerCert string // for 127.0.0.1 and localhost
	ServerKey  string
	ClientCert string // client authentication, common name ClientName
	ClientKey  string
	// OtherCert and OtherKey are a client certificate signed by another
	// authority, which servers of this PKI must refuse.
	OtherCert string
	OtherKey  string
}

// ClientName is the common name of the PKI's client certificate; servers
// that map certificates to users (TLSMap) see the user "CN=" + ClientName.
const ClientName = "natsmesh-client"

// NewPKI generates the authority and certificates in a temporary folder.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	caKey, caCert := newCA(t, "natsmesh test CA")
	p := &PKI{CA: filepath.Join(dir, "ca.pem")}
	writePEM(t, p.CA, "CERTIFICATE", caCert.Raw)
	p.ServerCert, p.ServerKey = issue(t, dir, "server", caKey, caCert, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	p.ClientCert, p.ClientKey = issue(t, dir, "client", caKey, caCert, &x509.Certificate{
		Subject:     pkix.Name{CommonName: ClientName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	otherKey, otherCA := newCA(t, "some other CA")
	p.OtherCert, p.OtherKey = issue(t, dir, "other", otherKey, otherCA, &x509.Certificate{
		Subject:     pkix.Name{CommonName: ClientName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return p
}

// ServerTLS returns a server option requiring TLS with p's server
// certificate; with verify, clients must present a certificate signed by
// p's authority (mutual TLS).
func (p *PKI) ServerTLS(t testing.TB, verify bool) natstest.Option {
	t.Helper()
	cfg, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: p.ServerCert, KeyFile: p.ServerKey, CaFile: p.CA, Verify: verify,
	})
	if err != nil {
		t.Fatalf("authtest: server TLS config: %v", err)
	}
	return func(o *server.Options) {
		o.TLS, o.TLSVerify, o.TLSConfig, o.TLSTimeout = true, verify, cfg, 5
	}
}

var serial int64

func newCA(t testing.TB, name string) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key := newKey(t)
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("authtest: CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("authtest: parse CA certificate: %v", err)
	}
	return key, cert
}

// issue signs tmpl with the CA and writes the certificate and its key as
// <name>.pem and <name>-key.pem.
func issue(t testing.TB, dir, name string, caKey *ecdsa.PrivateKey, ca *x509.Certificate, tmpl *x509.Certificate) (certFile, keyFile string) {
	t.Helper()
	key := newKey(t)
	serial++
	tmpl.SerialNumber = big.NewInt(serial)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatalf("authtest: %s certificate: %v", name, err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("authtest: %s key: %v", name, err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
	return certFile, keyFile
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("authtest: key: %v", err)
	}
	return key
}

func writePEM(t testing.TB, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatalf("authtest: %v", err)
	}
}

// NKeyUser makes an NKey user: its public key, for the server, and a file
// holding its seed, for the client.
func NKeyUser(t testing.TB) (public, seedFile string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatalf("authtest: nkey: %v", err)
	}
	public, _ = kp.PublicKey()
	seed, _ := kp.Seed()
	seedFile = filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatalf("authtest: %v", err)
	}
	return public, seedFile
}

// Operator is a decentralized-auth (JWT) setup: an operator and one
// account with JetStream, whose users get credentials files.
type Operator struct {
	op, acct nkeys.KeyPair
	claims   *jwt.OperatorClaims
	acctJWT  string
	acctPub  string
	sysPub   string
	sysJWT   string
}

// NewOperator makes an operator, a system account and an application
// account with unlimited JetStream.
func NewOperator(t testing.TB) *Operator {
	t.Helper()
	o := &Operator{}
	var err error
	if o.op, err = nkeys.CreateOperator(); err != nil {
		t.Fatalf("authtest: operator key: %v", err)
	}
	opPub, _ := o.op.PublicKey()
	o.claims = jwt.NewOperatorClaims(opPub)
	o.claims.Name = "natsmesh-test"
	sys, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatalf("authtest: account key: %v", err)
	}
	o.sysPub, _ = sys.PublicKey()
	o.claims.SystemAccount = o.sysPub
	if _, err := o.claims.Encode(o.op); err != nil { // validates the claims
		t.Fatalf("authtest: operator JWT: %v", err)
	}
	sc := jwt.NewAccountClaims(o.sysPub)
	sc.Name = "SYS"
	if o.sysJWT, err = sc.Encode(o.op); err != nil {
		t.Fatalf("authtest: system account JWT: %v", err)
	}
	if o.acct, err = nkeys.CreateAccount(); err != nil {
		t.Fatalf("authtest: account key: %v", err)
	}
	o.acctPub, _ = o.acct.PublicKey()
	ac := jwt.NewAccountClaims(o.acctPub)
	ac.Name = "MESH"
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	if o.acctJWT, err = ac.Encode(o.op); err != nil {
		t.Fatalf("authtest: account JWT: %v", err)
	}
	return o
}

// Server returns the server option that trusts the operator and resolves
// its accounts from memory.
func (o *Operator) Server(t testing.TB) natstest.Option {
	t.Helper()
	r := &server.MemAccResolver{}
	if err := r.Store(o.acctPub, o.acctJWT); err != nil {
		t.Fatalf("authtest: store account: %v", err)
	}
	if err := r.Store(o.sysPub, o.sysJWT); err != nil {
		t.Fatalf("authtest: store account: %v", err)
	}
	return func(so *server.Options) {
		so.TrustedOperators = []*jwt.OperatorClaims{o.claims}
		so.AccountResolver = r
		so.SystemAccount = o.sysPub
	}
}

// Creds makes a user of the account, optionally with permissions, and
// writes its credentials file.
func (o *Operator) Creds(t testing.TB, name string, perms *jwt.Permissions) string {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatalf("authtest: user key: %v", err)
	}
	pub, _ := kp.PublicKey()
	uc := jwt.NewUserClaims(pub)
	uc.Name = name
	if perms != nil {
		uc.Permissions = *perms
	}
	ujwt, err := uc.Encode(o.acct)
	if err != nil {
		t.Fatalf("authtest: user JWT: %v", err)
	}
	seed, _ := kp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		t.Fatalf("authtest: creds: %v", err)
	}
	path := filepath.Join(t.TempDir(), name+".creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		t.Fatalf("authtest: %v", err)
	}
	return path
}

// Secure is an embedded server that requires mutual TLS and a credentials
// file, the way a production cluster is set up, with the command-line flags
// a natsmesh binary needs to reach it.
type Secure struct {
	Server *server.Server
	PKI    *PKI
	Creds  string
	// Flags are -nats, -creds, -tls-ca, -tls-cert and -tls-key.
	Flags []string
}

// StartSecure starts the server and makes a user for the binaries.
func StartSecure(t testing.TB) *Secure {
	t.Helper()
	pki := NewPKI(t)
	op := NewOperator(t)
	s := natstest.StartServer(t, op.Server(t), pki.ServerTLS(t, true))
	creds := op.Creds(t, "mesh", nil)
	return &Secure{
		Server: s, PKI: pki, Creds: creds,
		Flags: []string{"-nats", s.ClientURL(), "-creds", creds, "-tls-ca", pki.CA, "-tls-cert", pki.ClientCert, "-tls-key", pki.ClientKey},
	}
}

// Connect connects to the secure server with the user's credentials and
// closes the connection on cleanup.
func (s *Secure) Connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.Server.ClientURL(), nats.UserCredentials(s.Creds),
		nats.RootCAs(s.PKI.CA), nats.ClientCert(s.PKI.ClientCert, s.PKI.ClientKey))
	if err != nil {
		t.Fatalf("authtest: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}
