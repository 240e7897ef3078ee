// Package redismodel is the Redis (Cluster) read model: one document per ticket,
// kept by its projector (consumer group Group), repaired from the event store when
// Redis missed a write, and read first by Reader. It is the only package that reads
// or writes those keys.
package redismodel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/ticket"
)

// Group is the consumer group of the Redis read model projector.
const Group = "redis-readmodel"

// TombstoneTTL is how long the marker of a deleted ticket stays in Redis. Within it a
// late, older write (a redelivered event, a slow write-through) is refused by version;
// after it the projector still never resurrects a ticket, because a missing document is
// rebuilt from the event store, which knows the deletion.
const TombstoneTTL = 24 * time.Hour

// ErrDeleted is returned by Docs.Get for a ticket whose document is a tombstone.
// It wraps ticket.ErrNotFound, so the HTTP layer answers 404 for it.
var ErrDeleted = fmt.Errorf("ticket deleted: %w", ticket.ErrNotFound)

// ErrDown is returned, without a round trip, while the circuit breaker holds Redis
// to be unreachable. It wraps ticket.ErrUnavailable.
var ErrDown = fmt.Errorf("redis read model: circuit open: %w", ticket.ErrUnavailable)

// Docs is the Redis (Cluster) read model: one string value per ticket under the key
// "<prefix>:{<id>}:doc". The hash tag puts every key of one ticket in one slot, so a
// script may touch several of them. The value is "<version>\n<json>": the decimal
// version of the ticket, a newline, and the JSON of its projections.View exactly as GET
// /v1/ticket/{id} sends it, so one GET serves a request without re-encoding. A deleted
// ticket is a tombstone "<version>\n" (an empty document) that expires after
// TombstoneTTL.
//
// Every call is bounded by the timeout given to NewDocs, and a small circuit
// breaker fails calls fast (ErrDown) while Redis is known to be down or slow
// (several calls in a row failed or took more than half the timeout), letting one
// probe through now and then. Docs is safe for concurrent use.
type Docs struct {
	rdb     redis.UniversalClient
	prefix  string
	timeout time.Duration
	br      Breaker
	views   *projections.ViewCache
	gets    getQueue // reads waiting to share a round trip (getbatch.go)
}

// NewDocs returns the Redis read model on rdb under prefix (no '{', '}', '*', '?',
// '[' or ']': see ValidPrefix), each call bounded by timeout.
func NewDocs(rdb redis.UniversalClient, prefix string, timeout time.Duration) *Docs {
	if err := ValidPrefix(prefix); err != nil {
		panic(err) // configuration is validated before wiring
	}
	if timeout <= 0 {
		timeout = 150 * time.Millisecond
	}
	return &Docs{rdb: rdb, prefix: prefix, timeout: timeout, views: projections.NewViewCache(viewCacheBytes)}
}

// ValidPrefix reports whether prefix can start the read model's keys: not empty,
// and without the characters that would break the per-ticket hash tag or the SCAN
// pattern of Wipe.
func ValidPrefix(prefix string) error {
	if prefix == "" || len(prefix) > 100 {
		return errors.New("redis key prefix must be 1..100 characters")
	}
	if strings.ContainsAny(prefix, "{}*?[]\\ \t\r\n") {
		return fmt.Errorf("redis key prefix %q must not contain braces, glob characters or spaces", prefix)
	}
	return nil
}

// Key returns the key of ticket id's document.
func (d *Docs) Key(id uuid.UUID) string {
	return d.prefix + ":{" + id.String() + "}:doc"
}

// Prefix returns the key prefix.
func (d *Docs) Prefix() string { return d.prefix }

// Up reports whether the circuit breaker holds Redis to be reachable. The projector
// does not even try Redis while it is not, so a dead Redis never lengthens the
// projector's transaction.
func (d *Docs) Up() bool { return d.br.Up() }

