package imaptest

import (
	"fmt"
	"strconv"
	"strings"
)

// dirCtx walks an expected untagged response at parse time: it checks the
// $!directives at the start of each list and inserts ImapTest's default
// directives where a list has none:
//
//	n FETCH ($!unordered=2 ...)
//	n FETCH (FLAGS ($!unordered $!noextra $!ignore=\recent ...))
//	LIST|LSUB ($!unordered) sep name
//	STATUS name ($!unordered=2 ...)
type dirCtx struct {
	parent         *dirCtx
	replyName      string // lower-cased in sub-lists
	prevAtom       string // last atom before this list, lower-cased
	parentChainIdx int
	chain          int
	directives     bool
}

func isDirective(a arg) bool {
	return a.kind == kindAtom && strings.HasPrefix(a.str, "$!")
}

func (c *dirCtx) parseDirectives(args []arg) error {
	for _, a := range args {
		if !isDirective(a) {
			break
		}
		d := a.str[2:]
		switch {
		case strings.HasPrefix(d, "unordered"):
			if rest := d[len("unordered"):]; rest != "" {
				n, err := strconv.ParseUint(strings.TrimPrefix(rest, "="), 10, 16)
				if !strings.HasPrefix(rest, "=") || err != nil || n == 0 {
					return fmt.Errorf("broken $!unordered directive")
				}
				c.chain = int(n)
			}
		case d == "ordered", d == "noextra", d == "extra",
			strings.HasPrefix(d, "ignore="), strings.HasPrefix(d, "ban="):
		default:
			return fmt.Errorf("unknown directive: %s", d)
		}
		c.directives = true
	}
	return nil
}

func directives(names ...string) []arg {
	out := make([]arg, len(names))
	for i, n := range names {
		out[i] = arg{kind: kindAtom, str: n}
	}
	return out
}

func (c *dirCtx) defaults() []arg {
	p := c.parent
	if p == nil {
		return nil
	}
	switch c.replyName {
	case "list", "lsub":
		if p.parent == nil && p.parentChainIdx == 0 && c.parentChainIdx == 1 {
			return directives("$!unordered")
		}
	case "status":
		if p.parent == nil && p.parentChainIdx == 0 && c.parentChainIdx == 2 {
			return directives("$!unordered=2")
		}
	case "fetch":
		if p.parent == nil && p.parentChainIdx == 0 && c.parentChainIdx == 2 {
			return directives("$!unordered=2")
		}
		if p.parent != nil && p.parent.parent == nil && p.parent.parentChainIdx == 0 &&
			p.parentChainIdx == 2 && c.prevAtom == "flags" {
			return directives("$!unordered", "$!noextra", `$!ignore=\recent`,
				"$!ignore=$HasAttachment", "$!ignore=$HasNoAttachment")
		}
	}
	return nil
}

// handle validates and completes one list (the top level included) and
// returns it, possibly with default directives prepended.
func (c *dirCtx) handle(args []arg) ([]arg, error) {
	if err := c.parseDirectives(args); err != nil {
		return nil, err
	}
	if !c.directives {
		if d := c.defaults(); d != nil {
			args = append(d, args...)
			if err := c.parseDirectives(args); err != nil {
				return nil, err
			}
		}
	}
	n := 0
	for _, a := range args {
		if !isDirective(a) {
			n++
		}
	}
	if n%c.chain != 0 {
		return nil, fmt.Errorf("invalid list argument count %d, chain size %d", n, c.chain)
	}
	prevAtom := ""
	for i := range args {
		a := &args[i]
		if a.kind == kindAtom {
			prevAtom = strings.ToLower(a.str)
		}
		if a.kind != kindList {
			continue
		}
		sub := &dirCtx{
			parent:         c,
			replyName:      strings.ToLower(c.replyName),
			prevAtom:       prevAtom,
			chain:          1,
			parentChainIdx: i,
		}
		if c.chain > 1 {
			sub.parentChainIdx = i % c.chain
		}
		l, err := sub.handle(a.list)
		if err != nil {
			return nil, err
		}
		a.list = l
	}
	return args, nil
}
