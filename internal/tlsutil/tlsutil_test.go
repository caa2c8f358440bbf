package tlsutil

import (
	"testing"
)

func TestSelfSignedIsKept(t *testing.T) {
	dir := t.TempDir()
	c1, made, err := SelfSigned(dir, "mx.example.test")
	if err != nil || !made {
		t.Fatalf("first call: made=%v err=%v", made, err)
	}
	if err := c1.Leaf.VerifyHostname("mx.example.test"); err != nil {
		t.Errorf("certificate does not name the host: %v", err)
	}
	c2, made, err := SelfSigned(dir, "mx.example.test")
	if err != nil || made {
		t.Fatalf("second call: made=%v err=%v", made, err)
	}
	if !c1.Leaf.Equal(c2.Leaf) {
		t.Error("second call made a different certificate")
	}
	if _, made, _ := SelfSigned(dir, "other.example.test"); !made {
		t.Error("a new hostname did not make a new certificate")
	}
}

func TestLoadMissing(t *testing.T) {
	if _, err := Load("/nonexistent/c.pem", "/nonexistent/k.pem"); err == nil {
		t.Error("want an error")
	}
}
