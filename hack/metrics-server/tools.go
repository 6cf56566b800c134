//go:build tools

// Package tools records metrics-server's main package so that go.mod pins it.
package tools

import _ "sigs.k8s.io/metrics-server/cmd/metrics-server"
