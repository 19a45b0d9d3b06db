package smtpapp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Header edits for content filters (milters, rspamd): they work on the
// message's original header section, the one the client sent (less the
// fields the server removed), never on the fields added with AddHeader.
// Each edit reads the header section again (at most maxHeaderSection
// bytes) and replaces it, for in-memory and spooled bodies alike; the
// body after the header section is never copied.

// HeaderField is one field of the original header section.
type HeaderField struct {
	// Name as written (without trailing white space).
	Name string
	// Value as written after the colon, leading white space and the
	// final CRLF removed; a folded value keeps its CRLF + white space.
	Value string
}

// ErrNoHeaderField is returned by DeleteHeader and ChangeHeader when
// the message has no such field.
var ErrNoHeaderField = errors.New("no such header field")

// headerSection reads the original header section: its fields as
// written (each with its CRLF) and the offset in Body where it ends
// (where the empty line is, or the end of a body with no empty line).
func (m *Message) headerSection() (fields [][]byte, end int, err error) {
	n := min(m.Size(), maxHeaderSection)
	buf := make([]byte, n)
	if _, err := io.ReadFull(m.Body(), buf); err != nil {
		return nil, 0, err
	}
	spans, pos, complete := splitFields(buf)
	for _, f := range spans {
		fields = append(fields, buf[f.from:f.to])
	}
	if !complete && int64(len(buf)) < m.Size() {
		return nil, 0, errHeaderTooLarge
	}
	return fields, pos, nil
}

// setHeaderSection replaces the first end bytes of Body (the original
// header section) with fields.
func (m *Message) setHeaderSection(fields [][]byte, end int) error {
	n := 0
	for _, f := range fields {
		n += len(f) + 2
	}
	if n > maxHeaderSection {
		return errHeaderTooLarge
	}
	head := make([]byte, 0, n)
	for i, f := range fields {
		head = append(head, f...)
		// A last field without CRLF (a body with no empty line) gets
		// one when another field follows it.
		if !bytes.HasSuffix(f, []byte("\r\n")) && i < len(fields)-1 {
			head = append(head, "\r\n"...)
		}
	}
	if end <= len(m.head) {
		head = append(head, m.head[end:]...)
	} else {
		m.skip += int64(end - len(m.head))
	}
	m.head = head // never nil: it stands for the original header section
	return nil
}

// fieldName is a field's name as written, without trailing white space,
// or nil for a line with no colon.
func fieldName(f []byte) []byte {
	colon := bytes.IndexByte(f, ':')
	if colon <= 0 {
		return nil
	}
	return bytes.TrimRight(f[:colon], " \t")
}

// validFieldName reports a field name of printable ASCII without colon
// (RFC 5322 2.2).
func validFieldName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if ch := name[i]; ch <= 0x20 || ch >= 0x7f || ch == ':' {
			return false
		}
	}
	return true
}

// formatField builds "Name: value\r\n". LF line ends in value (the milter
// protocol's) become CRLF; a value that starts with white space gets no
// added space; anything that would start a new field is neutralised.
func formatField(name, value string) ([]byte, error) {
	if !validFieldName(name) {
		return nil, fmt.Errorf("invalid header field name %q", name)
	}
	value = strings.ReplaceAll(value, "\r\n", "\n")
	value = strings.ReplaceAll(value, "\n", "\r\n")
	value = strings.TrimRight(sanitizeHeaderValue(value), "\r\n")
	sep := ": "
	if strings.HasPrefix(value, " ") || strings.HasPrefix(value, "\t") {
		sep = ":"
	}
	return []byte(name + sep + value + "\r\n"), nil
}

// HeaderFields returns the fields of the original header section, in
// order.
func (m *Message) HeaderFields() ([]HeaderField, error) {
	fields, _, err := m.headerSection()
	if err != nil {
		return nil, err
	}
	out := make([]HeaderField, 0, len(fields))
	for _, f := range fields {
		name := fieldName(f)
		if name == nil {
			continue
		}
		v := f[bytes.IndexByte(f, ':')+1:]
		v = bytes.TrimLeft(v, " \t")
		v = bytes.TrimSuffix(v, []byte("\r\n"))
		out = append(out, HeaderField{Name: string(name), Value: string(v)})
	}
	return out, nil
}

// matching returns the positions in fields of the fields named name
// (case-insensitive).
func matching(fields [][]byte, name string) []int {
	var at []int
	for i, f := range fields {
		if n := fieldName(f); n != nil && strings.EqualFold(string(n), name) {
			at = append(at, i)
		}
	}
	return at
}

// pick turns an index among the fields named name into a position in
// fields: index n > 0 is the n-th from the top, n < 0 the -n-th from the
// bottom. ok is false when there is no such field.
func pick(at []int, index int) (pos int, ok bool) {
	switch {
	case index > 0 && index <= len(at):
		return at[index-1], true
	case index < 0 && -index <= len(at):
		return at[len(at)+index], true
	}
	return 0, false
}

// DeleteHeader removes a field named name (case-insensitive) from the
// original header section: index n > 0 is the n-th such field from the
// top (the milter protocol's 1-based index), n < 0 the -n-th from the
// bottom, and 0 removes them all. It returns ErrNoHeaderField when there
// is no such field (for index 0: no field of that name at all).
func (m *Message) DeleteHeader(name string, index int) error {
	fields, end, err := m.headerSection()
	if err != nil {
		return err
	}
	at := matching(fields, name)
	drop := map[int]bool{}
	if index == 0 {
		for _, i := range at {
			drop[i] = true
		}
	} else if i, ok := pick(at, index); ok {
		drop[i] = true
	}
	if len(drop) == 0 {
		return ErrNoHeaderField
	}
	kept := fields[:0:0]
	for i, f := range fields {
		if !drop[i] {
			kept = append(kept, f)
		}
	}
	return m.setHeaderSection(kept, end)
}

// ChangeHeader replaces the value of a field named name (index as in
// DeleteHeader, but not 0), keeping its place and the name as written.
// It returns ErrNoHeaderField when there is no such field (a milter's
// change of a missing field adds it: the caller decides).
func (m *Message) ChangeHeader(name string, index int, value string) error {
	fields, end, err := m.headerSection()
	if err != nil {
		return err
	}
	i, ok := pick(matching(fields, name), index)
	if !ok {
		return ErrNoHeaderField
	}
	f, err := formatField(string(fieldName(fields[i])), value)
	if err != nil {
		return err
	}
	fields[i] = f
	return m.setHeaderSection(fields, end)
}

// InsertHeader inserts a field at position index of the original header
// section (0: on top; index at or past the number of fields, or
// negative: at the bottom, after the last field).
func (m *Message) InsertHeader(index int, name, value string) error {
	f, err := formatField(name, value)
	if err != nil {
		return err
	}
	fields, end, err := m.headerSection()
	if err != nil {
		return err
	}
	if index < 0 || index > len(fields) {
		index = len(fields)
	}
	fields = append(fields[:index:index], append([][]byte{f}, fields[index:]...)...)
	return m.setHeaderSection(fields, end)
}

// AppendHeader adds a field at the bottom of the original header section
// (where a milter's "add header" goes), unlike AddHeader, which puts
// trace fields on top.
func (m *Message) AppendHeader(name, value string) error { return m.InsertHeader(-1, name, value) }
