package policies

import (
	"reflect"

	"moat/dnsbl"
	"moat/filters"
	"moat/filters/content"
	"moat/filters/dkim"
	"moat/filters/dmarc"
	"moat/filters/spf"
	"moat/internal/yamlx"
)

// implementation is what the engine knows about a check this version runs.
type implementation struct {
	// defaults are the outcomes of results the policy does not map.
	defaults map[string]Outcome
	// build compiles the check from the policy's checks, or returns nil
	// when the policy does not turn it on.
	build func(c *Checks) filters.Check
}

// implemented is the one list of the checks this version runs. A check of
// the schema that is missing here is accepted in policy files (so that
// they are checked for typos) but ignored with a warning.
var implemented = map[string]implementation{
	"dnsbl": {
		build: func(c *Checks) filters.Check {
			zones := make([]dnsbl.Zone, len(c.DNSBL.Zones))
			for i, z := range c.DNSBL.Zones {
				zones[i] = dnsbl.Zone{Zone: z.Zone, Score: z.Score, Lookup: z.Lookup}
				for _, m := range z.Match {
					zones[i].Match = append(zones[i].Match, dnsbl.Range{From: m.From, To: m.To})
				}
			}
			return dnsbl.NewCheck(zones)
		},
	},
	"spf": {
		defaults: map[string]Outcome{filters.TempError: {Action: Tempfail}},
		build:    func(*Checks) filters.Check { return spf.NewCheck() },
	},
	"dkim": {
		build: func(*Checks) filters.Check { return dkim.NewCheck() },
	},
	"dmarc": {
		defaults: map[string]Outcome{filters.TempError: {Action: Tempfail}},
		build:    func(*Checks) filters.Check { return dmarc.NewCheck(dkim.Verify) },
	},
	// greylist is not a filters.Check: the session asks it last at RCPT
	// (or at the end of data), when the score so far is known; see
	// Policy.Greylist.
	"greylist": {build: func(*Checks) filters.Check { return nil }},
	"size": {
		defaults: map[string]Outcome{filters.Fail: {Action: Reject}},
		build: func(c *Checks) filters.Check {
			if c.Size == nil || c.Size.Max == nil {
				return nil
			}
			return filters.NewSize(int64(*c.Size.Max))
		},
	},
	// headers reports each matching rule's score (Result.Score) and the
	// most severe matching rule action (Result.Action) itself.
	"headers": {
		build: func(c *Checks) filters.Check {
			rules := make([]content.HeaderRule, len(c.Headers))
			for i, r := range c.Headers {
				rules[i] = content.HeaderRule{Header: r.Header, Match: r.Match.Re(), Action: string(r.Action), Observe: r.Mode == Observe}
				if r.Score != nil {
					rules[i].Score = *r.Score
				}
			}
			return content.NewHeaders(rules)
		},
	},
	"attachments": {
		defaults: map[string]Outcome{filters.Fail: {Action: Reject}},
		build: func(c *Checks) filters.Check {
			return content.NewAttachments(content.AttachmentOptions{
				BlockExtensions: c.Attachments.BlockExtensions,
				BlockMIMETypes:  c.Attachments.BlockMIMETypes,
			})
		},
	},
	// gtube runs unless the policy says gtube: false; its fail carries
	// content.GTUBEScore.
	"gtube": {build: func(*Checks) filters.Check { return content.NewGTUBE() }},
}

// checkNames lists the keys of checks, in schema order.
var checkNames = yamlx.Fields(reflect.TypeFor[Checks]())

// Implemented reports whether this version runs the named check.
func Implemented(check string) bool {
	_, ok := implemented[check]
	return ok
}

// checkSpec is what the engine needs from any check's settings.
type checkSpec interface {
	// outcome returns the mapping for one result value, or nil.
	outcome(value string) *Outcome
	// common returns the check's own action (for a fail) and mode.
	common() (Action, Mode)
}

// spec returns the settings of the named check, or nil when the policy
// does not turn it on.
func (c *Checks) spec(name string) checkSpec {
	switch name {
	case "dnsbl":
		if c.DNSBL != nil {
			return c.DNSBL
		}
	case "spf":
		if c.SPF != nil {
			return c.SPF
		}
	case "dkim":
		if c.DKIM != nil {
			return c.DKIM
		}
	case "dmarc":
		if c.DMARC != nil {
			return c.DMARC
		}
	case "greylist":
		if c.Greylist != nil && (c.Greylist.Enabled == nil || *c.Greylist.Enabled) {
			return c.Greylist
		}
	case "size":
		if c.Size != nil {
			return c.Size
		}
	case "headers":
		if len(c.Headers) > 0 {
			return headerRules(c.Headers)
		}
	case "attachments":
		if c.Attachments != nil {
			return c.Attachments
		}
	case "gtube":
		if c.GTUBE == nil || *c.GTUBE {
			return gtubeOn{}
		}
	}
	return nil
}

