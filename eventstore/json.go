package eventstore

import (
	"bytes"
	"encoding/json"
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
