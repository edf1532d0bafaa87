package cron_test

import (
	"fmt"
	"time"

	"github.com/natsmesh/natsmesh/cron"
)

func ExampleParse() {
	s, err := cron.Parse("30 9 * * MON-FRI", time.UTC) // 09:30 on weekdays
	if err != nil {
		panic(err)
	}
	t := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC) // a Friday, after 09:30
	for range 3 {
		t = s.Next(t)
		fmt.Println(t.Format("Mon 2 Jan 15:04"))
	}
	// Output:
	// Mon 23 Nov 09:30
	// Tue 24 Nov 09:30
	// Wed 25 Nov 09:30
}
