// Package dnsbl will hold DNSBL, DNSWL and RHSBL lookups and their scoring,
// and the caching DNS resolver every check shares. Policy key:
// checks.dnsbl; config key: dns. Until it lands, a policy that enables
// DNSBL gets a "not implemented" warning from moat check.
package dnsbl
