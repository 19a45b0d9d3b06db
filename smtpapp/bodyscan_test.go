package smtpapp

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"testing"
)

// maskAll runs bodyScan.mask over in as the wire does (small windows),
// returning what go-smtp would get, the bytes read, and the result.
func maskAll(in []byte, maxLine int) (out []byte, used int, res bodyResult) {
	s := bodyScan{dots: true}
	buf := make([]byte, 7) // tiny reads: state carried across them
	for used < len(in) {
		n, u, done := s.mask(buf, in[used:min(len(in), used+5)], maxLine)
		out = append(out, buf[:n]...)
		used += u
		if done {
			break
		}
	}
	return out, used, s.result()
}

func TestBodyScanMask(t *testing.T) {
	for _, tc := range []struct {
		name, in, out string
		used          int // -1: all
		res           bodyResult
	}{
		{"plain", "a\r\nb\r\n.\r\nMAIL", "a\r\nb\r\n.\r\n", 9, bodyResult{Complete: true}},
		{"empty body", ".\r\nNOOP", ".\r\n", 3, bodyResult{Complete: true}},
		{"dot stuffed", "..x\r\n.\r\n", "..x\r\n.\r\n", -1, bodyResult{Complete: true}},
		{"bare LF", "a\nb\r\n.\r\n", "a b\r\n.\r\n", -1, bodyResult{Complete: true, Bare: true}},
		{"bare CR", "a\rb\r\n.\r\n", "a b\r\n.\r\n", -1, bodyResult{Complete: true, Bare: true}},
		{"CR CR LF dot", "a\r\r\n.\r\n", "a \r\n.\r\n", -1, bodyResult{Complete: true, Bare: true}},
		{"LF dot LF is no end", "a\n.\nb\r\n.\r\n", "a . b\r\n.\r\n", -1, bodyResult{Complete: true, Bare: true}},
		{"CRLF dot LF is no end", "a\r\n.\nb\r\n.\r\n", "a\r\n. b\r\n.\r\n", -1, bodyResult{Complete: true, Bare: true}},
		{"dot space is no end", "a\r\n. \r\n.\r\n", "a\r\n. \r\n.\r\n", -1, bodyResult{Complete: true}},
		{"unfinished", "a\r\nb", "a\r\nb", -1, bodyResult{}},
		{"long line", "abcdefghij\r\n.\r\n", "abcdefghij\r\n.\r\n", -1, bodyResult{Complete: true, Long: true}},
		{"line at the limit", "abcdefgh\r\n.\r\n", "abcdefgh\r\n.\r\n", -1, bodyResult{Complete: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, used, res := maskAll([]byte(tc.in), 10)
			if string(out) != tc.out || res != tc.res {
				t.Fatalf("got %q %+v, want %q %+v", out, res, tc.out, tc.res)
			}
			if want := tc.used; want >= 0 && used != want || want < 0 && used != len(tc.in) {
				t.Fatalf("read %d bytes of %d", used, len(tc.in))
			}
		})
	}
}

func TestBodyScanCheck(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		res    bodyResult
	}{
		{[]string{"a\r", "\nb\r\n"}, bodyResult{Complete: true}},
		{[]string{"a\r", "b\r\n"}, bodyResult{Complete: true, Bare: true}},
		{[]string{"a\r\n", "b\r"}, bodyResult{Complete: true, Bare: true}},
		{[]string{"a\n"}, bodyResult{Complete: true, Bare: true}},
		{[]string{"0123456789\r\n"}, bodyResult{Complete: true, Long: true}},
	} {
		var s bodyScan
		for _, c := range tc.chunks {
			s.check([]byte(c), 10)
		}
		s.finish()
		if s.result() != tc.res {
			t.Errorf("%q: got %+v, want %+v", tc.chunks, s.result(), tc.res)
		}
	}
}

// FuzzBodyScan: whatever the client sends, go-smtp's reader (the same
// state machine as net/textproto's dot reader) ends the masked body
// exactly where the wire ended it, and the masked bytes hold CR and LF
// only as CRLF pairs.
func FuzzBodyScan(f *testing.F) {
	for _, seed := range []string{"a\r\n.\r\n", "a\r\r\n.\r\n", "\n.\n", ".\r\n", "..\r\n.\r\n", "a\rb", "\r\n.\r\nMAIL"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, _, res := maskAll(in, 1000)
		for i, c := range out {
			if c == '\r' && (i+1 >= len(out) || out[i+1] != '\n') || c == '\n' && (i == 0 || out[i-1] != '\r') {
				t.Fatalf("masked output %q has a bare line end at %d", out, i)
			}
		}
		r := textproto.NewReader(bufio.NewReader(bytes.NewReader(out)))
		_, err := io.ReadAll(r.DotReader())
		if res.Complete {
			if err != nil {
				t.Fatalf("wire ended the body, the dot reader did not: %q (%v)", out, err)
			}
			if r.R.Buffered() != 0 {
				t.Fatalf("dot reader ended early in %q", out)
			}
		} else if err == nil {
			t.Fatalf("dot reader ended a body the wire did not: %q", out)
		}
	})
}