// putScript writes ARGV[2] under KEYS[1] unless the stored value's version (the digits
// before its first newline) is newer than ARGV[1], or as new and neither a floor (see
// isFloor) nor replaced (ARGV[4] = "1": a rebuild's document, whose fold of the same
// events is the one to keep). ARGV[3] is a TTL in milliseconds, 0 for none. It returns
// 1 when it wrote, 0 when the stored value is as new or newer. GETRANGE reads only the
// head of the stored value, not the whole document.
var putScript = redis.NewScript(`
local head = redis.call('GETRANGE', KEYS[1], 0, 15)
if head ~= '' then
	local nl = string.find(head, '\n', 1, true)
	if nl then
		local cur = tonumber(string.sub(head, 1, nl - 1))
		local v = tonumber(ARGV[1])
		if cur and (cur > v or (cur == v and ARGV[4] ~= '1' and string.sub(head, nl + 1, nl + 1) ~= '~')) then
			return 0
		end
	end
end
if ARGV[3] ~= '0' then
	redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
	redis.call('SET', KEYS[1], ARGV[2])
end
return 1
`)

// floorMark is the body of a floor: "<version>\n~", a version without its document.
// No document's JSON starts with it. Rebuilds of earlier versions of ticketd turned
// every document into a floor while they refilled Redis (expiring after a day); a floor
// is never served, and only a document of its version or a newer one replaces it.
const floorMark = '~'

// isFloor reports whether a stored value's body (after the version line) is a floor.
func isFloor(body []byte) bool { return len(body) == 1 && body[0] == floorMark }

// unlinkScript removes KEYS[1] if its head (its first 16 bytes) is still ARGV[1]: a
// value written since (a newer version) stays.
var unlinkScript = redis.NewScript(`
if redis.call('GETRANGE', KEYS[1], 0, 15) == ARGV[1] then
	redis.call('UNLINK', KEYS[1])
	return 1
end
return 0
`)

// Put stores v as its ticket's document if v.Version is newer than the stored version
// (or nothing is stored), atomically. An older or equal v changes nothing and is not an
// error. Errors: ErrDown while the breaker is open, otherwise the Redis error
// (timeouts included).
func (d *Docs) Put(ctx context.Context, v projections.View) error {
	_, err := d.PutIfNewer(ctx, v)
	return err
}

// PutIfNewer is Put that also reports whether it wrote.
func (d *Docs) PutIfNewer(ctx context.Context, v projections.View) (bool, error) {
	body, err := eventstore.EncodeJSON(v)
	if err != nil {
		return false, fmt.Errorf("encode ticket %s: %w", v.ID, err)
	}
	return d.set(ctx, v.ID, v.Version, body, 0)
}

// Tombstone marks ticket id deleted at version, if version is newer than the stored
// one. Later Puts of older versions are refused, so a deleted ticket does not come back.
func (d *Docs) Tombstone(ctx context.Context, id uuid.UUID, version int) error {
	_, err := d.set(ctx, id, version, nil, TombstoneTTL)
	return err
}

func (d *Docs) set(ctx context.Context, id uuid.UUID, version int, body []byte, ttl time.Duration) (bool, error) {
	if version < 1 {
		return false, fmt.Errorf("redis document of %s: version %d: %w", id, version, ticket.ErrInvalid)
	}
	if !d.br.Allow() {
		return false, ErrDown
	}
	val := make([]byte, 0, len(body)+12)
	val = strconv.AppendInt(val, int64(version), 10)
	val = append(val, '\n')
	val = append(val, body...)
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	n, err := putScript.Run(cctx, d.rdb, []string{d.Key(id)}, version, val, ttl.Milliseconds(), 0).Int()
	if err = d.done(ctx, err, start); err != nil {
		return false, fmt.Errorf("redis put %s v%d: %w", id, version, err)
	}
	return n == 1, nil
}

// Get returns the stored document of ticket id: the JSON body, ready to send, and its
// version. found is false when nothing is stored (a miss, not an error). A tombstone is
// found with its version, a nil body and ErrDeleted; a floor (see isFloor) is a miss.
// Other errors: ErrDown while the breaker is open, otherwise the Redis error.
//
// It is the hot GET's one call, bounded by the timeout on its own: unless ctx's
// deadline comes sooner, that bound does not derive from ctx's cancellation, so the
// request's deadline (whose timer httpapi makes only when something waits on it) costs
// nothing here; a caller cancelled meanwhile waits at most the timeout.
func (d *Docs) Get(ctx context.Context, id uuid.UUID) (body []byte, version int, found bool, err error) {
	if !d.br.Allow() {
		return nil, 0, false, ErrDown
	}
	start := time.Now()
	parent := ctx
	if dl, ok := ctx.Deadline(); !ok || dl.Sub(start) > d.timeout {
		parent = context.WithoutCancel(ctx)
	}
	cctx, cancel := context.WithTimeout(parent, d.timeout)
	defer cancel()
	raw, err := d.getValue(cctx, d.Key(id))
	if errors.Is(err, redis.Nil) {
		_ = d.done(ctx, nil, start)
		return nil, 0, false, nil
	}
	if err = d.done(ctx, err, start); err != nil {
		return nil, 0, false, fmt.Errorf("redis get %s: %w", id, err)
	}
	version, body, err = parseDoc(raw)
	if err != nil {
		return nil, 0, false, fmt.Errorf("redis document of %s: %w", id, err)
	}
	switch {
	case len(body) == 0:
		return nil, version, true, ErrDeleted
	case isFloor(body):
		return nil, 0, false, nil // left by an earlier version's rebuild: a miss
	}
	return body, version, true, nil
}

