package httpapi

import (
	"strings"
	"testing"
)

func TestParseETag(t *testing.T) {
	good := map[string]int{`"1"`: 1, `"42"`: 42, `W/"7"`: 7, `"999999999"`: 999999999}
	for in, want := range good {
		if got, ok := parseETag(in); !ok || got != want {
			t.Errorf("parseETag(%q) = %d, %v; want %d", in, got, ok, want)
		}
	}
	for _, in := range []string{``, `1`, `"`, `""`, `"0"`, `"01"`, `"-1"`, `"1.5"`, `"1e3"`, `"a"`, `"1", "2"`, `'1'`, `w/"1"`, `W/1`, `"1234567890"`, `" 1"`, `"１"`} {
		if got, ok := parseETag(in); ok {
			t.Errorf("parseETag(%q) = %d, accepted; want refused", in, got)
		}
	}
}

func TestIdempotencyKeyBounds(t *testing.T) {
	for _, k := range []string{"a", "order-2026-11-27/1", strings.Repeat("k", 255), "with space", "~!@#$%^&*()"} {
		if !validIdempotencyKey([]byte(k)) {
			t.Errorf("key %q refused", k)
		}
	}
	for _, k := range []string{"", strings.Repeat("k", 256), "tab\there", "nul\x00", "ключ", "\x7f"} {
		if validIdempotencyKey([]byte(k)) {
			t.Errorf("key %q accepted", k)
		}
	}
}
