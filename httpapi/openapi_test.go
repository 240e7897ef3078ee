package httpapi

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"golang.org/x/net/html"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/httpapi/auth"
	"github.com/ticketd/ticketd/ticket"
	"github.com/ticketd/ticketd/webhooks"
)

// docsRoutes are the paths the app serves that are not part of the API: the
// documentation UIs and their files. Everything else the app routes must be in the
// OpenAPI document.
var docsRoutes = map[string]bool{
	SwaggerUIPath:                    true,
	SwaggerUIPath + "/assets/{file}": true,
	RedocPath:                        true,
	RedocPath + "/assets/{file}":     true,
}

func loadSpec(t *testing.T) libopenapi.Document {
	t.Helper()
	doc, err := libopenapi.NewDocument(OpenAPIJSON())
	if err != nil {
		t.Fatalf("parse OpenAPI document: %v", err)
	}
	return doc
}

func TestOpenAPIDocumentIsValidOpenAPI31(t *testing.T) {
	doc := loadSpec(t)
	if v := doc.GetVersion(); !strings.HasPrefix(v, "3.1.") {
		t.Fatalf("OpenAPI version %q, want 3.1.x", v)
	}
	if _, err := doc.BuildV3Model(); err != nil {
		t.Fatalf("build model (unresolved $ref or bad shape): %v", err)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatalf("validator: %v", errs)
	}
	if ok, verrs := v.ValidateDocument(); !ok {
		for _, e := range verrs {
			t.Errorf("%s: %s", e.Message, e.Reason)
			for _, se := range e.SchemaValidationErrors {
				t.Errorf("  at %s (%s): %s", se.FieldPath, se.KeywordLocation, se.Reason)
			}
		}
	}
}

func TestOpenAPIJSONKeepsTheWrittenOrder(t *testing.T) {
	raw := OpenAPIJSON()
	if !json.Valid(raw) {
		t.Fatal("OpenAPIJSON is not valid JSON")
	}
	if !bytes.HasPrefix(raw, []byte(`{"openapi":"3.1.0","info":`)) {
		t.Fatalf("document starts %q, want openapi then info", raw[:min(60, len(raw))])
	}
	if i, j := bytes.Index(raw, []byte(`"/v1/ticket/"`)), bytes.Index(raw, []byte(`"/healthz"`)); i < 0 || j < 0 || i > j {
		t.Fatalf("paths out of the written order (ticket at %d, healthz at %d)", i, j)
	}
}

// specOperations returns "METHOD /path/{param}" for every operation in the document.
func specOperations(t *testing.T) []string {
	t.Helper()
	m, err := loadSpec(t).BuildV3Model()
	if err != nil {
		t.Fatal(err)
	}
	var ops []string
	for p, item := range m.Model.Paths.PathItems.FromOldest() {
		for method := range item.GetOperations().KeysFromOldest() {
			ops = append(ops, strings.ToUpper(method)+" "+p)
		}
	}
	sort.Strings(ops)
	return ops
}

// appOperations returns "METHOD /path/{param}" for every route the app registers,
// Fiber's :param written as {param}, the HEAD Fiber adds beside every GET included.
func appOperations(app *fiber.App) []string {
	seen := map[string]bool{}
	var ops []string
	for _, r := range app.GetRoutes(true) {
		segs := strings.Split(r.Path, "/")
		for i, s := range segs {
			if strings.HasPrefix(s, ":") {
				segs[i] = "{" + strings.TrimSuffix(strings.TrimPrefix(s, ":"), "?") + "}"
			}
		}
		op := r.Method + " " + strings.Join(segs, "/")
		if !seen[op] {
			seen[op] = true
			ops = append(ops, op)
		}
	}
	sort.Strings(ops)
	return ops
}

// otherSpelling returns path with its trailing slash dropped, or with one added: the
// router (not strict) answers both.
func otherSpelling(path string) string {
	if strings.HasSuffix(path, "/") {
		return strings.TrimSuffix(path, "/")
	}
	return path + "/"
}

