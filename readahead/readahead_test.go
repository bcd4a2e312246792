package readahead

import "testing"

func TestAround(t *testing.T) {
	cases := []struct {
		index, ra, npages int64
		advice            Advice
		want              Window
	}{
		{1000, 32, 1 << 20, Normal, Window{984, 1016}}, // reference §1.4: a cold fault at 1000 reads [984, 1016)
		{0, 32, 1 << 20, Normal, Window{0, 16}},        // clipped at the start
		{10, 32, 1 << 20, Normal, Window{0, 26}},
		{99, 32, 100, Normal, Window{83, 100}}, // clipped at EOF
		{1000, 32, 1 << 20, Random, Window{1000, 1001}},
		{1000, 1, 1 << 20, Normal, Window{1000, 1001}},
		{1000, 32, 1 << 20, Sequential, Window{1000, 1064}},
		{0, 0, 1, Normal, Window{0, 1}},
		{1000, 33, 1 << 20, Normal, Window{984, 1017}},
	}
	for _, c := range cases {
		if got := Around(c.index, c.ra, c.npages, c.advice); got != c.want {
			t.Errorf("Around(%d, ra %d, npages %d, %v) = %v, want %v", c.index, c.ra, c.npages, c.advice, got, c.want)
		}
	}
}

func TestParseAdvice(t *testing.T) {
	for a := Normal; a <= DontNeed; a++ {
		if got, err := ParseAdvice(a.String()); err != nil || got != a {
			t.Errorf("ParseAdvice(%q) = %v, %v", a.String(), got, err)
		}
	}
	if _, err := ParseAdvice("often"); err == nil {
		t.Error("ParseAdvice accepted an unknown advice")
	}
}
