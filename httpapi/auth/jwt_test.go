package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ticketd/ticketd/httpapi/auth"
)

const (
	testIssuer   = "https://idp.test/realms/helpdesk"
	testAudience = "ticketd"
)

// t0 is the verifier's clock in every test: tokens are dated against it, so no test
// depends on the machine's clock.
var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// testKey is a signing key with the JWK its JWKS publishes. The JWKs are written by
// hand here, not by the library under test.
type testKey struct {
	kid    string
	method jwt.SigningMethod
	signer any
	jwk    map[string]any
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

var (
	keysOnce            sync.Once
	rsaA, rsaB, rsaEvil testKey
	ecKey, edKey        testKey
	rsaAPub             *rsa.PublicKey
)

func keys(t *testing.T) {
	t.Helper()
	keysOnce.Do(func() {
		newRSA := func(kid string) (testKey, *rsa.PublicKey) {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			return testKey{kid: kid, method: jwt.SigningMethodRS256, signer: k, jwk: map[string]any{
				"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
				"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes()),
			}}, &k.PublicKey
		}
		rsaA, rsaAPub = newRSA("rsa-a")
		rsaB, _ = newRSA("rsa-b")
		rsaEvil, _ = newRSA("rsa-a") // claims rsa-a's kid, never published

		ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		pub, err := ek.PublicKey.ECDH()
		if err != nil {
			panic(err)
		}
		raw := pub.Bytes() // 0x04 || X || Y
		ecKey = testKey{kid: "ec-1", method: jwt.SigningMethodES256, signer: ek, jwk: map[string]any{
			"kty": "EC", "kid": "ec-1", "use": "sig", "alg": "ES256", "crv": "P-256",
			"x": b64(raw[1:33]), "y": b64(raw[33:]),
		}}

		edPub, edPriv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		edKey = testKey{kid: "ed-1", method: jwt.SigningMethodEdDSA, signer: edPriv, jwk: map[string]any{
			"kty": "OKP", "kid": "ed-1", "use": "sig", "alg": "EdDSA", "crv": "Ed25519", "x": b64(edPub),
		}}
	})
}

// jwksServer is the provider's JWKS endpoint, whose keys and availability a test
// changes while the verifier runs.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []testKey
	down    bool
	fetches atomic.Int64
}

func newJWKSServer(t *testing.T, keys ...testKey) *jwksServer {
	t.Helper()
	s := &jwksServer{keys: keys}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.down {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		set := map[string]any{"keys": []map[string]any{}}
		for _, k := range s.keys {
			set["keys"] = append(set["keys"].([]map[string]any), k.jwk)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(down bool, keys ...testKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down, s.keys = down, keys
}

func testConfig(jwksURL string) auth.OIDCConfig {
	return auth.OIDCConfig{
		Issuer:         testIssuer,
		Audience:       testAudience,
		JWKSURL:        jwksURL,
		JWKSMinRefresh: time.Millisecond, // lets rotation tests refresh at once
		Now:            func() time.Time { return t0 },
	}
}

func newVerifier(t *testing.T, cfg auth.OIDCConfig) *auth.JWTVerifier {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	v, err := auth.NewJWTVerifier(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("NewJWTVerifier: %v", err)
	}
	return v
}

// claims returns a valid agent's claims; tests change what they test.
func claims() jwt.MapClaims {
	return jwt.MapClaims{
		"iss":          testIssuer,
		"aud":          []string{testAudience, "account"},
		"sub":          "u-42",
		"iat":          t0.Add(-time.Minute).Unix(),
		"nbf":          t0.Add(-time.Minute).Unix(),
		"exp":          t0.Add(10 * time.Minute).Unix(),
		"name":         "Ada Agent",
		"email":        "ada@example.com",
		"ticketd_role": "agent",
	}
}

func sign(t *testing.T, k testKey, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(k.method, c)
	tok.Header["kid"] = k.kid
	s, err := tok.SignedString(k.signer)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

func with(c jwt.MapClaims, kv ...any) jwt.MapClaims {
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(c, kv[i].(string))
		} else {
			c[kv[i].(string)] = kv[i+1]
		}
	}
	return c
}

func mustVerify(t *testing.T, v *auth.JWTVerifier, tok string) auth.Principal {
	t.Helper()
	p, err := v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatalf("Verify refused a valid token: %v", err)
	}
	return p
}

func TestJWTAcceptsValidTokensOfEachAlgorithm(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, rsaA, ecKey, edKey)
	v := newVerifier(t, testConfig(srv.URL))
	if err := v.Health(); err != nil {
		t.Fatalf("Health after a good first fetch = %v, want nil", err)
	}
	want := auth.Principal{ID: "jwt:" + testIssuer + "#u-42", Name: "Ada Agent", Role: auth.RoleAgent, Email: "ada@example.com"}
	for _, k := range []testKey{rsaA, ecKey, edKey} {
		t.Run(k.method.Alg(), func(t *testing.T) {
			if got := mustVerify(t, v, sign(t, k, claims())); got != want {
				t.Fatalf("principal = %+v, want %+v", got, want)
			}
		})
	}
}

