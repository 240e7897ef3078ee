package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/mail"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// OIDCConfig configures the second way in: JWT bearer tokens signed by an OIDC
// provider, checked against the provider's published keys (its JWKS). JWT login is off
// when Issuer is empty. The env tags let cmd/ticketd embed it in its Config; a value
// built in Go gets the same defaults from WithDefaults.
type OIDCConfig struct {
	// Issuer must equal a token's iss claim exactly (e.g. https://idp.example/realms/x).
	Issuer string `env:"OIDC_ISSUER"`
	// Audience must be one of a token's aud values: the id the provider gives ticketd.
	// Required: without it any token the provider issues to any client would do.
	Audience string `env:"OIDC_AUDIENCE"`
	// JWKSURL is where the provider publishes its public keys. https, or http to a
	// loopback address only (a key set fetched in clear could be swapped in transit).
	JWKSURL string `env:"OIDC_JWKS_URL"`
	// RoleClaim carries the ticketd role. A name is first looked up as it is (Auth0's
	// namespaced claims contain dots), then as a dotted path (Keycloak's
	// realm_access.roles). The value is a string, or an array of strings holding
	// exactly one ticketd role.
	RoleClaim string `env:"OIDC_ROLE_CLAIM" envDefault:"ticketd_role"`
	// EmailClaim carries the email; required for the requester role.
	EmailClaim string `env:"OIDC_EMAIL_CLAIM" envDefault:"email"`
	// NameClaim carries the display name; the subject stands in when it is missing.
	NameClaim string `env:"OIDC_NAME_CLAIM" envDefault:"name"`
	// Algorithms a token may be signed with: asymmetric ones only (never "none", never
	// HS*: an HMAC "signed" with the public key would otherwise pass).
	Algorithms []string `env:"OIDC_ALGORITHMS" envSeparator:"," envDefault:"RS256,ES256,EdDSA"`
	// Leeway forgives clock skew on exp, nbf and iat; zero means the default.
	Leeway time.Duration `env:"OIDC_LEEWAY" envDefault:"30s"`
	// JWKSRefresh is how often the key set is fetched again, so a key the provider
	// removes stops working within this time.
	JWKSRefresh time.Duration `env:"OIDC_JWKS_REFRESH" envDefault:"1h"`
	// JWKSMinRefresh is the least time between two fetches caused by a token whose key
	// id is unknown (key rotation), so that tokens with made-up key ids cannot make
	// ticketd hammer the provider.
	JWKSMinRefresh time.Duration `env:"OIDC_JWKS_MIN_REFRESH" envDefault:"1m"`

	// Now is the clock; nil means time.Now. Not read from the environment.
	Now func() time.Time
}

// Defaults used by WithDefaults (and by the env tags above).
const (
	DefaultRoleClaim      = "ticketd_role"
	DefaultEmailClaim     = "email"
	DefaultNameClaim      = "name"
	DefaultLeeway         = 30 * time.Second
	DefaultJWKSRefresh    = time.Hour
	DefaultJWKSMinRefresh = time.Minute
)

// DefaultAlgorithms are the signing algorithms accepted unless configured otherwise.
func DefaultAlgorithms() []string { return []string{"RS256", "ES256", "EdDSA"} }

// asymmetricAlgorithms are the ones a public key set can verify.
var asymmetricAlgorithms = []string{
	"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
}

// Enabled reports whether JWT login is configured (OIDC_ISSUER is set).
func (c OIDCConfig) Enabled() bool { return c.Issuer != "" }

// WithDefaults returns c with every empty or zero field set to its default (a zero
// Leeway too: the default 30s).
func (c OIDCConfig) WithDefaults() OIDCConfig {
	if c.RoleClaim == "" {
		c.RoleClaim = DefaultRoleClaim
	}
	if c.EmailClaim == "" {
		c.EmailClaim = DefaultEmailClaim
	}
	if c.NameClaim == "" {
		c.NameClaim = DefaultNameClaim
	}
	if len(c.Algorithms) == 0 {
		c.Algorithms = DefaultAlgorithms()
	}
	if c.Leeway == 0 {
		c.Leeway = DefaultLeeway
	}
	if c.JWKSRefresh == 0 {
		c.JWKSRefresh = DefaultJWKSRefresh
	}
	if c.JWKSMinRefresh == 0 {
		c.JWKSMinRefresh = DefaultJWKSMinRefresh
	}
	return c
}

