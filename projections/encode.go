package projections

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"time"

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
	return v.AppendEncoded(nil)
}

// AppendEncoded is Encode appending to dst (grown once, to the size needed): for a
// caller that puts something before the JSON, such as the Redis document's version
// line, without copying the document again.
func (v *View) AppendEncoded(dst []byte) ([]byte, error) {
	comments, err := v.encodeComments()
	if err != nil {
		return dst, err
	}
	dst = slices.Grow(dst, summaryJSONSize+summaryBytes(v.Summary)+len(commentsKey)+len(comments.json)+1)
	if dst, err = appendSummary(dst, v.Summary); err != nil {
		return dst, err
	}
	dst = append(dst, commentsKey...)
	dst = append(dst, comments.json...)
	return append(dst, '}'), nil
}

// AppendJSON appends v's JSON to dst, byte for byte what Encode returns (and
// eventstore.EncodeJSON(v)), without keeping anything in v: for views encoded once
// (the rebuild's), into a buffer the caller reuses. The comments' encoding v carries
// is used where it covers them.
func (v *View) AppendJSON(dst []byte) ([]byte, error) {
	dst, err := appendSummary(dst, v.Summary)
	if err != nil {
		return dst, err
	}
	dst = append(dst, commentsKey...)
	rest := v.Comments
	switch e := v.enc; {
	case v.encOnly:
		return append(append(dst, e.json...), '}'), nil
	case e.covers(v.Comments) && e.n > 0:
		dst = append(dst, e.json[:len(e.json)-1]...) // without its ']'
		rest = v.Comments[e.n:]
		if len(rest) > 0 {
			dst = append(dst, ',')
		}
	default:
		dst = append(dst, '[')
	}
	for i, c := range rest {
		if i > 0 {
			dst = append(dst, ',')
		}
		if dst, err = appendComment(dst, c); err != nil {
			return dst, fmt.Errorf("encode comment %s: %w", c.ID, err)
		}
	}
	return append(dst, "]}"...), nil
}

// summaryJSONSize is what a summary's encoding takes beyond its text, rounded up.
const summaryJSONSize = 300

func summaryBytes(s Summary) int {
	return len(s.Title) + len(s.Description) + len(s.Email) + len(s.CreatedBy) + len(s.UpdatedBy)
}

// appendSummary appends s's JSON without its closing brace to dst: byte for byte what
// eventstore.EncodeJSON(s) gives, but its '}' (TestAppendJSONIsEncodeJSON holds it to
// that, and fails when Summary gains a field). A time outside UTC or the years JSON
// holds takes EncodeJSON's path, and its error.
func appendSummary(dst []byte, s Summary) ([]byte, error) {
	if !plainTime(s.CreatedAt) || !plainTime(s.UpdatedAt) {
		b, err := eventstore.EncodeJSON(s)
		if err != nil {
			return dst, err
		}
		return append(dst, b[:len(b)-1]...), nil
	}
	dst = append(dst, `{"id":"`...)
	dst = eventstore.AppendUUID(dst, s.ID)
	dst = append(dst, `","title":`...)
	dst = eventstore.AppendJSONString(dst, s.Title)
	dst = append(dst, `,"description":`...)
	dst = eventstore.AppendJSONString(dst, s.Description)
	dst = append(dst, `,"email":`...)
	dst = eventstore.AppendJSONString(dst, s.Email)
	dst = append(dst, `,"created_by":`...)
	dst = eventstore.AppendJSONString(dst, s.CreatedBy)
	dst = append(dst, `,"updated_by":`...)
	dst = eventstore.AppendJSONString(dst, s.UpdatedBy)
	dst = append(dst, `,"status":`...)
	dst = eventstore.AppendJSONString(dst, string(s.Status))
	dst = append(dst, `,"version":`...)
	dst = strconv.AppendInt(dst, int64(s.Version), 10)
	dst = append(dst, `,"comment_count":`...)
	dst = strconv.AppendInt(dst, int64(s.CommentCount), 10)
	dst = append(dst, `,"created_at":"`...)
	dst = s.CreatedAt.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","updated_at":"`...)
	dst = s.UpdatedAt.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"'), nil
}

// plainTime reports whether t is one appendComment and appendSummary write by hand: in
// UTC, and in the years JSON holds.
func plainTime(t time.Time) bool {
	y := t.Year()
	return y >= 0 && y <= 9999 && zoneOffset(t) == 0
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
	size := len(e.json)
	for _, c := range v.Comments[e.n:] {
		size += commentJSONSize + commentBytes(c)
	}
	out := make([]byte, 0, size)
	out = append(out, e.json[:len(e.json)-1]...) // without its ']'
	for i, c := range v.Comments[e.n:] {
		if e.n+i > 0 {
			out = append(out, ',')
		}
		var err error
		if out, err = appendComment(out, c); err != nil {
			return nil, fmt.Errorf("encode comment %s: %w", c.ID, err)
		}
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
	if len(s.Comments) < 2 || s.Comments[0] != '[' {
		return DecodeView(doc)
	}
	if s.CommentCount > EmbeddedComments {
		return View{Summary: s.Summary, Comments: []Comment{}, encOnly: true,
			enc: &encodedComments{json: s.Comments}}, nil
	}
	// Every comment is embedded and a fold may add one: the comments are decoded too,
	// from the array already found (the summary is not decoded again), and keep it as
	// their encoding, as DecodeView does.
	v := View{Summary: s.Summary}
	if err := gojson.Unmarshal(s.Comments, &v.Comments); err != nil {
		return View{}, err
	}
	if v.Comments == nil {
		v.Comments = []Comment{}
	}
	e := &encodedComments{n: len(v.Comments), json: s.Comments}
	if e.n > 0 {
		e.last = v.Comments[e.n-1].ID
	}
	v.enc = e
	return v, nil
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

// commentJSONSize is what a comment's encoding takes beyond its text (keys, id, time,
// version), rounded up: the capacity encodeComments reserves per comment.
const commentJSONSize = 150

// appendComment appends c's JSON to dst, byte for byte what eventstore.EncodeJSON(c)
// gives (TestAppendCommentIsEncodeJSON holds it to that, and fails when Comment gains a
// field), without reflection: a rebuild encodes every embedded comment once, and
// encoding/json (its reflection, and the re-compaction of every MarshalJSON of the
// uuid and the time) was a fifth of its CPU. A time outside UTC, or one EncodeJSON
// would refuse (a year outside 0-9999), takes EncodeJSON's path, and its error.
func appendComment(dst []byte, c Comment) ([]byte, error) {
	if !plainTime(c.CreatedAt) {
		b, err := eventstore.EncodeJSON(c)
		return append(dst, b...), err
	}
	dst = append(dst, `{"id":"`...)
	dst = eventstore.AppendUUID(dst, c.ID)
	dst = append(dst, `","body":`...)
	dst = eventstore.AppendJSONString(dst, c.Body)
	if c.Email != "" {
		dst = append(dst, `,"email":`...)
		dst = eventstore.AppendJSONString(dst, c.Email)
	}
	dst = append(dst, `,"created_by":`...)
	dst = eventstore.AppendJSONString(dst, c.CreatedBy)
	dst = append(dst, `,"created_at":"`...)
	dst = c.CreatedAt.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","version":`...)
	dst = strconv.AppendInt(dst, int64(c.Version), 10)
	return append(dst, '}'), nil
}

func zoneOffset(t time.Time) int {
	_, off := t.Zone()
	return off
}
