package queue

import (
	"net/netip"
	"testing"
)

// The addresses an MX lookup must not lead to unless
// allow_private_destinations is on.
func TestIsInternal(t *testing.T) {
	for _, tc := range []struct {
		ip       string
		internal bool
	}{
		{"127.0.0.1", true}, {"127.8.9.10", true}, {"::1", true},
		{"10.1.2.3", true}, {"172.16.0.1", true}, {"172.31.255.255", true}, {"192.168.1.1", true},
		{"fc00::1", true}, {"fd12:3456::1", true},
		{"169.254.169.254", true}, {"fe80::1", true},
		{"0.0.0.0", true}, {"::", true}, {"0.1.2.3", true},
		{"224.0.0.1", true}, {"239.255.255.250", true}, {"ff02::1", true},
		{"100.64.0.1", true}, {"100.127.255.254", true},
		{"255.255.255.255", true}, {"240.0.0.1", true},
		{"::ffff:127.0.0.1", true}, {"::ffff:10.0.0.1", true},
		{"93.184.215.14", false}, {"8.8.8.8", false}, {"172.32.0.1", false}, {"100.128.0.1", false},
		{"2606:2800:21f:cb07:6820:80da:af6b:8b2c", false}, {"::ffff:8.8.8.8", false},
	} {
		if got := isInternal(netip.MustParseAddr(tc.ip)); got != tc.internal {
			t.Errorf("isInternal(%s) = %v, want %v", tc.ip, got, tc.internal)
		}
	}
}

// A stranger's Message-ID is quoted only when it looks like one.
func TestCheckedMessageID(t *testing.T) {
	for in, want := range map[string]string{
		"<abc@example.org>":                     "<abc@example.org>",
		"  <abc@example.org>  ":                 "<abc@example.org>",
		"<abc@example.org> (spam)":              "",
		"<buy now@example.org>":                 "",
		"<abc>":                                 "",
		"<a@b@c>":                               "",
		"<\xffx@example.org>":                   "",
		"abc@example.org":                       "",
		"<" + string(make([]byte, 300)) + "@x>": "",
	} {
		if got := checkedMessageID(in); got != want {
			t.Errorf("checkedMessageID(%q) = %q, want %q", in, got, want)
		}
	}
}
