package eventstore

import (
	"unicode/utf16"
	"unicode/utf8"

	"github.com/ticketd/ticketd/ticket"
)

// The bulk read's decoding of event data by hand. A rebuild decodes every event of the
// store, and go-json's reflection (a new value per event, a string per field, then
// the interface boxing) was a fifth of its CPU. decodeData reads the objects the store
// holds (as EncodeJSON wrote them, or as Postgres' jsonb gives them back: a space after
// each colon and comma, keys in its order) for the kinds whose fields are all strings;
// anything else (another kind, a key it does not know, a value that is not a plain
// string, an escape it does not take, bytes that are not UTF-8) goes to
// ticket.DecodeData, which decides every refusal. TestDecodeDataIsDecodeData holds the
// two to one result.

// decodeData is ticket.DecodeData, by hand where it can.
func decodeData(typ string, b []byte) (ticket.EventData, error) {
	if d, ok := decodeDataFast(typ, b); ok {
		return d, nil
	}
	return ticket.DecodeData(typ, b)
}

// decodeDataFast decodes b as the data of typ, or reports false for ticket.DecodeData
// to decide. b is copied into one string, and the fields without escapes are parts of
// it: one allocation per event instead of one per field.
func decodeDataFast(typ string, b []byte) (ticket.EventData, bool) {
	switch typ {
	case ticket.TypeCommentAdded, ticket.TypeStatusChanged, ticket.TypeOpened, ticket.TypeDeleted:
	default:
		return nil, false
	}
	src := string(b)
	switch typ {
	case ticket.TypeCommentAdded:
		var d ticket.CommentAdded
		ok := eachString(src, func(k, v string) bool {
			switch k {
			case "comment_id":
				return parseUUID(v, (*[16]byte)(&d.CommentID))
			case "body":
				d.Body = v
			case "email":
				d.Email = v
			case "created_by":
				d.CreatedBy = v
			default:
				return false
			}
			return true
		})
		return d, ok
	case ticket.TypeStatusChanged:
		var d ticket.StatusChanged
		ok := eachString(src, func(k, v string) bool {
			switch k {
			case "from":
				d.From = ticket.Status(v)
			case "to":
				d.To = ticket.Status(v)
			case "updated_by":
				d.UpdatedBy = v
			default:
				return false
			}
			return true
		})
		return d, ok
	case ticket.TypeOpened:
		var d ticket.Opened
		ok := eachString(src, func(k, v string) bool {
			switch k {
			case "title":
				d.Title = v
			case "description":
				d.Description = v
			case "email":
				d.Email = v
			case "created_by":
				d.CreatedBy = v
			default:
				return false
			}
			return true
		})
		return d, ok
	case ticket.TypeDeleted:
		var d ticket.Deleted
		ok := eachString(src, func(k, v string) bool {
			if k != "deleted_by" {
				return false
			}
			d.DeletedBy = v
			return true
		})
		return d, ok
	}
	return nil, false
}

// eachString calls set with each member of the JSON object b, whose values must all
// be strings; it reports false (and stops) for anything else, or when set does.
func eachString(b string, set func(key, v string) bool) bool {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return skipSpace(b, i+1) == len(b)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return false
		}
		// keys are plain ASCII names: one with an escape or other bytes is not ours
		j := i + 1
		for j < len(b) && b[j] != '"' && b[j] != '\\' && b[j] >= 0x20 && b[j] < utf8.RuneSelf {
			j++
		}
		if j >= len(b) || b[j] != '"' {
			return false
		}
		key := b[i+1 : j]
		i = skipSpace(b, j+1)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipSpace(b, i+1)
		v, next, ok := jsonString(b, i)
		if !ok || !set(key, v) {
			return false
		}
		i = skipSpace(b, next)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return skipSpace(b, i+1) == len(b)
		default:
			return false
		}
	}
}

func skipSpace(b string, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	return i
}

// jsonString reads the JSON string starting at b[i] (its opening quote) and returns
// its value and the index after its closing quote. It takes the short escapes and \u
// escapes outside the surrogates; it reports false for any other escape, a control
// character or bytes that are not UTF-8 (which ticket.DecodeData then judges).
func jsonString(b string, i int) (string, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return "", 0, false
	}
	i++
	start := i
	ascii := true
	for i < len(b) {
		c := b[i]
		if c == '"' {
			s := b[start:i]
			if !ascii && !utf8.ValidString(s) {
				return "", 0, false
			}
			return s, i + 1, true
		}
		if c == '\\' {
			return jsonStringEscaped(b, start)
		}
		if c < 0x20 {
			return "", 0, false
		}
		if c >= utf8.RuneSelf {
			ascii = false
		}
		i++
	}
	return "", 0, false
}

// jsonStringEscaped is jsonString for a string with escapes; start is the index after
// its opening quote.
func jsonStringEscaped(b string, start int) (string, int, bool) {
	out := make([]byte, 0, 64)
	i := start
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			if !utf8.Valid(out) {
				return "", 0, false
			}
			return string(out), i + 1, true
		case c < 0x20:
			return "", 0, false
		case c != '\\':
			out = append(out, c)
			i++
			continue
		}
		if i+1 >= len(b) {
			return "", 0, false
		}
		switch b[i+1] {
		case '"', '\\', '/':
			out = append(out, b[i+1])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			if i+6 > len(b) {
				return "", 0, false
			}
			r, ok := hex4(b[i+2 : i+6])
			if !ok || utf16.IsSurrogate(r) {
				return "", 0, false
			}
			out = utf8.AppendRune(out, r)
			i += 6
			continue
		default:
			return "", 0, false
		}
		i += 2
	}
	return "", 0, false
}

func hex4(b string) (rune, bool) {
	var r rune
	for i := range len(b) {
		c := b[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(d)
	}
	return r, true
}

// parseUUID parses a uuid in its canonical form (8-4-4-4-12 hex digits) into id; other
// forms (which uuid.UUID also reads) are left to ticket.DecodeData.
func parseUUID(s string, id *[16]byte) bool {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return false
	}
	j := 0
	for i := 0; i < 36; {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i++
			continue
		}
		hi, ok1 := hexVal(s[i])
		lo, ok2 := hexVal(s[i+1])
		if !ok1 || !ok2 {
			return false
		}
		id[j] = hi<<4 | lo
		j++
		i += 2
	}
	return true
}

func hexVal(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
