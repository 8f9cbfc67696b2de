// Command upstream is the integration suite's helper: an HTTP origin for the
// agent's --to mode, and a generator of the suite's deterministic test data
// (nothing binary is committed).
//
//	upstream serve -addr 127.0.0.1:0 -addr-file F   run the origin
//	upstream gen -n 1G -seed s [-o FILE] [-sum]     deterministic bytes (or their SHA-256)
//	upstream png -o FILE                            a small deterministic PNG
//	upstream sum < data                             "bytes=N sha256=HEX" of stdin
//
// Origin routes:
//
//	POST|PUT /upload   read the body, answer "bytes=N sha256=HEX"
//	*        /echo     answer with the request body; method, length and
//	                   content type echoed in X-Echo-* headers
//	GET      /bytes?n=N&seed=S   stream gen's bytes
//	GET      /headers  the request headers as text
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("upstream: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: upstream serve|gen|png [flags]")
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "serve":
		err = serve(args)
	case "gen":
		err = gen(args)
	case "png":
		err = writePNG(args)
	case "sum":
		err = sum(os.Stdin)
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// source returns the deterministic byte stream for seed: ChaCha8, whose
// output is fixed by its specification, so sizes and sums are stable.
func source(seed string, n int64) io.Reader {
	key := sha256.Sum256([]byte(seed))
	return io.LimitReader(rand.NewChaCha8(key), n)
}

// parseSize reads 123, 64K, 16M, 1G (powers of 1024).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

func gen(args []string) error {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	size := fs.String("n", "1M", "size: bytes, or with K, M, G suffix")
	seed := fs.String("seed", "spdy-origin", "seed")
	out := fs.String("o", "-", "output file, - for stdout")
	sum := fs.Bool("sum", false, "print the SHA-256 of the bytes instead of the bytes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	n, err := parseSize(*size)
	if err != nil {
		return err
	}
	src := source(*seed, n)
	if *sum {
		h := sha256.New()
		if _, err := io.Copy(h, src); err != nil {
			return err
		}
		fmt.Println(hex.EncodeToString(h.Sum(nil)))
		return nil
	}
	var w io.Writer = os.Stdout
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if _, err := io.Copy(bw, src); err != nil {
		return err
	}
	return bw.Flush()
}

// sum prints what /upload answers, so a download and an upload are checked
// the same way (and faster than sha256sum).
func sum(r io.Reader) error {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return err
	}
	fmt.Printf("bytes=%d sha256=%s\n", n, hex.EncodeToString(h.Sum(nil)))
	return nil
}

func writePNG(args []string) error {
	fs := flag.NewFlagSet("png", flag.ContinueOnError)
	out := fs.String("o", "", "output file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("png: -o is required")
	}
	img := image.NewRGBA(image.Rect(0, 0, 256, 128))
	for y := 0; y < 128; y++ {
		for x := 0; x < 256; x++ {
			img.Set(x, y, color.RGBA{uint8(x), uint8(2 * y), uint8(x ^ y), 255})
		}
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	addrFile := fs.String("addr-file", "", "write the bound address here once listening")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	if *addrFile != "" {
		tmp := *addrFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(ln.Addr().String()+"\n"), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, *addrFile); err != nil {
			return err
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/upload", handleUpload)
	mux.HandleFunc("/echo", handleEcho)
	mux.HandleFunc("GET /bytes", handleBytes)
	mux.HandleFunc("GET /headers", handleHeaders)
	mux.HandleFunc("GET /manyheaders", handleManyHeaders)
	mux.HandleFunc("/stall", handleStall)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(ln)
}

func handleUpload(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		w.Header().Set("Allow", "POST, PUT")
		http.Error(w, "use POST or PUT", http.StatusMethodNotAllowed)
		return
	}
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		// A short or broken body must never look like a complete one.
		log.Printf("upload: body read failed after %d bytes: %v", n, err)
		http.Error(w, fmt.Sprintf("reading body: %v (after %d bytes)", err, n), http.StatusBadRequest)
		return
	}
	if r.ContentLength >= 0 && n != r.ContentLength {
		http.Error(w, fmt.Sprintf("body was %d bytes, Content-Length said %d", n, r.ContentLength), http.StatusBadRequest)
		return
	}
	fmt.Fprintf(w, "bytes=%d sha256=%s\n", n, hex.EncodeToString(h.Sum(nil)))
}

func handleEcho(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("X-Echo-Method", r.Method)
	w.Header().Set("X-Echo-Content-Length", strconv.FormatInt(r.ContentLength, 10))
	w.Header().Set("X-Echo-Content-Type", r.Header.Get("Content-Type"))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Write(body)
}

func handleBytes(w http.ResponseWriter, r *http.Request) {
	n, err := parseSize(r.URL.Query().Get("n"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	seed := r.URL.Query().Get("seed")
	if seed == "" {
		seed = "spdy-origin"
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	io.Copy(w, source(seed, n))
}

func handleHeaders(w http.ResponseWriter, r *http.Request) {
	var names []string
	for k := range r.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "Method: %s\nHost: %s\nURI: %s\n", r.Method, r.Host, r.RequestURI)
	for _, k := range names {
		for _, v := range r.Header[k] {
			fmt.Fprintf(w, "%s: %s\n", k, v)
		}
	}
}

// handleManyHeaders answers with n extra response headers (?n=N).
func handleManyHeaders(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.URL.Query().Get("n"))
	if err != nil || n < 0 || n > 100000 {
		http.Error(w, "want ?n=0..100000", http.StatusBadRequest)
		return
	}
	for i := range n {
		w.Header().Set(fmt.Sprintf("X-Many-%d", i), "v")
	}
	fmt.Fprintf(w, "%d headers\n", n)
}

// handleStall never reads its request body and answers only when the
// client has gone: an endpoint that holds an upload's stream open.
func handleStall(w http.ResponseWriter, r *http.Request) {
	<-r.Context().Done()
}
