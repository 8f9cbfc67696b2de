package snippets

import (
	"fmt"
	"reflect"
	"testing"
)

func TestBlocks(t *testing.T) {
	md := "text\n```caddyfile fragment\nspdy_origin\n```\n\n1. step\n\n   ```sh\n   a \\\n     b\n   ```\n~~~json output\n{}\n~~~\n```\nplain\n```\n"
	got := Blocks(md)
	want := []Block{
		{Lang: "caddyfile", Words: []string{"fragment"}, Text: "spdy_origin\n", Line: 2},
		{Lang: "sh", Words: []string{}, Text: "a \\\n  b\n", Line: 8},
		{Lang: "json", Words: []string{"output"}, Text: "{}\n", Line: 12},
		{Lang: "", Text: "plain\n", Line: 15},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Blocks:\n%#v\nwant\n%#v", got, want)
	}
	if !got[0].Has("fragment") || got[2].Has("fragment") {
		t.Fatal("Has")
	}
}

func TestCommands(t *testing.T) {
	sh := `# a comment
export SPDY_ORIGIN_TOKEN='x'
spdy-origin-agent --proxy https://a --to http://b   # trailing
SPDY_ORIGIN_PROXY=https://a,https://b \
SPDY_ORIGIN_TOKEN=… bin/spdy-origin-agent \
    --connections 4 --token "$T"
make agent
`
	got := fmt.Sprintf("%#v", Commands(sh, "spdy-origin-agent"))
	want := fmt.Sprintf("%#v", []Command{
		{Args: []string{"--proxy", "https://a", "--to", "http://b"}},
		{Env: map[string]string{"SPDY_ORIGIN_PROXY": "https://a,https://b", "SPDY_ORIGIN_TOKEN": "…"},
			Args: []string{"--connections", "4", "--token", "$T"}},
	})
	if got != want {
		t.Fatalf("Commands:\n%s\nwant\n%s", got, want)
	}
}

func TestCommentedVariants(t *testing.T) {
	text := "site {\n}\n# a comment\n# ---8<--- one\n# {\n# \tdebug\n# }\n#\n# # kept as a comment\n# --->8---\n# after\n"
	got := CommentedVariants(text)
	want := []string{"{\n\tdebug\n}\n\n# kept as a comment\n"}
	if len(got) != 1 || got[0] != want[0] {
		t.Fatalf("CommentedVariants = %q, want %q", got, want)
	}
}
