package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/ticket"
)

// TokenPrefix starts every API token, so a leaked one is recognisable (secret scanners,
// logs) and never mistaken for another kind of credential.
const TokenPrefix = "tkd_"

// tokenLen is the length of a token: the prefix and 32 random bytes in unpadded
// base64url (43 characters).
var tokenLen = len(TokenPrefix) + base64.RawURLEncoding.EncodedLen(32)

// Defaults of a TokenStore.
const (
	// DefaultCacheTTL is how long a verified token is trusted without asking Postgres
	// again: a revocation holds on every instance within it.
	DefaultCacheTTL = time.Second
	// DefaultTouchInterval is how often at most last_used_at is written per token.
	DefaultTouchInterval = time.Minute
	// DefaultTokenTTL is the lifetime of a new token when none is given.
	DefaultTokenTTL = 30 * 24 * time.Hour
	// MaxTokenTTL bounds a token's lifetime: no credential lives forever.
	MaxTokenTTL = 10 * 366 * 24 * time.Hour
	// maxCached bounds the cache of verified tokens; past it the cache starts afresh.
	maxCached = 100_000
)

// ErrTokenNotFound is returned by Revoke for an id that names no token.
var ErrTokenNotFound = errors.New("no token with this id")

// Token is what is stored about an API token: never the token itself, nor its hash.
type Token struct {
	ID         uuid.UUID  `json:"id"`
	Name       string     `json:"name"`
	Role       Role       `json:"role"`
	Email      string     `json:"email,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
}

// NewToken is a request for a token. TTL 0 means DefaultTokenTTL.
type NewToken struct {
	Name  string        `json:"name"`
	Role  Role          `json:"role"`
	Email string        `json:"email"`
	TTL   time.Duration `json:"-"`
}

// Validate checks a token request; the error is a *ticket.ValidationError naming the
// field (name, role, email, ttl).
func (n NewToken) Validate() error {
	if err := ticket.CheckName("name", n.Name); err != nil {
		return err
	}
	if _, err := ParseRole(string(n.Role)); err != nil {
		return &ticket.ValidationError{Field: "role", Reason: "must be one of admin, agent, auditor, requester"}
	}
	if n.Email != "" || n.Role == RoleRequester {
		if n.Email == "" {
			return &ticket.ValidationError{Field: "email", Reason: "is required for a requester token: it binds the token to that requester's tickets"}
		}
		if err := ticket.CheckEmail("email", n.Email); err != nil {
			return err
		}
	}
	if n.TTL < 0 || n.TTL > MaxTokenTTL {
		return &ticket.ValidationError{Field: "ttl", Reason: "must be positive and at most " + MaxTokenTTL.String()}
	}
	return nil
}

// TokenStore keeps API tokens in Postgres (table api_tokens) and verifies bearer
// tokens against it. It implements Verifier. A verified token is trusted from memory
// for CacheTTL, so the hot path costs no database round trip, and a revocation made on
// any instance holds on every instance within CacheTTL.
type TokenStore struct {
	pool *pgxpool.Pool
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// CacheTTL: how long a verified token is trusted without Postgres (DefaultCacheTTL
	// when 0; negative: never cached).
	CacheTTL time.Duration
	// TouchInterval: last_used_at is written at most this often per token
	// (DefaultTouchInterval when 0).
	TouchInterval time.Duration
	Log           *slog.Logger

	mu      sync.RWMutex
	cache   map[[sha256.Size]byte]cachedToken
	touched map[uuid.UUID]time.Time
	touches chan uuid.UUID
}

type cachedToken struct {
	p       Principal
	id      uuid.UUID
	expires time.Time // the token's own expiry
	until   time.Time // trusted from memory until then
}

// NewTokenStore returns a store on pool. Run it (Run) to have last_used_at written.
func NewTokenStore(pool *pgxpool.Pool) *TokenStore {
	return &TokenStore{pool: pool, cache: map[[sha256.Size]byte]cachedToken{},
		touched: map[uuid.UUID]time.Time{}, touches: make(chan uuid.UUID, 256)}
}

func (s *TokenStore) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *TokenStore) log() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

// WellFormed reports whether tok has the shape of an API token: the prefix and 43
// base64url characters. It says nothing of whether the token exists.
func WellFormed(tok string) bool {
	if len(tok) != tokenLen || !strings.HasPrefix(tok, TokenPrefix) {
		return false
	}
	for i := len(TokenPrefix); i < len(tok); i++ {
		c := tok[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// GenerateToken returns a new random token.
func GenerateToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func hashToken(tok string) [sha256.Size]byte { return sha256.Sum256([]byte(tok)) }

// Create stores a new token and returns it, the only time it is ever seen, with its
// record. Errors: a *ticket.ValidationError for a bad request, else a storage failure.
func (s *TokenStore) Create(ctx context.Context, n NewToken) (string, Token, error) {
	tok, err := GenerateToken()
	if err != nil {
		return "", Token{}, err
	}
	t, err := s.Register(ctx, tok, n)
	return tok, t, err
}

// Register stores the given token (well formed, see WellFormed) as Create would. A
// token already stored is left as it is (revoked stays revoked) and its record
// returned: a bootstrap token registered at every start is stored once.
func (s *TokenStore) Register(ctx context.Context, tok string, n NewToken) (Token, error) {
	if !WellFormed(tok) {
		return Token{}, &ticket.ValidationError{Field: "token", Reason: "must be " + TokenPrefix + " and 43 base64url characters"}
	}
	if err := n.Validate(); err != nil {
		return Token{}, err
	}
	if n.TTL == 0 {
		n.TTL = DefaultTokenTTL
	}
	id, err := uuid.NewV7()
	if err != nil {
		return Token{}, err
	}
	now := s.now()
	h := hashToken(tok)
	var email *string
	if n.Email != "" {
		email = &n.Email
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO api_tokens (id, name, role, email, token_hash, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (token_hash) DO NOTHING`,
		id, n.Name, string(n.Role), email, h[:], now, now.Add(n.TTL)); err != nil {
		return Token{}, fmt.Errorf("store token: %w", err)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE token_hash = $1`, h[:])
	if err != nil {
		return Token{}, fmt.Errorf("read token: %w", err)
	}
	t, err := pgx.CollectExactlyOneRow(rows, scanToken)
	if err != nil {
		return Token{}, fmt.Errorf("read token: %w", err)
	}
	return t, nil
}

const tokenColumns = `id, name, role, coalesce(email, ''), created_at, expires_at, revoked_at, last_used_at`

func scanToken(row pgx.CollectableRow) (Token, error) {
	var t Token
	var role string
	err := row.Scan(&t.ID, &t.Name, &role, &t.Email, &t.CreatedAt, &t.ExpiresAt, &t.RevokedAt, &t.LastUsedAt)
	t.Role = Role(role)
	return t, err
}

// List returns every token, newest first, revoked and expired ones included. Neither
// tokens nor their hashes are returned.
func (s *TokenStore) List(ctx context.Context) ([]Token, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+tokenColumns+` FROM api_tokens ORDER BY created_at DESC, id DESC`)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	ts, err := pgx.CollectRows(rows, scanToken)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return ts, nil
}

// Revoke revokes the token with this id; revoking a revoked token keeps its first
// revocation time. Every instance refuses it within CacheTTL. Errors: ErrTokenNotFound.
func (s *TokenStore) Revoke(ctx context.Context, id uuid.UUID) error {
	tag, err := s.pool.Exec(ctx, `UPDATE api_tokens SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1`, id, s.now())
	if err != nil {
		return fmt.Errorf("revoke token: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return ErrTokenNotFound
	}
	s.mu.Lock()
	for h, c := range s.cache {
		if c.id == id {
			delete(s.cache, h)
		}
	}
	s.mu.Unlock()
	return nil
}

// Verify implements Verifier: the principal of a stored, unexpired, unrevoked token.
// Errors: ErrUnauthenticated (wrapped) for a token that is malformed, unknown, expired
// or revoked; otherwise a failure to reach Postgres.
func (s *TokenStore) Verify(ctx context.Context, tok string) (Principal, error) {
	if !WellFormed(tok) {
		return Principal{}, fmt.Errorf("%w: not an API token", ErrUnauthenticated)
	}
	h := hashToken(tok)
	now := s.now()
	s.mu.RLock()
	c, ok := s.cache[h]
	s.mu.RUnlock()
	if !ok || !now.Before(c.until) {
		var err error
		if c, err = s.load(ctx, h, now); err != nil {
			return Principal{}, err
		}
	}
	if !now.Before(c.expires) {
		return Principal{}, fmt.Errorf("%w: token %s expired", ErrUnauthenticated, c.id)
	}
	s.touch(c.id, now)
	return c.p, nil
}

// load reads the token with hash h from Postgres and caches it if it is usable.
func (s *TokenStore) load(ctx context.Context, h [sha256.Size]byte, now time.Time) (cachedToken, error) {
	var (
		c         cachedToken
		stored    []byte
		role      string
		revokedAt *time.Time
	)
	err := s.pool.QueryRow(ctx, `SELECT id, name, role, coalesce(email, ''), token_hash, expires_at, revoked_at
		FROM api_tokens WHERE token_hash = $1`, h[:]).
		Scan(&c.id, &c.p.Name, &role, &c.p.Email, &stored, &c.expires, &revokedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("%w: unknown token", ErrUnauthenticated)
	}
	if err != nil {
		return c, fmt.Errorf("verify token: %w", err)
	}
	// The index found the row by its hash; compare again in constant time so nothing
	// about the stored hash depends on how early a comparison would have stopped.
	if subtle.ConstantTimeCompare(stored, h[:]) != 1 {
		return c, fmt.Errorf("%w: unknown token", ErrUnauthenticated)
	}
	if revokedAt != nil {
		return c, fmt.Errorf("%w: token %s revoked", ErrUnauthenticated, c.id)
	}
	c.p.ID, c.p.Role = c.id.String(), Role(role)
	if s.CacheTTL >= 0 {
		ttl := s.CacheTTL
		if ttl == 0 {
			ttl = DefaultCacheTTL
		}
		c.until = now.Add(ttl)
		s.mu.Lock()
		if len(s.cache) >= maxCached {
			clear(s.cache)
		}
		s.cache[h] = c
		s.mu.Unlock()
	}
	return c, nil
}

// touch asks Run to record the token's use, at most once per TouchInterval; it never
// blocks (a full queue drops the touch: last_used_at is a hint, not a record).
func (s *TokenStore) touch(id uuid.UUID, now time.Time) {
	every := s.TouchInterval
	if every <= 0 {
		every = DefaultTouchInterval
	}
	s.mu.RLock()
	last, ok := s.touched[id]
	s.mu.RUnlock()
	if ok && now.Sub(last) < every {
		return
	}
	s.mu.Lock()
	if last, ok := s.touched[id]; ok && now.Sub(last) < every {
		s.mu.Unlock()
		return
	}
	if len(s.touched) >= maxCached {
		clear(s.touched)
	}
	s.touched[id] = now
	s.mu.Unlock()
	select {
	case s.touches <- id:
	default:
	}
}

// Run writes last_used_at for the tokens Verify used, off the request path, until ctx
// ends.
func (s *TokenStore) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-s.touches:
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := s.pool.Exec(wctx, `UPDATE api_tokens SET last_used_at = greatest(last_used_at, $2) WHERE id = $1`, id, s.now())
			cancel()
			if err != nil && ctx.Err() == nil {
				s.log().Warn("token last use not recorded", "token_id", id, "err", err)
			}
		}
	}
}
