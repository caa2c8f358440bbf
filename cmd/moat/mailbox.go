package main

import (
	"net/netip"
	"time"

	"moat/auth"
	"moat/config"
	"moat/internal/yamlx"
)

// authSettings maps the config's auth section (and the trusted networks,
// which may send passwords in clear) onto the login authority's settings.
func authSettings(c *config.Config) auth.Settings {
	prefixes := func(ps []yamlx.Prefix) []netip.Prefix {
		out := make([]netip.Prefix, len(ps))
		for i, p := range ps {
			out[i] = p.P()
		}
		return out
	}
	delays := make([]time.Duration, len(c.Auth.FailureDelays))
	for i, d := range c.Auth.FailureDelays {
		delays[i] = d.D()
	}
	return auth.Settings{
		AllowPlaintext:  c.Auth.AllowPlaintextAuth,
		Trusted:         prefixes(c.SMTP.TrustedNetworks),
		Allow:           prefixes(c.Auth.AllowNetworks),
		Delays:          delays,
		MaxFailures:     c.Auth.MaxFailuresPerIP,
		MaxUserFailures: c.Auth.MaxFailuresPerUser,
		Window:          c.Auth.FailureWindow.D(),
		Lockout:         c.Auth.Lockout.D(),
	}
}