// parseDoc splits a stored value into its version and body (on the hot path: no
// allocation).
func parseDoc(raw []byte) (int, []byte, error) {
	nl := bytes.IndexByte(raw, '\n')
	if nl < 1 || nl > 10 {
		return 0, nil, errors.New("malformed value: no version line")
	}
	v := 0
	for _, c := range raw[:nl] {
		if c < '0' || c > '9' {
			return 0, nil, fmt.Errorf("malformed value: version %q", raw[:nl])
		}
		v = v*10 + int(c-'0')
	}
	if v < 1 {
		return 0, nil, fmt.Errorf("malformed value: version %q", raw[:nl])
	}
	return v, raw[nl+1:], nil
}

// Versions returns the stored versions of the given tickets in one pipelined round
// trip per node: 0 for a miss; a tombstone and a floor count with their version (a
// floor is never served, and only a document of that version or newer replaces it).
// It is bounded by the timeout like every other call.
func (d *Docs) Versions(ctx context.Context, ids []uuid.UUID) ([]int, error) {
	cmds, err := d.readEach(ctx, ids, func(ctx context.Context, p redis.Pipeliner, key string) *redis.StringCmd {
		return p.GetRange(ctx, key, 0, 15)
	})
	if err != nil {
		return nil, fmt.Errorf("redis versions: %w", err)
	}
	out := make([]int, len(ids))
	for i, c := range cmds {
		head := c.Val()
		if nl := strings.IndexByte(head, '\n'); nl > 0 {
			out[i], _ = strconv.Atoi(head[:nl])
		}
	}
	return out, nil
}

// Cached returns the view of ticket id this process last wrote: Redis holds that
// version or a newer one (writes are set-if-newer). Redis losing documents (a flush, a
// restart without persistence) is healed by the read path, which refills a miss, and by
// the ticket's next write, which writes the whole document.
func (d *Docs) Cached(id uuid.UUID) (projections.View, bool) { return d.views.Get(id) }

// viewCacheBytes bounds the cache of written documents by their JSON: about four
// hundred long tickets' documents (20 KB each with 100 embedded comments), any number
// of short ones.
const viewCacheBytes = 8 << 20

// Wipe deletes every key under the prefix, on every master of a cluster (SCAN per
// node), and nothing else. It is for tests; each round trip is bounded by a few
// seconds, not by the request timeout, and it ignores the circuit breaker.
func (d *Docs) Wipe(ctx context.Context) error {
	d.views.Drop()
	return d.eachKeys(ctx, d.prefix+":*", func(ctx context.Context, p redis.Pipeliner, keys []string) func() {
		// One UNLINK per key: keys of different slots may not share a command.
		for _, k := range keys {
			p.Unlink(ctx, k)
		}
		return nil
	})
}

