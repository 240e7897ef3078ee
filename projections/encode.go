package projections

import (
	"bytes"
	"fmt"

	gojson "github.com/goccy/go-json"
	"github.com/ticketd/ticketd/eventstore"
)

// encodedComments is the JSON array of a view's first n comments (n and last are
// unused in a compact view, which has no comments to compare them with). Comments never change
// once embedded, and a fold only appends to them, so the encoding of a view's comments
// carries over to the views folded from it: a document whose comment list is full (or
// unchanged) costs the encoding of its summary only, however many comments it embeds.
// It is immutable once made; views that share it share a read-only value.
type encodedComments struct {
	n    int
	last [16]byte // the id of comment n-1: proves the encoding belongs to these comments
	json []byte
}

// covers reports whether e encodes comments[:e.n].
func (e *encodedComments) covers(comments []Comment) bool {
	return e != nil && e.n <= len(comments) && (e.n == 0 || e.last == comments[e.n-1].ID)
}

// Encode returns v as JSON, byte for byte what eventstore.EncodeJSON(v) returns, and keeps the
// encoding of v's comments in v for the views later folded from it (see
// encodedComments). Encode a view that is kept (a cache's copy), so its successors
// start from its encoding.
func (v *View) Encode() ([]byte, error) {
	comments, err := v.encodeComments()
	if err != nil {
		return nil, err
	}
	summary, err := eventstore.EncodeJSON(v.Summary)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(summary)+len(commentsKey)+len(comments.json)+1)
	out = append(out, summary[:len(summary)-1]...) // without its '}'
	out = append(out, commentsKey...)
	out = append(out, comments.json...)
	return append(out, '}'), nil
}

// EncodedSize is how many bytes the encoding Encode keeps in v holds (0 if none).
func (v *View) EncodedSize() int {
	if v.enc == nil {
		return 0
	}
	return len(v.enc.json)
}

// encodeComments returns the encoding of all of v's comments, extending the one v
// carries when it covers a prefix of them, and keeps it in v.
func (v *View) encodeComments() (*encodedComments, error) {
	if v.encOnly {
		return v.enc, nil
	}
	e := v.enc
	if !e.covers(v.Comments) {
		e = &encodedComments{json: []byte("[]")}
	}
	if e.n == len(v.Comments) {
		v.enc = e
		return e, nil
	}
	// A new array: e is shared with the views it came from.
	out := make([]byte, 0, len(e.json)+300*(len(v.Comments)-e.n))
	out = append(out, e.json[:len(e.json)-1]...) // without its ']'
	for i, c := range v.Comments[e.n:] {
		b, err := eventstore.EncodeJSON(c)
		if err != nil {
			return nil, fmt.Errorf("encode comment %s: %w", c.ID, err)
		}
		if e.n+i > 0 {
			out = append(out, ',')
		}
		out = append(out, b...)
	}
	out = append(out, ']')
	n := len(v.Comments)
	var last [16]byte
	if n > 0 {
		last = v.Comments[n-1].ID
	}
	v.enc = &encodedComments{n: n, last: last, json: out}
	return v.enc, nil
}

// commentsKey introduces the comments array, the last member of an encoded view.
const commentsKey = `,"comments":`

// DecodeViewToFold is DecodeView for a view that is only folded onto and encoded
// again (a read model's base): a document whose thread has gone past its embedded
// comments gives a compact view (see View.Compact), and its comments are skipped, not
// decoded. Whether it has can be told without them only when comment_count exceeds
// EmbeddedComments; other documents are decoded whole.
func DecodeViewToFold(doc []byte) (View, error) {
	var s struct {
		Summary
		Comments gojson.RawMessage `json:"comments"`
	}
	if err := gojson.Unmarshal(doc, &s); err != nil {
		return View{}, err
	}
	if s.CommentCount <= EmbeddedComments || len(s.Comments) < 2 || s.Comments[0] != '[' {
		return DecodeView(doc)
	}
	return View{Summary: s.Summary, Comments: []Comment{}, encOnly: true,
		enc: &encodedComments{json: s.Comments}}, nil
}

// DecodeView decodes a view's JSON document (as Encode writes it) and keeps the
// document's comments array in the view as their encoding, so that the view folded
// from it and encoded again costs its summary only, as if it had been encoded here.
// The array is found by its key: a JSON string cannot hold the bytes ,"comments": (its
// quotes are escaped), and a view's only member named comments is its last.
func DecodeView(doc []byte) (View, error) {
	var v View
	if err := gojson.Unmarshal(doc, &v); err != nil {
		return View{}, err
	}
	i := bytes.Index(doc, []byte(commentsKey))
	if i < 0 || !bytes.HasSuffix(doc, []byte("]}")) {
		return v, nil
	}
	arr := doc[i+len(commentsKey) : len(doc)-1]
	if len(arr) < 2 || arr[0] != '[' {
		return v, nil
	}
	e := &encodedComments{n: len(v.Comments), json: arr}
	if e.n > 0 {
		e.last = v.Comments[e.n-1].ID
	}
	v.enc = e
	return v, nil
}
