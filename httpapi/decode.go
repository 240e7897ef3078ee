package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// maxJSONDepth bounds nesting; ticketd's bodies are flat objects.
const maxJSONDepth = 32

// checkContentType accepts application/json and application/*+json, in UTF-8 when a
// charset is named; anything else, a missing type included, is a 415 problem.
func checkContentType(ct string) error {
	if ct == "" {
		return problem(fiber.StatusUnsupportedMediaType, "unsupported-media-type", "send the body as application/json")
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || !(mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))) {
		return problem(fiber.StatusUnsupportedMediaType, "unsupported-media-type", "send the body as application/json, not "+clip(ct))
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "utf8") {
		return problem(fiber.StatusUnsupportedMediaType, "unsupported-media-type", "send the body as UTF-8 JSON, not charset "+clip(cs))
	}
	return nil
}

// decodeJSON is the body decoder without the HTTP request, so it can be fuzzed alone.
// A body that is not one JSON object is a 400 problem (err). Otherwise every top-level
// key is checked, and bad reports each one that is wrong, in the order of the body: a
// key that is no field of dst (names are matched exactly: encoding/json alone would
// also take "TITLE" for "title", and a second spelling would silently win), a value of
// the wrong type or null, a lone UTF-16 surrogate escape in the key or anywhere in the
// value. The other fields are decoded into dst, so their values can be validated too
// and one answer names everything to fix; the fields in bad are left zero.
func decodeJSON(body []byte, dst any) (bad []FieldError, err error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, problem(fiber.StatusBadRequest, "malformed-json", "the request body is empty; send a JSON object")
	}
	if !utf8.Valid(body) {
		return nil, problem(fiber.StatusBadRequest, "invalid-utf8", "the request body is not valid UTF-8")
	}
	fs := jsonFields(dst)
	if decodeFlat(body, fs, dst) {
		return nil, nil
	}
	return decodeFull(body, fs, dst)
}

// decodeFull is decodeJSON's path for any body decodeFlat leaves (and the one that
// decides what is wrong with a body): checkShape, then encoding/json.
func decodeFull(body []byte, fs fieldSet, dst any) (bad []FieldError, err error) {
	sh, err := checkShape(body)
	if err != nil {
		return nil, err
	}
	flagged := map[string]bool{}
	for _, k := range sh.keys {
		want, known := fs.kinds[k]
		reason := ""
		switch got := sh.kinds[k]; {
		case sh.lone[k]:
			reason = "must not contain a lone UTF-16 surrogate escape (\\ud800 to \\udfff not in a pair): it is no character"
		case !known:
			reason = "is not a known field; this body accepts " + fs.list + " (names are case-sensitive)"
		case got != want:
			// every field ticketd reads is a string: null is never a value it accepts
			reason = "must be a " + want + ", not " + got
		default:
			continue
		}
		flagged[k] = true
		bad = append(bad, FieldError{Field: clip(k), Reason: reason})
	}
	if len(bad) > 0 {
		// decode the well-formed known fields alone: the body has no repeated key, and
		// without the flagged ones every key is a field's exact name
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil {
			return nil, jsonProblem(err)
		}
		for k := range flagged {
			delete(m, k)
		}
		rest, _ := json.Marshal(m)
		if err := json.Unmarshal(rest, dst); err != nil {
			return nil, jsonProblem(err)
		}
		return bad, nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return nil, jsonProblem(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, problem(fiber.StatusBadRequest, "malformed-json", "the body has data after the JSON object")
	}
	return nil, nil
}

// decodeFlat decodes, in one pass, the body every client sends: one flat object whose
// keys are the exact names of dst's string fields, each once, and whose values are
// strings without a lone surrogate escape or a control character. It reports false for
// anything else, with dst zeroed again, and decodeJSON takes the full path (checkShape, then encoding/json), which decides
// the answer and names what is wrong. Both paths fill dst alike for every body
// decodeFlat accepts (TestDecodeFlatAgreesWithTheFullPath, FuzzDecodeFlat); body is
// valid UTF-8. The full path costs some 20 µs a create in token walking and
// reflection, decodeFlat a few hundred nanoseconds.
func decodeFlat(body []byte, fs fieldSet, dst any) bool {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return false
	}
	v = v.Elem()
	if !decodeFlatInto(body, fs, v) {
		v.SetZero() // the full path starts from nothing
		return false
	}
	return true
}

