package autoconfig

import (
	"bytes"
	"strings"

	"howett.net/plist"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// profile is an Apple configuration profile with one mail account
// (payload com.apple.mail.managed).
type profile struct {
	PayloadContent           []mailPayload `plist:"PayloadContent"`
	PayloadDescription       string        `plist:"PayloadDescription"`
	PayloadDisplayName       string        `plist:"PayloadDisplayName"`
	PayloadIdentifier        string        `plist:"PayloadIdentifier"`
	PayloadRemovalDisallowed bool          `plist:"PayloadRemovalDisallowed"`
	PayloadType              string        `plist:"PayloadType"`
	PayloadUUID              string        `plist:"PayloadUUID"`
	PayloadVersion           int           `plist:"PayloadVersion"`
}

type mailPayload struct {
	EmailAccountDescription                string `plist:"EmailAccountDescription"`
	EmailAccountType                       string `plist:"EmailAccountType"`
	EmailAddress                           string `plist:"EmailAddress"`
	IncomingMailServerAuthentication       string `plist:"IncomingMailServerAuthentication"`
	IncomingMailServerHostName             string `plist:"IncomingMailServerHostName"`
	IncomingMailServerPortNumber           int    `plist:"IncomingMailServerPortNumber"`
	IncomingMailServerUseSSL               bool   `plist:"IncomingMailServerUseSSL"`
	IncomingMailServerUsername             string `plist:"IncomingMailServerUsername"`
	OutgoingMailServerAuthentication       string `plist:"OutgoingMailServerAuthentication"`
	OutgoingMailServerHostName             string `plist:"OutgoingMailServerHostName"`
	OutgoingMailServerPortNumber           int    `plist:"OutgoingMailServerPortNumber"`
	OutgoingMailServerUseSSL               bool   `plist:"OutgoingMailServerUseSSL"`
	OutgoingMailServerUsername             string `plist:"OutgoingMailServerUsername"`
	OutgoingPasswordSameAsIncomingPassword bool   `plist:"OutgoingPasswordSameAsIncomingPassword"`
	PayloadDescription                     string `plist:"PayloadDescription"`
	PayloadDisplayName                     string `plist:"PayloadDisplayName"`
	PayloadIdentifier                      string `plist:"PayloadIdentifier"`
	PayloadType                            string `plist:"PayloadType"`
	PayloadUUID                            string `plist:"PayloadUUID"`
	PayloadVersion                         int    `plist:"PayloadVersion"`
}

// mobileconfig is the profile for acct (an address is given), with the
// IMAP server of the config and the submission endpoint sub. Apple Mail
// takes "UseSSL" for TLS of either kind (implicit or STARTTLS).
func (h *Handler) mobileconfig(acct account, sub smtpapp.Endpoint) ([]byte, error) {
	// Reverse-DNS identifiers: com.example.mail.alice
	labels := strings.Split(acct.domain, ".")
	for i, j := 0, len(labels)-1; i < j; i, j = i+1, j-1 {
		labels[i], labels[j] = labels[j], labels[i]
	}
	ident := strings.Join(labels, ".") + ".mail." + strings.ReplaceAll(strings.SplitN(acct.address, "@", 2)[0], ".", "-")
	name := h.displayName(acct.domain)
	p := profile{
		PayloadDescription: "Mail account " + acct.address + " of " + name,
		PayloadDisplayName: name + " mail (" + acct.address + ")",
		PayloadIdentifier:  ident,
		PayloadType:        "Configuration",
		PayloadUUID:        stableUUID("profile", acct.address),
		PayloadVersion:     1,
		PayloadContent: []mailPayload{{
			EmailAccountDescription:                name,
			EmailAccountType:                       "EmailTypeIMAP",
			EmailAddress:                           acct.address,
			IncomingMailServerAuthentication:       "EmailAuthPassword",
			IncomingMailServerHostName:             h.IMAP.Host,
			IncomingMailServerPortNumber:           h.IMAP.Port,
			IncomingMailServerUseSSL:               h.IMAP.Security == "tls" || h.IMAP.Security == "starttls",
			IncomingMailServerUsername:             acct.address,
			OutgoingMailServerAuthentication:       "EmailAuthPassword",
			OutgoingMailServerHostName:             sub.Host,
			OutgoingMailServerPortNumber:           int(sub.Port),
			OutgoingMailServerUseSSL:               sub.Security != "none",
			OutgoingMailServerUsername:             acct.address,
			OutgoingPasswordSameAsIncomingPassword: true,
			PayloadDescription:                     "Mail account " + acct.address,
			PayloadDisplayName:                     acct.address,
			PayloadIdentifier:                      ident + ".account",
			PayloadType:                            "com.apple.mail.managed",
			PayloadUUID:                            stableUUID("account", acct.address),
			PayloadVersion:                         1,
		}},
	}
	var buf bytes.Buffer
	enc := plist.NewEncoderForFormat(&buf, plist.XMLFormat)
	enc.Indent("\t")
	if err := enc.Encode(p); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
