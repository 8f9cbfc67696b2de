// Package snippets extracts the code blocks of a Markdown document, so that
// tests can check that every Caddyfile, JSON config and agent command line
// the documentation shows still parses (snippets_test.go).
//
// A fenced block's info string says what it is: its first word is the
// language ("caddyfile", "json", "sh"), and further words qualify it:
//
//	caddyfile            a whole Caddyfile
//	caddyfile fragment   directives of one site block: tested inside one
//	json handler         one HTTP handler's JSON: tested in a whole config
//	json config          a whole Caddy JSON config
//	json output          not a config (an API's answer): not tested
//	sh                   shell: lines that run spdy-origin-agent are tested
//	toml agent-config    an agent's --config file: tested with the agent
//
// A Caddyfile may also carry a commented variant of itself between the lines
// "# ---8<--- <name>" and "# --->8---": with the leading "# " of each line
// removed, it is tested as a whole Caddyfile (CommentedVariants).
package snippets

import (
	"bufio"
	"strings"
)

// Block is one fenced code block.
type Block struct {
	Lang  string   // the info string's first word
	Words []string // the rest of the info string
	Text  string
	Line  int // of the opening fence, 1-based
}

// Has reports whether the info string carries word after the language.
func (b Block) Has(word string) bool {
	for _, w := range b.Words {
		if w == word {
			return true
		}
	}
	return false
}

// Blocks returns the fenced code blocks (``` or ~~~) of a Markdown text,
// indented ones included (inside list items).
func Blocks(markdown string) []Block {
	var out []Block
	var cur *Block
	var fence, indent string
	var body strings.Builder
	sc := bufio.NewScanner(strings.NewReader(markdown))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimLeft(line, " \t")
		if cur == nil {
			for _, f := range []string{"```", "~~~"} {
				if strings.HasPrefix(trimmed, f) {
					fields := strings.Fields(strings.TrimLeft(trimmed, f[:1]))
					cur = &Block{Line: n}
					if len(fields) > 0 {
						cur.Lang, cur.Words = fields[0], fields[1:]
					}
					fence, indent = f, line[:len(line)-len(trimmed)]
					body.Reset()
					break
				}
			}
			continue
		}
		if strings.HasPrefix(trimmed, fence) && strings.TrimSpace(strings.TrimLeft(trimmed, fence[:1])) == "" {
			cur.Text = body.String()
			out = append(out, *cur)
			cur = nil
			continue
		}
		body.WriteString(strings.TrimPrefix(line, indent))
		body.WriteByte('\n')
	}
	return out
}

// Commands returns the command lines of a shell block that run program:
// backslash continuations joined, comments and blank lines dropped, and
// leading VAR=value assignments split off into env.
func Commands(sh, program string) []Command {
	var out []Command
	var joined strings.Builder
	flush := func() {
		line := strings.TrimSpace(joined.String())
		joined.Reset()
		if line == "" || strings.HasPrefix(line, "#") {
			return
		}
		words := strings.Fields(line)
		var c Command
		for len(words) > 0 && strings.Contains(words[0], "=") && !strings.HasPrefix(words[0], "-") {
			k, v, _ := strings.Cut(words[0], "=")
			if c.Env == nil {
				c.Env = map[string]string{}
			}
			c.Env[k] = unquote(v)
			words = words[1:]
		}
		if len(words) == 0 || !strings.HasSuffix(words[0], program) {
			return
		}
		for _, w := range words[1:] {
			if strings.HasPrefix(w, "#") {
				break // a comment to the end of the line
			}
			c.Args = append(c.Args, unquote(w))
		}
		out = append(out, c)
	}
	for _, line := range strings.Split(sh, "\n") {
		if rest, ok := strings.CutSuffix(strings.TrimRight(line, " "), "\\"); ok {
			joined.WriteString(rest + " ")
			continue
		}
		joined.WriteString(line)
		flush()
	}
	flush()
	return out
}

// Command is one invocation of a program in a shell block.
type Command struct {
	Env  map[string]string
	Args []string
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '\'' || s[0] == '"') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}

// CommentedVariants returns the commented Caddyfiles between "# ---8<---"
// and "# --->8---" lines in text, each with its lines' leading "# " (or a
// lone "#") removed.
func CommentedVariants(text string) []string {
	var out []string
	var cur *strings.Builder
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "# ---8<---"):
			cur = &strings.Builder{}
		case cur != nil && strings.HasPrefix(line, "# --->8---"):
			out = append(out, cur.String())
			cur = nil
		case cur != nil:
			if rest, ok := strings.CutPrefix(line, "# "); ok {
				line = rest
			} else {
				line = strings.TrimPrefix(line, "#")
			}
			cur.WriteString(line + "\n")
		}
	}
	return out
}
