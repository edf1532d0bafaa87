// Package cronexpr parses cron expressions and computes their next time.
// It is internal so that both reminder and cron can use it without an
// import cycle; cron re-exports it as cron.Schedule and cron.Parse.
package cronexpr

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrSyntax wraps every rejected expression.
var ErrSyntax = errors.New("cron: bad expression")

// Schedule is a parsed cron expression in a time zone.
type Schedule struct {
	expr     string
	loc      *time.Location
	second   bits
	minute   bits
	hour     bits
	dom      bits
	month    bits
	dow      bits
	domStar  bool
	dowStar  bool
	withSecs bool
}

// bits is a set of small numbers (0..63).
type bits uint64

func (b bits) has(n int) bool { return b&(1<<uint(n)) != 0 }

type field struct {
	name     string
	min, max int
	names    map[string]int
}

var (
	secondField = field{name: "second", min: 0, max: 59}
	minuteField = field{name: "minute", min: 0, max: 59}
	hourField   = field{name: "hour", min: 0, max: 23}
	domField    = field{name: "day of month", min: 1, max: 31}
	monthField  = field{name: "month", min: 1, max: 12, names: map[string]int{
		"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
		"jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
	}}
	// Day of week 7 is Sunday too, as in Vixie cron.
	dowField = field{name: "day of week", min: 0, max: 7, names: map[string]int{
		"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6,
	}}
)

var descriptors = map[string]string{
	"@yearly":   "0 0 1 1 *",
	"@annually": "0 0 1 1 *",
	"@monthly":  "0 0 1 * *",
	"@weekly":   "0 0 * * 0",
	"@daily":    "0 0 * * *",
	"@midnight": "0 0 * * *",
	"@hourly":   "0 * * * *",
}

// Parse parses a cron expression: five fields (minute hour day-of-month
// month day-of-week) or six (a leading second), each a list of values,
// ranges (a-b) and steps (*/n, a-b/n, a/n), with month and weekday names, or
// a descriptor (@yearly, @monthly, @weekly, @daily, @hourly). Day of month
// and day of week restrict together when both are given (Vixie cron: either
// matches). loc is the zone the fields are read in (nil: UTC).
func Parse(expr string, loc *time.Location) (*Schedule, error) {
	if loc == nil {
		loc = time.UTC
	}
	spec := strings.TrimSpace(expr)
	if strings.HasPrefix(spec, "@") {
		d, ok := descriptors[strings.ToLower(spec)]
		if !ok {
			return nil, fmt.Errorf("%w: unknown descriptor %q", ErrSyntax, spec)
		}
		spec = d
	}
	fs := strings.Fields(spec)
	s := &Schedule{expr: expr, loc: loc}
	switch len(fs) {
	case 5:
		s.second = 1 // second 0
	case 6:
		s.withSecs = true
		var err error
		if s.second, _, err = parseField(fs[0], secondField); err != nil {
			return nil, err
		}
		fs = fs[1:]
	default:
		return nil, fmt.Errorf("%w: %q has %d fields, want 5 or 6", ErrSyntax, expr, len(fs))
	}
	var err error
	if s.minute, _, err = parseField(fs[0], minuteField); err != nil {
		return nil, err
	}
	if s.hour, _, err = parseField(fs[1], hourField); err != nil {
		return nil, err
	}
	if s.dom, s.domStar, err = parseField(fs[2], domField); err != nil {
		return nil, err
	}
	if s.month, _, err = parseField(fs[3], monthField); err != nil {
		return nil, err
	}
	if s.dow, s.dowStar, err = parseField(fs[4], dowField); err != nil {
		return nil, err
	}
	if s.dow.has(7) {
		s.dow |= 1
	}
	if !s.possible() {
		return nil, fmt.Errorf("%w: %q never matches", ErrSyntax, expr)
	}
	return s, nil
}

