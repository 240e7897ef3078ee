// Package pii protects personal data in the event store by crypto-shredding: each data
// subject (a requester, named by their email) has a data key of their own, kept in
// Postgres only wrapped by the master key from the environment (DATA_KEY); personal
// fields of events are sealed with it (AES-256-GCM), and erasing a subject destroys
// the wrapped key, after which those fields can no longer be read by anyone, while the
// events themselves (and the hash chain over them) stay as they are. Lookups by email
// use a keyed hash of it (SubjectID), never the address itself.
package pii

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// MasterKeySize is the size of DATA_KEY in bytes, before base64.
const MasterKeySize = 32

// SubjectID is the keyed hash of a normalised email: how a subject is named in
// storage and looked up.
type SubjectID [32]byte

// String is the id in lowercase hex.
func (s SubjectID) String() string { return fmt.Sprintf("%x", s[:]) }

// MasterKey is the key-encryption key, and the keys derived from it: one wraps data
// keys (and the lookup key, see Keyring), one makes the check value that tells a wrong
// master key at start. The derivations are fixed (HKDF-SHA256 with distinct labels), so
// one DATA_KEY gives every instance the same two.
type MasterKey struct {
	wrap  cipher.AEAD
	check []byte
}

// ErrMasterKeyForm is returned by ParseMasterKey for a value that is not the base64 of
// 32 bytes.
var ErrMasterKeyForm = errors.New("must be the base64 of 32 random bytes (e.g. openssl rand -base64 32)")

// ParseMasterKey reads DATA_KEY: the base64 (standard or URL alphabet, with or without
// padding) of exactly MasterKeySize bytes. Surrounding whitespace (a key file's final
// newline) is ignored.
func ParseMasterKey(s string) (*MasterKey, error) {
	s = strings.TrimSpace(s)
	var raw []byte
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			raw = b
			break
		}
	}
	if len(raw) != MasterKeySize {
		return nil, ErrMasterKeyForm
	}
	return newMasterKey(raw)
}

func newMasterKey(raw []byte) (*MasterKey, error) {
	derive := func(label string) []byte {
		k, err := hkdf.Key(sha256.New, raw, nil, "ticketd pii "+label, 32)
		if err != nil {
			panic(err) // only for lengths HKDF-SHA256 cannot give
		}
		return k
	}
	block, err := aes.NewCipher(derive("wrap v1"))
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &MasterKey{wrap: aead, check: derive("check v1")}, nil
}

// NormalizeEmail is the form of an email that names its subject: trimmed and in
// lowercase, so that Ann@Example.com and ann@example.com are one person.
func NormalizeEmail(email string) string { return strings.ToLower(strings.TrimSpace(email)) }

// CheckValue is what the database keeps to recognise this master key: a MAC of a fixed
// text, which tells nothing about the key.
func (m *MasterKey) CheckValue() []byte {
	h := hmac.New(sha256.New, m.check)
	h.Write([]byte("ticketd data key check v1"))
	return h.Sum(nil)
}

// wrapKey seals a key under the master key, bound to what it is for (a subject's id,
// or lookupAAD).
func (m *MasterKey) wrapKey(aad, key []byte) ([]byte, error) { return seal(m.wrap, key, aad) }

// unwrapKey opens a key wrapped for aad.
func (m *MasterKey) unwrapKey(aad, wrapped []byte) ([]byte, error) { return open(m.wrap, wrapped, aad) }