// Validate says precisely what is wrong with an enabled configuration. A disabled one
// (no issuer) is valid unless other OIDC variables are set, which is most likely a
// forgotten OIDC_ISSUER.
func (c OIDCConfig) Validate() error {
	if !c.Enabled() {
		if c.Audience != "" || c.JWKSURL != "" {
			return errors.New("OIDC_AUDIENCE or OIDC_JWKS_URL is set but OIDC_ISSUER is empty: set OIDC_ISSUER to turn JWT login on, or unset them")
		}
		return nil
	}
	var errs []error
	// The issuer is compared with iss as it is, so it is not rewritten; a value that is
	// no URL can never match a provider's tokens (OIDC Discovery 1.0, section 3).
	if u, err := url.Parse(c.Issuer); err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || !printable(c.Issuer) {
		errs = append(errs, fmt.Errorf("OIDC_ISSUER %q must be the provider's issuer URL, exactly as its tokens' iss claim has it (e.g. https://idp.example/realms/x)", c.Issuer))
	}
	if c.Audience == "" {
		errs = append(errs, errors.New("OIDC_AUDIENCE must be set when OIDC_ISSUER is: without it a token the provider issued to any other client would be accepted"))
	} else if !printable(c.Audience) {
		errs = append(errs, fmt.Errorf("OIDC_AUDIENCE %q must be printable: the client id the provider gives ticketd", c.Audience))
	}
	if err := checkJWKSURL(c.JWKSURL); err != nil {
		errs = append(errs, err)
	}
	for _, cl := range []struct{ name, v string }{{"OIDC_ROLE_CLAIM", c.RoleClaim}, {"OIDC_EMAIL_CLAIM", c.EmailClaim}, {"OIDC_NAME_CLAIM", c.NameClaim}} {
		if strings.TrimSpace(cl.v) == "" {
			errs = append(errs, fmt.Errorf("%s must name a claim", cl.name))
		} else if !printable(cl.v) || strings.ContainsAny(cl.v, " \t") {
			errs = append(errs, fmt.Errorf("%s %q must name a claim: no spaces or control characters", cl.name, cl.v))
		}
	}
	if len(c.Algorithms) == 0 {
		errs = append(errs, errors.New("OIDC_ALGORITHMS must list at least one algorithm"))
	}
	for _, a := range c.Algorithms {
		switch {
		case strings.EqualFold(a, "none"):
			errs = append(errs, errors.New(`OIDC_ALGORITHMS: "none" is never accepted: an unsigned token proves nothing`))
		case strings.HasPrefix(strings.ToUpper(a), "HS"):
			errs = append(errs, fmt.Errorf("OIDC_ALGORITHMS: %q is never accepted: keys from a JWKS are public, and an HMAC keyed with a public key can be forged by anyone", a))
		case !slices.Contains(asymmetricAlgorithms, a):
			errs = append(errs, fmt.Errorf("OIDC_ALGORITHMS: %q is not one of %s", a, strings.Join(asymmetricAlgorithms, ", ")))
		}
	}
	if c.Leeway < 0 || c.Leeway > 5*time.Minute {
		errs = append(errs, fmt.Errorf("OIDC_LEEWAY must be from 0 to 5m, not %s", c.Leeway))
	}
	if c.JWKSRefresh <= 0 {
		errs = append(errs, fmt.Errorf("OIDC_JWKS_REFRESH must be positive, not %s", c.JWKSRefresh))
	}
	if c.JWKSMinRefresh <= 0 {
		errs = append(errs, fmt.Errorf("OIDC_JWKS_MIN_REFRESH must be positive, not %s", c.JWKSMinRefresh))
	}
	return errors.Join(errs...)
}

