package pii

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// DataKeySize is the size of a subject's data key (AES-256).
const DataKeySize = 32

// ErrUnreadable is returned when a sealed value does not open: a wrong key, or a value
// that was changed.
var ErrUnreadable = errors.New("sealed value does not open with this key")

// Sealer seals and opens values with one subject's data key.
type Sealer struct{ aead cipher.AEAD }

// NewSealer returns the sealer of a data key.
func NewSealer(dataKey []byte) (Sealer, error) {
	if len(dataKey) != DataKeySize {
		return Sealer{}, fmt.Errorf("data key of %d bytes, want %d", len(dataKey), DataKeySize)
	}
	block, err := aes.NewCipher(dataKey)
	if err != nil {
		return Sealer{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return Sealer{}, err
	}
	return Sealer{aead: aead}, nil
}

// Seal returns plaintext sealed with AES-GCM under a fresh random nonce, which it
// carries in front: nonce || ciphertext || tag. aad binds the value to its place (e.g.
// the event and field), so a sealed value moved elsewhere does not open.
func (s Sealer) Seal(plaintext, aad []byte) ([]byte, error) { return seal(s.aead, plaintext, aad) }

// Open returns what Seal sealed, or ErrUnreadable.
func (s Sealer) Open(sealed, aad []byte) ([]byte, error) { return open(s.aead, sealed, aad) }

func seal(aead cipher.AEAD, plaintext, aad []byte) ([]byte, error) {
	out := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, err
	}
	return aead.Seal(out, out, plaintext, aad), nil
}

func open(aead cipher.AEAD, sealed, aad []byte) ([]byte, error) {
	n := aead.NonceSize()
	if len(sealed) < n+aead.Overhead() {
		return nil, ErrUnreadable
	}
	out, err := aead.Open(nil, sealed[:n], sealed[n:], aad)
	if err != nil {
		return nil, ErrUnreadable
	}
	return out, nil
}
