package metrics

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// RedisHook counts every round trip a go-redis client makes as
// moat_redis_roundtrips_total{client=name}: each command sent on its own,
// and each pipeline or MULTI/EXEC block (sent and answered as one write
// and one read), whether Redis answered or not. Add it with
// client.AddHook(metrics.RedisHook("greylist")). The figure is what the
// benchmark divides by transactions to show how many times the SMTP path
// waits on Redis.
func RedisHook(name string) redis.Hook {
	return redisHook{RedisRoundTrips.WithLabelValues(name)}
}

type redisHook struct{ trips prometheus.Counter }

func (h redisHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h redisHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.trips.Inc()
		return next(ctx, cmd)
	}
}

func (h redisHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.trips.Inc()
		return next(ctx, cmds)
	}
}
