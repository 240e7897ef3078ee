package httpapi

import (
	"github.com/gofiber/fiber/v2"

	"github.com/ticketd/ticketd/eventstore"
)

// DefaultPageBytes caps a page of the list or of comments in bytes of its JSON.
// A maximum-size ticket summary is about 22 KB (a 20,000-byte description), so a
// default page of 20 of them fits; a page of 100 stops near 256 KiB and links on.
const DefaultPageBytes = 256 << 10

// encodePage encodes the longest prefix of items whose JSON array stays within max
// bytes (at least one item, so every page moves its reader on) and says how many it
// holds. Items past it are left for the next page, which the caller links to from the
// last item encoded.
func encodePage[T any](items []T, max int) (body []byte, n int, err error) {
	body = append(make([]byte, 0, 1024), '[')
	for i, it := range items {
		b, err := eventstore.EncodeJSON(it)
		if err != nil {
			return nil, 0, err
		}
		if i > 0 && len(body)+len(b)+2 > max {
			break
		}
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, b...)
		n++
	}
	return append(body, ']'), n, nil
}

// sendJSON sends body, already encoded JSON, as a 200.
func sendJSON(c *fiber.Ctx, body []byte) error {
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(body)
}
