package httpapi

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/gofiber/fiber/v2"
	"gopkg.in/yaml.v3"
)

// The OpenAPI document is written by hand in openapi.yaml, next to the handlers it
// describes, and embedded in the binary. The served document (OpenAPIJSON) adds what
// the router does mechanically (withAliases): every path also under its other spelling
// (with or without the trailing slash) and a HEAD beside every GET, tagged "aliases".
// Tests keep it honest: the served operations are exactly the routes the app registers
// (openapi_test.go), it passes a strict lint (make lint-spec) and the structural checks
// of openapi_test.go, real responses of the main flows validate against it
// (cmd/ticketd/ops_test.go), and a table of valid and invalid requests gets the same
// verdict from its request validator and from the server (cmd/ticketd/conformance_test.go).
//
//go:embed openapi.yaml
var openapiYAML []byte

// OpenAPIYAML returns the OpenAPI 3.1 document as written (YAML), without the aliases
// the served document adds.
func OpenAPIYAML() []byte { return bytes.Clone(openapiYAML) }

// OpenAPIJSON returns the OpenAPI 3.1 document as served: as JSON, keys in the order
// written, with the aliases of withAliases. It panics if the embedded YAML is malformed:
// a build mistake the tests catch.
func OpenAPIJSON() []byte { return bytes.Clone(openapiJSON()) }

var openapiJSON = sync.OnceValue(func() []byte {
	var doc yaml.Node
	if err := yaml.Unmarshal(openapiYAML, &doc); err != nil {
		panic(fmt.Sprintf("httpapi: openapi.yaml: %v", err))
	}
	if err := withAliases(&doc); err != nil {
		panic(fmt.Sprintf("httpapi: openapi.yaml: %v", err))
	}
	var buf bytes.Buffer
	if err := writeJSON(&buf, &doc); err != nil {
		panic(fmt.Sprintf("httpapi: openapi.yaml: %v", err))
	}
	return buf.Bytes()
})

// writeJSON writes a YAML node tree as JSON. Unlike decoding into maps, it keeps the
// order of keys, so the document reads in the UIs in the order it was written.
func writeJSON(buf *bytes.Buffer, n *yaml.Node) error {
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) != 1 {
			return fmt.Errorf("line %d: want one document", n.Line)
		}
		return writeJSON(buf, n.Content[0])
	case yaml.AliasNode:
		return writeJSON(buf, n.Alias)
	case yaml.MappingNode:
		buf.WriteByte('{')
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind != yaml.ScalarNode || k.Tag == "!!merge" {
				return fmt.Errorf("line %d: keys must be plain scalars", k.Line)
			}
			if i > 0 {
				buf.WriteByte(',')
			}
			key, _ := json.Marshal(k.Value)
			buf.Write(key)
			buf.WriteByte(':')
			if err := writeJSON(buf, n.Content[i+1]); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
		return nil
	case yaml.SequenceNode:
		buf.WriteByte('[')
		for i, c := range n.Content {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeJSON(buf, c); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
		return nil
	case yaml.ScalarNode:
		var v any
		if n.Tag == "!!timestamp" {
			v = n.Value // a date stays the string it was written as
		} else if err := n.Decode(&v); err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		buf.Write(b)
		return nil
	}
	return fmt.Errorf("line %d: unexpected YAML node kind %d", n.Line, n.Kind)
}

// openapiDoc serves the document at /api/openapi.json.
func openapiDoc(c *fiber.Ctx) error {
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSONCharsetUTF8)
	c.Set(fiber.HeaderCacheControl, "no-cache")
	return c.Send(openapiJSON())
}

// aliasTag tags the operations withAliases adds.
const aliasTag = "aliases"

