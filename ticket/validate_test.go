package ticket_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ticketd/ticketd/ticket"
)

// validationCase is one command with one field changed, and the field the resulting
// *ValidationError must name ("" when the command is valid).
type validationCase[C any] struct {
	name   string
	change func(*C)
	field  string
}

// checkValidation runs each case against a fresh valid command.
func checkValidation[C interface{ Validate() error }](t *testing.T, valid func() C, cases []validationCase[C]) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.change(&c)
			err := c.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("expected no error, got %v", err)
				}
				return
			}
			expectFieldError(t, err, tc.field)
		})
	}
}

// expectFieldError checks err is a *ValidationError wrapping ErrInvalid for field.
func expectFieldError(t *testing.T, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("expected a ValidationError for %q, got nil", field)
	}
	var ve *ticket.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("expected a *ticket.ValidationError for %q, got %T: %v", field, err, err)
	}
	if !errors.Is(err, ticket.ErrInvalid) {
		t.Errorf("expected errors.Is(err, ErrInvalid), got false for %v", err)
	}
	if errors.Is(err, ticket.ErrConflict) || errors.Is(err, ticket.ErrNotFound) {
		t.Errorf("expected a validation error to wrap only ErrInvalid, got %v", err)
	}
	if ve.Field != field {
		t.Errorf("ValidationError.Field: expected %q, got %q (%v)", field, ve.Field, err)
	}
	if ve.Reason == "" {
		t.Errorf("ValidationError.Reason: expected an explanation, got an empty string")
	}
	if msg := err.Error(); !strings.HasPrefix(msg, field+": ") {
		t.Errorf("Error(): expected it to start with %q, got %q", field+": ", msg)
	}
}

var (
	ya           = "я" // two bytes, one rune: limits count characters
	invalidUTF8  = "ok\xffok"
	multiline    = "first line\nsecond line\r\nthird\tindented"
	plainEmail   = "user@example.com"
	controlChars = map[string]string{
		"nul":    "a\x00b",
		"escape": "a\x1b[31mred",
		"bell":   "a\ab",
		"del":    "a\x7fb",
		"c1_nel": "a\u0085b",
	}
)

