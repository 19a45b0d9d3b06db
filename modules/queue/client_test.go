package queue

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// hostileServer listens on a 127.0.0.x address and writes what send
// writes to every connection until the client goes away.
func hostileServer(t *testing.T, send func(w io.Writer) error) string {
	t.Helper()
	var ln net.Listener
	var err error
	for _, ip := range []string{"127.0.0.9", "127.0.0.1"} { // 127.0.0.1 where only it is configured
		if ln, err = net.Listen("tcp", ip+":0"); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				send(conn)
			}()
		}
	}()
	return ln.Addr().String()
}

// endless writes chunk again and again (after start, if given).
func endless(chunk string, start ...string) func(io.Writer) error {
	b := []byte(strings.Repeat(chunk, 64))
	return func(w io.Writer) error {
		for _, s := range start {
			if _, err := io.WriteString(w, s); err != nil {
				return err
			}
		}
		for {
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
	}
}

// A server that never ends its reply (an endless multi-line reply, a line
// without end, or endless lines) makes the client fail after reading a
// bounded number of bytes, and allocate a bounded amount of memory.
func TestHostileReplies(t *testing.T) {
	const bound = maxReplyBytes + 2*maxReplyLine
	for _, tc := range []struct {
		name string
		send func(io.Writer) error
		want string
	}{
		{"endless multi-line reply", endless("250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"), "lines"},
		{"endless long lines", endless("250-" + strings.Repeat("y", 3000) + "\r\n"), "bytes"},
		{"a line without end", endless("220 zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"), "longer than"},
		{"continuation lines without a code", endless("garbage that is not a reply line\r\n", "220-hello\r\n"), "lines"},
		{"garbage instead of a reply", endless("garbage that is not a reply line\r\n"), "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := hostileServer(t, tc.send)
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			c := newClient(conn, 10*time.Second)
			err = c.greet()
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("greeting: want an error about %q, got %v", tc.want, err)
			}
			if n := c.bytesRead(); n > bound {
				t.Errorf("the client read %d bytes of one reply, more than %d", n, bound)
			}
			// What the reader allocated: the lines it kept, once each.
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
				t.Errorf("reading one hostile reply allocated %d bytes", alloc)
			}
			t.Logf("%v", err)
		})
	}
}

// Replies as servers send them.
func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		in       string
		code     int
		enhanced string
		text     string
		lines    int
	}{
		{"250 ok\r\n", 250, "", "ok", 1},
		{"250\r\n", 250, "", "", 1},
		{"250-mx.example.org hello\r\n250-PIPELINING\r\n250 SIZE 1000\r\n", 250, "", "mx.example.org hello; PIPELINING; SIZE 1000", 3},
		{"550-5.1.1 no such\r\n550 5.1.1 user\r\n", 550, "5.1.1", "no such; user", 2},
		{"451 4.3.0\n", 451, "4.3.0", "", 1},
		{"250-a\r\nnot a code line\r\n250 b\r\n", 250, "", "a; not a code line; b", 3},
		{"250-a\r\n251 other code\r\n250 b\r\n", 250, "", "a; 251 other code; b", 3},
	} {
		r, err := readReply(bufio.NewReaderSize(strings.NewReader(tc.in), maxReplyLine))
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if r.Code != tc.code || r.Enhanced != tc.enhanced || r.Text != tc.text || len(r.lines) != tc.lines {
			t.Errorf("%q: got %d %q %q (%d lines)", tc.in, r.Code, r.Enhanced, r.Text, len(r.lines))
		}
	}
	for _, bad := range []string{"", "25", "abc ok\r\n", "250x\r\n", "199 no\r\n", "600 no\r\n", "250-unterminated\r\n", "250 no line end"} {
		if r, err := readReply(bufio.NewReaderSize(strings.NewReader(bad), maxReplyLine)); err == nil {
			t.Errorf("%q: want an error, got %+v", bad, r)
		}
	}
	// Exactly at the limits is fine; one more line is not.
	full := strings.Repeat("250-x\r\n", maxReplyLines-1) + "250 x\r\n"
	if _, err := readReply(bufio.NewReaderSize(strings.NewReader(full), maxReplyLine)); err != nil {
		t.Errorf("%d lines: %v", maxReplyLines, err)
	}
	var tooLong *errReplyTooLong
	if _, err := readReply(bufio.NewReaderSize(strings.NewReader("250-x\r\n"+full), maxReplyLine)); !errors.As(err, &tooLong) {
		t.Errorf("%d lines: want errReplyTooLong, got %v", maxReplyLines+1, err)
	}
}

