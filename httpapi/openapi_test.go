package httpapi

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"golang.org/x/net/html"
)

// docsRoutes are served by the app but are not part of the API: the documentation UIs
// and their files. Everything else the app routes must be in the OpenAPI document.
var docsRoutes = map[string]bool{
	"GET " + SwaggerUIPath:                    true,
	"GET " + SwaggerUIPath + "/assets/{file}": true,
	"GET " + RedocPath:                        true,
	"GET " + RedocPath + "/assets/{file}":     true,
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
// Fiber's :param written as {param}; HEAD (Fiber adds one per GET) is left out.
func appOperations(app *fiber.App) []string {
	seen := map[string]bool{}
	var ops []string
	for _, r := range app.GetRoutes(true) {
		if r.Method == fiber.MethodHead {
			continue
		}
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

// normalize drops a trailing slash: the router answers both forms, so "/v1/ticket/"
// in the document and "/v1/ticket" in the router are the same route.
func normalize(op string) string {
	if len(op) > 1 && strings.HasSuffix(op, "/") && !strings.HasSuffix(op, " /") {
		return op[:len(op)-1]
	}
	return op
}

func TestEveryRouteIsInTheOpenAPIDocumentAndBack(t *testing.T) {
	app := newTestApp()
	spec := map[string]bool{}
	for _, op := range specOperations(t) {
		spec[normalize(op)] = true
	}
	routes := map[string]bool{}
	for _, op := range appOperations(app) {
		if docsRoutes[op] {
			continue
		}
		routes[normalize(op)] = true
		if !spec[normalize(op)] {
			t.Errorf("route %s is not documented in httpapi/openapi.yaml", op)
		}
	}
	for op := range spec {
		if !routes[op] {
			t.Errorf("httpapi/openapi.yaml documents %s, which no route serves", op)
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
				if code[0] != '4' && code[0] != '5' || p == "/readyz" {
					continue
				}
				if resp.Content == nil || resp.Content.GetOrZero("application/problem+json") == nil {
					t.Errorf("%s %s: not described as application/problem+json", name, code)
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

// newTestApp is the app with no dependencies: enough for routes, docs and metrics.
func newTestApp() *fiber.App {
	return New(Config{Log: slog.New(slog.DiscardHandler)})
}
