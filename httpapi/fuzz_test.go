package httpapi

import (
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

// The fuzz targets cover the whole decoding and validation path of the command bodies
// (parseCreate, parseComment, parseStatus: exactly what the handlers run) and the
// parsers of client-controlled headers and cursors. Their seed corpora live in
// testdata/fuzz/<Target>/ and run with every `go test`; run one longer with e.g.
//
//	go test -run '^$' -fuzz '^FuzzDecodeCreate$' -fuzztime 3m ./httpapi/

// internals are fragments that must never reach a client in a problem's own words.
var internals = []string{"json:", "SQLSTATE", "pgx", "runtime", "goroutine", ".go:", "reflect", "Go struct", "httpapi.", "ticket."}

// checkRefusal fails unless err is a 4xx *Problem whose own text (what does not echo
// the client's input) carries no internals.
func checkRefusal(t *testing.T, err error) {
	t.Helper()
	var p *Problem
	if !errors.As(err, &p) {
		t.Fatalf("error %v (%T) is not a *Problem", err, err)
	}
	if p.Status < 400 || p.Status > 499 || p.Code == "" || p.Type != ProblemTypeBase+p.Code {
		t.Fatalf("problem %+v is not a well-formed 4xx", p)
	}
	own := []string{p.Title, p.Code}
	for _, fe := range p.Errors {
		own = append(own, fe.Reason)
	}
	if len(p.Errors) == 0 && p.Code != "duplicate-key" {
		own = append(own, p.Detail)
	}
	for _, s := range own {
		for _, leak := range internals {
			if strings.Contains(s, leak) {
				t.Fatalf("problem text %q leaks %q", s, leak)
			}
		}
	}
	if _, err := json.Marshal(p); err != nil {
		t.Fatalf("problem does not encode: %v", err)
	}
}

// checkAcceptedText fails unless an accepted field is text Postgres can store: valid
// UTF-8 without NUL, within its limit.
func checkAcceptedText(t *testing.T, field, v string, max int) {
	t.Helper()
	if !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
		t.Fatalf("accepted %s %q is not valid UTF-8 without NUL", field, v)
	}
	if n := utf8.RuneCountInString(v); n > max {
		t.Fatalf("accepted %s has %d characters, limit %d", field, n, max)
	}
}

// roundTrip checks that an accepted command, encoded again, decodes to itself: what
// was accepted is exactly what will be stored.
func roundTrip[C any](t *testing.T, req any, parse func([]byte) (C, error), got C) {
	t.Helper()
	raw, err := json.Marshal(req)
	if err != nil {
		t.Fatalf("re-encode: %v", err)
	}
	again, err := parse(raw)
	if err != nil {
		t.Fatalf("re-encoded %s refused: %v", raw, err)
	}
	if !reflect.DeepEqual(again, got) {
		t.Fatalf("round trip changed %+v into %+v", got, again)
	}
}

