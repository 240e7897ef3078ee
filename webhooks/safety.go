package webhooks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Outbound safety (SSRF). An endpoint's URL is checked when it is created or changed,
// and again at every connection: the dialer's Control function sees the address
// actually dialled, after DNS resolution, so a name that resolved to a public address
// at creation and to 127.0.0.1 later (DNS rebinding) is still refused. Refused unless
// WEBHOOK_ALLOW_PRIVATE=true: loopback, private (RFC 1918, fc00::/7), link-local
// (169.254.0.0/16, fe80::/10, the cloud metadata address 169.254.169.254 among them),
// carrier-grade NAT (100.64.0.0/10), the AWS IPv6 metadata address fd00:ec2::254,
// unspecified (0.0.0.0, ::), multicast and broadcast addresses, and IPv4 addresses
// written as IPv6 (::ffff:a.b.c.d, judged as the IPv4 address).

// ErrForbiddenAddress is wrapped by the errors of URLs and connections aimed at an
// address the rule above refuses.
var ErrForbiddenAddress = errors.New("webhook target address not allowed")

var cgnat = netip.MustParsePrefix("100.64.0.0/10")
var awsMetadata6 = netip.MustParseAddr("fd00:ec2::254")
var broadcast = netip.MustParseAddr("255.255.255.255")

// forbidden reports why ip may not be a webhook target ("" if it may).
func forbidden(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case !ip.IsValid():
		return "not an IP address"
	case ip.IsUnspecified():
		return "an unspecified address"
	case ip.IsLoopback():
		return "a loopback address"
	case ip == awsMetadata6, ip == netip.AddrFrom4([4]byte{169, 254, 169, 254}):
		return "a cloud metadata address"
	case ip.IsLinkLocalUnicast():
		return "a link-local address"
	case ip.IsPrivate():
		return "a private address"
	case ip.Is4() && cgnat.Contains(ip):
		return "a carrier-grade NAT address"
	case ip.IsMulticast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast(), ip == broadcast:
		return "a multicast or broadcast address"
	}
	return ""
}

// CheckURL checks an endpoint URL as given by an admin: absolute http or https, a host,
// no user info, at most 2,000 characters; unless allowPrivate, a host that is (or
// resolves, within a second, to) a refused address is refused. A name that does not
// resolve now is accepted: the dial-time check judges what it resolves to later.
// The error is a reason for the client (wrapping ErrForbiddenAddress for addresses).
func CheckURL(ctx context.Context, raw string, allowPrivate bool) error {
	if raw == "" {
		return errors.New("is required")
	}
	if len(raw) > 2000 {
		return errors.New("must be at most 2000 characters")
	}
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() {
		return errors.New("must be an absolute http or https URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("scheme %q is not allowed: only http and https", u.Scheme)
	}
	if u.User != nil {
		return errors.New("must not carry user info (user:password@)")
	}
	host := u.Hostname()
	if host == "" {
		return errors.New("must name a host")
	}
	if u.Fragment != "" {
		return errors.New("must not have a fragment (#...)")
	}
	if allowPrivate {
		return nil
	}
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		if why := forbidden(ip); why != "" {
			return fmt.Errorf("%w: %s is %s (set WEBHOOK_ALLOW_PRIVATE=true to allow it)", ErrForbiddenAddress, host, why)
		}
		return nil
	}
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return fmt.Errorf("%w: %s is a loopback name (set WEBHOOK_ALLOW_PRIVATE=true to allow it)", ErrForbiddenAddress, host)
	}
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
	if err != nil {
		return nil // unresolvable now: the dialer judges it when it resolves
	}
	for _, a := range addrs {
		if why := forbidden(a); why != "" {
			return fmt.Errorf("%w: %s resolves to %s, %s (set WEBHOOK_ALLOW_PRIVATE=true to allow it)", ErrForbiddenAddress, host, a, why)
		}
	}
	return nil
}

// dialControl is a net.Dialer Control function refusing connections to forbidden
// addresses: it runs after resolution, for each address the dialer tries.
func dialControl(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrForbiddenAddress, address)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("%w: %s is not an IP address", ErrForbiddenAddress, host)
	}
	if why := forbidden(ip); why != "" {
		return fmt.Errorf("%w: %s is %s", ErrForbiddenAddress, ip, why)
	}
	return nil
}
