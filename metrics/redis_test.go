package metrics

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"moat/internal/redistest"
)

// TestRedisHook counts against a real redis-server: a command is one
// round trip, a pipeline of three is one, a MULTI/EXEC block is one, and
// a command Redis refuses still went there and back. Each step runs once
// before it is counted: opening a connection (HELLO) is a round trip too,
// but a steady pool does not open any.
func TestRedisHook(t *testing.T) {
	addr := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{
		Addr:                     addr,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	defer rdb.Close()
	rdb.AddHook(RedisHook("test"))
	c := RedisRoundTrips.WithLabelValues("test")
	ctx := context.Background()

	steps := []struct {
		name string
		do   func() error
		want float64
	}{
		{"SET", func() error { return rdb.Set(ctx, "k", "v", 0).Err() }, 1},
		{"pipeline of 3", func() error {
			_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				p.Get(ctx, "k")
				p.Incr(ctx, "n")
				p.Get(ctx, "n")
				return nil
			})
			return err
		}, 1},
		{"MULTI/EXEC", func() error {
			_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Incr(ctx, "n")
				p.Incr(ctx, "n")
				return nil
			})
			return err
		}, 1},
		{"refused command", func() error {
			if err := rdb.Incr(ctx, "k").Err(); err == nil {
				t.Error("INCR of a string: want an error")
			}
			return nil
		}, 1},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		before := testutil.ToFloat64(c)
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := testutil.ToFloat64(c) - before; got != s.want {
			t.Errorf("%s: %v round trips counted, want %v", s.name, got, s.want)
		}
	}
}
