// A stand-in for the Roles Anywhere credential helper's `serve` mode, one process per
// profile: it loads a certificate and its key (crypto/x509), fetches once from the given URL
// over net/http and then serves a local HTTP endpoint, as the helper does between refreshes.
// Built with Go's standard library only, it is a lower bound for that helper's RSS (the real
// one adds the AWS SDK for Go). bench_footprint.py builds it when `go` is installed.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: peer_helper CERT KEY URL")
		os.Exit(2)
	}
	if _, err := tls.LoadX509KeyPair(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "certificate:", err)
		os.Exit(1)
	}
	resp, err := http.Post(os.Args[3], "application/x-www-form-urlencoded", nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fetch:", err)
		os.Exit(1)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	fmt.Println("ready", listener.Addr())
	http.Serve(listener, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "{}")
	}))
}
