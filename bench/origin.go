//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The origin is the upstream every path ends at. It serves deterministic bodies so a
// client can check every byte it gets without hashing (a memcmp against the pattern),
// an upload sink that checks what it receives, and a "hold" endpoint that answers with
// headers and one byte and then keeps the response open until released, for the open-
// streams memory measurement.
//
//	GET /bytes/<n>   n bytes of the pattern, with Content-Length
//	PUT /sink        reads the body, compares it with the pattern; answers "n=<n> ok"
//	GET /hold        headers + 1 byte, flushed; then waits for release (or client gone)
//	GET /healthz     "ok"

// patternSize is the period of the deterministic body: body byte i is pattern[i%patternSize].
const patternSize = 1 << 20

var pattern = makePattern()

func makePattern() []byte {
	p := make([]byte, patternSize)
	// xorshift64*, fixed seed: the same bytes on every run and every machine.
	x := uint64(0x9E3779B97F4A7C15)
	for i := 0; i < len(p); i += 8 {
		x ^= x >> 12
		x ^= x << 25
		x ^= x >> 27
		v := x * 0x2545F4914F6CDD1D
		for j := 0; j < 8 && i+j < len(p); j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	return p
}

// patternReader yields n bytes of the pattern.
type patternReader struct {
	off, n int64
}

func (r *patternReader) Read(b []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if rem := r.n - r.off; int64(len(b)) > rem {
		b = b[:rem]
	}
	total := 0
	for len(b) > 0 {
		po := int(r.off % patternSize)
		c := copy(b, pattern[po:])
		b = b[c:]
		r.off += int64(c)
		total += c
	}
	return total, nil
}

// patternChecker is an io.Writer that checks that what it is given is the pattern,
// starting at offset 0. It never fails a Write; Bad reports the first mismatch.
type patternChecker struct {
	n   int64
	bad int64 // offset+1 of the first mismatch, 0 if none
}

func (c *patternChecker) Write(b []byte) (int, error) {
	total := len(b)
	for len(b) > 0 {
		po := int(c.n % patternSize)
		k := min(len(b), patternSize-po)
		if c.bad == 0 && !bytes.Equal(b[:k], pattern[po:po+k]) {
			for i := 0; i < k; i++ {
				if b[i] != pattern[po+i] {
					c.bad = c.n + int64(i) + 1
					break
				}
			}
		}
		c.n += int64(k)
		b = b[k:]
	}
	return total, nil
}

func (c *patternChecker) err(want int64) error {
	if c.bad != 0 {
		return fmt.Errorf("body differs from the pattern at byte %d", c.bad-1)
	}
	if want >= 0 && c.n != want {
		return fmt.Errorf("body has %d bytes, want %d", c.n, want)
	}
	return nil
}

type origin struct {
	mu      sync.Mutex
	release chan struct{}
	held    atomic.Int64 // /hold responses currently open
	servers []*http.Server
}

func newOrigin() *origin {
	return &origin{release: make(chan struct{})}
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, "/bytes/"):
		n, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/bytes/"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad size", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return
		}
		if n <= patternSize {
			w.Write(pattern[:n])
			return
		}
		io.CopyBuffer(w, &patternReader{n: n}, make([]byte, 256<<10))
	case r.URL.Path == "/sink":
		if r.Method != http.MethodPut && r.Method != http.MethodPost {
			http.Error(w, "PUT or POST", http.StatusMethodNotAllowed)
			return
		}
		var c patternChecker
		_, err := io.CopyBuffer(&c, r.Body, make([]byte, 256<<10))
		if err == nil {
			err = c.err(r.ContentLength)
		}
		if err != nil {
			http.Error(w, fmt.Sprintf("n=%d error: %v", c.n, err), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "n=%d ok", c.n)
	case r.URL.Path == "/hold":
		o.mu.Lock()
		rel := o.release
		o.mu.Unlock()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusOK)
		w.Write([]byte{'x'})
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		o.held.Add(1)
		defer o.held.Add(-1)
		select {
		case <-rel:
		case <-r.Context().Done():
		}
	case r.URL.Path == "/healthz":
		io.WriteString(w, "ok")
	default:
		http.NotFound(w, r)
	}
}

// releaseHolds ends every open /hold response.
func (o *origin) releaseHolds() {
	o.mu.Lock()
	close(o.release)
	o.release = make(chan struct{})
	o.mu.Unlock()
}

// serve starts an HTTP/1.1 server on ln (TLS if tc != nil). HTTP/2 is off on purpose:
// the agent and Caddy talk HTTP/1.1 to upstreams, and the direct path should be the
// same protocol the proxied paths use on the client leg.
func (o *origin) serve(ln net.Listener, tc *tls.Config) {
	srv := &http.Server{
		Handler:           o,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	o.mu.Lock()
	o.servers = append(o.servers, srv)
	o.mu.Unlock()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("origin: %v", err)
		}
	}()
}

func (o *origin) close() {
	o.releaseHolds()
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, s := range o.servers {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		s.Shutdown(ctx)
		cancel()
		s.Close()
	}
}

// selfSigned makes an ECDSA P-256 certificate for localhost, 127.0.0.1 and the given
// extra IPs (the same key type Caddy's internal CA issues), written as PEM files.
func selfSigned(certFile, keyFile string, ips ...net.IP) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "spdy-origin bench origin"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           append([]net.IP{net.IPv4(127, 0, 0, 1)}, ips...),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}

// runOriginOnly is the -serve-origin mode: the bench re-executes itself inside the
// far network namespace to put an origin there. It serves until killed; it
// returns only an error.
func runOriginOnly(plainAddr, tlsAddr, certFile, keyFile string) error {
	o := newOrigin()
	ln, err := net.Listen("tcp", plainAddr)
	if err != nil {
		return err
	}
	o.serve(ln, nil)
	if tlsAddr != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return err
		}
		tln, err := net.Listen("tcp", tlsAddr)
		if err != nil {
			return err
		}
		o.serve(tln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	}
	fmt.Println("origin ready")
	select {}
}