func TestJWTPrincipalFromClaims(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, rsaA)
	v := newVerifier(t, testConfig(srv.URL))
	tests := []struct {
		name   string
		claims jwt.MapClaims
		want   auth.Principal
	}{
		{"requester_with_verified_email", with(claims(), "ticketd_role", "requester", "email_verified", true),
			auth.Principal{ID: "jwt:" + testIssuer + "#u-42", Name: "Ada Agent", Role: auth.RoleRequester, Email: "ada@example.com"}},
		{"name_falls_back_to_subject", with(claims(), "name", nil),
			auth.Principal{ID: "jwt:" + testIssuer + "#u-42", Name: "u-42", Role: auth.RoleAgent, Email: "ada@example.com"}},
		{"email_optional_for_admin", with(claims(), "ticketd_role", "admin", "email", nil),
			auth.Principal{ID: "jwt:" + testIssuer + "#u-42", Name: "Ada Agent", Role: auth.RoleAdmin}},
		{"invalid_email_dropped_for_auditor", with(claims(), "ticketd_role", "auditor", "email", "not an email"),
			auth.Principal{ID: "jwt:" + testIssuer + "#u-42", Name: "Ada Agent", Role: auth.RoleAuditor}},
		{"role_array_with_one_ticketd_role", with(claims(), "ticketd_role", []string{"offline_access", "auditor"}),
			auth.Principal{ID: "jwt:" + testIssuer + "#u-42", Name: "Ada Agent", Role: auth.RoleAuditor, Email: "ada@example.com"}},
		{"audience_as_single_string", with(claims(), "aud", testAudience),
			auth.Principal{ID: "jwt:" + testIssuer + "#u-42", Name: "Ada Agent", Role: auth.RoleAgent, Email: "ada@example.com"}},
		{"name_with_control_characters_falls_back_to_subject", with(claims(), "name", "Ada\x1b[2J\nAgent"),
			auth.Principal{ID: "jwt:" + testIssuer + "#u-42", Name: "u-42", Role: auth.RoleAgent, Email: "ada@example.com"}},
		{"expired_within_leeway", with(claims(), "exp", t0.Add(-20*time.Second).Unix()),
			auth.Principal{ID: "jwt:" + testIssuer + "#u-42", Name: "Ada Agent", Role: auth.RoleAgent, Email: "ada@example.com"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mustVerify(t, v, sign(t, rsaA, tt.claims)); got != tt.want {
				t.Fatalf("principal = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestJWTRoleClaimNamespacedOrNested(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, rsaA)
	t.Run("auth0_namespaced_claim_with_dots", func(t *testing.T) {
		cfg := testConfig(srv.URL)
		cfg.RoleClaim = "https://ticketd.example/role"
		v := newVerifier(t, cfg)
		p := mustVerify(t, v, sign(t, rsaA, with(claims(), "ticketd_role", nil, "https://ticketd.example/role", "auditor")))
		if p.Role != auth.RoleAuditor {
			t.Fatalf("role = %q, want auditor", p.Role)
		}
	})
	t.Run("keycloak_nested_path", func(t *testing.T) {
		cfg := testConfig(srv.URL)
		cfg.RoleClaim = "realm_access.roles"
		v := newVerifier(t, cfg)
		c := with(claims(), "ticketd_role", nil, "realm_access", map[string]any{"roles": []string{"default-roles", "admin"}})
		if p := mustVerify(t, v, sign(t, rsaA, c)); p.Role != auth.RoleAdmin {
			t.Fatalf("role = %q, want admin", p.Role)
		}
	})
}

// tamper replaces the payload of a signed token, keeping header and signature.
func tamper(t *testing.T, tok string, edit func(jwt.MapClaims)) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	c := jwt.MapClaims{}
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	edit(c)
	raw, err = json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return parts[0] + "." + b64(raw) + "." + parts[2]
}

// hmacWithPublicKey is the algorithm-confusion attack: HS256 keyed with the public key.
func hmacWithPublicKey(t *testing.T, secret []byte) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, with(claims(), "ticketd_role", "admin"))
	tok.Header["kid"] = rsaA.kid
	s, err := tok.SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestJWTRefusals(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, rsaA, ecKey)
	v := newVerifier(t, testConfig(srv.URL))

	der, err := x509.MarshalPKIXPublicKey(rsaAPub)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	unsigned, err := jwt.NewWithClaims(jwt.SigningMethodNone, with(claims(), "ticketd_role", "admin")).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	rs384 := rsaA
	rs384.method = jwt.SigningMethodRS384
	noKid := jwt.NewWithClaims(jwt.SigningMethodRS256, claims())
	noKidForged, err := noKid.SignedString(rsaEvil.signer)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		token string
	}{
		{"wrong_issuer", sign(t, rsaA, with(claims(), "iss", "https://evil.test/"))},
		{"issuer_missing", sign(t, rsaA, with(claims(), "iss", nil))},
		{"wrong_audience", sign(t, rsaA, with(claims(), "aud", []string{"another-app"}))},
		{"audience_missing", sign(t, rsaA, with(claims(), "aud", nil))},
		{"expired_beyond_leeway", sign(t, rsaA, with(claims(), "exp", t0.Add(-31*time.Second).Unix()))},
		{"expiry_missing", sign(t, rsaA, with(claims(), "exp", nil))},
		{"not_yet_valid", sign(t, rsaA, with(claims(), "nbf", t0.Add(time.Minute).Unix()))},
		{"issued_in_the_future", sign(t, rsaA, with(claims(), "iat", t0.Add(time.Minute).Unix()))},
		{"alg_none", unsigned},
		{"hs256_keyed_with_public_key_pem", hmacWithPublicKey(t, pubPEM)},
		{"hs256_keyed_with_public_key_der", hmacWithPublicKey(t, der)},
		{"alg_not_allowed_rs384", sign(t, rs384, claims())},
		{"tampered_payload_role_raised", tamper(t, sign(t, rsaA, with(claims(), "ticketd_role", "auditor")), func(c jwt.MapClaims) { c["ticketd_role"] = "admin" })},
		{"tampered_payload_expiry_extended", tamper(t, sign(t, rsaA, with(claims(), "exp", t0.Add(-time.Hour).Unix())), func(c jwt.MapClaims) { c["exp"] = t0.Add(time.Hour).Unix() })},
		{"forged_with_known_kid", sign(t, rsaEvil, claims())},
		{"forged_without_kid", noKidForged},
		{"es256_header_on_rsa_key", func() string { k := ecKey; k.kid = rsaA.kid; return sign(t, k, claims()) }()},
		{"unknown_kid", func() string { k := rsaB; return sign(t, k, claims()) }()},
		{"missing_role_claim", sign(t, rsaA, with(claims(), "ticketd_role", nil))},
		{"unknown_role", sign(t, rsaA, with(claims(), "ticketd_role", "superuser"))},
		{"role_not_a_string", sign(t, rsaA, with(claims(), "ticketd_role", 7))},
		{"two_ticketd_roles", sign(t, rsaA, with(claims(), "ticketd_role", []string{"auditor", "admin"}))},
		{"requester_without_email", sign(t, rsaA, with(claims(), "ticketd_role", "requester", "email", nil))},
		{"requester_with_invalid_email", sign(t, rsaA, with(claims(), "ticketd_role", "requester", "email", "ada at example"))},
		{"requester_email_not_verified", sign(t, rsaA, with(claims(), "ticketd_role", "requester", "email_verified", false))},
		{"subject_missing", sign(t, rsaA, with(claims(), "sub", nil))},
		{"subject_with_newline", sign(t, rsaA, with(claims(), "sub", "u-42\nadmin"))},
		{"api_token_shape", "tkd_abc.def.ghi"},
		{"not_a_jwt", "hello"},
		{"huge", strings.Repeat("a", 20<<10) + ".b.c"},
		{"empty", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := v.Verify(context.Background(), tt.token)
			if !errors.Is(err, auth.ErrUnauthenticated) {
				t.Fatalf("Verify = (%+v, %v), want an error wrapping ErrUnauthenticated", p, err)
			}
			if errors.Is(err, auth.ErrJWKSUnavailable) {
				t.Fatalf("error %v also wraps ErrJWKSUnavailable; the JWKS is up", err)
			}
			if p != (auth.Principal{}) {
				t.Fatalf("a refused token still gave principal %+v", p)
			}
			if tt.token != "" && len(tt.token) < 1000 && strings.Contains(err.Error(), tt.token) {
				t.Fatalf("the error repeats the token: %v", err)
			}
		})
	}
}