func checkJWKSURL(s string) error {
	if s == "" {
		return errors.New("OIDC_JWKS_URL must be set when OIDC_ISSUER is")
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("OIDC_JWKS_URL %q must be an absolute URL", s)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
		return fmt.Errorf("OIDC_JWKS_URL %q must be https (http only to a loopback address): keys fetched in clear could be replaced in transit", s)
	default:
		return fmt.Errorf("OIDC_JWKS_URL %q must be an https URL", s)
	}
}

// ErrJWKSUnavailable is wrapped by JWTVerifier.Verify's error when a token's key is not
// known and the provider's key set cannot be fetched: the token cannot be checked
// (a 503, like a database that is down), which is not the same as a bad token.
var ErrJWKSUnavailable = errors.New("oidc: the provider's key set (JWKS) cannot be fetched")

// Limits on what the verifier reads: a credential longer than maxJWTBytes is refused
// before parsing, and a JWKS response longer than maxJWKSBytes is refused.
const (
	maxJWTBytes     = 16 << 10
	maxJWKSBytes    = 1 << 20
	jwksTimeout     = 5 * time.Second
	maxNameBytes    = 200
	maxSubjectBytes = 255
	maxEmailBytes   = 254
)

// JWTVerifier is the Verifier for JWTs from one OIDC provider. It checks the signature
// against the provider's JWKS (fetched at start, refreshed every JWKSRefresh, and
// fetched again, at most once per JWKSMinRefresh, when a token names an unknown key
// id), the algorithm, iss, aud, exp (required), nbf and iat, then maps the claims to
// a Principal. Safe for concurrent use.
type JWTVerifier struct {
	cfg    OIDCConfig
	parser *jwt.Parser
	keys   keyfunc.Keyfunc
	log    *slog.Logger

	mu      sync.Mutex
	jwksErr error // the last fetch's failure; nil after a good fetch
}

// NewJWTVerifier checks cfg (after WithDefaults) and fetches the provider's key set
// once. A provider that cannot be reached is no error: it is logged, the verifier
// refuses tokens with ErrJWKSUnavailable until a fetch succeeds (the periodic refresh,
// or a token naming a key id, triggers one), and Health says so. ctx bounds the
// verifier's life: cancelling it stops the refresh goroutine. A nil logger means
// slog.Default(). Errors: an invalid configuration, or JWT login not enabled.
func NewJWTVerifier(ctx context.Context, cfg OIDCConfig, logger *slog.Logger) (*JWTVerifier, error) {
	cfg = cfg.WithDefaults()
	if !cfg.Enabled() {
		return nil, errors.New("oidc: JWT login is off (OIDC_ISSUER is empty)")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	v := &JWTVerifier{
		cfg: cfg,
		log: logger,
		parser: jwt.NewParser(
			jwt.WithValidMethods(cfg.Algorithms),
			jwt.WithIssuer(cfg.Issuer),
			jwt.WithAudience(cfg.Audience),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithLeeway(cfg.Leeway),
			jwt.WithTimeFunc(now),
		),
		jwksErr: errors.New("not fetched yet"),
	}
	client := &http.Client{Timeout: jwksTimeout, Transport: jwksTransport{next: http.DefaultTransport, v: v}}
	keys, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
		Client:      client,
		HTTPTimeout: jwksTimeout,
		// Bounds both the wait for the unknown-kid limiter and that fetch: a token
		// with a made-up kid waits at most this long, and at once fails when the
		// limiter's next slot is further away.
		RateLimitWaitMax:  jwksTimeout,
		RefreshInterval:   cfg.JWKSRefresh,
		RefreshUnknownKID: rate.NewLimiter(rate.Every(cfg.JWKSMinRefresh), 1),
		RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
			return func(ctx context.Context, err error) {
				v.setJWKSErr(err)
				v.log.ErrorContext(ctx, "oidc: cannot fetch the JWKS; tokens signed with keys not yet fetched are refused", "url", u, "error", err)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("oidc: %w", err)
	}
	v.keys = keys
	if err := v.Health(); err != nil {
		logger.Warn("oidc: JWT login is on but the provider's keys could not be fetched at start; JWTs are refused with 503 until they are (API tokens are unaffected)",
			"issuer", cfg.Issuer, "jwks_url", cfg.JWKSURL, "error", err)
	} else {
		logger.Info("oidc: JWT login is on", "issuer", cfg.Issuer, "audience", cfg.Audience, "jwks_url", cfg.JWKSURL, "algorithms", cfg.Algorithms)
	}
	return v, nil
}

// Health returns nil when the last JWKS fetch succeeded, else why it failed (or that
// none has yet). For /readyz to report; API tokens work whatever it says.
func (v *JWTVerifier) Health() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.jwksErr != nil {
		return fmt.Errorf("%w: %w", ErrJWKSUnavailable, v.jwksErr)
	}
	return nil
}

