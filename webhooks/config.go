package webhooks

import (
	"errors"
	"fmt"
	"time"
)

// Config is the webhooks' configuration, read from the WEBHOOK_* variables (cmd/ticketd
// embeds it in its own Config). Validate's messages name the variables.
type Config struct {
	// AllowPrivate lets endpoints target loopback, private, link-local and the other
	// refused addresses (see CheckURL): for tests and closed networks only.
	AllowPrivate bool `env:"WEBHOOK_ALLOW_PRIVATE" envDefault:"false"`
	// Timeout bounds one delivery attempt: connecting, sending, and the answer's
	// headers and (bounded) body. A slower endpoint's attempt fails.
	AttemptTimeout time.Duration `env:"WEBHOOK_TIMEOUT" envDefault:"10s"`
	// MaxAge is how long a delivery is retried after its event was recorded; an attempt
	// that fails after it marks the delivery failed.
	MaxAge time.Duration `env:"WEBHOOK_MAX_AGE" envDefault:"24h"`
	// BackoffMin is the wait after the first failed attempt; each further failure
	// doubles it (jittered: a random wait between half and all of it), up to BackoffMax.
	BackoffMin time.Duration `env:"WEBHOOK_BACKOFF_MIN" envDefault:"5s"`
	BackoffMax time.Duration `env:"WEBHOOK_BACKOFF_MAX" envDefault:"1h"`
	// DisableAfter is how many consecutive failed attempts (across the endpoint's
	// deliveries, since its last success) disable an endpoint; 0: never.
	DisableAfter int `env:"WEBHOOK_DISABLE_AFTER" envDefault:"50"`
	// Concurrency caps the attempts in flight in this process; EndpointConcurrency
	// those to one endpoint.
	Concurrency         int `env:"WEBHOOK_CONCURRENCY" envDefault:"64"`
	EndpointConcurrency int `env:"WEBHOOK_ENDPOINT_CONCURRENCY" envDefault:"16"`
	// DispatchPoll (a field name unique in ticketd's Config, as its error messages need) is how often the dispatcher looks for due deliveries when nothing
	// woke it (deliveries recorded by this process wake it at once).
	DispatchPoll time.Duration `env:"WEBHOOK_POLL_INTERVAL" envDefault:"1s"`
	// Retention is how long delivered and failed deliveries stay in the delivery log.
	Retention time.Duration `env:"WEBHOOK_RETENTION" envDefault:"168h"`
	// RotationGrace is how long a rotated-out secret keeps signing beside the new one
	// (a rotation may ask for less).
	RotationGrace time.Duration `env:"WEBHOOK_ROTATION_GRACE" envDefault:"24h"`
}

// Validate checks every value; each message names its variable.
func (c Config) Validate() error {
	var errs []error
	positive := func(name string, d time.Duration) {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be a positive duration, not %s", name, d))
		}
	}
	if c.AttemptTimeout <= 0 || c.AttemptTimeout > 5*time.Minute {
		errs = append(errs, fmt.Errorf("WEBHOOK_TIMEOUT must be from 1ms to 5m, not %s", c.AttemptTimeout))
	}
	positive("WEBHOOK_MAX_AGE", c.MaxAge)
	positive("WEBHOOK_BACKOFF_MIN", c.BackoffMin)
	positive("WEBHOOK_POLL_INTERVAL", c.DispatchPoll)
	positive("WEBHOOK_RETENTION", c.Retention)
	if c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("WEBHOOK_BACKOFF_MAX (%s) must be at least WEBHOOK_BACKOFF_MIN (%s)", c.BackoffMax, c.BackoffMin))
	}
	if c.RotationGrace < 0 {
		errs = append(errs, fmt.Errorf("WEBHOOK_ROTATION_GRACE must be 0 or more, not %s", c.RotationGrace))
	}
	if c.DisableAfter < 0 {
		errs = append(errs, fmt.Errorf("WEBHOOK_DISABLE_AFTER must be 0 (never) or more, not %d", c.DisableAfter))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("WEBHOOK_CONCURRENCY must be at least 1, not %d", c.Concurrency))
	}
	if c.EndpointConcurrency < 1 {
		errs = append(errs, fmt.Errorf("WEBHOOK_ENDPOINT_CONCURRENCY must be at least 1, not %d", c.EndpointConcurrency))
	}
	return errors.Join(errs...)
}

// withDefaults fills zero values with the defaults of the variables (for tests and
// callers that build a Config by hand).
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.AttemptTimeout, 10*time.Second)
	def(&c.MaxAge, 24*time.Hour)
	def(&c.BackoffMin, 5*time.Second)
	def(&c.BackoffMax, time.Hour)
	def(&c.DispatchPoll, time.Second)
	def(&c.Retention, 168*time.Hour)
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 64
	}
	if c.EndpointConcurrency <= 0 {
		c.EndpointConcurrency = 16
	}
	return c
}
