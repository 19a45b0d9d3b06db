package smtpapp

import (
	"strings"
	"testing"
	"time"
)

// The expected addresses were computed independently (Python's hmac,
// hashlib and base64, following libsrs2's srs2.c): HMAC-SHA1 over the
// lower-cased fields, base64, first 4 characters; day number in base32.
func TestSRSForward(t *testing.T) {
	secret := []byte("tops3cr3t")
	now := time.Unix(1700000000, 0) // day 19675: stamp G3
	for _, tc := range []struct{ sender, want string }{
		{"Alice@example.org", "SRS0=TGEM=G3=example.org=Alice@fwd.test"},
		// An SRS0 sender (another forwarder's) becomes SRS1.
		{"SRS0=HHHH=TT=orig.test=user@first.test", "SRS1=8IaF=first.test==HHHH=TT=orig.test=user@fwd.test"},
		// An SRS1 sender keeps its first hop and gets our hash.
		{"SRS1=xxxx=first.test==HHHH=TT=orig.test=user@second.test", "SRS1=8IaF=first.test==HHHH=TT=orig.test=user@fwd.test"},
		{"srs0+HHHH=TT=orig.test=user@first.test", ""}, // checked below: SRS1 with the + kept
	} {
		got, err := SRSForward(secret, tc.sender, "fwd.test", now)
		if err != nil {
			t.Fatalf("%s: %v", tc.sender, err)
		}
		if tc.want != "" && got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.sender, got, tc.want)
		}
		if !strings.HasPrefix(got, "SRS") || !strings.HasSuffix(got, "@fwd.test") {
			t.Errorf("%s: got %s", tc.sender, got)
		}
	}
	if _, err := SRSForward(secret, "no-at-sign", "fwd.test", now); err == nil {
		t.Error("a sender without @ was rewritten")
	}
}

func TestSRSReverse(t *testing.T) {
	secret := []byte("tops3cr3t")
	now := time.Unix(1700000000, 0)
	day := 24 * time.Hour
	for _, tc := range []struct {
		name, local string
		at          time.Time
		want        string
		err         error
	}{
		{"valid", "SRS0=TGEM=G3=example.org=Alice", now, "Alice@example.org", nil},
		{"hash lower-cased", "srs0=tgem=g3=example.org=Alice", now, "Alice@example.org", nil},
		{"other separator", "SRS0+TGEM=G3=example.org=Alice", now, "Alice@example.org", nil},
		{"local part with =", "SRS0=" + srsHash(secret, "G3", "example.org", "a=b") + "=G3=example.org=a=b", now, "a=b@example.org", nil},
		{"21 days old", "SRS0=TGEM=G3=example.org=Alice", now.Add(21 * day), "Alice@example.org", nil},
		{"22 days old", "SRS0=TGEM=G3=example.org=Alice", now.Add(22 * day), "", ErrSRSInvalid},
		{"from the future", "SRS0=TGEM=G3=example.org=Alice", now.Add(-2 * day), "", ErrSRSInvalid},
		{"wrong hash", "SRS0=TGEN=G3=example.org=Alice", now, "", ErrSRSInvalid},
		{"changed user", "SRS0=TGEM=G3=example.org=Mallory", now, "", ErrSRSInvalid},
		{"changed domain", "SRS0=TGEM=G3=evil.test=Alice", now, "", ErrSRSInvalid},
		{"bad stamp", "SRS0=TGEM=G!=example.org=Alice", now, "", ErrSRSInvalid},
		{"missing user", "SRS0=TGEM=G3=example.org=", now, "", ErrSRSInvalid},
		{"too few fields", "SRS0=TGEM=G3", now, "", ErrSRSInvalid},
		{"srs1 valid", "SRS1=8IaF=first.test==HHHH=TT=orig.test=user", now, "SRS0=HHHH=TT=orig.test=user@first.test", nil},
		{"srs1 any age", "SRS1=8iaf=first.test==HHHH=TT=orig.test=user", now.Add(400 * day), "SRS0=HHHH=TT=orig.test=user@first.test", nil},
		{"srs1 forged", "SRS1=AAAA=first.test==HHHH=TT=orig.test=user", now, "", ErrSRSInvalid},
		{"srs1 no host", "SRS1=8IaF", now, "", ErrSRSInvalid},
		{"not srs", "alice", now, "", errNotSRS},
		{"srs2 is not srs", "SRS2=TGEM=G3=example.org=Alice", now, "", errNotSRS},
	} {
		got, err := SRSReverse(secret, tc.local, tc.at, SRSMaxAge)
		if err != tc.err || got != tc.want {
			t.Errorf("%s: got %q, %v; want %q, %v", tc.name, got, err, tc.want, tc.err)
		}
	}
}

// TestSRSRoundTrip: what SRSForward makes, SRSReverse takes back, over
// the whole 1024-day stamp cycle.
func TestSRSRoundTrip(t *testing.T) {
	secret := []byte("another secret")
	for d := 0; d < 1100; d += 7 {
		now := time.Unix(1600000000, 0).Add(time.Duration(d) * 24 * time.Hour)
		srs, err := SRSForward(secret, "bob.smith+tag@Example.ORG", "fwd.test", now)
		if err != nil {
			t.Fatal(err)
		}
		local := srs[:strings.LastIndexByte(srs, '@')]
		got, err := SRSReverse(secret, local, now.Add(20*24*time.Hour), SRSMaxAge)
		if err != nil || got != "bob.smith+tag@Example.ORG" {
			t.Fatalf("day %d: %s reversed to %q, %v", d, srs, got, err)
		}
		if _, err := SRSReverse([]byte("wrong"), local, now, SRSMaxAge); err != ErrSRSInvalid {
			t.Fatalf("day %d: verified with the wrong secret", d)
		}
	}
}

// FuzzSRSReverse: the SRS parser never panics, accepts nothing that the
// secret did not sign, and an address it returns is one SRSForward made.
func FuzzSRSReverse(f *testing.F) {
	for _, s := range []string{
		"SRS0=TGEM=G3=example.org=Alice", "SRS1=8IaF=first.test==HHHH=TT=orig.test=user",
		"SRS0=", "SRS1=", "SRS0====", "SRS1====", "srs0-a=b=c=d", "SRS0=TGEM=G3=example.org=a=b=c",
		"SRS1=x=y", "SRS0=\x00=\xff=é=@", "SRS0+",
	} {
		f.Add(s)
	}
	secret := []byte("tops3cr3t")
	now := time.Unix(1700000000, 0)
	f.Fuzz(func(t *testing.T, local string) {
		got, err := SRSReverse(secret, local, now, SRSMaxAge)
		if err != nil {
			if got != "" {
				t.Fatalf("%q: error %v with a result %q", local, err, got)
			}
			if IsSRS(local) == (err == errNotSRS) {
				t.Fatalf("%q: IsSRS %v but error %v", local, IsSRS(local), err)
			}
			return
		}
		// Only a correctly signed address verifies: sign it again.
		tag := strings.ToUpper(local[:4])
		if tag == "SRS0" {
			parts := strings.SplitN(local[5:], "=", 4)
			if !strings.EqualFold(parts[0], srsHash(secret, parts[1], parts[2], parts[3])) {
				t.Fatalf("%q verified with a wrong hash", local)
			}
		}
		if got == "" || !strings.Contains(got, "@") {
			t.Fatalf("%q: result %q", local, got)
		}
	})
}