func (v *JWTVerifier) setJWKSErr(err error) {
	v.mu.Lock()
	v.jwksErr = err
	v.mu.Unlock()
}

// jwksTransport records each fetch's outcome for Health and caps the response size.
type jwksTransport struct {
	next http.RoundTripper
	v    *JWTVerifier
}

func (t jwksTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return nil, err // the refresh error handler records it
	}
	if resp.StatusCode == http.StatusOK {
		// A body that then fails to decode is reported by the refresh error handler,
		// which runs after this and records the failure.
		t.v.setJWKSErr(nil)
	}
	resp.Body = &cappedBody{r: io.LimitReader(resp.Body, maxJWKSBytes+1), c: resp.Body}
	return resp, nil
}

type cappedBody struct {
	r io.Reader
	c io.Closer
	n int64
}

func (b *cappedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += int64(n)
	if b.n > maxJWKSBytes {
		return n, fmt.Errorf("JWKS response is larger than %d bytes", maxJWKSBytes)
	}
	return n, err
}

func (b *cappedBody) Close() error { return b.c.Close() }

// Verify implements Verifier for a JWT. Errors: ErrUnauthenticated (wrapped, with the
// reason for the log) for a token that is malformed, badly signed, signed with an
// algorithm not allowed, for another issuer or audience, expired, not yet valid, or
// whose claims make no principal (no subject, no or an unknown role, a requester
// without a valid email); ErrJWKSUnavailable (wrapped) when its key is unknown and the
// key set cannot be fetched. The token itself never appears in an error.
func (v *JWTVerifier) Verify(ctx context.Context, credential string) (Principal, error) {
	if len(credential) > maxJWTBytes {
		return Principal{}, fmt.Errorf("%w: jwt: longer than %d bytes", ErrUnauthenticated, maxJWTBytes)
	}
	if !LooksLikeJWT(credential) {
		return Principal{}, fmt.Errorf("%w: jwt: not a JWT", ErrUnauthenticated)
	}
	lookup := v.keys.KeyfuncCtx(ctx)
	keyFailed := false
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(credential, claims, func(t *jwt.Token) (any, error) {
		k, err := lookup(t)
		keyFailed = err != nil
		return k, err
	})
	if err != nil {
		if keyFailed {
			if herr := v.Health(); herr != nil {
				return Principal{}, herr
			}
		}
		return Principal{}, fmt.Errorf("%w: jwt: %w", ErrUnauthenticated, err)
	}
	return v.principal(claims)
}

