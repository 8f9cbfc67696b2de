package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path"
	"strings"
	"syscall"

	"go.uber.org/zap"
)

// fileHandler serves --root. Containment comes from os.Root: every open is resolved
// inside the directory by the kernel (openat and friends), so "..", encoded traversal
// (already decoded into r.URL.Path, then cleaned by http.FileServer) and symlinks that
// point outside the root all fail; symlinks that stay inside keep working.
// Range, If-Modified-Since/ETag preconditions and directory listings come from
// http.FileServer.
type fileHandler struct {
	root  *os.Root
	files http.Handler
	log   *zap.Logger
}

// mediaTypes are registered so that --root serves media with the right
// Content-Type on hosts without /etc/mime.types (minimal containers, NAS
// firmware); Go's built-in table knows few video types.
var mediaTypes = map[string]string{
	".mp4":  "video/mp4",
	".m4v":  "video/mp4",
	".mkv":  "video/x-matroska",
	".webm": "video/webm",
	".avi":  "video/x-msvideo",
	".mov":  "video/quicktime",
	".mp3":  "audio/mpeg",
	".m4a":  "audio/mp4",
	".flac": "audio/flac",
	".ogg":  "audio/ogg",
	".opus": "audio/ogg",
	".m3u8": "application/vnd.apple.mpegurl",
	".ts":   "video/mp2t",
	".srt":  "application/x-subrip",
	".vtt":  "text/vtt",
}

func init() {
	for ext, typ := range mediaTypes {
		if mime.TypeByExtension(ext) == "" {
			_ = mime.AddExtensionType(ext, typ)
		}
	}
}

func newFileHandler(dir string, log *zap.Logger) (*fileHandler, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("--root: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("--root %s: not a directory", dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("--root: %w", err)
	}
	h := &fileHandler{root: root, log: log.Named("files")}
	h.files = http.FileServerFS(escapeGuardFS{fsys: root.FS(), log: h.log})
	return h, nil
}

func (h *fileHandler) close() { _ = h.root.Close() }

func (h *fileHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if up := upgradeType(r.Header); up != "" {
		writeError(w, http.StatusNotImplemented, fmt.Sprintf(
			"spdy-origin-agent: this agent serves static files (--root); it cannot upgrade the connection to %q. "+
				"Use --to with an upstream server for WebSockets.", up))
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "spdy-origin-agent: static files (--root) accept only GET and HEAD")
		return
	}
	if err := h.checkPath(r.URL.Path); err != nil {
		// The client's mistake, not the agent's: http.FileServer would call it a 500.
		h.log.Debug("refused an invalid path", zap.String("path", r.URL.Path), zap.Error(err))
		writeError(w, http.StatusBadRequest, "spdy-origin-agent: invalid path")
		return
	}
	h.files.ServeHTTP(w, r)
}

// errInvalidPath: a request path that no file under --root can have.
var errInvalidPath = errors.New("invalid path")

// checkPath reports a request path that no file can have: one with a NUL
// byte, one that is not a valid fs.FS path (invalid UTF-8), or one the
// filesystem refuses as a name (EINVAL, ENAMETOOLONG). The filesystem is
// asked with a Stat of the name http.FileServer will open, so its own rules
// decide, not a copy of them here.
func (h *fileHandler) checkPath(p string) error {
	if strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("%w: NUL byte", errInvalidPath)
	}
	name := strings.TrimPrefix(path.Clean("/"+p), "/")
	if name == "" {
		name = "."
	}
	_, err := fs.Stat(h.root.FS(), name)
	if errors.Is(err, fs.ErrInvalid) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENAMETOOLONG) {
		return fmt.Errorf("%w: %w", errInvalidPath, err)
	}
	return nil
}

// escapeGuardFS turns os.Root's "path escapes from parent" (a symlink pointing out of
// the root) into a permission error, so the client gets 403 instead of a 500, and
// logs it once per request. os does not export that error value, hence the string test.
type escapeGuardFS struct {
	fsys fs.FS
	log  *zap.Logger
}

func (g escapeGuardFS) Open(name string) (fs.File, error) {
	// Only files and directories are served: opening a named pipe or a
	// device would block the stream or read from hardware.
	if fi, err := fs.Stat(g.fsys, name); err == nil && !fi.Mode().IsRegular() && !fi.IsDir() {
		g.log.Warn("refused a path that is not a regular file or directory", zap.String("path", name), zap.Stringer("mode", fi.Mode()))
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrPermission}
	}
	f, err := g.fsys.Open(name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, fs.ErrPermission) &&
		strings.Contains(err.Error(), "path escapes from parent") {
		g.log.Warn("refused a path that leaves --root (symlink pointing outside?)", zap.String("path", name))
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrPermission}
	}
	return f, err
}