// FuzzReply feeds the reply parser what a remote server could send. A
// reply it returns is within the limits, has a valid code, and consumed no
// more than it was given.
func FuzzReply(f *testing.F) {
	for _, seed := range []string{
		"250 ok\r\n",
		"220 mx.example.org ESMTP\r\n",
		"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
		"550-5.1.1 user unknown\r\n550 5.1.1 see https://example.org\r\n",
		"250\r\n",
		"451 4.7.1\r\n",
		"250-a\r\ngarbage\r\n250 b\r\n",
		"250-a\r\n251 other\r\n250 b\r\n",
		"354 go ahead\n",
		"250 \xff\xfe\r\n",
		strings.Repeat("250-x\r\n", 120) + "250 x\r\n",
		"250 " + strings.Repeat("y", 5000) + "\r\n",
		"",
		"2",
		"999 x\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in := bytes.NewReader(data)
		r, err := readReply(bufio.NewReaderSize(in, maxReplyLine))
		if err != nil {
			if r != nil {
				t.Fatalf("a reply and an error: %+v, %v", r, err)
			}
			return
		}
		if r.Code < 200 || r.Code > 599 {
			t.Fatalf("code %d", r.Code)
		}
		if len(r.lines) == 0 || len(r.lines) > maxReplyLines {
			t.Fatalf("%d lines", len(r.lines))
		}
		size := 0
		for _, l := range r.lines {
			if strings.ContainsAny(l, "\n") {
				t.Fatalf("a line break inside a line: %q", l)
			}
			size += len(l)
		}
		if size > maxReplyBytes || size > len(data) {
			t.Fatalf("%d bytes of text from %d bytes of input", size, len(data))
		}
		if r.Enhanced != "" && !isEnhanced(r.Enhanced, r.Code) {
			t.Fatalf("enhanced code %q for %d", r.Enhanced, r.Code)
		}
		if r.Code/100 == 2 && !r.ok() || r.Code/100 == 4 && !r.temp() {
			t.Fatalf("class of %d", r.Code)
		}
	})
}

// Plain text the server sends right after its 220 to STARTTLS is not
// taken as a reply inside TLS (STARTTLS response injection).
func TestSTARTTLSInjection(t *testing.T) {
	addr := hostileServer(t, func(w io.Writer) error {
		r := bufio.NewReader(w.(io.Reader))
		io.WriteString(w, "220 mx.example.org ESMTP\r\n")
		r.ReadString('\n') // EHLO
		io.WriteString(w, "250-mx.example.org\r\n250 STARTTLS\r\n")
		r.ReadString('\n') // STARTTLS
		io.WriteString(w, "220 go ahead\r\n250 injected\r\n")
		_, err := r.ReadString('\n')
		return err
	})
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(conn, 10*time.Second)
	defer c.close()
	if err := c.greet(); err != nil {
		t.Fatal(err)
	}
	if err := c.hello("client.example.test"); err != nil {
		t.Fatal(err)
	}
	err = c.startTLS(t.Context(), &tls.Config{InsecureSkipVerify: true})
	var hs *errTLSHandshake
	if !errors.As(err, &hs) || !strings.Contains(err.Error(), "after its 220") {
		t.Fatalf("want the injected reply refused, got %v", err)
	}
}
