// Package greylist will hold greylisting: the triplet key (client network,
// normalised sender, recipient), the retry and lifetime rules, and the
// bolt, memory and Redis stores behind one interface. Policy key:
// checks.greylist; config keys: greylist.store, redis.addr. Until it lands,
// a policy that enables greylisting gets a "not implemented" warning from
// moat check.
package greylist
