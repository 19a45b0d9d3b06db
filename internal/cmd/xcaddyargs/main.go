// Command xcaddyargs turns xcaddy.json (the JSON shape of xcaddy's Builder)
// into the arguments of `xcaddy build`, for CI: the Caddy version, then a
// --with for each plugin (module[@version][=replacement]).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

type manifest struct {
	CaddyVersion string `json:"caddy_version"`
	Plugins      []struct {
		ModulePath string `json:"module_path"`
		Version    string `json:"version"`
	} `json:"plugins"`
	Replacements []struct {
		Old string `json:"old"`
		New string `json:"new"`
	} `json:"replacements"`
}

func main() {
	path := "xcaddy.json"
	if len(os.Args) > 1 {
		path = os.Args[1]
	}
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
		os.Exit(1)
	}
	if m.CaddyVersion == "" || len(m.Plugins) == 0 {
		fmt.Fprintf(os.Stderr, "%s: caddy_version and plugins are required\n", path)
		os.Exit(1)
	}
	args := []string{m.CaddyVersion}
	for _, p := range m.Plugins {
		w := p.ModulePath
		if p.Version != "" {
			w += "@" + p.Version
		}
		for _, r := range m.Replacements {
			if r.Old == p.ModulePath {
				dir, err := filepath.Abs(filepath.Join(filepath.Dir(path), r.New))
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				w += "=" + dir
			}
		}
		args = append(args, "--with", w)
	}
	for _, a := range args {
		fmt.Println(a)
	}
}