func decodeFlatInto(body []byte, fs fieldSet, v reflect.Value) bool {
	i := skipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return false
	}
	i = skipSpace(body, i+1)
	var seen uint64 // by field index; wider structs take the full path
	if i < len(body) && body[i] == '}' {
		return skipSpace(body, i+1) == len(body)
	}
	var buf []byte
	for {
		// the key: a field's exact name, no escape
		if i >= len(body) || body[i] != '"' {
			return false
		}
		end := bytes.IndexByte(body[i+1:], '"')
		if end < 0 {
			return false
		}
		key := body[i+1 : i+1+end]
		if bytes.IndexByte(key, '\\') >= 0 {
			return false
		}
		idx, ok := fs.strings[string(key)]
		if !ok || idx >= 64 || seen&(1<<idx) != 0 {
			return false
		}
		seen |= 1 << idx
		i = skipSpace(body, i+2+end)
		if i >= len(body) || body[i] != ':' {
			return false
		}
		i = skipSpace(body, i+1)
		var val string
		if val, i, buf, ok = flatString(body, i, buf); !ok {
			return false
		}
		v.Field(idx).SetString(val)
		i = skipSpace(body, i)
		if i >= len(body) {
			return false
		}
		switch body[i] {
		case ',':
			i = skipSpace(body, i+1)
		case '}':
			return skipSpace(body, i+1) == len(body)
		default:
			return false
		}
	}
}

// skipSpace returns the index of the first byte at or after i that is not JSON
// whitespace.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// flatString decodes the JSON string at body[i] as encoding/json does, and returns it
// and the index after it; false for anything decodeFlat leaves to the full path (not a
// string, a control character, a bad or lone surrogate escape, no end). buf is scratch
// space for strings with escapes, returned for reuse.
func flatString(body []byte, i int, buf []byte) (string, int, []byte, bool) {
	if i >= len(body) || body[i] != '"' {
		return "", i, buf, false
	}
	i++
	start := i
	for i < len(body) && body[i] != '"' && body[i] != '\\' {
		if body[i] < 0x20 {
			return "", i, buf, false
		}
		i++
	}
	if i >= len(body) {
		return "", i, buf, false
	}
	if body[i] == '"' {
		return string(body[start:i]), i + 1, buf, true
	}
	buf = append(buf[:0], body[start:i]...)
	for i < len(body) {
		c := body[i]
		switch {
		case c == '"':
			return string(buf), i + 1, buf, true
		case c < 0x20:
			return "", i, buf, false
		case c != '\\':
			buf = append(buf, c)
			i++
			continue
		}
		if i+1 >= len(body) {
			return "", i, buf, false
		}
		switch body[i+1] {
		case '"', '\\', '/':
			buf = append(buf, body[i+1])
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			if i+6 > len(body) {
				return "", i, buf, false
			}
			r, ok := hex4(body[i+2 : i+6])
			if !ok {
				return "", i, buf, false
			}
			i += 6
			if r >= 0xD800 && r < 0xE000 {
				// only a high surrogate escape followed by a low one is a character
				if r >= 0xDC00 || i+6 > len(body) || body[i] != '\\' || body[i+1] != 'u' {
					return "", i, buf, false
				}
				lo, ok := hex4(body[i+2 : i+6])
				if !ok || lo < 0xDC00 || lo >= 0xE000 {
					return "", i, buf, false
				}
				r = utf16.DecodeRune(r, lo)
				i += 6
			}
			buf = utf8.AppendRune(buf, r)
			continue
		default:
			return "", i, buf, false
		}
		i += 2
	}
	return "", i, buf, false
}

// shape is what checkShape learnt about the top-level object.
type shape struct {
	keys  []string          // in order of appearance
	kinds map[string]string // the JSON type of each key's value: string, number, boolean, null, object, array
	lone  map[string]bool   // keys with a lone UTF-16 surrogate escape in the key or the value
}