func TestOpenTicketValidate(t *testing.T) {
	cases := []validationCase[ticket.OpenTicket]{
		{"valid_command_passes", func(*ticket.OpenTicket) {}, ""},

		// status
		{"empty_status_passes", func(c *ticket.OpenTicket) { c.Status = "" }, ""},
		{"open_status_passes", func(c *ticket.OpenTicket) { c.Status = "open" }, ""},
		{"answered_status_fails", func(c *ticket.OpenTicket) { c.Status = "answered" }, "status"},
		{"wait_answer_status_fails", func(c *ticket.OpenTicket) { c.Status = "wait_answer" }, "status"},
		{"closed_status_fails", func(c *ticket.OpenTicket) { c.Status = "closed" }, "status"},
		{"bogus_status_fails", func(c *ticket.OpenTicket) { c.Status = "bogus" }, "status"},

		// title
		{"missing_title_fails", func(c *ticket.OpenTicket) { c.Title = "" }, "title"},
		{"blank_title_fails", func(c *ticket.OpenTicket) { c.Title = "   " }, "title"},
		{"unicode_blank_title_fails", func(c *ticket.OpenTicket) { c.Title = "\u00a0\u3000" }, "title"},
		{"one_char_title_passes", func(c *ticket.OpenTicket) { c.Title = "x" }, ""},
		{"title_of_200_ascii_passes", func(c *ticket.OpenTicket) { c.Title = strings.Repeat("a", 200) }, ""},
		{"title_of_201_ascii_fails", func(c *ticket.OpenTicket) { c.Title = strings.Repeat("a", 201) }, "title"},
		{"title_of_200_cyrillic_runes_passes", func(c *ticket.OpenTicket) { c.Title = strings.Repeat(ya, 200) }, ""},
		{"title_of_201_cyrillic_runes_fails", func(c *ticket.OpenTicket) { c.Title = strings.Repeat(ya, 201) }, "title"},
		{"title_with_newline_fails", func(c *ticket.OpenTicket) { c.Title = "a\nb" }, "title"},
		{"title_with_tab_fails", func(c *ticket.OpenTicket) { c.Title = "a\tb" }, "title"},
		{"title_with_invalid_utf8_fails", func(c *ticket.OpenTicket) { c.Title = invalidUTF8 }, "title"},
		{"title_with_emoji_passes", func(c *ticket.OpenTicket) { c.Title = "Printer 🔥 again" }, ""},

		// description
		{"empty_description_passes", func(c *ticket.OpenTicket) { c.Description = "" }, ""},
		{"multiline_description_passes", func(c *ticket.OpenTicket) { c.Description = multiline }, ""},
		{"description_of_10000_passes", func(c *ticket.OpenTicket) { c.Description = strings.Repeat("d", 10000) }, ""},
		{"description_of_10001_fails", func(c *ticket.OpenTicket) { c.Description = strings.Repeat("d", 10001) }, "description"},
		{"description_of_10000_cyrillic_runes_passes", func(c *ticket.OpenTicket) { c.Description = strings.Repeat(ya, 10000) }, ""},
		{"description_of_10001_cyrillic_runes_fails", func(c *ticket.OpenTicket) { c.Description = strings.Repeat(ya, 10001) }, "description"},
		{"description_with_nul_fails", func(c *ticket.OpenTicket) { c.Description = "a\x00b" }, "description"},
		{"description_with_invalid_utf8_fails", func(c *ticket.OpenTicket) { c.Description = invalidUTF8 }, "description"},

		// email
		{"plain_email_passes", func(c *ticket.OpenTicket) { c.Email = plainEmail }, ""},
		{"email_with_subdomain_and_tag_passes", func(c *ticket.OpenTicket) { c.Email = "first.last+tag@mail.example.co.uk" }, ""},
		{"missing_email_fails", func(c *ticket.OpenTicket) { c.Email = "" }, "email"},
		{"blank_email_fails", func(c *ticket.OpenTicket) { c.Email = "  " }, "email"},
		{"not_an_email_fails", func(c *ticket.OpenTicket) { c.Email = "not-an-email" }, "email"},
		{"display_name_email_fails", func(c *ticket.OpenTicket) { c.Email = "Name <a@b.com>" }, "email"},
		{"angle_bracket_email_fails", func(c *ticket.OpenTicket) { c.Email = "<a@b.com>" }, "email"},
		{"email_without_dot_in_domain_fails", func(c *ticket.OpenTicket) { c.Email = "a@b" }, "email"},
		{"email_with_surrounding_space_fails", func(c *ticket.OpenTicket) { c.Email = " " + plainEmail + " " }, "email"},
		{"email_with_comment_fails", func(c *ticket.OpenTicket) { c.Email = plainEmail + " (me)" }, "email"},
		{"two_emails_fail", func(c *ticket.OpenTicket) { c.Email = "a@b.com, c@d.com" }, "email"},
		{"email_without_local_part_fails", func(c *ticket.OpenTicket) { c.Email = "@example.com" }, "email"},
		{"email_with_invalid_utf8_fails", func(c *ticket.OpenTicket) { c.Email = "us\xffer@example.com" }, "email"},
		{"email_with_nul_fails", func(c *ticket.OpenTicket) { c.Email = "user\x00@example.com" }, "email"},
		{"email_over_254_chars_fails", func(c *ticket.OpenTicket) {
			c.Email = strings.Repeat("a", 64) + "@" + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 62) + ".com"
		}, "email"},

		// created_by
		{"missing_created_by_fails", func(c *ticket.OpenTicket) { c.CreatedBy = "" }, "created_by"},
		{"blank_created_by_fails", func(c *ticket.OpenTicket) { c.CreatedBy = " \u00a0 " }, "created_by"},
		{"created_by_of_200_passes", func(c *ticket.OpenTicket) { c.CreatedBy = strings.Repeat(ya, 200) }, ""},
		{"created_by_of_201_fails", func(c *ticket.OpenTicket) { c.CreatedBy = strings.Repeat(ya, 201) }, "created_by"},
		{"created_by_with_newline_fails", func(c *ticket.OpenTicket) { c.CreatedBy = "bob\n" }, "created_by"},
		{"created_by_with_invalid_utf8_fails", func(c *ticket.OpenTicket) { c.CreatedBy = invalidUTF8 }, "created_by"},
	}
	for name, v := range controlChars {
		cases = append(cases,
			validationCase[ticket.OpenTicket]{"title_with_" + name + "_fails", func(c *ticket.OpenTicket) { c.Title = v }, "title"},
			validationCase[ticket.OpenTicket]{"created_by_with_" + name + "_fails", func(c *ticket.OpenTicket) { c.CreatedBy = v }, "created_by"},
		)
	}
	checkValidation(t, validOpen, cases)
}

