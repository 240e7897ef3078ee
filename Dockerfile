# syntax=docker/dockerfile:1
#
# ticketd in two stages: a static binary built with the Go toolchain, then an image
# holding only that binary (plus CA certificates and time zones) running as a non-root
# user. The docs pages' assets, the OpenAPI document and the migrations are embedded in
# the binary, so nothing else is copied.
#
#   docker build -t ticketd .
#   docker compose up --build        # with Postgres and a Redis Cluster (compose.yaml)
#
# The container needs DATA_KEY (the master key of personal data, `openssl rand -base64
# 32`) or DATA_KEY_FILE (e.g. a mounted secret): without one ticketd refuses to start.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# No separate `go mod download` layer: it would fetch every module go.mod lists, most
# of which the server never imports. The build fetches what it needs into a cache mount
# that outlives the build.
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w" -o /out/ticketd ./cmd/ticketd

# distroless/static: no shell, no package manager; CA certificates, tzdata and a
# "nonroot" user (65532) are all it adds to the binary.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ticketd /ticketd
USER 65532:65532
ENV HTTP_ADDR=:8000
EXPOSE 8000
# The image has no curl: the binary probes its own /healthz (exit 0 healthy, 1 not).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/ticketd", "-healthcheck"]
ENTRYPOINT ["/ticketd"]