func FuzzDecodeCreate(f *testing.F) {
	f.Add([]byte(`{"title":"Проблема с подключением","description":"Не могу","email":"user@example.com","created_by":"Иван","status":"open"}`))
	f.Add([]byte(`{"title":"a","email":"u@example.com","created_by":"u"}`))
	f.Add([]byte(`{"title":"a","title":"b"}`))
	f.Add([]byte(`{"title":null}`))
	f.Add([]byte(`{"title":"\u0000"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		cmd, err := parseCreate(body)
		if err != nil {
			checkRefusal(t, err)
			return
		}
		checkAcceptedText(t, "title", cmd.Title, ticket.MaxTitle)
		checkAcceptedText(t, "description", cmd.Description, ticket.MaxDescription)
		checkAcceptedText(t, "email", cmd.Email, ticket.MaxEmail)
		checkAcceptedText(t, "created_by", cmd.CreatedBy, ticket.MaxName)
		if strings.TrimSpace(cmd.Title) == "" || strings.TrimSpace(cmd.CreatedBy) == "" || cmd.Email == "" {
			t.Fatalf("accepted a create without a required field: %+v", cmd)
		}
		if cmd.Status != "" && cmd.Status != "open" {
			t.Fatalf("accepted a create with status %q", cmd.Status)
		}
		// the domain accepts what the HTTP layer accepted
		tk := ticket.New(uuid.New())
		if err := tk.Open(cmd, time.Unix(0, 0)); err != nil {
			t.Fatalf("domain refused an accepted create: %v", err)
		}
		roundTrip(t, createRequest(cmd), parseCreate, cmd)
	})
}

func FuzzDecodeComment(f *testing.F) {
	f.Add([]byte(`{"body":"Перезагрузите роутер","created_by":"support"}`))
	f.Add([]byte(`{"body":"multi\nline","created_by":"u","email":"u@example.com"}`))
	f.Add([]byte(`{"body":"","created_by":"u"}`))
	f.Add([]byte(`{"body":["x"],"created_by":"u"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		cmd, err := parseComment(body)
		if err != nil {
			checkRefusal(t, err)
			return
		}
		checkAcceptedText(t, "body", cmd.Body, ticket.MaxComment)
		checkAcceptedText(t, "created_by", cmd.CreatedBy, ticket.MaxName)
		checkAcceptedText(t, "email", cmd.Email, ticket.MaxEmail)
		if strings.TrimSpace(cmd.Body) == "" || strings.TrimSpace(cmd.CreatedBy) == "" {
			t.Fatalf("accepted a comment without a required field: %+v", cmd)
		}
		roundTrip(t, commentRequest{Body: cmd.Body, Email: cmd.Email, CreatedBy: cmd.CreatedBy}, parseComment, cmd)
	})
}

func FuzzDecodeStatus(f *testing.F) {
	f.Add([]byte(`{"status":"answered","updated_by":"Администратор"}`))
	f.Add([]byte(`{"status":"closed","updated_by":"a"}`))
	f.Add([]byte(`{"status":"Closed","updated_by":"a"}`))
	f.Add([]byte(`{"status":1,"updated_by":"a"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		cmd, err := parseStatus(body)
		if err != nil {
			checkRefusal(t, err)
			return
		}
		if !ticket.Status(cmd.Status).Valid() {
			t.Fatalf("accepted status %q", cmd.Status)
		}
		checkAcceptedText(t, "updated_by", cmd.UpdatedBy, ticket.MaxName)
		roundTrip(t, statusRequest(cmd), parseStatus, cmd)
	})
}

// FuzzCursor feeds arbitrary cursors to the verifier: never a panic, only the one
// 422 problem, and no cursor but a signed one opens.
func FuzzCursor(f *testing.F) {
	cs := cursors{key: []byte("fuzz-cursor-key-0123456789abcdef")}
	signed := cs.sign(cursorBody{Scope: "list:open\x00\x00", Time: time.Unix(1700000000, 123000).UTC(), ID: uuid.MustParse("01936f1e-7c4a-7000-8000-000000000000")})
	f.Add(signed, "list:open\x00\x00")
	f.Add(signed[:len(signed)-3], "list:open\x00\x00")
	f.Add(signed, "list:\x00\x00")
	f.Add("garbage", "list:\x00\x00")
	f.Add("e30.AAAAAAAAAAAAAAAAAAAAAA", "list:\x00\x00")
	f.Fuzz(func(t *testing.T, raw, scope string) {
		b, err := cs.open(raw, scope)
		if err != nil {
			checkRefusal(t, err)
			return
		}
		if b.Scope != scope {
			t.Fatalf("cursor for scope %q opened for %q", b.Scope, scope)
		}
		if _, err := cs.open(cs.sign(b), scope); err != nil {
			t.Fatalf("an opened cursor, signed again, is refused: %v", err)
		}
	})
}

// FuzzPreconditionHeaders covers the entity-tag and idempotency-key parsers.
func FuzzPreconditionHeaders(f *testing.F) {
	for _, s := range []string{`"1"`, `W/"12"`, `*`, `"0"`, `"1", "2"`, `""`, `"99999999999999999999"`, "key-1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if v, ok := parseETag(s); ok {
			if v < 1 || (`"`+strconv.Itoa(v)+`"` != strings.TrimPrefix(s, "W/")) {
				t.Fatalf("parseETag(%q) = %d", s, v)
			}
		}
		if validIdempotencyKey([]byte(s)) {
			if len(s) == 0 || len(s) > MaxIdempotencyKey {
				t.Fatalf("key of %d bytes accepted", len(s))
			}
			for i := 0; i < len(s); i++ {
				if s[i] < 0x20 || s[i] > 0x7e {
					t.Fatalf("key %q with byte %#x accepted", s, s[i])
				}
			}
		}
	})
}
