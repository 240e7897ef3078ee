package eventstore

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"time"

	"github.com/google/uuid"
)

// The hash chain (issue 16). Every event stores, in the events table's hash column,
// EventHash of its content and of its predecessor's hash. Postgres computes it at
// insert (the events_chain trigger calling event_hash, migration
// 20261216000002_event_chain.sql), so no writer can skip it or choose it; this file
// computes the same thing in Go for Verify, and the tests hold the two equal on the
// same rows.

// HashSize is the size of an event's hash, and of an anchor's root.
const HashSize = sha256.Size

// GenesisHash is the "previous hash" of a stream's first event: 32 zero bytes.
var GenesisHash = make([]byte, HashSize)

// pgEpochMicros is 2000-01-01T00:00:00Z in Unix microseconds: Postgres' timestamp
// epoch, which event_hash's timestamptz_send counts from.
const pgEpochMicros = 946_684_800_000_000

// EventHash returns the hash of one event as stored: SHA-256 over
//
//	stream id (16 bytes) | version (4 bytes) | len(type) (4) | type |
//	recorded_at (8 bytes: microseconds since 2000-01-01T00:00:00Z) |
//	len(metadata) (4) | metadata | len(data) (4) | data | prev (32 bytes)
//
// with every integer big-endian, metadata and data the stored JSON exactly as Postgres
// returns it (jsonb's text form, which is what every reader of the store gets), and
// prev the previous version's hash (GenesisHash for version 1). A nil prev counts as
// GenesisHash. Every variable-length field is length-prefixed, so no two different
// events encode alike.
func EventHash(stream uuid.UUID, version int, typ string, recordedAt time.Time, metadata, data, prev []byte) [HashSize]byte {
	var h chainHasher
	return h.sum(stream, version, typ, recordedAt, metadata, data, prev)
}

// chainHasher computes EventHash reusing one SHA-256 state and buffer, for Verify.
type chainHasher struct {
	h   hash.Hash
	buf [32]byte
}

func (c *chainHasher) sum(stream uuid.UUID, version int, typ string, recordedAt time.Time, metadata, data, prev []byte) [HashSize]byte {
	var v [4]byte
	var at [8]byte
	binary.BigEndian.PutUint32(v[:], uint32(int32(version)))
	binary.BigEndian.PutUint64(at[:], uint64(recordedAt.UnixMicro()-pgEpochMicros))
	return c.sumWire(stream[:], v[:], []byte(typ), at[:], metadata, data, prev)
}

// sumWire is sum on the fields as Postgres sends them in binary: the uuid's 16 bytes,
// the version's 4, the type's text, the timestamptz's 8 (microseconds since 2000,
// big-endian: what the hash takes), and the JSON texts.
func (c *chainHasher) sumWire(stream, version, typ, at, metadata, data, prev []byte) [HashSize]byte {
	if c.h == nil {
		c.h = sha256.New()
	}
	if prev == nil {
		prev = GenesisHash
	}
	h, b := c.h, c.buf[:0]
	h.Reset()
	b = append(b, stream...)
	b = append(b, version...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(typ)))
	h.Write(b)
	h.Write(typ)
	b = append(c.buf[:0], at...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(metadata)))
	h.Write(b)
	h.Write(metadata)
	h.Write(binary.BigEndian.AppendUint32(c.buf[:0], uint32(len(data))))
	h.Write(data)
	h.Write(prev)
	var out [HashSize]byte
	h.Sum(out[:0])
	return out
}

// rootHasher computes an anchor's root: SHA-256 over every stream's head, stream id
// (16 bytes), head version (4 bytes, big-endian) and head hash (32 bytes), in stream id
// order (bytewise, as Postgres orders uuids). It also counts the streams and their
// events (a stream's head version is its number of events: versions are gapless).
type rootHasher struct {
	h       hash.Hash
	streams int64
	events  int64
	buf     [16 + 4 + HashSize]byte
}

func newRootHasher() *rootHasher { return &rootHasher{h: sha256.New()} }

func (r *rootHasher) add(stream uuid.UUID, version int, head []byte) {
	b := append(r.buf[:0], stream[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(int32(version)))
	b = append(b, head...)
	r.h.Write(b)
	r.streams++
	r.events += int64(version)
}

func (r *rootHasher) sum() []byte { return r.h.Sum(nil) }
