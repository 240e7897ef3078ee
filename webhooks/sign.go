package webhooks

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Signatures follow Standard Webhooks (https://www.standardwebhooks.com, spec/
// standard-webhooks.md): every request carries
//
//	webhook-id:        the delivery's id, the same at every attempt (receivers dedupe on it)
//	webhook-timestamp: the attempt's time, in seconds since the Unix epoch
//	webhook-signature: v1,<base64 of HMAC-SHA256(key, id + "." + timestamp + "." + body)>
//
// where key is the secret's bytes: the secret is "whsec_" followed by their standard
// base64. While a rotated-out secret is still in its grace period, the header holds one
// signature per secret, separated by a space; a receiver accepts the request when any
// of them verifies with the secret it has.

// SecretPrefix starts every signing secret.
const SecretPrefix = "whsec_"

// secretBytes is the length of a generated key: the spec asks for 24 to 64 bytes.
const secretBytes = 32

// NewSecret returns a fresh signing secret: whsec_ and the base64 of 32 random bytes.
func NewSecret() string {
	b := make([]byte, secretBytes)
	_, _ = rand.Read(b) // never fails (crypto/rand panics rather than return an error)
	return SecretPrefix + base64.StdEncoding.EncodeToString(b)
}

// secretKey returns the HMAC key of a secret.
func secretKey(secret string) ([]byte, error) {
	raw, ok := strings.CutPrefix(secret, SecretPrefix)
	if !ok {
		return nil, errors.New("a webhook secret starts with " + SecretPrefix)
	}
	return base64.StdEncoding.DecodeString(raw)
}

// Sign returns the webhook-signature header of a request with the given id, time and
// body, signed by each secret in order ("v1,<sig>" each, space-separated). A secret
// that is not whsec_ + base64 is skipped; none valid gives "".
func Sign(id string, at time.Time, body []byte, secrets ...string) string {
	ts := strconv.FormatInt(at.Unix(), 10)
	var sigs []string
	for _, s := range secrets {
		key, err := secretKey(s)
		if err != nil || len(key) == 0 {
			continue
		}
		m := hmac.New(sha256.New, key)
		m.Write([]byte(id))
		m.Write([]byte{'.'})
		m.Write([]byte(ts))
		m.Write([]byte{'.'})
		m.Write(body)
		sigs = append(sigs, "v1,"+base64.StdEncoding.EncodeToString(m.Sum(nil)))
	}
	return strings.Join(sigs, " ")
}

// Headers of a delivery, lower case as the spec writes them.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)
