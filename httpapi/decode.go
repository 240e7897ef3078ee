package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"
)

// maxJSONDepth bounds nesting; ticketd's bodies are flat objects.
const maxJSONDepth = 32

// decodeBody reads a JSON object body into dst, strictly: the content type must be JSON,
// the body valid UTF-8 and well-formed JSON with no unknown or duplicate fields, no
// trailing data and no deep nesting. Each failure is a problem naming what is wrong.
func decodeBody(c *fiber.Ctx, dst any) error {
	if err := checkContentType(c.Get(fiber.HeaderContentType)); err != nil {
		return err
	}
	return decodeJSON(c.Body(), dst)
}

func checkContentType(ct string) error {
	if ct == "" {
		return problem(fiber.StatusUnsupportedMediaType, "unsupported-media-type", "send the body as application/json")
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || !(mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))) {
		return problem(fiber.StatusUnsupportedMediaType, "unsupported-media-type", "send the body as application/json, not "+ct)
	}
	return nil
}

// decodeJSON is the body decoder without the HTTP request, so it can be fuzzed alone.
func decodeJSON(body []byte, dst any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return problem(fiber.StatusBadRequest, "malformed-json", "the request body is empty; send a JSON object")
	}
	if !utf8.Valid(body) {
		return problem(fiber.StatusBadRequest, "invalid-utf8", "the request body is not valid UTF-8")
	}
	if err := checkShape(body); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonProblem(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return problem(fiber.StatusBadRequest, "malformed-json", "the body has data after the JSON object")
	}
	return nil
}

// checkShape walks the tokens once: the top level must be an object, nesting bounded,
// and no object may repeat a key (encoding/json would silently keep the last).
func checkShape(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		object bool
		keys   map[string]struct{}
		expect bool // in an object: the next string token is a key
		key    string
	}
	var stack []*frame
	first := true
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return jsonProblem(err)
		}
		if first {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return problem(fiber.StatusBadRequest, "malformed-json", "the body must be a JSON object")
			}
			first = false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				if top != nil && top.object {
					top.expect = true
				}
				if len(stack) >= maxJSONDepth {
					return problem(fiber.StatusBadRequest, "malformed-json", fmt.Sprintf("the JSON nests deeper than %d levels", maxJSONDepth))
				}
				stack = append(stack, &frame{object: t == '{', keys: map[string]struct{}{}, expect: t == '{'})
			default:
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].object {
					stack[len(stack)-1].expect = true
				}
			}
		case string:
			if top != nil && top.object && top.expect {
				if _, dup := top.keys[t]; dup {
					return problem(fiber.StatusBadRequest, "duplicate-key", "the JSON object repeats the key "+strconvQuote(t))
				}
				top.keys[t] = struct{}{}
				top.expect = false
				top.key = t
				continue
			}
			if top != nil && top.object {
				top.expect = true
			}
		case nil:
			// every field ticketd reads is a string: null is never a value it accepts
			if top != nil && top.object && len(stack) == 1 {
				return invalidField(top.key, "must be a string, not null")
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

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
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
		return invalidField(field, "must be a "+jsonKind(te.Type.Kind().String())+", not "+te.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return invalidField(field, "is not a known field")
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
