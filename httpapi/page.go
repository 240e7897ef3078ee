package httpapi

import (
	"bytes"
	"encoding/json"

	"github.com/gofiber/fiber/v2"
)

// DefaultPageBytes caps a page of the list or of comments in bytes of its JSON.
// A maximum-size ticket summary is about 22 KB (a 20,000-byte description), so a
// default page of 20 of them fits; a page of 100 stops near 256 KiB and links on.
const DefaultPageBytes = 256 << 10

// encodePage encodes the longest prefix of items whose JSON array stays within max
// bytes (at least one item, so every page moves its reader on) and says how many it
// holds. Items past it are left for the next page, which the caller links to from the
// last item encoded. The encoding is eventstore.EncodeJSON's (no HTML escaping), with
// one encoder and one buffer for the page.
func encodePage[T any](items []T, max int) (body []byte, n int, err error) {
	var buf bytes.Buffer
	buf.Grow(min(512*len(items)+2, max+2))
	buf.WriteByte('[')
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for i, it := range items {
		mark := buf.Len()
		if i > 0 {
			buf.WriteByte(',')
		}
		if err := enc.Encode(it); err != nil {
			return nil, 0, err
		}
		buf.Truncate(buf.Len() - 1) // Encode's newline
		if i > 0 && buf.Len()+1 > max {
			buf.Truncate(mark)
			break
		}
		n++
	}
	buf.WriteByte(']')
	return buf.Bytes(), n, nil
}

// sendJSON sends body, already encoded JSON, as a 200.
func sendJSON(c *fiber.Ctx, body []byte) error {
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(body)
}
