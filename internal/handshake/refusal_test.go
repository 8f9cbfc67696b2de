package handshake

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// A 401 is spdy_origin's token refusal only when it carries spdy_origin's
// challenge; every other 401, and any 403 or 407, is access control in
// front of the registration route (ErrBlocked), and other statuses are
// neither.
func TestRefusalKinds(t *testing.T) {
	const (
		token = iota
		blocked
		host
		other
	)
	cases := []struct {
		name   string
		answer string // status line and headers, without the final CRLF
		kind   int
		says   []string // parts of the error's text
	}{
		{name: "spdy_origin, missing token", kind: token,
			answer: "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: " + TokenChallenge(""),
			says:   []string{"token rejected by proxy", "401"}},
		{name: "spdy_origin, wrong token", kind: token,
			answer: "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: " + TokenChallenge("invalid_token"),
			says:   []string{"token rejected by proxy"}},
		{name: "spdy_origin, other spelling", kind: token,
			answer: "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: bearer  REALM = \"spdy-origin\" ,error=invalid_token"},
		{name: "spdy_origin's challenge among others in one header", kind: token,
			answer: "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\", Bearer realm=\"spdy-origin\", error=\"invalid_token\""},
		{name: "spdy_origin's challenge in a second header", kind: token,
			answer: "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\nWWW-Authenticate: Bearer realm=\"spdy-origin\""},
		{name: "basic_auth", kind: blocked,
			answer: "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"restricted\"",
			says:   []string{"blocked before it reached spdy_origin", "401", `WWW-Authenticate: Basic realm="restricted"`}},
		{name: "another Bearer realm", kind: blocked,
			answer: "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"authelia\""},
		{name: "spdy-origin inside another challenge's quoted realm", kind: blocked,
			answer: "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x, Bearer realm=\\\"spdy-origin\\\"\""},
		{name: "spdy-origin realm on a Basic challenge", kind: blocked,
			answer: "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"spdy-origin\""},
		{name: "Bearer token68, no realm", kind: blocked,
			answer: "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer spdy-origin"},
		{name: "401 without a challenge", kind: blocked,
			answer: "HTTP/1.1 401 Unauthorized",
			says:   []string{"blocked before it reached spdy_origin", "no WWW-Authenticate"}},
		{name: "403 from an IP rule or a CDN", kind: blocked,
			answer: "HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nForbidden",
			says:   []string{"blocked before it reached spdy_origin", "403 Forbidden", "Forbidden"}},
		{name: "spdy_origin, a host the token may not serve", kind: host,
			answer: "HTTP/1.1 403 Forbidden\r\n" + HeaderRefusedHost + ": a.test\r\nContent-Length: 12\r\n\r\nnot for you\n",
			says:   []string{"proxy refused a host this agent announced: the token may not serve a.test", "403", "not for you"}},
		{name: "407 from a proxy on the way", kind: blocked,
			answer: "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"",
			says:   []string{"blocked", "407", `Proxy-Authenticate: Basic realm="corp"`}},
		{name: "429", kind: other, answer: "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3",
			says: []string{"proxy refused registration", "429"}},
		{name: "500", kind: other, answer: "HTTP/1.1 500 Internal Server Error"},
		{name: "302 to a login page", kind: other, answer: "HTTP/1.1 302 Found\r\nLocation: https://auth.example.com/"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			answer := tc.answer
			if !strings.Contains(answer, "\r\n\r\n") {
				answer += "\r\nContent-Length: 0\r\n\r\n"
			}
			agent, proxy := net.Pipe()
			t.Cleanup(func() { agent.Close() })
			fakeProxy(t, proxy, []byte(answer), nil)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := Register(ctx, agent, testRequest)
			var se *StatusError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want a *StatusError", err)
			}
			if got := errors.Is(err, ErrTokenRejected); got != (tc.kind == token) || se.TokenRejected() != got {
				t.Errorf("errors.Is(err, ErrTokenRejected) = %v, TokenRejected() = %v; want %v", got, se.TokenRejected(), tc.kind == token)
			}
			if got := errors.Is(err, ErrBlocked); got != (tc.kind == blocked) || se.Blocked() != got {
				t.Errorf("errors.Is(err, ErrBlocked) = %v, Blocked() = %v; want %v", got, se.Blocked(), tc.kind == blocked)
			}
			if got := errors.Is(err, ErrHostRefused); got != (tc.kind == host) || (se.RefusedHost() != "") != got {
				t.Errorf("errors.Is(err, ErrHostRefused) = %v, RefusedHost() = %q; want %v", got, se.RefusedHost(), tc.kind == host)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
}

func TestTokenChallenge(t *testing.T) {
	for code, want := range map[string]string{
		"":              `Bearer realm="spdy-origin"`,
		"invalid_token": `Bearer realm="spdy-origin", error="invalid_token"`,
	} {
		if got := TokenChallenge(code); got != want {
			t.Errorf("TokenChallenge(%q) = %s, want %s", code, got, want)
		}
	}
}

// Whatever a WWW-Authenticate header holds, parsing it returns (no panic,
// no loop), and spdy_origin's own challenges are always recognised, also
// behind another challenge.
func FuzzChallenges(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="spdy-origin"`, `Basic realm="x", Bearer realm="spdy-origin", error="invalid_token"`,
		`Negotiate abc==`, `Basic realm="a\"b,c"`, `, ,`, `Bearer realm="unterminated`, `=x`, `a b=c, d e, f=g`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		_ = hasTokenChallenge([]string{v})
		for _, ours := range []string{TokenChallenge(""), TokenChallenge("invalid_token")} {
			if !hasTokenChallenge([]string{v, ours}) {
				t.Fatalf("%q not recognised after %q", ours, v)
			}
		}
	})
}
