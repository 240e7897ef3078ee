package httpapi

import (
	"strings"
	"testing"

	"github.com/ticketd/ticketd/eventstore"
)

// A page is the JSON array eventstore.EncodeJSON makes of the items it holds, stops
// before the item that would take it past max bytes, and holds at least one item.
func TestEncodePageIsBoundedAndEncodesAsStored(t *testing.T) {
	type item struct {
		Text string `json:"text"`
	}
	items := []item{{"<a & b>"}, {strings.Repeat("x", 100)}, {"é\u2028"}, {strings.Repeat("y", 100)}}
	for _, max := range []int{1, 120, 130, 250, 10_000} {
		body, n, err := encodePage(items, max)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := eventstore.EncodeJSON(items[:n])
		if string(body) != string(want) {
			t.Fatalf("max %d: page %s, want %s", max, body, want)
		}
		if n < 1 || (n > 1 && len(body) > max) {
			t.Fatalf("max %d: %d items in %d bytes", max, n, len(body))
		}
		if n < len(items) {
			next, _ := eventstore.EncodeJSON(items[:n+1])
			if len(next) <= max {
				t.Fatalf("max %d: stopped at %d items though %d fit in %d bytes", max, n, n+1, len(next))
			}
		}
	}
	if body, n, _ := encodePage([]item{}, 100); string(body) != "[]" || n != 0 {
		t.Fatalf("an empty page: %s, %d", body, n)
	}
}