// Sweep removes the documents, tombstones and floors that the event store does not
// hold, except those of the tickets written reports (nil: none), and returns how many it
// removed. It SCANs the documents under the prefix on every master; of each ticket
// written does not report it reads the head (the version), and asks holds, 1,000 at a
// time, which of those tickets the store holds at that version. Those stay; the others
// (a ticket the store does not have, a version newer than it has: Redis kept while
// Postgres was restored from an older backup), and malformed values, are removed, each
// only if its head has not changed since it was read: a document written meanwhile
// stays. A rebuild sweeps after its swap, passing over the tickets it wrote: the rest
// are documents it did not write, of tickets created during it (which the store
// holds), of newer versions than its fold, or not in the store at all. Removing a
// document makes its reads misses, served from Postgres and refilled. Like Wipe, it
// ignores the breaker and bounds each round trip by a few seconds.
func (d *Docs) Sweep(ctx context.Context, written func(uuid.UUID) bool, holds func(ctx context.Context, ids []uuid.UUID, versions []int) ([]bool, error)) (int, error) {
	type stored struct {
		key, head string
		id        uuid.UUID
		version   int // 0: malformed
	}
	var mu sync.Mutex // masters are scanned concurrently
	var found []stored
	err := d.eachKeys(ctx, d.prefix+":{*}:doc", func(ctx context.Context, p redis.Pipeliner, keys []string) func() {
		var read []stored
		var heads []*redis.StringCmd
		for _, k := range keys {
			id, err := uuid.Parse(strings.TrimSuffix(strings.TrimPrefix(k, d.prefix+":{"), "}:doc"))
			if err == nil && written != nil && written(id) {
				continue
			}
			read = append(read, stored{key: k, id: id})
			heads = append(heads, p.GetRange(ctx, k, 0, 15))
		}
		return func() {
			mu.Lock()
			defer mu.Unlock()
			for i, h := range heads {
				s := read[i]
				if s.head = h.Val(); s.head == "" {
					continue // gone since the SCAN
				}
				if nl := strings.IndexByte(s.head, '\n'); nl > 0 && s.id != uuid.Nil {
					s.version, _ = strconv.Atoi(s.head[:nl])
				}
				found = append(found, s)
			}
		}
	})
	if err != nil {
		return 0, fmt.Errorf("sweep: %w", err)
	}
	var gone []stored
	for len(found) > 0 {
		batch := found[:min(1000, len(found))]
		found = found[len(batch):]
		var ids []uuid.UUID
		var versions, at []int
		for i, s := range batch {
			if s.version < 1 {
				gone = append(gone, s)
				continue
			}
			ids, versions, at = append(ids, s.id), append(versions, s.version), append(at, i)
		}
		if len(ids) == 0 {
			continue
		}
		held, err := holds(ctx, ids, versions)
		if err != nil {
			return 0, fmt.Errorf("sweep: %w", err)
		}
		for k, i := range at {
			if !held[k] {
				gone = append(gone, batch[i])
			}
		}
	}
	if len(gone) == 0 {
		return 0, nil
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmds := make([]*redis.Cmd, len(gone))
	_, err = d.rdb.Pipelined(sctx, func(p redis.Pipeliner) error {
		for i, s := range gone {
			cmds[i] = unlinkScript.Eval(sctx, p, []string{s.key}, s.head)
		}
		return nil
	})
	n := 0
	for _, c := range cmds {
		if v, _ := c.Int(); v == 1 {
			n++
		}
	}
	if err != nil {
		return n, fmt.Errorf("sweep: %w", err)
	}
	return n, nil
}

// eachKeys SCANs the keys matching pattern on every master of a cluster (or the one
// server), 1,000 at a time, and sends the commands each queues for a batch in one
// pipeline; the function each returns, if any, runs once that pipeline has answered.
// Each round trip is bounded by 5 seconds.
func (d *Docs) eachKeys(ctx context.Context, pattern string, each func(context.Context, redis.Pipeliner, []string) func()) error {
	scan := func(ctx context.Context, c redis.Cmdable) error {
		var cursor uint64
		for {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			keys, next, err := c.Scan(sctx, cursor, pattern, 1000).Result()
			if err == nil && len(keys) > 0 {
				var after func()
				_, err = c.Pipelined(sctx, func(p redis.Pipeliner) error {
					after = each(sctx, p, keys)
					return nil
				})
				if errors.Is(err, redis.Nil) {
					err = nil // a key gone since the SCAN
				}
				if err == nil && after != nil {
					after()
				}
			}
			cancel()
			if err != nil {
				return fmt.Errorf("scan %s: %w", pattern, err)
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	if cc, ok := d.rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return scan(ctx, node)
		})
	}
	return scan(ctx, d.rdb)
}

// done records the outcome of a call that started at start in the breaker and returns
// err. A call the caller itself cancelled says nothing about Redis and is not counted.
// A call that succeeded but took more than half the timeout counts as a failure: a
// slow Redis must open the breaker too, or the projector would spend its (every
// consumer's) transaction time waiting for it call after call.
func (d *Docs) done(parent context.Context, err error, start time.Time) error {
	switch {
	case err == nil && !start.IsZero() && time.Since(start) > d.timeout/2:
		d.br.Failure()
	case err == nil:
		d.br.Success()
	case parent.Err() != nil:
	default:
		d.br.Failure()
	}
	return err
}

// readEach runs one read per ticket's key in one pipelined round trip per node,
// bounded by the timeout and past the breaker (ErrDown while it is open). A miss is
// not an error: its command says so. A batch may take longer than one call, so its
// speed is not judged.
func (d *Docs) readEach(ctx context.Context, ids []uuid.UUID, read func(context.Context, redis.Pipeliner, string) *redis.StringCmd) ([]*redis.StringCmd, error) {
	if !d.br.Allow() {
		return nil, ErrDown
	}
	cctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	cmds := make([]*redis.StringCmd, len(ids))
	_, err := d.rdb.Pipelined(cctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = read(cctx, p, d.Key(id))
		}
		return nil
	})
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	return cmds, d.done(ctx, err, time.Time{})
}