func TestAddCommentValidate(t *testing.T) {
	cases := []validationCase[ticket.AddComment]{
		{"valid_command_passes", func(*ticket.AddComment) {}, ""},

		// body
		{"missing_body_fails", func(c *ticket.AddComment) { c.Body = "" }, "body"},
		{"blank_body_fails", func(c *ticket.AddComment) { c.Body = " \n\t\r\n " }, "body"},
		{"multiline_body_passes", func(c *ticket.AddComment) { c.Body = multiline }, ""},
		{"body_of_10000_passes", func(c *ticket.AddComment) { c.Body = strings.Repeat("b", 10000) }, ""},
		{"body_of_10001_fails", func(c *ticket.AddComment) { c.Body = strings.Repeat("b", 10001) }, "body"},
		{"body_of_10000_cyrillic_runes_passes", func(c *ticket.AddComment) { c.Body = strings.Repeat(ya, 10000) }, ""},
		{"body_of_10001_cyrillic_runes_fails", func(c *ticket.AddComment) { c.Body = strings.Repeat(ya, 10001) }, "body"},
		{"body_with_nul_fails", func(c *ticket.AddComment) { c.Body = "a\x00b" }, "body"},
		{"body_with_escape_fails", func(c *ticket.AddComment) { c.Body = "a\x1b[2Jb" }, "body"},
		{"body_with_invalid_utf8_fails", func(c *ticket.AddComment) { c.Body = invalidUTF8 }, "body"},

		// email: optional, checked when given
		{"missing_email_passes", func(c *ticket.AddComment) { c.Email = "" }, ""},
		{"plain_email_passes", func(c *ticket.AddComment) { c.Email = plainEmail }, ""},
		{"blank_email_fails", func(c *ticket.AddComment) { c.Email = " " }, "email"},
		{"not_an_email_fails", func(c *ticket.AddComment) { c.Email = "not-an-email" }, "email"},
		{"display_name_email_fails", func(c *ticket.AddComment) { c.Email = "Name <a@b.com>" }, "email"},
		{"email_without_dot_in_domain_fails", func(c *ticket.AddComment) { c.Email = "a@b" }, "email"},
		{"email_with_invalid_utf8_fails", func(c *ticket.AddComment) { c.Email = "a\xff@b.com" }, "email"},

		// created_by
		{"missing_created_by_fails", func(c *ticket.AddComment) { c.CreatedBy = "" }, "created_by"},
		{"blank_created_by_fails", func(c *ticket.AddComment) { c.CreatedBy = "   " }, "created_by"},
		{"created_by_of_200_passes", func(c *ticket.AddComment) { c.CreatedBy = strings.Repeat("c", 200) }, ""},
		{"created_by_of_201_fails", func(c *ticket.AddComment) { c.CreatedBy = strings.Repeat("c", 201) }, "created_by"},
		{"created_by_with_nul_fails", func(c *ticket.AddComment) { c.CreatedBy = "c\x00" }, "created_by"},
		{"created_by_with_invalid_utf8_fails", func(c *ticket.AddComment) { c.CreatedBy = invalidUTF8 }, "created_by"},
	}
	checkValidation(t, validComment, cases)
}

