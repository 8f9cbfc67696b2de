//go:build unix

package agent

import (
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A named pipe under the root would block the stream for ever on open;
// only regular files and directories are served.
func TestFileHandlerRefusesSpecialFiles(t *testing.T) {
	h, root := rootHandler(t)
	if err := syscall.Mkfifo(filepath.Join(root, "pipe"), 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	done := make(chan int, 1)
	go func() { done <- getFile(h, "/pipe").Code }()
	select {
	case code := <-done:
		if code != http.StatusForbidden {
			t.Errorf("GET /pipe: status %d, want 403", code)
		}
	case <-time.After(5 * time.Second):
		// Unblock the open so the goroutine ends, then fail.
		if f, err := os.OpenFile(filepath.Join(root, "pipe"), os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		<-done
		t.Fatal("GET /pipe blocked: a named pipe was opened")
	}
}
