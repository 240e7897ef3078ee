package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// idp is an OIDC provider as far as ticketd sees one: a JWKS endpoint (served by the
// test, on loopback http) and the key that signs its tokens.
type idp struct {
	*httptest.Server
	key    *ecdsa.PrivateKey
	kid    string
	issuer string
	down   atomic.Bool
}

func newIDP(t *testing.T) *idp {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &idp{key: key, kid: "k1"}
	b64 := base64.RawURLEncoding.EncodeToString
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		pub := p.key.PublicKey
		jwk := map[string]string{"kty": "EC", "crv": "P-256", "kid": p.kid, "use": "sig", "alg": "ES256",
			"x": b64(pub.X.FillBytes(make([]byte, 32))), "y": b64(pub.Y.FillBytes(make([]byte, 32)))}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []any{jwk}})
	}))
	t.Cleanup(p.Close)
	p.issuer = p.URL + "/realms/test"
	return p
}

// env is the OIDC_* environment of a ticketd trusting p.
func (p *idp) env() map[string]string {
	return map[string]string{
		"OIDC_ISSUER":   p.issuer,
		"OIDC_AUDIENCE": "ticketd",
		"OIDC_JWKS_URL": p.URL + "/certs",
		// a token naming an unknown key refetches the set at once (key rotation)
		"OIDC_JWKS_MIN_REFRESH": "1ms",
	}
}

// token signs a JWT for sub with role, with key (p's own when nil) under kid.
func (p *idp) token(t *testing.T, sub, role string, key *ecdsa.PrivateKey, kid string) string {
	t.Helper()
	if key == nil {
		key, kid = p.key, p.kid
	}
	now := time.Now()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"iss": p.issuer, "aud": "ticketd", "sub": sub, "name": sub + " of the IdP",
		"iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(), "ticketd_role": role,
	})
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestJWTLogin: a ticketd with OIDC_* set takes JWTs from the provider beside API
// tokens, with the role from the token's claim; a bad JWT gets the very answer of a
// bad API token; a provider whose keys cannot be fetched makes a JWT with an unknown
// key a 503 and /readyz says so, without failing readiness.
func TestJWTLogin(t *testing.T) {
	t.Parallel()
	p := newIDP(t)
	s := startServer(t, p.env())
	agent := p.token(t, "ada", "agent", nil, "")
	auditor := p.token(t, "audrey", "auditor", nil, "")

	var created struct{ ID string }
	s.do(t, "POST", "/v1/ticket/", map[string]any{"title": "t", "email": "e@example.com", "created_by": "c"}, bearerOf(agent)...).
		expect(t, 201).JSON(t, &created)
	s.do(t, "GET", "/v1/ticket/"+created.ID, nil, bearerOf(agent)...).expect(t, 200)
	s.do(t, "GET", "/v1/ticket/"+created.ID, nil, bearerOf(auditor)...).expect(t, 200)
	pr := s.do(t, "POST", "/v1/ticket/", map[string]any{"title": "t", "email": "e@example.com", "created_by": "c"}, bearerOf(auditor)...).
		expect(t, 403).problem(t)
	if pr["code"] != "forbidden" || pr["permission"] != "tickets:create" {
		t.Errorf("auditor's POST: problem %v, want forbidden naming tickets:create", pr)
	}

	// A JWT signed by another key under the provider's kid, an unsigned one, and a
	// bad API token: one answer.
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forged := p.token(t, "mallory", "admin", other, p.kid)
	unsigned := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
		base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"m","ticketd_role":"admin"}`)) + "."
	badToken := "tkd_" + "A123456789012345678901234567890123456789012"
	want := s.do(t, "GET", "/v1/ticket/", nil, bearerOf(badToken)...).expect(t, 401)
	for name, cred := range map[string]string{"forged": forged, "alg_none": unsigned} {
		r := s.do(t, "GET", "/v1/ticket/", nil, bearerOf(cred)...)
		if r.Status != 401 || string(r.Body) != string(want.Body) || r.Header.Get("WWW-Authenticate") != want.Header.Get("WWW-Authenticate") {
			t.Errorf("%s JWT: %d %s (WWW-Authenticate %q), want the bad token's %d %s (%q)", name,
				r.Status, r.Body, r.Header.Get("WWW-Authenticate"), want.Status, want.Body, want.Header.Get("WWW-Authenticate"))
		}
	}

	var ready map[string]any
	s.do(t, "GET", "/readyz", nil).expect(t, 200).JSON(t, &ready)
	if ready["jwt"] != "ok" {
		t.Errorf("/readyz jwt = %v, want ok", ready["jwt"])
	}

	// The provider goes down; a token naming a key ticketd has not fetched cannot be
	// checked: 503, not 401. Known keys still work, and so do API tokens.
	p.down.Store(true)
	r := s.do(t, "GET", "/v1/ticket/", nil, bearerOf(p.token(t, "ada", "agent", p.key, "k2"))...)
	if pr := r.expect(t, 503).problem(t); pr["code"] != "unavailable" {
		t.Errorf("JWT with an unknown key while the JWKS is down: problem %v, want unavailable", pr)
	}
	s.do(t, "GET", "/v1/ticket/", nil).expect(t, 200)
	s.do(t, "GET", "/v1/ticket/", nil, bearerOf(agent)...).expect(t, 200)
	s.do(t, "GET", "/readyz", nil).expect(t, 200).JSON(t, &ready)
	if jwt, _ := ready["jwt"].(string); len(jwt) < 11 || jwt[:11] != "unavailable" {
		t.Errorf("/readyz with the JWKS down: jwt = %v, want unavailable (and still 200)", ready["jwt"])
	}
}

// TestJWTRefusedWhenOIDCIsOff: without OIDC_ISSUER a JWT, even a well signed one, is
// a credential like any unknown token: the same 401.
func TestJWTRefusedWhenOIDCIsOff(t *testing.T) {
	t.Parallel()
	p := newIDP(t)
	s := startServer(t, nil)
	want := s.do(t, "GET", "/v1/ticket/", nil, bearerOf("tkd_A123456789012345678901234567890123456789012")...).expect(t, 401)
	r := s.do(t, "GET", "/v1/ticket/", nil, bearerOf(p.token(t, "ada", "admin", nil, ""))...)
	if r.Status != 401 || string(r.Body) != string(want.Body) {
		t.Errorf("JWT with OIDC off: %d %s, want %d %s", r.Status, r.Body, want.Status, want.Body)
	}
	var ready map[string]any
	s.do(t, "GET", "/readyz", nil).expect(t, 200).JSON(t, &ready)
	if _, ok := ready["jwt"]; ok {
		t.Errorf("/readyz with OIDC off reports jwt: %v", ready)
	}
}