// Doc is one stored document as GetMany returns it: Found is false for a miss;
// Deleted marks a tombstone (Body empty). Version is 0 for a miss.
type Doc struct {
	Body    []byte
	Version int
	Found   bool
	Deleted bool
}

// GetMany returns the stored documents of ids, in order, in one pipelined round trip
// per cluster node, bounded by the timeout. A malformed value or a floor counts as a
// miss (its ticket is then folded from the event store). Errors: ErrDown while the breaker is open, otherwise
// the Redis error; documents are returned only when every read succeeded.
func (d *Docs) GetMany(ctx context.Context, ids []uuid.UUID) ([]Doc, error) {
	cmds, err := d.readEach(ctx, ids, func(ctx context.Context, p redis.Pipeliner, key string) *redis.StringCmd {
		return p.Get(ctx, key)
	})
	if err != nil {
		return nil, fmt.Errorf("redis get documents: %w", err)
	}
	out := make([]Doc, len(ids))
	for i, c := range cmds {
		raw, err := c.Bytes()
		if err != nil {
			continue // redis.Nil: a miss
		}
		version, body, err := parseDoc(raw)
		if err != nil || isFloor(body) {
			continue
		}
		out[i] = Doc{Body: body, Version: version, Found: true, Deleted: len(body) == 0}
	}
	return out, nil
}

// PutMany stores each view (a tombstone for a deleted one) if it is newer than the
// stored document, like Put, in one pipelined round trip per cluster node bounded by
// the timeout. force goes past an open breaker (still bounded by the timeout, still
// reporting to the breaker): for the repairer and the rebuild, which work outside any
// consumer's batch and are what finds out that Redis is back, or still merely slow. It
// returns the views whose write failed and the first error.
func (d *Docs) PutMany(ctx context.Context, views []projections.View, force bool) ([]projections.View, error) {
	failed, err := d.putMany(ctx, views, force, nil)
	return pick(views, failed), err
}

// pick returns the elements of xs at the indexes idx (nil for none).
func pick[T any](xs []T, idx []int) []T {
	if len(idx) == 0 {
		return nil
	}
	out := make([]T, len(idx))
	for j, i := range idx {
		out[j] = xs[i]
	}
	return out
}

// indexes returns 0 .. n-1: every document of a call, as failed.
func indexes(n int) []int {
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	return all
}

// every returns n trues: each document is filled (see FillMany).
func every(n int) []bool {
	all := make([]bool, n)
	for i := range all {
		all[i] = true
	}
	return all
}

// FillMany is PutMany (past the breaker) for documents that may well be absent (a
// new ticket's first, a rebuild's into an empty Redis). Each is first written with
// SET NX, which stores it only where nothing is stored, atomically, exactly what
// set-if-newer does there; only where something is stored (a document, a tombstone, a
// floor) does the set-if-newer script decide. The
// script cost Redis about 39 µs per call against a few for a SET (a rebuild's
// documents are tens of kB, which the script copies into Lua).
func (d *Docs) FillMany(ctx context.Context, views []projections.View) ([]projections.View, error) {
	failed, err := d.putMany(ctx, views, true, every(len(views)))
	return pick(views, failed), err
}