// Providers often publish keys without "alg"; then only the verifier's own list of
// algorithms stands between a key and a token signed with another algorithm.
func TestJWTAlgorithmsOnlyThoseConfigured(t *testing.T) {
	keys(t)
	noAlg := rsaA
	noAlg.jwk = map[string]any{}
	for k, v := range rsaA.jwk {
		if k != "alg" {
			noAlg.jwk[k] = v
		}
	}
	srv := newJWKSServer(t, noAlg, ecKey)
	rs384 := rsaA
	rs384.method = jwt.SigningMethodRS384

	v := newVerifier(t, testConfig(srv.URL))
	mustVerify(t, v, sign(t, rsaA, claims()))
	noKid, err := jwt.NewWithClaims(jwt.SigningMethodRS256, claims()).SignedString(rsaA.signer)
	if err != nil {
		t.Fatal(err)
	}
	mustVerify(t, v, noKid) // no kid: each published key is tried
	if _, err := v.Verify(context.Background(), sign(t, rs384, claims())); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("RS384 with the default algorithms: err = %v, want ErrUnauthenticated", err)
	}

	cfg := testConfig(srv.URL)
	cfg.Algorithms = []string{"ES256"}
	v = newVerifier(t, cfg)
	mustVerify(t, v, sign(t, ecKey, claims()))
	if _, err := v.Verify(context.Background(), sign(t, rsaA, claims())); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("RS256 with OIDC_ALGORITHMS=ES256: err = %v, want ErrUnauthenticated", err)
	}
}

