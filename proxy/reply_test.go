package proxy

import "testing"

func TestReplyWire(t *testing.T) {
	tests := []struct {
		r    *Reply
		want string
	}{
		{&Reply{Code: 250, Enhanced: "2.0.0", Text: "Ok"}, "250 2.0.0 Ok\r\n"},
		{&Reply{Code: 354, Text: "End data with <CR><LF>.<CR><LF>"}, "354 End data with <CR><LF>.<CR><LF>\r\n"},
		{&Reply{Code: 550, Enhanced: "5.7.1", Text: "first\nsecond\r\nthird"}, "550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n"},
		{&Reply{Code: 421, Text: ""}, "421 \r\n"},
		{&Reply{Code: 250, Lines: []string{"250-a", "250 b"}}, "250-a\r\n250 b\r\n"},
	}
	for _, tt := range tests {
		if got := tt.r.Wire(); got != tt.want {
			t.Errorf("Wire(%+v) = %q, want %q", tt.r, got, tt.want)
		}
	}
	if got := (&Reply{Code: 550, Enhanced: "5.7.1", Text: "a\nb"}).String(); got != "550-5.7.1 a / 550 5.7.1 b" {
		t.Errorf("String = %q", got)
	}
}
