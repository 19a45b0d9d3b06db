package testenv

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// Web is an http app for a test: one HTTPS server on 127.0.0.1 whose
// certificates for Hosts come from the internal CA, and a client that
// reaches it for any host name.
type Web struct {
	Port  int      // HTTPS port on 127.0.0.1
	Hosts []string // site names, given internal-CA certificates
}

// NewWeb picks free ports for a Web.
func NewWeb(t testing.TB, hosts ...string) *Web {
	return &Web{Port: FreePort(t), Hosts: hosts}
}

// Apps returns the "http" and "tls" apps (for Env.Config's extra apps)
// serving routes (the http server's routes JSON) on the Web's port.
func (w *Web) Apps(t testing.TB, routes []any) map[string]any {
	return map[string]any{
		"http": map[string]any{
			"http_port":  FreePort(t),
			"https_port": w.Port,
			"servers": map[string]any{"web": map[string]any{
				"listen":          []string{"127.0.0.1:" + itoa(w.Port)},
				"routes":          routes,
				"automatic_https": map[string]any{"disable_redirects": true},
			}},
		},
		"tls": map[string]any{"automation": map[string]any{"policies": []any{
			map[string]any{"subjects": w.Hosts, "issuers": []any{map[string]any{"module": "internal"}}},
		}}},
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// Client returns an HTTPS client that sends every request to the Web's
// port, trusting the Env's internal CA.
func (w *Web) Client(e *Env) *http.Client {
	addr := "127.0.0.1:" + itoa(w.Port)
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			},
			TLSClientConfig: &tls.Config{RootCAs: e.RootCAs()},
		},
	}
}

// Do sends req and returns the status, header and body, failing the
// test if the request fails.
func (w *Web) Do(t testing.TB, c *http.Client, req *http.Request) (int, http.Header, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header, body
}

// WaitForHost waits until the Web serves TLS for host (its certificate
// is issued in the background).
func (w *Web) WaitForHost(t testing.TB, e *Env, host string) {
	t.Helper()
	var last error
	if !WaitFor(15*time.Second, func() bool {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", "127.0.0.1:"+itoa(w.Port),
			&tls.Config{RootCAs: e.RootCAs(), ServerName: host})
		if err == nil {
			conn.Close()
		}
		last = err
		return err == nil
	}) {
		t.Fatalf("no TLS for %s: %v", host, last)
	}
}
