package bench

import (
	"math/rand/v2"
	"testing"
)

func TestParseRcptMix(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"1:50,2x:30,10:20", "1:50,2x:30,10:20", false},
		{" 1:1 , 3s:2 ", "1:1,3s:2", false},
		{"1:0,2:0", "", true},
		{"", "", true},
		{"1", "", true},
		{"0:5", "", true},
		{"x:5", "", true},
		{"2y:5", "", true},
		{"1:-1", "", true},
		{"1001:1", "", true},
	}
	for _, tt := range tests {
		m, err := ParseRcptMix(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseRcptMix(%q) err = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && m.String() != tt.want {
			t.Errorf("ParseRcptMix(%q) = %q, want %q", tt.in, m, tt.want)
		}
	}
}

func TestParseSizeMix(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{DefaultSizeMix, []int{1024, 64 << 10, 5 << 20}, false},
		{"512:1,2k:1,3K:1,1M:1,100B:1", []int{512, 2048, 3072, 1 << 20, 100}, false},
		{"0:1", nil, true},
		{"1GiB:1", nil, true},
		{"1KiB", nil, true},
		{"1KiB:x", nil, true},
		{"-5:1", nil, true},
	}
	for _, tt := range tests {
		m, err := ParseSizeMix(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseSizeMix(%q) err = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if len(m) != len(tt.want) {
			t.Fatalf("ParseSizeMix(%q) = %v", tt.in, m)
		}
		for i, c := range m {
			if c.Bytes != tt.want[i] {
				t.Errorf("ParseSizeMix(%q)[%d] = %d, want %d", tt.in, i, c.Bytes, tt.want[i])
			}
		}
	}
	if m, _ := ParseSizeMix(DefaultSizeMix); m.String() != DefaultSizeMix {
		t.Errorf("round trip: %q", m.String())
	}
}

func TestParseBackends(t *testing.T) {
	bes, err := ParseBackends("be1=a1@x, a2@x;be2=c1@x")
	if err != nil {
		t.Fatal(err)
	}
	if len(bes) != 2 || bes[0].Name != "be1" || len(bes[0].Addrs) != 2 || bes[1].Addrs[0] != "c1@x" {
		t.Errorf("got %+v", bes)
	}
	for _, bad := range []string{"", "be1", "=a@x", "be1=", "be1=a@x;be1=b@x", "be1=<a@x>", "be1=nodomain", "be1=a b@x"} {
		if _, err := ParseBackends(bad); err == nil {
			t.Errorf("ParseBackends(%q) accepted", bad)
		}
	}
}

func TestCheckMix(t *testing.T) {
	bes := []Backend{{"b1", []string{"a@x", "b@x"}}, {"b2", []string{"c@x"}}}
	tests := []struct {
		mix string
		ok  bool
	}{
		{"1:1", true},
		{"2x:1", true},
		{"3x:1", false}, // only two backends
		{"2s:1", false}, // b2 has one address
		{"3:1", false},  // 2 on one backend, b2 has only one
		{"2:1", true},
		{"3x:0,1:1", true}, // weight 0 never drawn
	}
	for _, tt := range tests {
		m, err := ParseRcptMix(tt.mix)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkMix(m, bes); (err == nil) != tt.ok {
			t.Errorf("checkMix(%q) = %v, want ok=%v", tt.mix, err, tt.ok)
		}
	}
}

func TestDrawRcpts(t *testing.T) {
	bes := []Backend{
		{"b1", []string{"a1@x", "a2@x", "a3@x", "a4@x", "a5@x"}},
		{"b2", []string{"c1@x", "c2@x", "c3@x", "c4@x", "c5@x"}},
		{"b3", []string{"d1@x", "d2@x", "d3@x", "d4@x", "d5@x"}},
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		for _, c := range []RcptClass{{1, SpreadAll, 1}, {3, SpreadDistinct, 1}, {2, SpreadDistinct, 1}, {4, SpreadSame, 1}, {10, SpreadAll, 1}} {
			got := drawRcpts(r, c, bes, nil)
			if len(got) != c.N {
				t.Fatalf("%d %s: %d recipients", i, c, len(got))
			}
			seen := map[string]bool{}
			perBE := map[int]int{}
			for _, rc := range got {
				if seen[rc.Addr] {
					t.Fatalf("%s: duplicate %s in %v", c, rc.Addr, got)
				}
				seen[rc.Addr] = true
				perBE[rc.Backend]++
				if rc.Addr[0] != "acd"[rc.Backend] {
					t.Fatalf("%s: %s is not on backend %d", c, rc.Addr, rc.Backend)
				}
			}
			switch c.Spread {
			case SpreadDistinct:
				if len(perBE) != c.N {
					t.Errorf("%s: backends %v", c, perBE)
				}
			case SpreadSame:
				if len(perBE) != 1 {
					t.Errorf("%s: backends %v", c, perBE)
				}
			case SpreadAll:
				for _, n := range perBE {
					if n > (c.N+2)/3 || (c.N >= 3 && len(perBE) != 3) {
						t.Errorf("%s: uneven %v", c, perBE)
					}
				}
			}
		}
	}
}