// The served document lists exactly what the router answers: every route (HEAD beside
// GET included) under both spellings of its path, and nothing else, so a client or
// proxy that checks requests against it accepts what the server accepts.
func TestEveryRouteIsInTheOpenAPIDocumentAndBack(t *testing.T) {
	app := newTestApp()
	spec := map[string]bool{}
	for _, op := range specOperations(t) {
		spec[op] = true
	}
	routes := map[string]bool{}
	for _, op := range appOperations(app) {
		method, path, _ := strings.Cut(op, " ")
		if docsRoutes[path] {
			continue
		}
		for _, p := range []string{path, otherSpelling(path)} {
			routes[method+" "+p] = true
			if !spec[method+" "+p] {
				t.Errorf("the router answers %s %s, which the served OpenAPI document does not list", method, p)
			}
		}
	}
	for op := range spec {
		if !routes[op] {
			t.Errorf("the served OpenAPI document lists %s, which no route serves", op)
		}
	}
	if t.Failed() {
		t.Logf("routes: %v", appOperations(app))
	}
}

func TestEveryOperationDocumentsItsErrorsAsProblems(t *testing.T) {
	m, err := loadSpec(t).BuildV3Model()
	if err != nil {
		t.Fatal(err)
	}
	for p, item := range m.Model.Paths.PathItems.FromOldest() {
		for method, op := range item.GetOperations().FromOldest() {
			name := strings.ToUpper(method) + " " + p
			if op.OperationId == "" || op.Summary == "" {
				t.Errorf("%s: needs an operationId and a summary", name)
			}
			if op.Responses == nil || op.Responses.Codes.Len() == 0 {
				t.Errorf("%s: no responses", name)
				continue
			}
			for code, resp := range op.Responses.Codes.FromOldest() {
				if method == "head" {
					if resp.Content != nil && resp.Content.Len() > 0 {
						t.Errorf("%s %s: a HEAD answer has no body, but content is described", name, code)
					}
					continue
				}
				if code[0] != '4' && code[0] != '5' || strings.TrimSuffix(p, "/") == "/readyz" {
					continue
				}
				if resp.Content == nil || resp.Content.GetOrZero("application/problem+json") == nil {
					t.Errorf("%s %s: not described as application/problem+json", name, code)
				}
			}
			for _, code := range []string{"404", "405"} {
				if resp := op.Responses.Codes.GetOrZero(code); resp == nil {
					t.Errorf("%s: does not list %s (route-not-found, method-not-allowed)", name, code)
				}
			}
			if strings.HasPrefix(p, "/v1/") {
				for _, code := range []string{"500", "503"} {
					if resp := op.Responses.Codes.GetOrZero(code); resp == nil {
						t.Errorf("%s: does not document %s", name, code)
					}
				}
				if op.RequestBody != nil {
					for _, code := range []string{"400", "413", "415", "422"} {
						if resp := op.Responses.Codes.GetOrZero(code); resp == nil {
							t.Errorf("%s takes a body but does not document %s", name, code)
						}
					}
				}
			}
		}
	}
}

// fetch asks app in process (no listener, no network) for path.
func fetch(t *testing.T, app *fiber.App, path string, header ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := app.Test(req, -1)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp
}

