package eventstore

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

// The outbox payload and metadata are written by hand; they must read exactly as
// EncodeJSON's encoding of the same values.

func TestAppendJSONString(t *testing.T) {
	cases := []string{"", "plain", `quote " and \ backslash`, "<b>&amp;</b>", "tab\tnew\nline\r\b\f\x00\x01\x1f\x7f",
		"é ü 日本 🎫", "\u2028\u2029", "bad \xff\xfe utf8 \xc3", "\xed\xa0\x80"}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, r.IntN(24))
		for i := range b {
			switch r.IntN(4) {
			case 0:
				b[i] = byte(r.IntN(0x20))
			case 1:
				b[i] = byte(0x80 + r.IntN(0x80))
			default:
				b[i] = byte(0x20 + r.IntN(0x60))
			}
		}
		cases = append(cases, string(b), strings.ToValidUTF8(string(b), "\u2028"))
	}
	for _, c := range cases {
		want, err := EncodeJSON(c)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendJSONString(nil, c); string(got) != string(want) {
			t.Fatalf("%q: expected %s, got %s", c, want, got)
		}
	}
}

func TestEncodeMessageMatchesEnvelope(t *testing.T) {
	at := time.Date(2026, 12, 5, 8, 30, 1, 123456000, time.UTC)
	id := uuid.MustParse("01936f1e-7c4a-7000-8000-00000000abcd")
	mds := []Metadata{
		{},
		{Actor: "ann \"<x>\"", RequestID: "r1"},
		{Actor: "a", Principal: &Principal{ID: "tok", Name: "n\u2028", Role: "agent"}, RequestID: "r", ClientRequestID: "c", CorrelationID: "k", IdempotencyKey: "i"},
		{Principal: &Principal{}, IdempotencyKey: "only"},
	}
	times := []time.Time{at, at.Truncate(time.Second), at.In(time.FixedZone("x", 3600)), time.Time{}}
	for i, md := range mds {
		for _, when := range times {
			r := Record{
				Event:    ticket.Event{TicketID: id, Version: 3 + i, At: when, Data: ticket.Opened{Title: "t <&>", Email: "e@x"}},
				Position: 987654321, Metadata: md, RecordedAt: at,
			}
			d, err := EncodeJSON(r.Data)
			if err != nil {
				t.Fatal(err)
			}
			want, err := EncodeJSON(envelope{Position: r.Position, StreamID: r.TicketID, Version: r.Version, Type: r.Type(),
				At: r.At, Data: d, Metadata: r.Metadata, RecordedAt: r.RecordedAt})
			if err != nil {
				t.Fatal(err)
			}
			got, err := EncodeMessage(r)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Fatalf("expected\n%s\ngot\n%s", want, got)
			}
			if mdWant, _ := EncodeJSON(md); string(appendMetadata(nil, md)) != string(mdWant) {
				t.Fatalf("metadata: expected %s, got %s", mdWant, appendMetadata(nil, md))
			}
			back, err := DecodeMessage(got)
			if err != nil || back.Position != r.Position || back.TicketID != id || !back.At.Equal(when) {
				t.Fatalf("decode: %+v, %v", back, err)
			}
		}
	}
	// a time encoding/json refuses is refused here too
	r := Record{Event: ticket.Event{TicketID: id, Version: 1, At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), Data: ticket.Opened{}}}
	if _, err := EncodeMessage(r); err == nil {
		t.Fatal("a year past 9999: expected an error")
	}
}