// putMany stores views as PutMany does, those with fill[i] set as FillMany does (fill
// may be nil: none), and returns the indexes of the views whose write failed.
func (d *Docs) putMany(ctx context.Context, views []projections.View, force bool, fill []bool) ([]int, error) {
	if len(views) == 0 {
		return nil, nil
	}
	if !force && !d.br.Allow() {
		return indexes(len(views)), ErrDown
	}
	docs := make([]EncodedDoc, len(views))
	// kept are the views as cached: copies, because Encode writes to the view it
	// encodes and the caller's views may be shared (the rebuild hands one slice to
	// every read model at once).
	kept := slices.Clone(views)
	for i := range kept {
		v := &kept[i]
		if v.Version < 1 {
			return indexes(len(views)), fmt.Errorf("redis document of %s: version %d: %w", v.ID, v.Version, ticket.ErrInvalid)
		}
		val := strconv.AppendInt(make([]byte, 0, 16), int64(v.Version), 10)
		val = append(val, '\n')
		if !v.Deleted {
			// AppendEncoded keeps the comments' encoding in the view that goes to the
			// cache, so the next version of the document re-encodes its summary only; it
			// writes the JSON right after the version line.
			var err error
			if val, err = v.AppendEncoded(val); err != nil {
				return indexes(len(views)), fmt.Errorf("encode ticket %s: %w", v.ID, err)
			}
		}
		docs[i] = EncodedDoc{ID: v.ID, Version: v.Version, Deleted: v.Deleted, Value: val}
	}
	if failed, err := d.writeMany(ctx, docs, fill); err != nil {
		return failed, err
	}
	// A long ticket's view is cached compact: its comments once, encoded (they are in
	// the values too, but those are not kept). Other views hold them decoded as well.
	for i := range kept {
		v := kept[i].Compact()
		size := len(docs[i].Value)
		if len(v.Comments) > 0 {
			size += v.EncodedSize()
		}
		d.views.Put(v, size)
	}
	return nil, nil
}

// EncodedDoc is a ticket's document ready to store: Value is "<version>\n<json>", or
// "<version>\n" for a tombstone (Deleted), as AppendDoc writes it.
type EncodedDoc struct {
	ID      uuid.UUID
	Version int
	Deleted bool
	Value   []byte
}

// AppendDoc appends the stored value of v (see EncodedDoc) to dst, for FillEncoded;
// v is not changed.
func AppendDoc(dst []byte, v *projections.View) ([]byte, error) {
	if v.Version < 1 {
		return dst, fmt.Errorf("redis document of %s: version %d: %w", v.ID, v.Version, ticket.ErrInvalid)
	}
	dst = strconv.AppendInt(dst, int64(v.Version), 10)
	dst = append(dst, '\n')
	if v.Deleted {
		return dst, nil
	}
	dst, err := v.AppendJSON(dst)
	if err != nil {
		return dst, fmt.Errorf("encode ticket %s: %w", v.ID, err)
	}
	return dst, nil
}

// Replaced says what ReplaceEncoded did with each document, by index.
type Replaced struct {
	// Filled counts the documents written with SET NX (nothing was stored).
	Filled int
	// Refused are the documents not written because Redis holds a newer version.
	Refused []int
	// Failed are the documents whose write failed (the error says why).
	Failed []int
}

// ReplaceEncoded is a rebuild's write: it stores documents encoded by the caller
// (AppendDoc, into one buffer it may reuse) unless Redis holds a newer version, so
// each replaces one of its own version, a floor or an older one. The rebuild's fold of
// the same events is the one to keep: a rebuild runs after the fold's code changed.
// With fill, each is first written with SET NX (see FillMany): cheaper where little is
// stored, one more command per document where all is. It writes past the breaker, and
// leaves the cache of written views alone (a rebuild's views are not folded onto by
// this process). The error is the first one; Failed says which documents it left
// unwritten.
func (d *Docs) ReplaceEncoded(ctx context.Context, docs []EncodedDoc, fill bool) (Replaced, error) {
	for _, doc := range docs {
		if doc.Version < 1 {
			return Replaced{Failed: indexes(len(docs))}, fmt.Errorf("redis document of %s: version %d: %w", doc.ID, doc.Version, ticket.ErrInvalid)
		}
	}
	var fills []bool
	if fill {
		fills = every(len(docs))
	}
	states, failed, err := d.writeEach(ctx, docs, fills, true)
	r := Replaced{Failed: failed}
	for i, st := range states {
		switch st {
		case docFilled:
			r.Filled++
		case docRefused:
			r.Refused = append(r.Refused, i)
		}
	}
	return r, err
}