// possible rejects day-of-month/month combinations that never occur (30 2 *),
// so Next never searches in vain.
func (s *Schedule) possible() bool {
	if !s.domStar && !s.dowStar {
		return true // either may match
	}
	days := [13]int{0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
	for m := 1; m <= 12; m++ {
		if !s.month.has(m) {
			continue
		}
		for d := 1; d <= days[m]; d++ {
			if s.dom.has(d) {
				return true
			}
		}
	}
	return false
}

// parseField parses one field; star reports a bare "*" or "?" (no
// restriction, for the day-of-month/day-of-week rule).
func parseField(f string, fd field) (bits, bool, error) {
	var set bits
	star := f == "*" || f == "?"
	for part := range strings.SplitSeq(f, ",") {
		lo, hi, step := fd.min, fd.max, 1
		rng, stepStr, hasStep := strings.Cut(part, "/")
		if hasStep {
			n, err := strconv.Atoi(stepStr)
			if err != nil || n <= 0 || n > fd.max {
				return 0, false, fmt.Errorf("%w: %s step %q", ErrSyntax, fd.name, stepStr)
			}
			step = n
		}
		switch {
		case rng == "*" || rng == "?":
		default:
			a, b, isRange := strings.Cut(rng, "-")
			var err error
			if lo, err = fd.value(a); err != nil {
				return 0, false, err
			}
			switch {
			case isRange:
				if hi, err = fd.value(b); err != nil {
					return 0, false, err
				}
				if hi < lo {
					return 0, false, fmt.Errorf("%w: %s range %q runs backwards", ErrSyntax, fd.name, rng)
				}
			case !hasStep:
				hi = lo
			}
		}
		for v := lo; v <= hi; v += step {
			set |= 1 << uint(v)
		}
	}
	return set, star, nil
}

func (fd field) value(s string) (int, error) {
	if v, ok := fd.names[strings.ToLower(s)]; ok {
		return v, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < fd.min || v > fd.max {
		return 0, fmt.Errorf("%w: %s %q out of %d-%d", ErrSyntax, fd.name, s, fd.min, fd.max)
	}
	return v, nil
}

// String returns the expression as given.
func (s *Schedule) String() string { return s.expr }

// Location returns the zone the expression is read in.
func (s *Schedule) Location() *time.Location { return s.loc }

func (s *Schedule) dayMatches(t time.Time) bool {
	dom, dow := s.dom.has(t.Day()), s.dow.has(int(t.Weekday()))
	if s.domStar || s.dowStar {
		return dom && dow
	}
	return dom || dow
}

// Next returns the first time strictly after t that the schedule matches,
// or the zero time if none within five years. Wall-clock times skipped by a
// daylight-saving change do not occur that day; a wall-clock time repeated
// by one matches once.
func (s *Schedule) Next(t time.Time) time.Time {
	t = t.In(s.loc)
	t = t.Add(time.Second - time.Duration(t.Nanosecond()))
	limit := t.Year() + 5
	for t.Year() <= limit {
		switch {
		case !s.month.has(int(t.Month())):
			t = s.forward(t, time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, s.loc))
		case !s.dayMatches(t):
			t = s.forward(t, time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, s.loc))
		case !s.hour.has(t.Hour()):
			// Absolute arithmetic from here down: moving by wall clock
			// inside a repeated hour could go backwards.
			t = t.Add(time.Hour - time.Duration(t.Minute())*time.Minute - time.Duration(t.Second())*time.Second)
		case !s.minute.has(t.Minute()):
			t = t.Add(time.Minute - time.Duration(t.Second())*time.Second)
		case !s.second.has(t.Second()):
			t = t.Add(time.Second)
		case s.hour != allHours && repeated(t):
			// The second pass of an hour repeated by a daylight-saving
			// change: a job at fixed hours ran in the first.
			t = t.Add(time.Hour - time.Duration(t.Minute())*time.Minute - time.Duration(t.Second())*time.Second)
		default:
			return t
		}
	}
	return time.Time{}
}

const allHours bits = 1<<24 - 1

// repeated reports whether t's wall-clock time already occurred earlier
// (the zone's offset fell back within the last few hours).
func repeated(t time.Time) bool {
	_, now := t.Zone()
	_, before := t.Add(-3 * time.Hour).Zone()
	if before <= now {
		return false
	}
	e := t.Add(-time.Duration(before-now) * time.Second)
	return e.Hour() == t.Hour() && e.Minute() == t.Minute() && e.Day() == t.Day()
}

// forward returns next unless a zone change made it no later than t (a
// midnight that does not exist), in which case it moves one hour.
func (s *Schedule) forward(t, next time.Time) time.Time {
	if next.After(t) {
		return next
	}
	return t.Add(time.Hour - time.Duration(t.Minute())*time.Minute - time.Duration(t.Second())*time.Second)
}