func (c *DNSBLCheck) outcome(string) *Outcome    { return nil }
func (c *DNSBLCheck) common() (Action, Mode)     { return c.Action, c.Mode }
func (c *GreylistCheck) outcome(string) *Outcome { return nil }
func (c *GreylistCheck) common() (Action, Mode)  { return c.Action, c.Mode }
func (c *SizeCheck) outcome(string) *Outcome     { return nil }
func (c *SizeCheck) common() (Action, Mode)      { return c.Action, c.Mode }
func (c *AttachmentsCheck) outcome(v string) *Outcome {
	// score: applies to a fail and replaces the default reject (an
	// action: beside it still applies).
	if v == filters.Fail && c.Score != nil {
		return &Outcome{Score: *c.Score}
	}
	return nil
}
func (c *AttachmentsCheck) common() (Action, Mode) { return c.Action, c.Mode }

// gtubeOn is the settings of the gtube check, which has none.
type gtubeOn struct{}

func (gtubeOn) outcome(string) *Outcome { return nil }
func (gtubeOn) common() (Action, Mode)  { return "", "" }

func (c *SPFCheck) common() (Action, Mode) { return c.Action, c.Mode }
func (c *SPFCheck) outcome(v string) *Outcome {
	switch v {
	case filters.Pass:
		return c.Pass
	case filters.Fail:
		return c.Fail
	case filters.SoftFail:
		return c.SoftFail
	case filters.Neutral:
		return c.Neutral
	case filters.None:
		return c.None
	case filters.TempError:
		return c.TempError
	case filters.PermError:
		return c.PermError
	}
	return nil
}

func (c *DKIMCheck) common() (Action, Mode) { return c.Action, c.Mode }
func (c *DKIMCheck) outcome(v string) *Outcome {
	switch v {
	case filters.Pass:
		return c.Pass
	case filters.Fail:
		return c.Fail
	case "policy":
		return c.Policy
	case filters.Neutral:
		return c.Neutral
	case filters.None:
		return c.None
	case filters.TempError:
		return c.TempError
	case filters.PermError:
		return c.PermError
	}
	return nil
}

func (c *DMARCCheck) common() (Action, Mode) { return c.Action, c.Mode }
func (c *DMARCCheck) outcome(v string) *Outcome {
	switch v {
	case filters.Pass:
		return c.Pass
	case filters.Fail:
		return c.Fail
	case filters.None:
		return c.None
	case filters.TempError:
		return c.TempError
	case filters.PermError:
		return c.PermError
	}
	return nil
}

// headerRules carries per-rule scores and actions; the headers check
// reports them itself (Result.Score), so the engine maps nothing here.
type headerRules []HeaderRule

func (headerRules) outcome(string) *Outcome { return nil }
func (headerRules) common() (Action, Mode)  { return "", "" }

// rule is how the policy counts one result.
type rule struct {
	score  float64
	action Action // "" for none
	mode   Mode
}

// rule looks up how the policy counts the result value of check: the
// policy's own mapping, else the check's default; a check's `action:`
// applies to its fail result.
func (p *Policy) rule(check, value string) rule {
	var r rule
	s := p.spec.Checks.spec(check)
	var o *Outcome
	if s != nil {
		o = s.outcome(value)
	}
	if o == nil {
		if d, ok := implemented[check].defaults[value]; ok {
			o = &d
		}
	}
	if o != nil {
		r.score, r.action = o.Score, o.Action
	}
	if s != nil {
		action, mode := s.common()
		if action != "" && value == filters.Fail {
			r.action = action
		}
		r.mode = mode
	}
	return r
}

// compileChecks builds the implemented checks the policy turns on, in
// schema order.
func compileChecks(c *Checks) []filters.Check {
	var out []filters.Check
	for _, name := range checkNames {
		impl, ok := implemented[name]
		if !ok || c.spec(name) == nil {
			continue
		}
		if ch := impl.build(c); ch != nil {
			out = append(out, ch)
		}
	}
	return out
}
