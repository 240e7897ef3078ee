package httpapi

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/google/uuid"
)

// nearest finds the kept version of a stream closest below or at the one asked, never
// a deletion nor another stream's, and forgets evicted versions.
func TestVersionCacheNearestKeptVersion(t *testing.T) {
	c := newVersionCache(4 * 164) // room for four answers of 100 bytes (+64 each)
	id, other := uuid.New(), uuid.New()
	for _, v := range []int{1000, 3000, 2000} {
		c.put(&replayed{key: versionKey{id, v}, body: make([]byte, 100)})
	}
	c.put(&replayed{key: versionKey{other, 2500}, body: make([]byte, 100)})
	for _, tc := range []struct{ ask, want int }{{999, 0}, {1000, 1000}, {2999, 2000}, {3000, 3000}, {9999, 3000}} {
		r, ok := c.nearest(id, tc.ask)
		got := 0
		if ok {
			got = r.key.version
		}
		if got != tc.want {
			t.Errorf("nearest to %d: %d, want %d", tc.ask, got, tc.want)
		}
	}
	c.get(versionKey{other, 2500})                             // 1000 is now the least recently used
	c.put(&replayed{key: versionKey{id, 3500}, deleted: true}) // and is evicted
	if r, ok := c.nearest(id, 4000); !ok || r.key.version != 3000 {
		t.Errorf("nearest to 4000 past a deletion at 3500: %v, want 3000", r)
	}
	if r, ok := c.nearest(id, 1500); ok {
		t.Errorf("nearest to 1500 after version 1000 was evicted: %d", r.key.version)
	}
	if vs := c.byStream[id]; len(vs) != 3 {
		t.Errorf("kept versions of the stream: %v", vs)
	}
}

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

// TestVersionCacheDropsStaleEntries: an answer older than replayMaxAge is never served,
// so it does not stay in memory either: the next put drops the stale end of the LRU
// list, and a get that meets one drops it.
func TestVersionCacheDropsStaleEntries(t *testing.T) {
	c := newVersionCache(1 << 20)
	id, other := uuid.New(), uuid.New()
	stale := time.Now().Add(-replayMaxAge - time.Second)
	for v := 1; v <= 3; v++ {
		c.put(&replayed{key: versionKey{id, v}, body: make([]byte, 1000), at: stale})
	}
	c.put(&replayed{key: versionKey{other, 1}, body: make([]byte, 1000)})
	if len(c.entries) != 1 || c.size != 1064 || len(c.byStream) != 1 || len(c.byStream[id]) != 0 {
		t.Fatalf("after a put: %d entries of %d bytes, streams %v; want only the fresh one", len(c.entries), c.size, c.byStream)
	}
	c.entries[versionKey{other, 1}].Value.(*replayed).at = stale
	if _, ok := c.get(versionKey{other, 1}); ok {
		t.Error("a stale answer was served")
	}
	if len(c.entries) != 0 || c.size != 0 || c.order.Len() != 0 || len(c.byStream) != 0 {
		t.Errorf("after a get of a stale answer: %d entries of %d bytes left", len(c.entries), c.size)
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