// withAliases adds to the document what the router answers besides the written paths,
// so that a client or proxy checking requests against the document accepts what the
// server accepts: Fiber routes a path with and without its trailing slash, and answers
// HEAD on every GET route. For every written path it adds the other spelling with a copy
// of its operations, and beside every GET a HEAD with the GET's parameters and the
// headers of its responses, no bodies. The added operations get operationIds derived
// from the written ones, the tag aliasTag and a description naming the operation they
// repeat. The new paths follow the written ones.
func withAliases(doc *yaml.Node) error {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return fmt.Errorf("want one document")
	}
	root := doc.Content[0]
	paths := mapValue(root, "paths")
	responses := mapValue(mapValue(root, "components"), "responses")
	if paths == nil || paths.Kind != yaml.MappingNode {
		return fmt.Errorf("no paths")
	}
	written := map[string]bool{}
	for i := 0; i+1 < len(paths.Content); i += 2 {
		written[paths.Content[i].Value] = true
	}
	var added []*yaml.Node
	for i := 0; i+1 < len(paths.Content); i += 2 {
		path, item := paths.Content[i].Value, paths.Content[i+1]
		other, suffix, spelling := path+"/", "Slash", "with a trailing slash"
		if strings.HasSuffix(path, "/") {
			other, suffix, spelling = strings.TrimSuffix(path, "/"), "NoSlash", "without the trailing slash"
		}
		if other == "" || written[other] {
			continue // "/" has no other spelling; a written one stands as written
		}
		alias := cloneNode(item)
		for j := 0; j+1 < len(alias.Content); j += 2 {
			method, op := alias.Content[j].Value, alias.Content[j+1]
			if !isMethod(method) {
				continue
			}
			id, summary := mapValue(op, "operationId"), mapValue(op, "summary")
			if id == nil || summary == nil {
				return fmt.Errorf("%s %s: no operationId or summary", strings.ToUpper(method), path)
			}
			markAlias(op, id.Value+suffix, summary.Value+" ("+spelling+")",
				"`"+strings.ToUpper(method)+" "+path+"` (`"+id.Value+"`) "+spelling+".")
		}
		if err := addHead(item, item, path, "", "", responses); err != nil {
			return err
		}
		if err := addHead(alias, item, path, suffix, ", "+spelling, responses); err != nil {
			return err
		}
		added = append(added, scalar(other), alias)
	}
	paths.Content = append(paths.Content, added...)
	return nil
}

// addHead adds to item a HEAD operation beside its GET, if it has one and no HEAD of its
// own. written is the path item as written at path, whose GET the HEAD repeats; suffix
// and spelling tell the alias path's operationId and summary apart.
func addHead(item, written *yaml.Node, path, suffix, spelling string, responses *yaml.Node) error {
	get := mapValue(written, "get")
	if get == nil || mapValue(item, "head") != nil {
		return nil
	}
	id, summary := mapValue(get, "operationId"), mapValue(get, "summary")
	if id == nil || summary == nil {
		return fmt.Errorf("GET %s: no operationId or summary", path)
	}
	head := &yaml.Node{Kind: yaml.MappingNode}
	if v := mapValue(get, "parameters"); v != nil {
		setValue(head, "parameters", cloneNode(v))
	}
	markAlias(head, "head"+strings.ToUpper(id.Value[:1])+id.Value[1:]+suffix, summary.Value+" (HEAD: headers only"+spelling+")",
		"`GET "+path+"` (`"+id.Value+"`) as HEAD"+spelling+": the same status and headers, without a body.")
	codes := mapValue(get, "responses")
	if codes == nil {
		return fmt.Errorf("GET %s: no responses", path)
	}
	out := &yaml.Node{Kind: yaml.MappingNode}
	for i := 0; i+1 < len(codes.Content); i += 2 {
		resp := codes.Content[i+1]
		if ref := mapValue(resp, "$ref"); ref != nil {
			name, ok := strings.CutPrefix(ref.Value, "#/components/responses/")
			if resp = mapValue(responses, name); !ok || resp == nil {
				return fmt.Errorf("GET %s: unresolved %s", path, ref.Value)
			}
		}
		bodiless := &yaml.Node{Kind: yaml.MappingNode}
		for _, key := range []string{"description", "headers"} {
			if v := mapValue(resp, key); v != nil {
				setValue(bodiless, key, cloneNode(v))
			}
		}
		out.Content = append(out.Content, cloneNode(codes.Content[i]), bodiless)
	}
	setValue(head, "responses", out)
	setValue(item, "head", head)
	return nil
}

// markAlias gives op its derived operationId, the alias tag, and a summary and
// description that name the operation it repeats.
func markAlias(op *yaml.Node, id, summary, description string) {
	setValue(op, "operationId", scalar(id))
	setValue(op, "tags", &yaml.Node{Kind: yaml.SequenceNode, Content: []*yaml.Node{scalar(aliasTag)}})
	setValue(op, "summary", scalar(summary))
	setValue(op, "description", scalar(description))
}

func isMethod(key string) bool {
	switch key {
	case "get", "put", "post", "delete", "options", "head", "patch", "trace":
		return true
	}
	return false
}

// mapValue returns the value of key in mapping m, nil if m is no mapping or lacks it.
func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// setValue sets key in mapping m to v, in place if present, else at the end.
func setValue(m *yaml.Node, key string, v *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, scalar(key), v)
}

func scalar(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
}

// cloneNode copies a node tree (aliases keep pointing at their anchors).
func cloneNode(n *yaml.Node) *yaml.Node {
	c := *n
	c.Content = make([]*yaml.Node, len(n.Content))
	for i, k := range n.Content {
		c.Content[i] = cloneNode(k)
	}
	return &c
}
