package smtpapp

// Results that one module produces and another reads have typed homes
// here, never string keys in Conn.Set: a rename then breaks the build, not
// the mail flow.

// SPFResult is the SPF check of one transaction's sender (RFC 7208), as
// the spf handler found it.
type SPFResult struct {
	// From is the MAIL FROM address the check was made for ("" for the
	// null sender, checked by its HELO identity).
	From string
	// Result is the RFC 7208 result: pass, fail, softfail, neutral, none,
	// temperror or permerror.
	Result string
	// Domain is the domain that was checked.
	Domain string
	// Identity is "mailfrom" or "helo".
	Identity string
}

// SetSPF records the SPF result of the current transaction.
func (c *Conn) SetSPF(r SPFResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spf = &r
}

// SPF returns the SPF result recorded for the current transaction's
// sender, if the spf handler ran for it.
func (c *Conn) SPF() (SPFResult, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.spf == nil || c.spf.From != c.from {
		return SPFResult{}, false
	}
	return *c.spf, true
}
