//go:build tools

// Package tools records versitygw's main package so that go.mod pins it.
package tools

import _ "github.com/versity/versitygw/cmd/versitygw"
