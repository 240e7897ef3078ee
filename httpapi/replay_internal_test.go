package httpapi

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestVersionCacheIsBoundedInBytesAndKeepsTheRecentlyUsed(t *testing.T) {
	c := newVersionCache(4 * 1064) // room for four answers of 1000 bytes (+64 each)
	id := uuid.New()
	for v := 1; v <= 4; v++ {
		c.put(&replayed{key: versionKey{id, v}, body: make([]byte, 1000)})
	}
	if _, ok := c.get(versionKey{id, 1}); !ok { // 1 is now the most recently used
		t.Fatal("version 1 missing with the cache not yet full")
	}
	c.put(&replayed{key: versionKey{id, 5}, body: make([]byte, 1000)})
	if _, ok := c.get(versionKey{id, 2}); ok {
		t.Error("version 2, the least recently used, was kept over the budget")
	}
	for _, v := range []int{1, 3, 4, 5} {
		if _, ok := c.get(versionKey{id, v}); !ok {
			t.Errorf("version %d evicted", v)
		}
	}
	if c.size > c.max {
		t.Errorf("size %d over the budget %d", c.size, c.max)
	}
	c.put(&replayed{key: versionKey{id, 6}, body: make([]byte, 2000)}) // over a quarter
	if _, ok := c.get(versionKey{id, 6}); ok {
		t.Error("an answer over a quarter of the budget was kept")
	}
	if _, ok := newVersionCache(-1).get(versionKey{id, 1}); ok {
		t.Error("a disabled cache answered")
	}
}

func TestPeerClosedSeesAHangUpButNotDataOrSilence(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the hang-up probe is Linux only")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	// wrapped as cmd/ticketd's listener wraps its connections
	wrapped := wrapper{server}
	raw := rawConn(wrapped)
	if raw == nil {
		t.Fatal("no socket found under the wrapper")
	}
	if peerClosed(raw) {
		t.Fatal("a silent open connection reads as closed")
	}
	if _, err := client.Write([]byte("GET / HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if peerClosed(raw) {
		t.Fatal("a connection with data waiting reads as closed")
	}
	buf := make([]byte, 64)
	if n, _ := server.Read(buf); n != 16 {
		t.Fatalf("the probe consumed data: read %d bytes, want 16", n)
	}
	_ = server.SetReadDeadline(time.Now().Add(-time.Second))
	if peerClosed(raw) {
		t.Fatal("a passed read deadline reads as a hang-up")
	}
	client.Close()
	time.Sleep(10 * time.Millisecond)
	if !peerClosed(raw) {
		t.Fatal("a closed connection reads as open")
	}
}

// wrapper wraps a connection as cmd/ticketd's listener does: the socket's methods are
// hidden, NetConn hands it over.
type wrapper struct{ net.Conn }

func (w wrapper) NetConn() net.Conn { return w.Conn }
