package cronexpr

import (
	"errors"
	"testing"
	"time"
)

func mustLoc(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Skipf("no zone data for %s: %v", name, err)
	}
	return loc
}

func TestNext(t *testing.T) {
	utc := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name, expr, from, want string
	}{
		{"every minute", "* * * * *", "2026-01-01T10:00:00Z", "2026-01-01T10:01:00Z"},
		{"mid-minute", "* * * * *", "2026-01-01T10:00:30Z", "2026-01-01T10:01:00Z"},
		{"every 15 min", "*/15 * * * *", "2026-01-01T10:07:00Z", "2026-01-01T10:15:00Z"},
		{"seconds", "*/10 * * * * *", "2026-01-01T10:00:05Z", "2026-01-01T10:00:10Z"},
		{"hour wrap", "30 9 * * *", "2026-01-01T10:00:00Z", "2026-01-02T09:30:00Z"},
		{"month names", "0 0 1 feb,Mar *", "2026-01-15T00:00:00Z", "2026-02-01T00:00:00Z"},
		{"weekday names", "0 9 * * MON-FRI", "2026-01-03T12:00:00Z", "2026-01-05T09:00:00Z"}, // Sat -> Mon
		{"sunday as 7", "0 0 * * 7", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"},
		{"dom or dow", "0 0 13 * 5", "2026-02-01T00:00:00Z", "2026-02-06T00:00:00Z"}, // Fri 6th before the 13th
		{"leap day", "0 0 29 2 *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00Z"},
		{"range step", "0 8-18/5 * * *", "2026-01-01T09:00:00Z", "2026-01-01T13:00:00Z"},
		{"start step", "5/20 * * * *", "2026-01-01T10:26:00Z", "2026-01-01T10:45:00Z"},
		{"hourly", "@hourly", "2026-01-01T10:59:59Z", "2026-01-01T11:00:00Z"},
		{"yearly", "@yearly", "2026-06-01T00:00:00Z", "2027-01-01T00:00:00Z"},
		{"year end", "59 23 31 12 *", "2026-12-31T23:59:00Z", "2027-12-31T23:59:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse(tt.expr, nil)
			if err != nil {
				t.Fatalf("Parse(%q) = %v", tt.expr, err)
			}
			if got := s.Next(utc(tt.from)); !got.Equal(utc(tt.want)) {
				t.Fatalf("Next(%s) of %q = %v, want %s", tt.from, tt.expr, got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, expr := range []string{
		"", "* * * *", "* * * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *",
		"* * * 13 *", "* * * * 8", "5-1 * * * *", "*/0 * * * *", "*/x * * * *",
		"a * * * *", "@every 5s", "@often", "0 0 30 2 *", "1,,2 * * * *",
	} {
		if _, err := Parse(expr, nil); !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) = %v, want ErrSyntax", expr, err)
		}
	}
}

// Daylight saving in New York: 2026-03-08 02:00 EST jumps to 03:00 EDT;
// 2026-11-01 02:00 EDT falls back to 01:00 EST.
func TestNextDaylightSaving(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	s, err := Parse("30 2 * * *", ny)
	if err != nil {
		t.Fatal(err)
	}
	// 02:30 does not exist on 8 March: the next run is on the 9th.
	got := s.Next(time.Date(2026, 3, 8, 0, 0, 0, 0, ny))
	if want := time.Date(2026, 3, 9, 2, 30, 0, 0, ny); !got.Equal(want) {
		t.Fatalf("spring forward: Next = %v, want %v", got, want)
	}
	// 01:30 happens twice on 1 November: it matches once.
	s, _ = Parse("30 1 * * *", ny)
	first := s.Next(time.Date(2026, 11, 1, 0, 0, 0, 0, ny))
	second := s.Next(first)
	if first.Day() != 1 || second.Day() != 2 {
		t.Fatalf("fall back: runs at %v then %v, want once on the 1st then the 2nd", first, second)
	}
	// Every 10 minutes keeps going through the repeated hour, forwards.
	s, _ = Parse("*/10 * * * *", ny)
	at := time.Date(2026, 11, 1, 0, 55, 0, 0, ny)
	for range 20 {
		n := s.Next(at)
		if !n.After(at) || n.Sub(at) > 10*time.Minute {
			t.Fatalf("Next(%v) = %v: not within 10 minutes after", at, n)
		}
		at = n
	}
}

// Next agrees with a minute-by-minute scan: it is after t, it matches, and
// no earlier minute after t matches.
func FuzzNext(f *testing.F) {
	f.Add("*/7 3-5 * * *", int64(1767225600))
	f.Add("0 0 13 * 5", int64(1767225600))
	f.Add("15,45 */2 1-10 jan-jun mon,wed", int64(1780000000))
	f.Fuzz(func(t *testing.T, expr string, unix int64) {
		s, err := Parse(expr, nil)
		if err != nil || s.withSecs {
			return
		}
		from := time.Unix(unix%4e9, 0).UTC()
		got := s.Next(from)
		if got.IsZero() {
			return
		}
		if !got.After(from) || got.Second() != 0 || !s.matches(got) {
			t.Fatalf("Next(%v) of %q = %v: not a later matching minute", from, expr, got)
		}
		// Scan at most two days of minutes before it.
		m := from.Truncate(time.Minute).Add(time.Minute)
		for i := 0; i < 2*24*60 && m.Before(got); i++ {
			if s.matches(m) {
				t.Fatalf("Next(%v) of %q = %v, but %v matches earlier", from, expr, got, m)
			}
			m = m.Add(time.Minute)
		}
	})
}

func (s *Schedule) matches(t time.Time) bool {
	t = t.In(s.loc)
	return s.month.has(int(t.Month())) && s.dayMatches(t) && s.hour.has(t.Hour()) &&
		s.minute.has(t.Minute()) && s.second.has(t.Second())
}
