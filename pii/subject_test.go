package pii_test

import (
	"encoding/hex"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/ticketd/ticketd/pii"
)

// TestParseSubjectIDIsHexDecoding: the hand-written parse accepts exactly the 64 hex
// digits (either case) hex.DecodeString turns into 32 bytes, and gives those bytes.
func TestParseSubjectIDIsHexDecoding(t *testing.T) {
	id := strings.Repeat("0123456789abcdef", 4)
	cases := []string{"", id, strings.ToUpper(id), id[:63], id + "0", id[:62] + "g0", id[:62] + "0G", " " + id[1:], id[:63] + "\xff"}
	r := rand.New(rand.NewPCG(7, 8))
	const digits = "0123456789abcdefABCDEFxz-"
	for range 5000 {
		n := 64
		if r.IntN(8) == 0 {
			n = r.IntN(70)
		}
		b := make([]byte, n)
		for i := range b {
			if r.IntN(200) == 0 {
				b[i] = digits[len(digits)-1-r.IntN(3)]
			} else {
				b[i] = digits[r.IntN(len(digits)-3)]
			}
		}
		cases = append(cases, string(b))
	}
	for _, s := range cases {
		got, err := pii.ParseSubjectID(s)
		want, werr := hex.DecodeString(s)
		if ok := werr == nil && len(want) == len(got); ok != (err == nil) {
			t.Fatalf("%q: error %v, hex.DecodeString gives %x, %v", s, err, want, werr)
		} else if ok && string(want) != string(got[:]) {
			t.Fatalf("%q: %x, want %x", s, got, want)
		}
		if err == nil && got.String() != strings.ToLower(s) {
			t.Fatalf("%q: String gives %q", s, got.String())
		}
	}
}
