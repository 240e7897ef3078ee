package eventstore

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

// oddStrings are the strings the hand decoding must read back as go-json does.
var oddStrings = []string{"", "plain", `quote " and \ backslash`, "<b>&amp;</b>", "slash / too",
	"tab\tnew\nline\r\b\f\x00\x01\x1f\x7f", "é ü 日本 🎫", "\u2028\u2029", "Проблема с подключением",
	"bad \xff\xfe utf8 \xc3", "\xed\xa0\x80", "[erased]", "pii:v1:00:abc"}

// jsonbText is the text Postgres' jsonb gives back for the compact JSON b: a space
// after each colon and comma between members (its key order aside).
func jsonbText(b []byte) []byte {
	var out []byte
	inString, esc := false, false
	for _, c := range b {
		out = append(out, c)
		switch {
		case esc:
			esc = false
		case inString && c == '\\':
			esc = true
		case c == '"':
			inString = !inString
		case !inString && (c == ':' || c == ','):
			out = append(out, ' ')
		}
	}
	return out
}

// dataOf returns event data of every kind holding s in each of its text fields.
func dataOf(s string, id uuid.UUID) []ticket.EventData {
	return []ticket.EventData{
		ticket.Opened{Title: s, Description: s + s, Email: s, CreatedBy: s},
		ticket.CommentAdded{CommentID: id, Body: s, Email: s, CreatedBy: s},
		ticket.CommentAdded{CommentID: id, Body: s, CreatedBy: s},
		ticket.StatusChanged{From: ticket.StatusOpen, To: ticket.Status(s), UpdatedBy: s},
		ticket.Deleted{DeletedBy: s},
		ticket.Deleted{},
		ticket.SubjectErased{Subject: s, Requester: true, Comments: []uuid.UUID{id}, ErasedBy: s, Reason: s},
	}
}

func sameDecoding(t *testing.T, typ string, b []byte) {
	t.Helper()
	want, werr := ticket.DecodeData(typ, b)
	got, gerr := decodeData(typ, b)
	if (werr == nil) != (gerr == nil) || (werr != nil && werr.Error() != gerr.Error()) {
		t.Fatalf("%s %q: error %v, DecodeData's %v", typ, b, gerr, werr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s %q:\n got %#v\nwant %#v", typ, b, got, want)
	}
}

func TestDecodeDataIsDecodeData(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	strs := append([]string(nil), oddStrings...)
	for range 1000 {
		b := make([]byte, r.IntN(24))
		for i := range b {
			switch r.IntN(5) {
			case 0:
				b[i] = byte(r.IntN(0x20))
			case 1:
				b[i] = byte(0x80 + r.IntN(0x80))
			case 2:
				b[i] = `"\/u`[r.IntN(4)]
			default:
				b[i] = byte(0x20 + r.IntN(0x60))
			}
		}
		strs = append(strs, string(b))
	}
	id := uuid.MustParse("0193a8f2-7c4e-7abc-9def-0123456789ab")
	fast := 0
	for _, s := range strs {
		for _, d := range dataOf(s, id) {
			enc, err := EncodeJSON(d)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range [][]byte{enc, jsonbText(enc)} {
				sameDecoding(t, d.EventType(), b)
				if _, ok := decodeDataFast(d.EventType(), b); ok {
					fast++
				}
			}
		}
	}
	// the hand path must be the one taken for what the store holds (every kind but
	// SubjectErased, with strings whose escapes it reads)
	for _, s := range []string{"", "plain", "é ü 日本 🎫", "tab\tnew\nline \x01 \"q\" \\", "\u2028"} {
		for _, d := range dataOf(s, id) {
			if d.EventType() == ticket.TypeSubjectErased {
				continue
			}
			enc, _ := EncodeJSON(d)
			for _, b := range [][]byte{enc, jsonbText(enc)} {
				if _, ok := decodeDataFast(d.EventType(), b); !ok {
					t.Errorf("%s %q went to DecodeData", d.EventType(), b)
				}
			}
		}
	}
	if fast == 0 {
		t.Fatal("the hand path was never taken")
	}
}

func TestDecodeDataIsDecodeDataOnOddDocuments(t *testing.T) {
	id := "0193a8f2-7c4e-7abc-9def-0123456789ab"
	docs := map[string][]string{
		ticket.TypeOpened: {`{}`, ` { } `, "{\n\t\"title\" : \"x\" ,\r\n \"email\":\"e\"}\n", `{"title":"a","title":"b"}`,
			`{"Title":"x"}`, `{"TITLE":"x"}`, `{"title":null}`, `{"title":1}`, `{"title":"x","extra":2}`,
			`{"title":"\u00e9\u0041\u4e2d"}`, `{"title":"\u00E9"}`, `{"title":"\ud83c\udfab"}`, `{"title":"\ud800"}`,
			`{"title":"\x"}`, `{"title":"\u12"}`, `{"title":"x"`, `{"title":"x"}x`, `{"title":"x",}`, `{"title" "x"}`,
			`[]`, `null`, ``, `{"ti\u0074le":"x"}`, "{\"title\":\"a\x01b\"}", `{"title":"a\"b"}`, `{"title":"\/"}`},
		ticket.TypeCommentAdded: {`{"comment_id":"` + id + `","body":"b","created_by":"c"}`,
			`{"comment_id":"` + strings.ToUpper(id) + `"}`, `{"comment_id":"` + strings.ReplaceAll(id, "-", "") + `"}`,
			`{"comment_id":"{` + id + `}"}`, `{"comment_id":""}`, `{"comment_id":"zz93a8f2-7c4e-7abc-9def-0123456789ab"}`,
			`{"comment_id":"0193a8f2-7c4e-7abc-9def-0123456789a"}`, `{"comment_id":null}`, `{"body":"x","email":""}`},
		ticket.TypeStatusChanged: {`{"from":"open","to":"closed","updated_by":"u"}`, `{"from":"nonsense","to":""}`, `{"to":5}`},
		ticket.TypeDeleted:       {`{}`, `{"deleted_by":"x"}`, `{"deleted_by":true}`, `{"by":"x"}`},
		ticket.TypeSubjectErased: {`{"subject":"s","requester":true,"comments":["` + id + `"],"erased_by":"o"}`},
		"NoSuchType":             {`{}`},
	}
	for typ, list := range docs {
		for _, d := range list {
			t.Run(fmt.Sprintf("%s %q", typ, d), func(t *testing.T) { sameDecoding(t, typ, []byte(d)) })
		}
	}
}
