// Command openapijson writes the OpenAPI document ticketd serves at /api/openapi.json
// (httpapi.OpenAPIJSON, aliases included) to the file named by its one argument, or to
// stdout, so that tools outside Go lint exactly what clients get (make lint-spec).
package main

import (
	"fmt"
	"os"

	"github.com/ticketd/ticketd/httpapi"
)

func main() {
	var err error
	switch len(os.Args) {
	case 1:
		_, err = os.Stdout.Write(httpapi.OpenAPIJSON())
	case 2:
		err = os.WriteFile(os.Args[1], httpapi.OpenAPIJSON(), 0o644)
	default:
		err = fmt.Errorf("usage: openapijson [file]")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "openapijson:", err)
		os.Exit(1)
	}
}
