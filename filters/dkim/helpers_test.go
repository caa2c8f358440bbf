package dkim

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// vectorsDir returns the DKIM test vectors: the shared collection when
// this checkout sits beside it, else the copy in testdata/.
func vectorsDir(t testing.TB) string {
	t.Helper()
	shared := filepath.Join("..", "..", "..", "shared", "testdata", "dkim")
	if _, err := os.Stat(filepath.Join(shared, "cases.yaml")); err == nil {
		return shared
	}
	return "testdata"
}

// zoneTXT returns a zone-file line for a TXT record holding value, split
// into strings of at most 255 bytes (RFC 1035 3.3.14; a 2048-bit RSA key
// needs two), which resolvers join again (RFC 6376 3.6.2.2).
func zoneTXT(name, value string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s 300 IN TXT", dnsName(name))
	if value == "" {
		b.WriteString(` ""`)
	}
	for value != "" {
		chunk := value[:min(255, len(value))]
		value = value[len(chunk):]
		b.WriteString(` "`)
		for _, c := range []byte(chunk) {
			if c == '"' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
		}
		b.WriteString(`"`)
	}
	return b.String()
}

func dnsName(name string) string {
	if strings.HasSuffix(name, ".") {
		return name
	}
	return name + "."
}

// mapResolver answers TXT lookups from a map, in memory: for benchmarks,
// where the figure must be the cost of verifying, not of DNS. Names not in
// the map do not exist.
type mapResolver map[string][]string

func (m mapResolver) LookupTXT(_ context.Context, name string) ([]string, error) {
	if txts, ok := m[strings.TrimSuffix(strings.ToLower(name), ".")]; ok {
		return txts, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (m mapResolver) LookupMX(context.Context, string) ([]*net.MX, error) {
	return nil, &net.DNSError{Err: "no such host", IsNotFound: true}
}

func (m mapResolver) LookupIPAddr(context.Context, string) ([]net.IPAddr, error) {
	return nil, &net.DNSError{Err: "no such host", IsNotFound: true}
}

func (m mapResolver) LookupAddr(context.Context, string) ([]string, error) {
	return nil, &net.DNSError{Err: "no such host", IsNotFound: true}
}

// errResolver fails every lookup with err.
type errResolver struct{ err error }

func (e errResolver) LookupTXT(context.Context, string) ([]string, error)        { return nil, e.err }
func (e errResolver) LookupMX(context.Context, string) ([]*net.MX, error)        { return nil, e.err }
func (e errResolver) LookupIPAddr(context.Context, string) ([]net.IPAddr, error) { return nil, e.err }
func (e errResolver) LookupAddr(context.Context, string) ([]string, error)       { return nil, e.err }

// Test keys, made once per test binary (RSA 2048 takes a while).
var (
	rsaKey = sync.OnceValue(func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	})
	otherRSAKey = sync.OnceValue(func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	})
	edKey = sync.OnceValue(func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

// keyRecord returns the DKIM key record (RFC 6376 3.6.1) for key's public
// half.
func keyRecord(t testing.TB, key crypto.Signer) string {
	t.Helper()
	switch pub := key.Public().(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	}
	t.Fatalf("no key record for %T", key)
	return ""
}

// signedHeaders are the fields test signatures cover.
var signedHeaders = []string{"From", "To", "Subject", "Date", "Message-ID"}

// sign adds a relaxed/relaxed DKIM-Signature for domain and selector on top
// of msg (CRLF line ends).
func sign(t testing.TB, msg string, key crypto.Signer, domain, selector string) string {
	t.Helper()
	var b bytes.Buffer
	err := dkim.Sign(&b, strings.NewReader(msg), &dkim.SignOptions{
		Domain:                 domain,
		Selector:               selector,
		Signer:                 key,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             signedHeaders,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// testMessage is a small message with CRLF line ends.
const testMessage = "From: Alice <alice@example.org>\r\n" +
	"To: Bob <bob@example.net>\r\n" +
	"Subject: Lunch\r\n" +
	"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n" +
	"Message-ID: <lunch-1@example.org>\r\n" +
	"\r\n" +
	"Shall we meet at noon?\r\n" +
	"-- \r\n" +
	"Alice\r\n"
