package projections

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// TestAppendCommentIsEncodeJSON: the hand-written encoding of a comment is byte for
// byte eventstore.EncodeJSON's, for text JSON escapes (quotes, backslashes, control
// characters, invalid UTF-8, U+2028/U+2029, HTML characters left as they are), an
// omitted email, times with and without fractions, outside UTC and outside the years
// JSON can hold; and Comment has no field the encoder does not know.
func TestAppendCommentIsEncodeJSON(t *testing.T) {
	t.Parallel()
	var fields []string
	for f := range reflect.TypeFor[Comment]().Fields() {
		fields = append(fields, f.Name+" "+f.Type.String()+" "+string(f.Tag))
	}
	want := []string{
		`ID uuid.UUID json:"id"`, `Body string json:"body"`, `Email string json:"email,omitempty"`,
		`CreatedBy string json:"created_by"`, `CreatedAt time.Time json:"created_at"`, `Version int json:"version"`,
	}
	if !reflect.DeepEqual(fields, want) {
		t.Fatalf("Comment's fields changed: appendComment must write them as EncodeJSON does (then update this list)\n got %q\nwant %q", fields, want)
	}

	pieces := []string{"", "a", "plain text", `"`, `\`, "\b", "\f", "\n", "\r", "\t", "\x00", "\x01", "\x1f", "\x7f",
		"<b>&amp;</b>", "é", "日本", "😀", "\u2028", "\u2029", "\xff", "\xe6\x97", "\xed\xa0\x80", "\uFFFD", "'"}
	rnd := rand.New(rand.NewPCG(1, 2))
	text := func() string {
		var b []byte
		for range rnd.IntN(6) {
			b = append(b, pieces[rnd.IntN(len(pieces))]...)
		}
		return string(b)
	}
	berlin := time.FixedZone("CET", 3600)
	times := []time.Time{
		time.Date(2026, 12, 4, 16, 0, 0, 0, time.UTC),
		time.Date(2026, 12, 4, 16, 0, 0, 123456789, time.UTC),
		time.Date(2026, 12, 4, 16, 0, 0, 120000, time.UTC),
		time.Date(2026, 12, 4, 16, 0, 0, 5, berlin),
		{},
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	for i := range 5000 {
		c := Comment{ID: uuid.New(), Body: text(), Email: text(), CreatedBy: text(), CreatedAt: times[i%len(times)], Version: rnd.IntN(1 << 20)}
		want, wantErr := eventstore.EncodeJSON(c)
		got, err := appendComment([]byte("prefix"), c)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("comment %+v: error %v, EncodeJSON's %v", c, err, wantErr)
		}
		if err == nil && !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Fatalf("comment %+v:\n got %s\nwant prefix%s", c, got, want)
		}
	}
}

// FuzzAppendJSONString: any string is escaped exactly as EncodeJSON escapes it.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "a\"b\\c", "\x00\x1f\x7f", "\u2028\u2029", "\xff\xfe", "<&>", "日本😀"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := eventstore.EncodeJSON(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := eventstore.AppendJSONString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("%q:\n got %s\nwant %s", s, got, want)
		}
	})
}

// TestAppendJSONIsEncodeJSON: a view's hand-written encoding (AppendJSON, and Encode,
// which shares its summary) is byte for byte eventstore.EncodeJSON's, for text JSON
// escapes, times with and without fractions, outside UTC and outside the years JSON
// holds, no comments or many, a view carrying the encoding of some or all of its
// comments, and a compact view; and Summary and View have no field the encoder does not
// know.
func TestAppendJSONIsEncodeJSON(t *testing.T) {
	t.Parallel()
	var fields []string
	for f := range reflect.TypeFor[Summary]().Fields() {
		fields = append(fields, f.Name+" "+f.Type.String()+" "+string(f.Tag))
	}
	want := []string{
		`ID uuid.UUID json:"id"`, `Title string json:"title"`, `Description string json:"description"`,
		`Email string json:"email"`, `CreatedBy string json:"created_by"`, `UpdatedBy string json:"updated_by"`,
		`Status ticket.Status json:"status"`, `Version int json:"version"`, `CommentCount int json:"comment_count"`,
		`CreatedAt time.Time json:"created_at"`, `UpdatedAt time.Time json:"updated_at"`,
	}
	if !reflect.DeepEqual(fields, want) {
		t.Fatalf("Summary's fields changed: appendSummary must write them as EncodeJSON does (then update this list)\n got %q\nwant %q", fields, want)
	}
	fields = nil
	for f := range reflect.TypeFor[View]().Fields() {
		fields = append(fields, f.Name+" "+string(f.Tag))
	}
	if want := []string{"Summary ", `Comments json:"comments"`, `Deleted json:"-"`, "enc ", "encOnly "}; !reflect.DeepEqual(fields, want) {
		t.Fatalf("View's fields changed: AppendJSON must write them as EncodeJSON does (then update this list)\n got %q\nwant %q", fields, want)
	}

	pieces := []string{"", "a", "plain text", `"`, `\`, "\b", "\f", "\n", "\r", "\t", "\x00", "\x01", "\x1f", "\x7f",
		"<b>&amp;</b>", "é", "日本", "😀", "\u2028", "\u2029", "\xff", "\xe6\x97", "\xed\xa0\x80", "\uFFFD", "'"}
	rnd := rand.New(rand.NewPCG(5, 6))
	text := func() string {
		var b []byte
		for range rnd.IntN(6) {
			b = append(b, pieces[rnd.IntN(len(pieces))]...)
		}
		return string(b)
	}
	berlin := time.FixedZone("CET", 3600)
	times := []time.Time{
		time.Date(2026, 12, 4, 16, 0, 0, 0, time.UTC),
		time.Date(2026, 12, 4, 16, 0, 0, 123456789, time.UTC),
		time.Date(2026, 12, 4, 16, 0, 0, 120000, time.UTC),
		time.Date(2026, 12, 4, 16, 0, 0, 5, berlin),
		{},
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	at := func() time.Time {
		if rnd.IntN(4) > 0 {
			return times[rnd.IntN(3)]
		}
		return times[rnd.IntN(len(times))]
	}
	check := func(what string, v View, want []byte, wantErr error) {
		t.Helper()
		got, err := v.AppendJSON([]byte("prefix"))
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("%s %+v: error %v, EncodeJSON's %v", what, v.Summary, err, wantErr)
		}
		if err == nil && !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Fatalf("%s:\n got %s\nwant prefix%s", what, got, want)
		}
		enc, err := v.Encode()
		if (err != nil) != (wantErr != nil) || err == nil && !bytes.Equal(enc, want) {
			t.Fatalf("%s: Encode gives %s (%v), EncodeJSON %s (%v)", what, enc, err, want, wantErr)
		}
	}
	for i := range 3000 {
		v := View{Summary: Summary{ID: uuid.New(), Title: text(), Description: text(), Email: text(), CreatedBy: text(),
			UpdatedBy: text(), Status: "open", Version: rnd.IntN(1 << 20), CreatedAt: at(), UpdatedAt: at()}, Comments: []Comment{}}
		if i%5 == 0 {
			v.Status = ticket.Status("wait_answer" + text())
		}
		for range rnd.IntN(8) {
			v.Comments = append(v.Comments, Comment{ID: uuid.New(), Body: text(), Email: text(), CreatedBy: text(), CreatedAt: at(), Version: rnd.IntN(100)})
		}
		v.CommentCount = len(v.Comments) + rnd.IntN(2)
		want, wantErr := eventstore.EncodeJSON(v)
		check("a fresh view", v, want, wantErr)
		if wantErr != nil {
			continue
		}
		// carrying the encoding of its comments, or of a prefix of them
		kept := v
		if _, err := kept.Encode(); err != nil {
			t.Fatal(err)
		}
		check("a view carrying its comments' encoding", kept, want, nil)
		if len(v.Comments) > 1 {
			part := v
			part.Comments = v.Comments[:len(v.Comments)/2]
			if _, err := part.Encode(); err != nil {
				t.Fatal(err)
			}
			part.Comments = v.Comments
			check("a view carrying a prefix's encoding", part, want, nil)
		}
		// compact: its comments held only encoded
		if v.CommentCount > len(v.Comments) {
			if c := kept.Compact(); c.encOnly {
				check("a compact view", c, want, nil)
			}
		}
	}
}
