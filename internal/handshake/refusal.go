package handshake

// Telling spdy_origin's own refusals from those of whatever answers in
// front of its registration route. A site's client authentication
// (basic_auth, forward_auth), an IP rule, a CDN or an HTTP proxy on the way
// can answer the agent's PUT before spdy_origin sees it; the agent must not
// take their 401 for a wrong token (that sends the user after a token that
// is fine, and backs off for minutes), so spdy_origin marks its own 401
// with a challenge of its own.

import (
	"errors"
	"net/http"
	"strings"
)

// Realm is the realm of spdy_origin's token challenge.
const Realm = "spdy-origin"

// TokenChallenge is the WWW-Authenticate value of spdy_origin's 401: a
// Bearer challenge with realm Realm, and errorCode (RFC 6750 section 3.1,
// e.g. "invalid_token") when it is not empty. It is how an agent tells a
// token that spdy_origin checked and refused from any other 401.
func TokenChallenge(errorCode string) string {
	c := `Bearer realm="` + Realm + `"`
	if errorCode != "" {
		c += `, error="` + errorCode + `"`
	}
	return c
}

// ErrBlocked is what a *StatusError unwraps to when the registration was
// refused by something other than spdy_origin's registration route: a 401
// without spdy_origin's challenge, a 403 without HeaderRefusedHost (the
// only 403 spdy_origin sends) or a 407. The token was not checked.
var ErrBlocked = errors.New("registration blocked before it reached spdy_origin")

// TokenRejected reports whether the answer is spdy_origin's token refusal:
// a 401 carrying TokenChallenge's challenge.
func (e *StatusError) TokenRejected() bool {
	return e.StatusCode == http.StatusUnauthorized && hasTokenChallenge(e.Header.Values("WWW-Authenticate"))
}

// Blocked reports whether the answer is a refusal by something in front of
// spdy_origin's registration route (see ErrBlocked).
func (e *StatusError) Blocked() bool {
	switch e.StatusCode {
	case http.StatusUnauthorized:
		return !e.TokenRejected()
	case http.StatusForbidden:
		return e.RefusedHost() == ""
	case http.StatusProxyAuthRequired:
		return true
	}
	return false
}

// challengeHeader names the header a 401 or 407 carries its challenges in.
func (e *StatusError) challengeHeader() string {
	switch e.StatusCode {
	case http.StatusUnauthorized:
		return "WWW-Authenticate"
	case http.StatusProxyAuthRequired:
		return "Proxy-Authenticate"
	}
	return ""
}

// Challenge returns the challenges of a 401 (WWW-Authenticate) or a 407
// (Proxy-Authenticate) as one printable line, such as `Basic
// realm="restricted"`; empty for other statuses or when there are none.
func (e *StatusError) Challenge() string {
	name := e.challengeHeader()
	if name == "" {
		return ""
	}
	c := printable([]byte(strings.Join(e.Header.Values(name), ", ")))
	if len(c) > excerptLen {
		c = c[:excerptLen]
	}
	return c
}

// hasTokenChallenge reports whether any of the WWW-Authenticate values
// holds a Bearer challenge with realm Realm.
func hasTokenChallenge(values []string) bool {
	for _, v := range values {
		for _, c := range parseChallenges(v) {
			if strings.EqualFold(c.scheme, "Bearer") && c.params["realm"] == Realm {
				return true
			}
		}
	}
	return false
}

// challenge is one authentication challenge: its scheme and its auth-params
// (names lower-cased, values unquoted).
type challenge struct {
	scheme string
	params map[string]string
}

// parseChallenges reads a WWW-Authenticate value (RFC 9110 section 11.6.1):
// a comma-separated list whose elements either start a challenge ("scheme"
// or "scheme param=value" or "scheme token68") or add a param to the one
// before ("param=value"). What it cannot read it skips; it never fails.
func parseChallenges(v string) []challenge {
	var out []challenge
	for _, elem := range splitList(v) {
		name, rest := cutToken(elem)
		if name == "" {
			continue // not a token: nothing we can use
		}
		rest = strings.TrimLeft(rest, " \t")
		if strings.HasPrefix(rest, "=") {
			// "param=value", continuing the current challenge.
			if len(out) > 0 {
				out[len(out)-1].params[strings.ToLower(name)] = paramValue(rest[1:])
			}
			continue
		}
		c := challenge{scheme: name, params: map[string]string{}}
		if param, prest := cutToken(rest); param != "" {
			if prest = strings.TrimLeft(prest, " \t"); strings.HasPrefix(prest, "=") {
				c.params[strings.ToLower(param)] = paramValue(prest[1:])
			} // else a token68: no params
		}
		out = append(out, c)
	}
	return out
}

// splitList splits a header list at the commas outside quoted strings,
// trimming the elements and dropping empty ones.
func splitList(v string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case quoted && c == '\\':
			i++ // the escaped character
		case c == '"':
			quoted = !quoted
		case c == ',' && !quoted:
			out = appendTrimmed(out, v[start:i])
			start = i + 1
		}
	}
	return appendTrimmed(out, v[start:])
}

func appendTrimmed(list []string, s string) []string {
	if s = strings.Trim(s, " \t"); s != "" {
		list = append(list, s)
	}
	return list
}

// cutToken splits s after its leading token (RFC 9110 tchar run).
func cutToken(s string) (tok, rest string) {
	i := 0
	for i < len(s) && isTokenChar(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// paramValue reads an auth-param's value: a token, or a quoted string with
// its escapes undone (an unterminated one runs to the end).
func paramValue(s string) string {
	s = strings.TrimLeft(s, " \t")
	if !strings.HasPrefix(s, `"`) {
		tok, _ := cutToken(s)
		return tok
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			if i+1 < len(s) {
				i++
				b.WriteByte(s[i])
			}
		case '"':
			return b.String()
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
