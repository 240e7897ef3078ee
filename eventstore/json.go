package eventstore

import (
	"bytes"
	"encoding/json"
	"time"
	"unicode/utf8"
)

// EncodeJSON is the JSON encoding of everything ticketd stores or sends (event data,
// outbox messages, stored answers, read-model documents, responses): encoding/json's,
// without its HTML escaping. Escaping <, > and & as \u003c, \u003e and \u0026 protects
// JSON pasted into an HTML page, which no reader of ticketd does, and it multiplies the
// size of text that holds them by up to six, at every layer that keeps a copy. Clients
// that embed a response in HTML escape it there, as for any other text.
func EncodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return b[:len(b)-1], nil // without Encode's newline
}

// AppendJSONString appends s as EncodeJSON encodes a string: quoted, with ", \ and
// control characters escaped (\b, \f, \n, \r, \t short, others as \u00XX), invalid
// UTF-8 as \ufffd, U+2028 and U+2029 escaped, and no HTML escaping. The outbox payload
// and the metadata are written by hand with it (encoding/json's reflection was a tenth
// of an append's CPU), and so are the read models' documents; TestAppendJSONString
// holds it to EncodeJSON.
func AppendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendJSONTime appends t as EncodeJSON encodes a time.Time (RFC 3339 with
// nanoseconds, quoted). Times in UTC with a four-digit year (every time the store
// writes) are formatted here; any other goes through Time.MarshalJSON, whose checks
// (year range, offset) then decide.
func appendJSONTime(dst []byte, t time.Time) ([]byte, error) {
	if _, off := t.Zone(); off == 0 {
		if y := t.Year(); y >= 0 && y <= 9999 {
			dst = append(dst, '"')
			dst = t.AppendFormat(dst, time.RFC3339Nano)
			return append(dst, '"'), nil
		}
	}
	b, err := t.MarshalJSON()
	return append(dst, b...), err
}

// appendMetadata appends md as EncodeJSON encodes it (the fields in Metadata's order,
// the empty ones left out).
func appendMetadata(dst []byte, md Metadata) []byte {
	dst = append(dst, '{')
	n := len(dst)
	field := func(name, v string) {
		if v == "" {
			return
		}
		if len(dst) > n {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = append(dst, name...)
		dst = append(dst, `":`...)
		dst = AppendJSONString(dst, v)
	}
	field("actor", md.Actor)
	if p := md.Principal; p != nil {
		if len(dst) > n {
			dst = append(dst, ',')
		}
		dst = append(dst, `"principal":{"id":`...)
		dst = AppendJSONString(dst, p.ID)
		dst = append(dst, `,"name":`...)
		dst = AppendJSONString(dst, p.Name)
		dst = append(dst, `,"role":`...)
		dst = AppendJSONString(dst, p.Role)
		dst = append(dst, '}')
	}
	field("request_id", md.RequestID)
	field("client_request_id", md.ClientRequestID)
	field("correlation_id", md.CorrelationID)
	field("idempotency_key", md.IdempotencyKey)
	return append(dst, '}')
}
