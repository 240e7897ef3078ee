package httpapi

import (
	"bytes"
	"compress/gzip"
	"embed"
	"errors"
	"io"
	"io/fs"
	"mime"
	"path"
	"strings"

	"github.com/gofiber/fiber/v2"
	swaggerui "github.com/swaggest/swgui/v5/static"
)

// The API documentation pages. Everything they load is embedded in the binary, so they
// work with no internet access:
//
//   - Swagger UI 5 at /api/openapi, its files from the Go module
//     github.com/swaggest/swgui (v5/static: the upstream dist files, gzipped);
//   - ReDoc 2 at /api/redoc, its redoc.standalone.js vendored (MIT) from the npm package
//     redoc into assets/redoc, gzipped. Refresh it with the go:generate line below.
//
// Both read the document from /api/openapi.json.
//
//go:generate sh -c "cd assets/redoc && tgz=$(npm pack --silent redoc@2.5.4) && tar -xzf $tgz package/bundles/redoc.standalone.js package/bundles/redoc.standalone.js.LICENSE.txt package/LICENSE && gzip -9n -c package/bundles/redoc.standalone.js > redoc.standalone.js.gz && mv package/bundles/redoc.standalone.js.LICENSE.txt package/LICENSE . && rm -rf package $tgz"

//go:embed assets/redoc/*.gz
var redocAssets embed.FS

// Paths of the documentation pages.
const (
	SwaggerUIPath = "/api/openapi"
	RedocPath     = "/api/redoc"
	OpenAPIPath   = "/api/openapi.json"
)

const swaggerPage = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ticketd API · Swagger UI</title>
<link rel="stylesheet" href="/api/openapi/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/api/openapi/assets/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="/api/openapi/assets/favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/api/openapi/assets/swagger-ui-bundle.js"></script>
<script src="/api/openapi/assets/swagger-initializer.js"></script>
</body>
</html>
`

// swaggerInit starts Swagger UI on the embedded document. validatorUrl null: the default
// would have the page ask an online validator for a badge.
const swaggerInit = `window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    displayRequestDuration: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
};
`

// redocPage loads no web fonts: ReDoc falls back to the system's sans-serif.
const redocPage = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ticketd API · ReDoc</title>
<style>body { margin: 0; padding: 0; }</style>
</head>
<body>
<redoc spec-url="/api/openapi.json"></redoc>
<script src="/api/redoc/assets/redoc.standalone.js"></script>
</body>
</html>
`

// registerDocs adds the OpenAPI document and the two documentation UIs to app.
func registerDocs(app *fiber.App) {
	app.Get(OpenAPIPath, openapiDoc)
	app.Get(SwaggerUIPath, htmlPage(swaggerPage))
	app.Get(SwaggerUIPath+"/assets/:file", func(c *fiber.Ctx) error {
		if c.Params("file") == "swagger-initializer.js" {
			c.Set(fiber.HeaderContentType, "text/javascript; charset=utf-8")
			return c.SendString(swaggerInit)
		}
		return sendAsset(c, swaggerui.FS, c.Params("file"))
	})
	app.Get(RedocPath, htmlPage(redocPage))
	app.Get(RedocPath+"/assets/:file", func(c *fiber.Ctx) error {
		return sendAsset(c, redocAssets, "assets/redoc/"+c.Params("file"))
	})
}

func htmlPage(page string) fiber.Handler {
	return func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
		c.Set(fiber.HeaderXContentTypeOptions, "nosniff")
		return c.SendString(page)
	}
}

// sendAsset answers with the file name from fsys, or its gzipped twin name.gz: as is
// to clients that accept gzip, unpacked for the others. Unknown names are 404.
func sendAsset(c *fiber.Ctx, fsys fs.FS, name string) error {
	if strings.Contains(name, "..") || strings.HasSuffix(name, ".gz") {
		return fiber.ErrNotFound
	}
	ct := mime.TypeByExtension(path.Ext(name))
	if ct == "" {
		ct = fiber.MIMEOctetStream
	}
	c.Set(fiber.HeaderContentType, ct)
	c.Set(fiber.HeaderXContentTypeOptions, "nosniff")
	c.Set(fiber.HeaderCacheControl, "public, max-age=3600")
	if raw, err := fs.ReadFile(fsys, name); err == nil {
		return c.Send(raw)
	}
	packed, err := fs.ReadFile(fsys, name+".gz")
	if errors.Is(err, fs.ErrNotExist) {
		return problem(fiber.StatusNotFound, "route-not-found", "no such documentation asset")
	}
	if err != nil {
		return err
	}
	c.Vary(fiber.HeaderAcceptEncoding)
	if c.Context().Request.Header.HasAcceptEncoding("gzip") {
		c.Set(fiber.HeaderContentEncoding, "gzip")
		return c.Send(packed)
	}
	zr, err := gzip.NewReader(bytes.NewReader(packed))
	if err != nil {
		return err
	}
	plain, err := io.ReadAll(zr)
	if err != nil {
		return err
	}
	return c.Send(plain)
}