// pageAssets returns the src of every script and the href of every link in page.
func pageAssets(t *testing.T, page []byte) []string {
	t.Helper()
	root, err := html.Parse(bytes.NewReader(page))
	if err != nil {
		t.Fatalf("parse page: %v", err)
	}
	var refs []string
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			for _, a := range n.Attr {
				if (n.Data == "script" && a.Key == "src") || (n.Data == "link" && a.Key == "href") {
					refs = append(refs, a.Val)
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(root)
	return refs
}

func TestDocsPagesLoadOnlyEmbeddedAssets(t *testing.T) {
	app := newTestApp()
	for _, page := range []string{SwaggerUIPath, RedocPath, SwaggerUIPath + "/", RedocPath + "/"} {
		t.Run(strings.Trim(page, "/"), func(t *testing.T) {
			resp := fetch(t, app, page)
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
				t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			if bytes.Contains(body, []byte("http://")) || bytes.Contains(body, []byte("https://")) {
				t.Fatalf("page refers to another host:\n%s", body)
			}
			refs := pageAssets(t, body)
			if len(refs) < 1 {
				t.Fatalf("page loads no script: %s", body)
			}
			for _, ref := range refs {
				if !strings.HasPrefix(ref, "/") || strings.HasPrefix(ref, "//") {
					t.Errorf("asset %q is not a path on this server", ref)
					continue
				}
				for _, enc := range []string{"gzip", "identity"} {
					resp := fetch(t, app, ref, "Accept-Encoding", enc)
					raw, _ := io.ReadAll(resp.Body)
					if resp.StatusCode != 200 || len(raw) == 0 {
						t.Errorf("%s (%s): status %d, %d bytes", ref, enc, resp.StatusCode, len(raw))
						continue
					}
					if resp.Header.Get("Content-Encoding") == "gzip" {
						zr, err := gzip.NewReader(bytes.NewReader(raw))
						if err != nil {
							t.Errorf("%s: gzip: %v", ref, err)
							continue
						}
						raw, _ = io.ReadAll(zr)
					} else if enc == "gzip" && strings.HasSuffix(ref, ".js") && len(raw) > 100_000 {
						t.Errorf("%s: %d bytes sent unpacked to a client that accepts gzip", ref, len(raw))
					}
					ct := resp.Header.Get("Content-Type")
					switch {
					case strings.HasSuffix(ref, ".js") && !strings.Contains(ct, "javascript"),
						strings.HasSuffix(ref, ".css") && !strings.HasPrefix(ct, "text/css"),
						strings.HasSuffix(ref, ".png") && ct != "image/png":
						t.Errorf("%s: content type %q", ref, ct)
					}
					if strings.HasSuffix(ref, ".js") && len(raw) > 0 && !utf8Plain(raw) {
						t.Errorf("%s: does not look like JavaScript", ref)
					}
				}
			}
		})
	}
}

func utf8Plain(b []byte) bool {
	return !bytes.ContainsRune(b[:min(len(b), 4096)], 0)
}

func TestSwaggerUIReadsTheServedDocument(t *testing.T) {
	app := newTestApp()
	resp := fetch(t, app, SwaggerUIPath+"/assets/swagger-initializer.js")
	body, _ := io.ReadAll(resp.Body)
	if !bytes.Contains(body, []byte(`url: "`+OpenAPIPath+`"`)) || !bytes.Contains(body, []byte("validatorUrl: null")) {
		t.Fatalf("initializer does not load %s without the online validator:\n%s", OpenAPIPath, body)
	}
	resp = fetch(t, app, RedocPath)
	body, _ = io.ReadAll(resp.Body)
	if !bytes.Contains(body, []byte(`spec-url="`+OpenAPIPath+`"`)) {
		t.Fatalf("ReDoc page does not load %s:\n%s", OpenAPIPath, body)
	}
	resp = fetch(t, app, OpenAPIPath)
	body, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !bytes.Equal(body, OpenAPIJSON()) {
		t.Fatalf("%s: status %d, body differs from OpenAPIJSON", OpenAPIPath, resp.StatusCode)
	}
}

func TestUnknownDocsAssetIsAProblem(t *testing.T) {
	app := newTestApp()
	for _, p := range []string{SwaggerUIPath + "/assets/nope.js", RedocPath + "/assets/redoc.standalone.js.gz", RedocPath + "/assets/..%2f..%2fdocs.go"} {
		resp := fetch(t, app, p)
		if resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: status %d, type %q; want a 404 problem", p, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
}

func TestMetricsUseRouteTemplatesNotPaths(t *testing.T) {
	app := newTestApp()
	for _, p := range []string{"/healthz", "/v1/ticket/not-a-uuid", "/v1/ticket/also-not", "/no/such/route/1", "/no/such/route/2"} {
		fetch(t, app, p)
	}
	resp := fetch(t, app, "/metrics")
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`http_requests_total{method="GET",route="/healthz",status="200"} 1`,
		`http_requests_total{method="GET",route="/v1/ticket/:id",status="422"} 2`,
		`http_requests_total{method="GET",route="unmatched",status="404"} 2`,
		`http_request_duration_seconds_bucket{method="GET",route="/v1/ticket/:id",le="+Inf"} 2`,
		`go_goroutines `,
		`process_cpu_seconds_total `,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, leak := range []string{"not-a-uuid", "/no/such/route"} {
		if bytes.Contains(body, []byte(leak)) {
			t.Errorf("a raw path (%s) became a label", leak)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", grepLines(body, "http_"))
	}
}

func grepLines(b []byte, sub string) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(slices.Compact(out), "\n")
}

func TestPanicIsA500ProblemNotACrash(t *testing.T) {
	app := newTestApp()
	app.Get("/test-panic", func(*fiber.Ctx) error { panic("boom") })
	resp := fetch(t, app, "/test-panic")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 500 || resp.Header.Get("Content-Type") != "application/problem+json" || bytes.Contains(body, []byte("boom")) {
		t.Fatalf("status %d, type %q, body %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if resp.Header.Get("X-Request-ID") == "" {
		t.Fatal("no X-Request-ID on the 500")
	}
}

// newTestApp is the app with no dependencies: enough for routes, docs and metrics. It
// has a token store (on no database: no test here sends it a request) so that the
// /v1/tokens routes, registered only with one, are among the routes checked.
func newTestApp() *fiber.App {
	hooks, err := webhooks.New(nil, nil, webhooks.Config{}, nil, nil) // routes only: never called
	if err != nil {
		panic(err)
	}
	erase := func(context.Context, string, string, string, eventstore.Metadata) (eventstore.Erasure, error) {
		return eventstore.Erasure{}, nil // routes only: never called
	}
	return New(Config{Log: slog.New(slog.DiscardHandler), Tokens: auth.NewTokenStore(nil), Webhooks: hooks, Erase: erase})
}

// servedDoc is the served document decoded into maps, for the structural checks.
func servedDoc(t *testing.T) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(OpenAPIJSON(), &doc); err != nil {
		t.Fatalf("served document: %v", err)
	}
	return doc
}

// schemaKeywords are the keywords a Schema Object of OpenAPI 3.1 may hold: JSON Schema
// 2020-12's vocabularies and OpenAPI's own; x- extensions aside, anything else is a
// mistake (a property written at the wrong level, a YAML flow mapping cut at a comma)
// that validators silently ignore.
var schemaKeywords = map[string]bool{}

func init() {
	for _, k := range strings.Fields(`$schema $id $ref $anchor $dynamicRef $dynamicAnchor
		$vocabulary $comment $defs allOf anyOf oneOf not if then else dependentSchemas
		prefixItems items contains properties patternProperties additionalProperties
		propertyNames unevaluatedItems unevaluatedProperties type enum const multipleOf
		maximum exclusiveMaximum minimum exclusiveMinimum maxLength minLength pattern
		maxItems minItems uniqueItems maxContains minContains maxProperties minProperties
		required dependentRequired title description default deprecated readOnly writeOnly
		examples format contentEncoding contentMediaType contentSchema discriminator xml
		externalDocs example`) {
		schemaKeywords[k] = true
	}
}

// checkSchema reports every unknown keyword in schema s (at path) and in its subschemas.
func checkSchema(t *testing.T, path string, s any) {
	t.Helper()
	m, ok := s.(map[string]any)
	if !ok {
		if _, isBool := s.(bool); !isBool {
			t.Errorf("%s: a schema must be an object or a boolean, not %T", path, s)
		}
		return
	}
	for k, v := range m {
		at := path + "/" + k
		switch {
		case strings.HasPrefix(k, "x-"):
		case !schemaKeywords[k]:
			t.Errorf("%s: %q is not a schema keyword (value %v)", path, k, v)
		case k == "not" || k == "if" || k == "then" || k == "else" || k == "items" || k == "contains" ||
			k == "additionalProperties" || k == "propertyNames" || k == "unevaluatedItems" ||
			k == "unevaluatedProperties" || k == "contentSchema":
			checkSchema(t, at, v)
		case k == "allOf" || k == "anyOf" || k == "oneOf" || k == "prefixItems":
			list, _ := v.([]any)
			for i, sub := range list {
				checkSchema(t, fmt.Sprintf("%s/%d", at, i), sub)
			}
		case k == "properties" || k == "patternProperties" || k == "$defs" || k == "dependentSchemas":
			subs, _ := v.(map[string]any)
			for name, sub := range subs {
				checkSchema(t, at+"/"+name, sub)
			}
		}
	}
}

// walkDoc calls visit for every value of the document outside examples, with its
// JSON pointer and the key it stands under.
func walkDoc(path, key string, v any, visit func(path, key string, v any)) {
	visit(path, key, v)
	if key == "example" || key == "examples" {
		return
	}
	switch v := v.(type) {
	case map[string]any:
		for k, sub := range v {
			walkDoc(path+"/"+strings.NewReplacer("~", "~0", "/", "~1").Replace(k), k, sub, visit)
		}
	case []any:
		for i, sub := range v {
			walkDoc(fmt.Sprintf("%s/%d", path, i), "", sub, visit)
		}
	}
}

// A strict structural check of the served document, beside make lint-spec's linter:
// no null anywhere (YAML turns a stray `key:` into null) and no unknown keyword in any
// schema. The HistoryEvent.actor flow mapping, cut at its commas, broke both.
func TestOpenAPIDocumentHasNoNullsNorUnknownSchemaKeywords(t *testing.T) {
	doc := servedDoc(t)
	walkDoc("#", "", doc, func(path, key string, v any) {
		if v == nil {
			t.Errorf("%s: null", path)
		}
		if key == "schema" && !strings.Contains(path, "/properties/") {
			checkSchema(t, path, v)
		}
	})
	schemas, _ := doc["components"].(map[string]any)["schemas"].(map[string]any)
	if len(schemas) == 0 {
		t.Fatal("no components/schemas")
	}
	for name, s := range schemas {
		checkSchema(t, "#/components/schemas/"+name, s)
	}
}

// Swagger UI's "Try it out" fills every parameter that has an example with it and sends
// it: an optional parameter with an example is sent by every reader who does not clear
// it (the same Idempotency-Key for everyone, If-Match "1" against every ticket,
// ?version=1 instead of the current ticket). Only required parameters may have one.
func TestOptionalParametersCarryNoExampleValue(t *testing.T) {
	m, err := loadSpec(t).BuildV3Model()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for p, item := range m.Model.Paths.PathItems.FromOldest() {
		for method, op := range item.GetOperations().FromOldest() {
			params := append(slices.Clone(item.Parameters), op.Parameters...)
			for _, prm := range params {
				if prm.Name == HeaderIdempotencyKey {
					seen++
				}
				if prm.Required != nil && *prm.Required {
					continue
				}
				if prm.Example != nil || prm.Examples != nil && prm.Examples.Len() > 0 {
					t.Errorf("%s %s: optional parameter %s has an example, which Swagger UI sends", strings.ToUpper(method), p, prm.Name)
				}
				if prm.Schema != nil {
					s := prm.Schema.Schema()
					if s.Example != nil || len(s.Examples) > 0 {
						t.Errorf("%s %s: the schema of optional parameter %s has an example, which Swagger UI sends", strings.ToUpper(method), p, prm.Name)
					}
				}
			}
		}
	}
	if seen == 0 {
		t.Fatal("no operation takes an Idempotency-Key: the check looked at nothing")
	}
}

// Swagger UI lists an operation under each of its tags: one tag each, so each is listed
// once, and no two operations share a summary.
func TestEveryOperationIsListedOnceInTheDocs(t *testing.T) {
	m, err := loadSpec(t).BuildV3Model()
	if err != nil {
		t.Fatal(err)
	}
	declared := map[string]bool{}
	for _, tag := range m.Model.Tags {
		declared[tag.Name] = true
	}
	summaries := map[string]string{}
	for p, item := range m.Model.Paths.PathItems.FromOldest() {
		for method, op := range item.GetOperations().FromOldest() {
			name := strings.ToUpper(method) + " " + p
			if len(op.Tags) != 1 || !declared[op.Tags[0]] {
				t.Errorf("%s: tags %v, want one of the declared tags", name, op.Tags)
			}
			if other, dup := summaries[op.Summary]; dup {
				t.Errorf("%s and %s share the summary %q", name, other, op.Summary)
			}
			summaries[op.Summary] = name
		}
	}
}

// schemaPattern returns the compiled pattern of components/schemas/name.
func schemaPattern(t *testing.T, doc map[string]any, name string) *regexp.Regexp {
	t.Helper()
	s, _ := doc["components"].(map[string]any)["schemas"].(map[string]any)[name].(map[string]any)
	raw, ok := s["pattern"].(string)
	if !ok {
		t.Fatalf("components/schemas/%s has no pattern", name)
	}
	re, err := regexp.Compile(raw)
	if err != nil {
		t.Fatalf("components/schemas/%s: pattern does not compile: %v", name, err)
	}
	return re
}

// patternRunes are the code points the pattern checks compare on: the Basic
// Multilingual Plane, the Supplementary Multilingual Plane and the tags and variation
// selectors of plane 14, where every format and default-ignorable code point lives, and
// a few beyond.
func patternRunes() []rune {
	var rs []rune
	for r := rune(0); r <= 0x1FFFF; r++ {
		if r < 0xD800 || r > 0xDFFF {
			rs = append(rs, r)
		}
	}
	for r := rune(0xE0000); r <= 0xE0FFF; r++ {
		rs = append(rs, r)
	}
	return append(rs, 0x20000, 0x2FFFF, 0xF0000, 0x10FFFF)
}

// The text schemas' patterns say what the domain's rules say (ticket.checkText, Blank),
// code point by code point: a body the document's schemas accept is one the server
// accepts, as far as characters go (byte limits cannot be written in a schema).
func TestTextPatternsAgreeWithTheDomain(t *testing.T) {
	doc := servedDoc(t)
	line := func(s string) bool { return ticket.ChangeStatus{Status: "open", UpdatedBy: s}.Validate() == nil }
	cases := []struct {
		schema string
		accept func(string) bool
	}{
		{"NonBlankLine", line},
		{"Text", func(s string) bool {
			return ticket.OpenTicket{Title: "t", Email: "user@example.com", CreatedBy: "n", Description: s}.Validate() == nil
		}},
		{"NonBlankText", func(s string) bool { return ticket.AddComment{Body: s, CreatedBy: "n"}.Validate() == nil }},
	}
	runes := patternRunes()
	for _, c := range cases {
		t.Run(c.schema, func(t *testing.T) {
			re := schemaPattern(t, doc, c.schema)
			bad := 0
			for _, r := range runes {
				for _, s := range []string{string(r), "a" + string(r) + "a", " " + string(r)} {
					if re.MatchString(s) != c.accept(s) && bad < 10 {
						bad++
						t.Errorf("%+q (U+%04X): pattern matches %v, the domain accepts %v", s, r, re.MatchString(s), c.accept(s))
					}
				}
			}
		})
	}
	// the fields use them
	schemas := doc["components"].(map[string]any)["schemas"].(map[string]any)
	for field, want := range map[string]string{
		"NewTicket.title": "NonBlankLine", "NewTicket.created_by": "NonBlankLine", "NewTicket.description": "Text",
		"StatusChange.updated_by": "NonBlankLine", "NewComment.body": "NonBlankText", "NewComment.created_by": "NonBlankLine",
		"NewTicket.email": "Email",
	} {
		obj, prop, _ := strings.Cut(field, ".")
		s, _ := schemas[obj].(map[string]any)["properties"].(map[string]any)[prop].(map[string]any)
		if s["$ref"] != "#/components/schemas/"+want {
			t.Errorf("%s: $ref %v, want the %s schema", field, s["$ref"], want)
		}
	}
}

// X-Actor's pattern names only the Basic Multilingual Plane (Swagger UI checks header
// patterns with a RegExp without Unicode mode, where ranges beyond it are a syntax
// error); there it agrees with the domain, an empty value being no header.
func TestXActorPatternAgreesWithTheDomainInTheBMP(t *testing.T) {
	m, err := loadSpec(t).BuildV3Model()
	if err != nil {
		t.Fatal(err)
	}
	var raw string
	for _, prm := range m.Model.Paths.PathItems.GetOrZero("/v1/ticket/{id}").Delete.Parameters {
		if prm.Name == "X-Actor" {
			raw = prm.Schema.Schema().Pattern
		}
	}
	re, err := regexp.Compile(raw)
	if raw == "" || err != nil {
		t.Fatalf("X-Actor pattern %q: %v", raw, err)
	}
	for _, r := range raw {
		if r > 0xFFFF {
			t.Fatalf("X-Actor's pattern holds U+%04X, beyond the BMP", r)
		}
	}
	for r := rune(0); r <= 0xFFFF; r++ {
		if r >= 0xD800 && r <= 0xDFFF {
			continue
		}
		for _, s := range []string{string(r), "a" + string(r) + "a"} {
			if got, want := re.MatchString(s), (ticket.DeleteTicket{DeletedBy: s}).Validate() == nil; got != want {
				t.Errorf("X-Actor %+q: pattern matches %v, the domain accepts %v", s, got, want)
			}
		}
	}
	if !re.MatchString("") {
		t.Error("an empty X-Actor (no actor) is refused by the pattern")
	}
}

// The header patterns say what the server's parsers say.
func TestHeaderPatternsAgreeWithTheServer(t *testing.T) {
	m, err := loadSpec(t).BuildV3Model()
	if err != nil {
		t.Fatal(err)
	}
	pattern := func(name string) *regexp.Regexp {
		t.Helper()
		prm := m.Model.Components.Parameters.GetOrZero(name)
		if prm == nil || prm.Schema == nil {
			t.Fatalf("no components/parameters/%s with a schema", name)
		}
		re, err := regexp.Compile(prm.Schema.Schema().Pattern)
		if err != nil {
			t.Fatal(err)
		}
		return re
	}
	key := pattern("IdempotencyKey")
	for b := 0; b < 256; b++ {
		// HTTP drops spaces at either end of a value, so only inner ones reach the server
		for _, k := range []string{string(rune(b)), "k" + string(rune(b)) + "k", string([]byte{'k', byte(b), 'k'})} {
			if k == " " {
				continue // a value of one space arrives empty
			}
			if got, want := key.MatchString(k), validIdempotencyKey([]byte(k)); got != want {
				t.Errorf("Idempotency-Key %q: pattern matches %v, the server accepts %v", k, got, want)
			}
		}
	}
	for _, k := range []string{strings.Repeat("k", 255), "with space", "a b c"} {
		if !key.MatchString(k) || !validIdempotencyKey([]byte(k)) {
			t.Errorf("Idempotency-Key %q: want accepted by both", k)
		}
	}
	ifMatch := pattern("IfMatch")
	for _, v := range []string{`"1"`, `"42"`, `W/"7"`, `"999999999"`, `*`, ``, `1`, `"`, `""`, `"0"`, `"01"`, `"-1"`, `"1.5"`, `"a"`,
		`"1", "2"`, `'1'`, `w/"1"`, `W/1`, `"1234567890"`, `" 1"`, `"１"`, `**`, `*, "1"`} {
		_, ok := parseETag(v)
		if got, want := ifMatch.MatchString(v), ok || v == "*"; got != want {
			t.Errorf("If-Match %q: pattern matches %v, the server accepts %v", v, got, want)
		}
	}
}