// checkShape walks the tokens once: the top level must be one object, nesting bounded,
// and no object may repeat a key (encoding/json would silently keep the last).
func checkShape(body []byte) (shape, error) {
	sh := shape{kinds: map[string]string{}, lone: map[string]bool{}}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber() // numbers stay text: 1e999 is a value of the wrong type, not an error here
	type frame struct {
		object bool
		keys   map[string]struct{}
		expect bool // in an object: the next string token is a key
		key    string
	}
	var stack []*frame
	first := true
	for {
		start := dec.InputOffset()
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return sh, nil
		}
		if err != nil {
			return sh, jsonProblem(err)
		}
		if first {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return sh, problem(fiber.StatusBadRequest, "malformed-json", "the body must be a JSON object")
			}
			first = false
		} else if len(stack) == 0 {
			return sh, problem(fiber.StatusBadRequest, "malformed-json", "the body has data after the JSON object")
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		// a value of the top-level object (not a key, not a closing delimiter)
		if len(stack) == 1 && !top.expect {
			switch t := tok.(type) {
			case json.Delim:
				if t == '{' {
					sh.kinds[top.key] = "object"
				} else if t == '[' {
					sh.kinds[top.key] = "array"
				}
			case string:
				sh.kinds[top.key] = "string"
			case json.Number:
				sh.kinds[top.key] = "number"
			case bool:
				sh.kinds[top.key] = "boolean"
			case nil:
				sh.kinds[top.key] = "null"
			}
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				if top != nil && top.object {
					top.expect = true
				}
				if len(stack) >= maxJSONDepth {
					return sh, problem(fiber.StatusBadRequest, "malformed-json", fmt.Sprintf("the JSON nests deeper than %d levels", maxJSONDepth))
				}
				stack = append(stack, &frame{object: t == '{', keys: map[string]struct{}{}, expect: t == '{'})
			default:
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].object {
					stack[len(stack)-1].expect = true
				}
			}
		case string:
			// encoding/json turns a lone UTF-16 surrogate escape ("\ud800") into U+FFFD
			// without a word: refuse it instead of storing a character the client did
			// not send. The raw token is what lies between the two offsets.
			lone := loneSurrogate(body[start:dec.InputOffset()])
			if top != nil && top.object && top.expect {
				if _, dup := top.keys[t]; dup {
					return sh, problem(fiber.StatusBadRequest, "duplicate-key", "the JSON object repeats the key "+strconvQuote(clip(t)))
				}
				top.keys[t] = struct{}{}
				top.expect = false
				top.key = t
				if len(stack) == 1 {
					sh.keys = append(sh.keys, t)
				}
				if lone {
					sh.lone[stack[0].key] = true // the key itself, or the top-level field holding it
				}
				continue
			}
			if lone {
				sh.lone[stack[0].key] = true // a value, at any depth: the top-level field holding it
			}
			if top != nil && top.object {
				top.expect = true
			}
		default:
			if top != nil && top.object {
				top.expect = true
			}
		}
	}
}

// loneSurrogate reports whether raw, the text of one JSON string token (with whatever
// whitespace, colon or comma precedes it), holds a \uXXXX escape of a UTF-16 surrogate
// that is not part of a high-low pair. Backslashes occur in JSON only inside strings, so
// every one starts an escape.
func loneSurrogate(raw []byte) bool {
	high := false // the previous escape was a high surrogate awaiting its low half
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			if high {
				return true
			}
			continue
		}
		if i+1 < len(raw) && raw[i+1] != 'u' {
			if high {
				return true
			}
			i++ // a two-character escape such as \" or \\
			continue
		}
		if i+6 > len(raw) {
			return false // malformed: the decoder has refused it already
		}
		v, ok := hex4(raw[i+2 : i+6])
		if !ok {
			return false
		}
		i += 5
		switch {
		case v >= 0xD800 && v < 0xDC00:
			if high {
				return true
			}
			high = true
		case v >= 0xDC00 && v < 0xE000:
			if !high {
				return true
			}
			high = false
		default:
			if high {
				return true
			}
		}
	}
	return high
}

func hex4(b []byte) (rune, bool) {
	var v rune
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			v = v<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// fieldSet is what a request struct accepts: its json names, in the struct's order, with
// the JSON type of each, and the names as a list for a problem's reason.
type fieldSet struct {
	kinds map[string]string
	list  string // "title, description, email"
	// strings maps the name of each string field to its index in the struct.
	strings map[string]int
}

// fieldSets caches the fieldSet of the request structs, by type.
var fieldSets sync.Map // reflect.Type -> fieldSet

// jsonFields returns the fieldSet of the struct dst points to.
func jsonFields(dst any) fieldSet {
	t := reflect.TypeOf(dst)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if fs, ok := fieldSets.Load(t); ok {
		return fs.(fieldSet)
	}
	fs := fieldSet{kinds: map[string]string{}, strings: map[string]int{}}
	var names []string
	if t.Kind() == reflect.Struct {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fs.kinds[name] = jsonKind(f.Type.Kind().String())
			if f.Type.Kind() == reflect.String {
				fs.strings[name] = i
			}
			names = append(names, name)
		}
	}
	fs.list = strings.Join(names, ", ")
	fieldSets.Store(t, fs)
	return fs
}

// clip shortens client text echoed in a problem to at most 64 bytes, on a rune boundary.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	i := max
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

func strconvQuote(s string) string {
	b, _ := eventstore.EncodeJSON(s)
	return string(b)
}