func TestJWTKeyRotation(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, rsaA)
	cfg := testConfig(srv.URL)
	cfg.JWKSRefresh = 50 * time.Millisecond
	v := newVerifier(t, cfg)
	oldTok, newTok := sign(t, rsaA, claims()), sign(t, rsaB, claims())

	mustVerify(t, v, oldTok)
	if _, err := v.Verify(context.Background(), newTok); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("a token signed with a key the provider has not published: err = %v, want ErrUnauthenticated", err)
	}

	// The provider publishes a new key and signs with it: its unknown kid makes the
	// verifier fetch the JWKS again, and the token is accepted without a restart.
	srv.set(false, rsaA, rsaB)
	mustVerify(t, v, newTok)
	mustVerify(t, v, oldTok)

	// The provider withdraws the old key: after the next refresh its tokens fail.
	srv.set(false, rsaB)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := v.Verify(context.Background(), oldTok)
		if errors.Is(err, auth.ErrUnauthenticated) {
			break
		}
		if err != nil {
			t.Fatalf("old key's token: err = %v, want nil or ErrUnauthenticated", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("a token signed with a withdrawn key was still accepted 5s after its removal (refresh every 50ms)")
		}
		time.Sleep(20 * time.Millisecond)
	}
	mustVerify(t, v, newTok)
}

func TestJWTUnknownKidRefreshIsRateLimited(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, rsaA)
	cfg := testConfig(srv.URL)
	cfg.JWKSMinRefresh = time.Hour
	v := newVerifier(t, cfg)
	start := srv.fetches.Load()
	for i := range 20 {
		c := claims()
		k := rsaB
		k.kid = "made-up-" + string(rune('a'+i))
		if _, err := v.Verify(context.Background(), sign(t, k, c)); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Fatalf("made-up kid: err = %v, want ErrUnauthenticated", err)
		}
	}
	if n := srv.fetches.Load() - start; n > 1 {
		t.Fatalf("20 tokens with made-up kids caused %d JWKS fetches, want at most 1 per OIDC_JWKS_MIN_REFRESH", n)
	}
}

