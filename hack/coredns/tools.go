//go:build tools

// Package tools records the CoreDNS main package so that go.mod pins it.
package tools

import _ "github.com/coredns/coredns"
