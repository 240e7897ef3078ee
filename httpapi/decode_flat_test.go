package httpapi

import (
	"math/rand/v2"
	"reflect"
	"testing"
	"unicode/utf8"
)

// decodeFlat is the one-pass decoder of the bodies clients send; whatever it accepts,
// the full path (checkShape and encoding/json, which decides every refusal) must accept
// the same way and decode into the same fields.

var flatBodies = []string{
	`{"title":"Проблема с подключением","description":"Не могу","email":"user@example.com","created_by":"Иван","status":"open"}`,
	`{"title":"a","email":"u@example.com","created_by":"u"}`,
	` { "title" : "a" , "email":"u@example.com"	,"created_by":"u"
	}  `,
	`{}`, ` {} `, `{"title":""}`,
	`{"title":"esc \" \\ \/ \b \f \n \r \t \u00e9 \u20AC \ud83c\udfab end"}`,
	`{"title":"\u2028\u2029 <&> 🎫"}`,
	// for the full path: refusals, or bodies of other shapes
	`{"title":"a","title":"b"}`, `{"title":null}`, `{"title":"\u0000"}`, `{"title":1}`, `{"TITLE":"a"}`,
	`{"bogus":"a","title":"b"}`, `{"title":"a",}`, `{"title":"a"} x`, `{"title":"a"}{}`, `[]`, `"a"`,
	`{"title":"\ud800"}`, `{"title":"\udc00\ud800"}`, `{"title":"\ud800\u0041"}`, `{"title":"\ud800x"}`,
	`{"title":"a` + "\x01" + `"}`, `{"title":"\x"}`, `{"title":"\u12"}`, `{"title":"\u12g4"}`, `{"ti\u0074le":"a"}`,
	`{"title":"a"`, `{"title":"a`, `{"title":`, `{"title"`, `{"title`, `{`, ``, `  `, `{"title":{"x":"y"}}`,
	`{"title":["a"]}`, `{"title":true}`, "\ufeff{}", `{"title":"a" "email":"b"}`, `{"title" "a"}`,
}

func checkFlatAgrees(t *testing.T, body []byte) {
	t.Helper()
	var fast createRequest
	fs := jsonFields(&fast)
	if !decodeFlat(body, fs, &fast) {
		if fast != (createRequest{}) {
			t.Fatalf("%q: decodeFlat refused and left %+v set", body, fast)
		}
		return
	}
	var full createRequest
	bad, err := decodeFull(body, fs, &full)
	if err != nil || len(bad) > 0 {
		t.Fatalf("%q: decodeFlat accepted, the full path refused: %v %v", body, bad, err)
	}
	if !reflect.DeepEqual(fast, full) {
		t.Fatalf("%q: decodeFlat gave %+v, the full path %+v", body, fast, full)
	}
}

func TestDecodeFlatAgreesWithTheFullPath(t *testing.T) {
	accepted := 0
	for _, b := range flatBodies {
		checkFlatAgrees(t, []byte(b))
		var req createRequest
		if decodeFlat([]byte(b), jsonFields(&req), &req) {
			accepted++
		}
	}
	if accepted < 8 {
		t.Fatalf("decodeFlat accepted %d of the well-formed bodies, expected all 8", accepted)
	}
	// mutations of the accepted bodies: bytes changed, dropped, doubled
	r := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte(`{}[]":,\ u0123456789abcdefABCDEFnrtbf/` + "\x00\x1f\t\n\xff\xc3\xa9")
	for range 50000 {
		b := []byte(flatBodies[r.IntN(8)])
		for range 1 + r.IntN(3) {
			if len(b) == 0 {
				break
			}
			i := r.IntN(len(b))
			switch r.IntN(3) {
			case 0:
				b[i] = alphabet[r.IntN(len(alphabet))]
			case 1:
				b = append(b[:i], b[i+1:]...)
			default:
				b = append(b[:i], append([]byte{alphabet[r.IntN(len(alphabet))]}, b[i:]...)...)
			}
		}
		if !utf8.Valid(b) {
			continue // decodeJSON refuses it before either path runs
		}
		checkFlatAgrees(t, b)
	}
}

func FuzzDecodeFlat(f *testing.F) {
	for _, b := range flatBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if !utf8.Valid(body) {
			return
		}
		checkFlatAgrees(t, body)
	})
}
