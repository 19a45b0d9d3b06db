package limitstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

func init() {
	// go-redis logs dial failures with the standard logger; send them to
	// Caddy's log at debug level (store errors are reported by ErrorLog).
	redis.SetLogger(redisLogger{})
}

type redisLogger struct{}

func (redisLogger) Printf(_ context.Context, format string, v ...any) {
	caddy.Log().Named("smtp.limitstore.redis").Debug(fmt.Sprintf(format, v...))
}

// redisStore keeps the counters in Redis. Every decision is one Lua
// script run atomically on the server, with the server's clock, so
// instances with skewed clocks still agree.
type redisStore struct {
	client  *redis.Client
	prefix  string
	timeout time.Duration
	name    string
}

func newRedis(cfg *Config) *redisStore {
	to := time.Duration(cfg.Timeout)
	c := redis.NewClient(&redis.Options{
		Addr:                  cfg.Address,
		Username:              cfg.Username,
		Password:              cfg.Password,
		DB:                    cfg.DB,
		DialTimeout:           to,
		ReadTimeout:           to,
		WriteTimeout:          to,
		MaxRetries:            1,
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
	})
	return &redisStore{client: c, prefix: cfg.KeyPrefix, timeout: to, name: "redis " + cfg.Address + "/" + strconv.Itoa(cfg.DB)}
}

func (r *redisStore) String() string  { return r.name }
func (r *redisStore) Destruct() error { return r.client.Close() }

func (r *redisStore) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx == nil {
		ctx = context.Background()
	}
	return context.WithTimeout(ctx, r.timeout)
}

// gcra: KEYS[1] bucket; ARGV window (µs), interval (µs per unit), cost,
// peek. Returns {ok, remaining}.
var gcraScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local nxt = tat + math.floor(cost * interval)
if nxt - now > window then
  return {0, tostring((window - (tat - now)) / interval)}
end
if ARGV[4] ~= '1' then
  redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1)
end
return {1, tostring((window - (nxt - now)) / interval)}
`)

func (r *redisStore) Take(ctx context.Context, key string, limit float64, window time.Duration, cost float64, peek bool) (bool, float64, error) {
	if limit <= 0 || window <= 0 {
		return false, 0, nil
	}
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	win := float64(window.Microseconds())
	p := "0"
	if peek {
		p = "1"
	}
	res, err := gcraScript.Run(ctx, r.client, []string{r.prefix + key},
		strconv.FormatInt(window.Microseconds(), 10),
		strconv.FormatFloat(win/limit, 'f', -1, 64),
		strconv.FormatFloat(cost, 'f', -1, 64), p).Slice()
	if err != nil {
		return false, 0, err
	}
	if len(res) != 2 {
		return false, 0, errors.New("unexpected reply from the rate script")
	}
	ok, _ := res[0].(int64)
	s, _ := res[1].(string)
	rem, _ := strconv.ParseFloat(s, 64)
	return ok == 1, rem, nil
}

// acquire: KEYS[1] set; ARGV member, limit, ttl (ms). Returns 1 or 0.
var acquireScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
`)

func (r *redisStore) Acquire(ctx context.Context, key, member string, limit int, ttl time.Duration) (bool, error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	n, err := acquireScript.Run(ctx, r.client, []string{r.prefix + key}, member, limit, ttl.Milliseconds()).Int()
	return n == 1, err
}

func (r *redisStore) Release(ctx context.Context, key, member string) error {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	return r.client.ZRem(ctx, r.prefix+key, member).Err()
}

func (r *redisStore) Delete(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = r.prefix + k
	}
	return r.client.Del(ctx, full...).Err()
}

func (r *redisStore) SetBan(ctx context.Context, key string, b Ban) error {
	ttl := time.Until(b.Until)
	if ttl <= 0 {
		return nil
	}
	v, err := json.Marshal(b)
	if err != nil {
		return err
	}
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	return r.client.Set(ctx, r.prefix+key, v, ttl).Err()
}

func (r *redisStore) GetBan(ctx context.Context, key string) (*Ban, error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	v, err := r.client.Get(ctx, r.prefix+key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var b Ban
	if err := json.Unmarshal(v, &b); err != nil {
		return nil, err
	}
	return &b, nil
}

func (r *redisStore) DeleteBan(ctx context.Context, key string) (bool, error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	n, err := r.client.Del(ctx, r.prefix+key).Result()
	return n > 0, err
}

func (r *redisStore) ListBans(ctx context.Context, prefix string) ([]Ban, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*r.timeout)
	defer cancel()
	var out []Ban
	iter := r.client.Scan(ctx, 0, globEscape(r.prefix+prefix)+"*", 500).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return nil, err
	}
	for len(keys) > 0 {
		n := min(len(keys), 500)
		vals, err := r.client.MGet(ctx, keys[:n]...).Result()
		if err != nil {
			return nil, err
		}
		for _, v := range vals {
			s, ok := v.(string)
			if !ok {
				continue // expired meanwhile
			}
			var b Ban
			if json.Unmarshal([]byte(s), &b) == nil {
				out = append(out, b)
			}
		}
		keys = keys[n:]
	}
	return out, nil
}

func globEscape(s string) string {
	var b strings.Builder
	for _, ch := range s {
		if strings.ContainsRune(`*?[]\^`, ch) {
			b.WriteByte('\\')
		}
		b.WriteRune(ch)
	}
	return b.String()
}