func TestChangeStatusValidate(t *testing.T) {
	valid := func() ticket.ChangeStatus { return ticket.ChangeStatus{Status: "answered", UpdatedBy: "dave"} }
	cases := []validationCase[ticket.ChangeStatus]{
		{"valid_command_passes", func(*ticket.ChangeStatus) {}, ""},
		{"missing_status_fails", func(c *ticket.ChangeStatus) { c.Status = "" }, "status"},
		{"bogus_status_fails", func(c *ticket.ChangeStatus) { c.Status = "bogus" }, "status"},
		{"upper_case_status_fails", func(c *ticket.ChangeStatus) { c.Status = "CLOSED" }, "status"},
		{"padded_status_fails", func(c *ticket.ChangeStatus) { c.Status = "closed " }, "status"},
		{"missing_updated_by_fails", func(c *ticket.ChangeStatus) { c.UpdatedBy = "" }, "updated_by"},
		{"blank_updated_by_fails", func(c *ticket.ChangeStatus) { c.UpdatedBy = "  " }, "updated_by"},
		{"updated_by_of_200_passes", func(c *ticket.ChangeStatus) { c.UpdatedBy = strings.Repeat(ya, 200) }, ""},
		{"updated_by_of_201_fails", func(c *ticket.ChangeStatus) { c.UpdatedBy = strings.Repeat(ya, 201) }, "updated_by"},
		{"updated_by_with_nul_fails", func(c *ticket.ChangeStatus) { c.UpdatedBy = "d\x00ve" }, "updated_by"},
		{"updated_by_with_invalid_utf8_fails", func(c *ticket.ChangeStatus) { c.UpdatedBy = invalidUTF8 }, "updated_by"},
	}
	for _, s := range ticket.Statuses {
		cases = append(cases, validationCase[ticket.ChangeStatus]{
			string(s) + "_status_passes", func(c *ticket.ChangeStatus) { c.Status = string(s) }, "",
		})
	}
	checkValidation(t, valid, cases)
}

func TestDeleteTicketValidate(t *testing.T) {
	valid := func() ticket.DeleteTicket { return ticket.DeleteTicket{DeletedBy: "admin"} }
	checkValidation(t, valid, []validationCase[ticket.DeleteTicket]{
		{"valid_command_passes", func(*ticket.DeleteTicket) {}, ""},
		{"missing_deleted_by_passes", func(c *ticket.DeleteTicket) { c.DeletedBy = "" }, ""},
		{"deleted_by_of_200_passes", func(c *ticket.DeleteTicket) { c.DeletedBy = strings.Repeat("x", 200) }, ""},
		{"deleted_by_of_201_fails", func(c *ticket.DeleteTicket) { c.DeletedBy = strings.Repeat("x", 201) }, "deleted_by"},
		{"deleted_by_with_nul_fails", func(c *ticket.DeleteTicket) { c.DeletedBy = "x\x00" }, "deleted_by"},
		{"deleted_by_with_invalid_utf8_fails", func(c *ticket.DeleteTicket) { c.DeletedBy = invalidUTF8 }, "deleted_by"},
	})
}

// The commands validate before they look at the ticket, so the same input errors
// reach the caller whatever the ticket's state.
func TestCommandsReturnValidationErrors(t *testing.T) {
	t.Run("open_names_the_bad_field", func(t *testing.T) {
		c := validOpen()
		c.Title = strings.Repeat(ya, 201)
		expectFieldError(t, ticket.New(ticketID).Open(c, now), "title")
	})
	t.Run("add_comment_names_the_bad_field", func(t *testing.T) {
		c := validComment()
		c.Email = "Name <a@b.com>"
		expectFieldError(t, givenIn(t, ticket.StatusOpen).AddComment(c, now), "email")
	})
	t.Run("change_status_names_the_bad_field", func(t *testing.T) {
		expectFieldError(t, givenIn(t, ticket.StatusOpen).ChangeStatus(ticket.ChangeStatus{Status: "closed"}, now), "updated_by")
	})
	t.Run("delete_names_the_bad_field", func(t *testing.T) {
		expectFieldError(t, givenIn(t, ticket.StatusOpen).Delete(ticket.DeleteTicket{DeletedBy: "a\x00"}, now), "deleted_by")
	})
}