func TestJWTProviderDownAtStart(t *testing.T) {
	keys(t)
	t.Run("answering_503_then_back", func(t *testing.T) {
		srv := newJWKSServer(t, rsaA)
		srv.set(true, rsaA)
		v := newVerifier(t, testConfig(srv.URL))
		if err := v.Health(); !errors.Is(err, auth.ErrJWKSUnavailable) {
			t.Fatalf("Health with the provider down = %v, want ErrJWKSUnavailable", err)
		}
		tok := sign(t, rsaA, claims())
		_, err := v.Verify(context.Background(), tok)
		if !errors.Is(err, auth.ErrJWKSUnavailable) || errors.Is(err, auth.ErrUnauthenticated) {
			t.Fatalf("Verify with the provider down = %v, want ErrJWKSUnavailable (a 503), not ErrUnauthenticated", err)
		}
		// A token refused for another reason stays a 401 even now.
		if _, err := v.Verify(context.Background(), "not-a-jwt"); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Fatalf("a malformed token with the provider down: err = %v, want ErrUnauthenticated", err)
		}

		srv.set(false, rsaA)
		if p := mustVerify(t, v, tok); p.Role != auth.RoleAgent {
			t.Fatalf("after the provider came back: role = %q, want agent", p.Role)
		}
		if err := v.Health(); err != nil {
			t.Fatalf("Health after a good fetch = %v, want nil", err)
		}
	})
	t.Run("connection_refused", func(t *testing.T) {
		srv := newJWKSServer(t)
		url := srv.URL
		srv.Close()
		start := time.Now()
		v := newVerifier(t, testConfig(url))
		if d := time.Since(start); d > 6*time.Second {
			t.Fatalf("NewJWTVerifier took %s with the provider unreachable", d)
		}
		if _, err := v.Verify(context.Background(), sign(t, rsaA, claims())); !errors.Is(err, auth.ErrJWKSUnavailable) {
			t.Fatalf("Verify with the provider unreachable = %v, want ErrJWKSUnavailable", err)
		}
	})
	t.Run("keys_kept_when_a_later_fetch_fails", func(t *testing.T) {
		srv := newJWKSServer(t, rsaA)
		cfg := testConfig(srv.URL)
		cfg.JWKSRefresh = 20 * time.Millisecond
		v := newVerifier(t, cfg)
		srv.set(true, rsaA)
		deadline := time.Now().Add(5 * time.Second)
		for v.Health() == nil {
			if time.Now().After(deadline) {
				t.Fatal("Health still nil 5s after the provider went down (refresh every 20ms)")
			}
			time.Sleep(10 * time.Millisecond)
		}
		mustVerify(t, v, sign(t, rsaA, claims()))
	})
}