// jsonProblem explains a decoding error without leaking Go type names.
func jsonProblem(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return problem(fiber.StatusBadRequest, "malformed-json", fmt.Sprintf("the body is not valid JSON (at byte %d)", se.Offset))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return problem(fiber.StatusBadRequest, "malformed-json", "the body ends in the middle of the JSON")
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			return problem(fiber.StatusBadRequest, "malformed-json", "the body must be a JSON object")
		}
		got, _, _ := strings.Cut(te.Value, " ") // "number 1e999" -> "number": no echo of the value
		return invalidField(clip(field), "must be a "+jsonKind(te.Type.Kind().String())+", not "+got)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return invalidField(clip(field), "is not a known field")
	}
	return problem(fiber.StatusBadRequest, "malformed-json", "the body is not valid JSON")
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "int", "int64", "int32", "float64", "uint":
		return "number"
	case "bool":
		return "boolean"
	case "slice", "array":
		return "array"
	}
	return "object"
}

// requestBody returns the body of a command request whose content type is JSON.
func requestBody(c *fiber.Ctx) ([]byte, error) {
	if err := checkContentType(c.Get(fiber.HeaderContentType)); err != nil {
		return nil, err
	}
	return c.Body(), nil
}

// The parse functions are the whole decoding and validation path of a command body,
// without the HTTP request, so the fuzz tests cover exactly what the handlers run.
// Every error they return is a *Problem with a 4xx status.

// parseCreate reads and validates a create body.
func parseCreate(body []byte) (ticket.OpenTicket, error) {
	var req createRequest
	bad, err := decodeJSON(body, &req)
	if err != nil {
		return ticket.OpenTicket{}, err
	}
	cmd := ticket.OpenTicket(req)
	return cmd, fieldsProblem(bad, cmd.FieldErrors())
}

// parseComment reads and validates a comment body. The command's ID is left zero: the
// handler gives the comment its id.
func parseComment(body []byte) (ticket.AddComment, error) {
	var req commentRequest
	bad, err := decodeJSON(body, &req)
	if err != nil {
		return ticket.AddComment{}, err
	}
	cmd := ticket.AddComment{Body: req.Body, Email: req.Email, CreatedBy: req.CreatedBy}
	return cmd, fieldsProblem(bad, cmd.FieldErrors())
}

// parseStatus reads and validates a status change body.
func parseStatus(body []byte) (ticket.ChangeStatus, error) {
	var req statusRequest
	bad, err := decodeJSON(body, &req)
	if err != nil {
		return ticket.ChangeStatus{}, err
	}
	cmd := ticket.ChangeStatus(req)
	return cmd, fieldsProblem(bad, cmd.FieldErrors())
}

// fieldsProblem is the 422 problem naming every bad field of a body: first those the
// decoder refused (in the order of the body), then those whose values break a rule (in
// the order of the command's fields), each field once. nil when there are none.
func fieldsProblem(decoded []FieldError, invalid ticket.ValidationErrors) error {
	errs := decoded
	named := map[string]bool{}
	for _, e := range decoded {
		named[e.Field] = true
	}
	for _, ve := range invalid {
		if !named[ve.Field] {
			named[ve.Field] = true
			errs = append(errs, FieldError{Field: ve.Field, Reason: ve.Reason})
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return invalidFields(errs)
}

// queryText checks a text query value (a filter): valid UTF-8 (Postgres refuses
// anything else, and the refusal must not become a 500), no control characters (NUL
// above all), at most max characters.
func queryText(param, v string, max int) error {
	if !utf8.ValidString(v) {
		return invalidQuery(param, "must be valid UTF-8")
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return invalidQuery(param, "must not contain control characters")
		}
	}
	if utf8.RuneCountInString(v) > max {
		return invalidQuery(param, "must be at most "+strconv.Itoa(max)+" characters")
	}
	return nil
}

// MaxVersion is the largest version a query can name: versions are Postgres integers
// (int4), and a larger number would reach the driver and fail there.
const MaxVersion = math.MaxInt32

// versionParam parses the value of ?version=: a whole number from 1 to MaxVersion,
// written in plain digits (no sign, no leading zero), else a 422 naming `version`. It
// never reaches the store with a number Postgres cannot take.
func versionParam(raw string) (int, error) {
	bad := invalidQuery("version", "must be a whole number from 1 to "+strconv.Itoa(MaxVersion)+" (the version of an event of this ticket)")
	if raw == "" || len(raw) > len(strconv.Itoa(MaxVersion)) || raw[0] == '0' || strings.TrimLeft(raw, "0123456789") != "" {
		return 0, bad
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > MaxVersion {
		return 0, bad
	}
	return n, nil
}