// What writeEach did with a document.
const (
	docUnknown = iota // failed, or its answer was lost
	docFilled         // SET NX stored it
	docWritten        // the script stored it
	docRefused        // the script found a newer version (or, unless replacing, the same)
)

// writeMany is writeEach for set-if-newer writes that only need the failures.
func (d *Docs) writeMany(ctx context.Context, docs []EncodedDoc, fill []bool) ([]int, error) {
	_, failed, err := d.writeEach(ctx, docs, fill, false)
	return failed, err
}

// writeEach stores docs set-if-newer (those with fill[i]: SET NX first, see FillMany;
// with replace, over their own version too: see ReplaceEncoded) in one pipelined round
// trip per cluster node (two where the script decides), bounded by the timeout. It
// returns what it did with each document, the indexes of those whose write failed and
// the first error.
func (d *Docs) writeEach(ctx context.Context, docs []EncodedDoc, fill []bool, replace bool) ([]int8, []int, error) {
	cctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	ttlOf := func(doc EncodedDoc) time.Duration {
		if doc.Deleted {
			return TombstoneTTL
		}
		return 0
	}
	mode := 0
	if replace {
		mode = 1
	}
	states := make([]int8, len(docs))
	all := make([]int, 0, len(docs))
	if slices.Contains(fill, true) {
		nx := make([]*redis.BoolCmd, len(docs))
		_, err := d.rdb.Pipelined(cctx, func(p redis.Pipeliner) error {
			for i, doc := range docs {
				if fill[i] {
					nx[i] = p.SetNX(cctx, d.Key(doc.ID), doc.Value, ttlOf(doc))
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			err = d.done(ctx, err, time.Time{})
			return states, indexes(len(docs)), fmt.Errorf("redis put documents: %w", err)
		}
		for i, c := range nx {
			if c != nil && c.Err() == nil && c.Val() {
				states[i] = docFilled
			} else {
				all = append(all, i) // not filled, or stored meanwhile: set-if-newer decides
			}
		}
	} else {
		all = indexes(len(docs))
	}
	// EVALSHA first; a node that does not know the script yet (new, restarted or failed
	// over) answers NOSCRIPT, and those writes go again with EVAL, which teaches it.
	cmds := make([]*redis.Cmd, len(docs))
	run := func(idx []int, sha bool) error {
		_, err := d.rdb.Pipelined(cctx, func(p redis.Pipeliner) error {
			for _, i := range idx {
				doc := docs[i]
				ttl := ttlOf(doc).Milliseconds()
				if sha {
					cmds[i] = putScript.EvalSha(cctx, p, []string{d.Key(doc.ID)}, doc.Version, doc.Value, ttl, mode)
				} else {
					cmds[i] = putScript.Eval(cctx, p, []string{d.Key(doc.ID)}, doc.Version, doc.Value, ttl, mode)
				}
			}
			return nil
		})
		return err
	}
	var err error
	if len(all) > 0 {
		err = run(all, true)
	}
	if err != nil {
		var again []int
		for i, c := range cmds {
			if c != nil && redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				again = append(again, i)
			}
		}
		if len(again) > 0 {
			err = run(again, false)
			for _, c := range cmds {
				if c != nil && err == nil && c.Err() != nil {
					err = c.Err() // a write that failed otherwise in the first round
				}
			}
		}
	}
	// A write counts only with its answer: a pipeline to a node that failed may leave
	// its commands without an error and without a value.
	var failed []int
	for i, c := range cmds {
		if c == nil {
			continue
		}
		switch n, cerr := c.Int(); {
		case cerr != nil:
			failed = append(failed, i)
		case n == 1:
			states[i] = docWritten
		default:
			states[i] = docRefused
		}
	}
	if err = d.done(ctx, err, time.Time{}); err != nil {
		if len(failed) == 0 {
			failed = indexes(len(docs)) // an error nobody owns: none is known to be written
			clear(states)
		}
		return states, failed, fmt.Errorf("redis put documents: %w", err)
	}
	return states, nil, nil
}