func TestJWTVerifyConcurrently(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, rsaA, ecKey)
	v := newVerifier(t, testConfig(srv.URL))
	good, bad := sign(t, ecKey, claims()), sign(t, rsaA, with(claims(), "aud", "x"))
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 8 {
		wg.Go(func() {
			for range 8 {
				if _, err := v.Verify(context.Background(), good); err != nil {
					errs <- err
				}
				if _, err := v.Verify(context.Background(), bad); !errors.Is(err, auth.ErrUnauthenticated) {
					errs <- errors.New("a bad token was not refused")
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestLooksLikeJWT(t *testing.T) {
	keys(t)
	tests := []struct {
		in   string
		want bool
	}{
		{sign(t, rsaA, claims()), true},
		{"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", true}, // alg none: the JWT verifier refuses it
		{"tkd_3fQm9xZ2", false},
		{"tkd_a.b.c", false},
		{"a.b", false},
		{"a.b.c.d", false},
		{".b.c", false},
		{"a..c", false},
		{"a.b.c d", false},
		{"a+b.c/d.e=", false}, // base64 std, not base64url
		{"", false},
		{strings.Repeat("a", 17<<10) + ".b.c", false},
	}
	for _, tt := range tests {
		if got := auth.LooksLikeJWT(tt.in); got != tt.want {
			in := tt.in
			if len(in) > 40 {
				in = in[:40] + "…"
			}
			t.Errorf("LooksLikeJWT(%q) = %v, want %v", in, got, tt.want)
		}
	}
}

func TestOIDCConfigFromEnv(t *testing.T) {
	var cfg auth.OIDCConfig
	err := env.ParseWithOptions(&cfg, env.Options{Environment: map[string]string{
		"OIDC_ISSUER":     testIssuer,
		"OIDC_AUDIENCE":   testAudience,
		"OIDC_JWKS_URL":   "https://idp.test/certs",
		"OIDC_ROLE_CLAIM": "realm_access.roles",
		"OIDC_ALGORITHMS": "RS256,PS256",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if cfg.RoleClaim != "realm_access.roles" || cfg.EmailClaim != "email" || cfg.NameClaim != "name" ||
		strings.Join(cfg.Algorithms, ",") != "RS256,PS256" || cfg.Leeway != 30*time.Second ||
		cfg.JWKSRefresh != time.Hour || cfg.JWKSMinRefresh != time.Minute || cfg.Now != nil {
		t.Fatalf("parsed config = %+v", cfg)
	}
	if d := (auth.OIDCConfig{}).WithDefaults(); d.Leeway != 30*time.Second || strings.Join(d.Algorithms, ",") != "RS256,ES256,EdDSA" || d.RoleClaim != "ticketd_role" {
		t.Fatalf("WithDefaults disagrees with the env defaults: %+v", d)
	}
	var off auth.OIDCConfig
	if err := env.ParseWithOptions(&off, env.Options{Environment: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	if off.Enabled() || off.Validate() != nil {
		t.Fatalf("no OIDC variables: Enabled = %v, Validate = %v; want off and valid", off.Enabled(), off.Validate())
	}
	if _, err := auth.NewJWTVerifier(context.Background(), off, nil); err == nil {
		t.Fatal("NewJWTVerifier with JWT login off: want an error")
	}
}

func TestOIDCConfigValidate(t *testing.T) {
	good := auth.OIDCConfig{Issuer: testIssuer, Audience: testAudience, JWKSURL: "https://idp.test/certs"}.WithDefaults()
	if err := good.Validate(); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	tests := []struct {
		name string
		edit func(*auth.OIDCConfig)
		want string
	}{
		{"audience_missing", func(c *auth.OIDCConfig) { c.Audience = "" }, "OIDC_AUDIENCE must be set"},
		{"jwks_url_missing", func(c *auth.OIDCConfig) { c.JWKSURL = "" }, "OIDC_JWKS_URL must be set"},
		{"jwks_url_plain_http", func(c *auth.OIDCConfig) { c.JWKSURL = "http://idp.test/certs" }, "must be https"},
		{"jwks_url_relative", func(c *auth.OIDCConfig) { c.JWKSURL = "/certs" }, "absolute URL"},
		{"alg_none", func(c *auth.OIDCConfig) { c.Algorithms = []string{"RS256", "none"} }, `"none" is never accepted`},
		{"alg_hs256", func(c *auth.OIDCConfig) { c.Algorithms = []string{"HS256"} }, `"HS256" is never accepted`},
		{"alg_unknown", func(c *auth.OIDCConfig) { c.Algorithms = []string{"RS1"} }, `"RS1" is not one of`},
		{"leeway_too_long", func(c *auth.OIDCConfig) { c.Leeway = time.Hour }, "OIDC_LEEWAY must be from 0 to 5m"},
		{"empty_role_claim", func(c *auth.OIDCConfig) { c.RoleClaim = " " }, "OIDC_ROLE_CLAIM must name a claim"},
		{"role_claim_with_control", func(c *auth.OIDCConfig) { c.RoleClaim = "role\x01" }, `OIDC_ROLE_CLAIM "role\x01" must name a claim: no spaces`},
		{"issuer_no_url", func(c *auth.OIDCConfig) { c.Issuer = "my idp" }, `OIDC_ISSUER "my idp" must be the provider's issuer URL`},
		{"audience_control", func(c *auth.OIDCConfig) { c.Audience = "a\nb" }, `OIDC_AUDIENCE "a\nb" must be printable`},
		{"off_but_audience_set", func(c *auth.OIDCConfig) { c.Issuer = "" }, "OIDC_ISSUER is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			c.Algorithms = append([]string(nil), good.Algorithms...)
			tt.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	for _, u := range []string{"http://127.0.0.1:8080/certs", "http://localhost/certs", "http://[::1]:9/certs"} {
		c := good
		c.JWKSURL = u
		if err := c.Validate(); err != nil {
			t.Errorf("loopback http JWKS URL %q refused: %v", u, err)
		}
	}
}

func TestJWTOversizedJWKSRefused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"keys":[],"padding":"`+strings.Repeat("x", 2<<20)+`"}`)
	}))
	t.Cleanup(srv.Close)
	v := newVerifier(t, testConfig(srv.URL))
	err := v.Health()
	if !errors.Is(err, auth.ErrJWKSUnavailable) || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Health after a 2 MiB JWKS = %v, want ErrJWKSUnavailable saying it is too large", err)
	}
}