// principal maps verified claims to a Principal. Decision: a valid identity that
// carries no ticketd role (or an unknown one) is refused as unauthenticated, not
// answered 403: ticketd cannot make a principal of it (every principal has a role, and
// per-role limits and checks rely on that), and the 401 gives no oracle of why; the
// reason is in the error for the server's log.
func (v *JWTVerifier) principal(claims jwt.MapClaims) (Principal, error) {
	refuse := func(format string, args ...any) (Principal, error) {
		return Principal{}, fmt.Errorf("%w: jwt: %s", ErrUnauthenticated, fmt.Sprintf(format, args...))
	}
	sub, _ := claims["sub"].(string)
	if sub == "" || len(sub) > maxSubjectBytes || !printable(sub) {
		return refuse("the sub claim must be a printable string of 1 to %d bytes", maxSubjectBytes)
	}
	role, err := roleFromClaim(lookupClaim(claims, v.cfg.RoleClaim))
	if err != nil {
		return refuse("claim %q: %v", v.cfg.RoleClaim, err)
	}
	p := Principal{ID: "jwt:" + v.cfg.Issuer + "#" + sub, Role: role, Name: sub}
	// The name is shown in histories and on terminals: one without control characters
	// or it is not used.
	if name, ok := lookupClaim(claims, v.cfg.NameClaim).(string); ok && strings.TrimSpace(name) != "" && printable(name) {
		p.Name = truncate(strings.TrimSpace(name), maxNameBytes)
	}
	email, _ := lookupClaim(claims, v.cfg.EmailClaim).(string)
	emailOK := validEmail(email)
	if verified, present := claims["email_verified"].(bool); present && !verified {
		emailOK = false // the provider says the address is not proven to be theirs
	}
	if emailOK {
		p.Email = email
	}
	if role == RoleRequester && !emailOK {
		return refuse("a requester needs a verified email address in claim %q", v.cfg.EmailClaim)
	}
	return p, nil
}

// lookupClaim finds name as it is, then as a dotted path into nested objects.
func lookupClaim(claims map[string]any, name string) any {
	if v, ok := claims[name]; ok {
		return v
	}
	if !strings.Contains(name, ".") {
		return nil
	}
	var cur any = claims
	for part := range strings.SplitSeq(name, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		if cur, ok = m[part]; !ok {
			return nil
		}
	}
	return cur
}

// roleFromClaim takes a string naming a role, or an array of strings of which exactly
// one names a role (providers put unrelated roles in the same array).
func roleFromClaim(v any) (Role, error) {
	switch v := v.(type) {
	case nil:
		return "", errors.New("missing")
	case string:
		r, err := ParseRole(v)
		if err != nil {
			return "", fmt.Errorf("%q: %w", truncate(v, 40), err)
		}
		return r, nil
	case []any:
		var found []Role
		for _, e := range v {
			if s, ok := e.(string); ok {
				if r, err := ParseRole(s); err == nil && !slices.Contains(found, r) {
					found = append(found, r)
				}
			}
		}
		switch len(found) {
		case 1:
			return found[0], nil
		case 0:
			return "", errors.New("names no ticketd role (admin, agent, auditor, requester)")
		default:
			return "", fmt.Errorf("names %d ticketd roles; a principal has exactly one", len(found))
		}
	default:
		return "", fmt.Errorf("must be a string or an array of strings, not %T", v)
	}
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

func validEmail(s string) bool {
	if s == "" || len(s) > maxEmailBytes {
		return false
	}
	a, err := mail.ParseAddress(s)
	return err == nil && a.Address == s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// apiTokenPrefix starts every API token (issue 14, item 1).
const apiTokenPrefix = "tkd_"

// LooksLikeJWT reports, cheaply and without decoding, whether a bearer credential is
// shaped like a JWT (three base64url segments separated by two dots, the first two
// non-empty) rather than an API token (which starts with "tkd_"), so the middleware can
// hand it to the right verifier. A "true" proves nothing: Verify decides. An unsigned
// token ("x.y.", alg none) looks like a JWT so that the JWT verifier refuses it.
func LooksLikeJWT(s string) bool {
	if strings.HasPrefix(s, apiTokenPrefix) || len(s) > maxJWTBytes {
		return false
	}
	dots, segLen := 0, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if segLen == 0 {
				return false
			}
			dots++
			segLen = 0
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
			segLen++
		default:
			return false
		}
	}
	return dots == 2
}
