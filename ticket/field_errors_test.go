package ticket

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestFieldErrorsNameEveryBadFieldAndStartWithValidate: FieldErrors names each bad
// field once, and its first is exactly what Validate returns, for every mix of good and
// bad values of every field, so the two cannot drift apart.
func TestFieldErrorsNameEveryBadFieldAndStartWithValidate(t *testing.T) {
	long := strings.Repeat("x", MaxDescription+1)
	texts := []string{"ok", "", "  ", "a\x00b", strings.Repeat("я", MaxTitle+1)}
	emails := []string{"u@example.com", "", "nope", "a\u202e@example.com"}
	statuses := []string{"", "open", "closed", "resolved"}
	check := func(t *testing.T, what any, validate error, all ValidationErrors, wantFields []string) {
		t.Helper()
		var got []string
		for _, e := range all {
			got = append(got, e.Field)
		}
		if !reflect.DeepEqual(got, wantFields) {
			t.Fatalf("%+v: FieldErrors names %v, want %v", what, got, wantFields)
		}
		if len(all) == 0 {
			if validate != nil {
				t.Fatalf("%+v: Validate says %v, FieldErrors nothing", what, validate)
			}
			return
		}
		if ve, ok := validate.(*ValidationError); !ok || *ve != *all[0] {
			t.Fatalf("%+v: Validate says %v, FieldErrors starts with %v", what, validate, all[0])
		}
	}
	bad := func(ok bool, field string, fields *[]string) {
		if !ok {
			*fields = append(*fields, field)
		}
	}
	okText := func(v string, required bool) bool { return v == "ok" || (!required && v == "") }
	t.Run("open_ticket", func(t *testing.T) {
		for _, st := range statuses {
			for _, title := range texts {
				for _, desc := range append(texts, long) {
					for _, email := range emails {
						for _, by := range texts {
							c := OpenTicket{Title: title, Description: desc, Email: email, CreatedBy: by, Status: st}
							var want []string
							bad(st == "" || st == "open", "status", &want)
							bad(okText(title, true), "title", &want)
							bad(desc != long && !strings.ContainsRune(desc, 0), "description", &want)
							bad(email == "u@example.com", "email", &want)
							bad(okText(by, true), "created_by", &want)
							check(t, c, c.Validate(), c.FieldErrors(), want)
						}
					}
				}
			}
		}
	})
	t.Run("add_comment", func(t *testing.T) {
		for _, body := range texts {
			for _, by := range texts {
				for _, email := range emails {
					c := AddComment{Body: body, CreatedBy: by, Email: email}
					var want []string
					bad(okText(body, true) || utf8.RuneCountInString(body) == MaxTitle+1, "body", &want) // a long name is a short comment
					bad(okText(by, true), "created_by", &want)
					bad(email == "u@example.com" || email == "", "email", &want)
					check(t, c, c.Validate(), c.FieldErrors(), want)
				}
			}
		}
	})
	t.Run("change_status", func(t *testing.T) {
		for _, st := range statuses {
			for _, by := range texts {
				c := ChangeStatus{Status: st, UpdatedBy: by}
				var want []string
				bad(st != "" && st != "resolved", "status", &want)
				bad(okText(by, true), "updated_by", &want)
				check(t, c, c.Validate(), c.FieldErrors(), want)
			}
		}
	})
	t.Run("errors_is_invalid_and_as_the_first", func(t *testing.T) {
		err := error(OpenTicket{Title: "", Email: "nope", CreatedBy: "u"}.FieldErrors())
		var ve *ValidationError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &ve) || ve.Field != "title" {
			t.Fatalf("%v: errors.Is ErrInvalid %v, errors.As first %v", err, errors.Is(err, ErrInvalid), ve)
		}
		if err.Error() != "title: is required and must not be blank (whitespace and invisible fillers do not count); email: must be an email address like user@example.com" {
			t.Fatalf("Error() = %q", err.Error())
		}
	})
}
