package filters

import (
	"context"
	"reflect"
	"testing"
)

func TestSizeCheck(t *testing.T) {
	const limit = 1000
	reply := &Reply{Code: 552, Enhanced: "5.3.4", Text: "Message size exceeds fixed limit"}
	tests := []struct {
		name   string
		max    int64
		stage  Stage
		txn    Txn
		want   Result
		wantOK bool
	}{
		{name: "rcpt, nothing declared", max: limit, stage: StageRcpt, txn: Txn{}},
		{name: "rcpt, declared below", max: limit, stage: StageRcpt, txn: Txn{DeclaredSize: 999}},
		{name: "rcpt, declared at the limit", max: limit, stage: StageRcpt, txn: Txn{DeclaredSize: limit}},
		{
			name: "rcpt, declared above", max: limit, stage: StageRcpt, txn: Txn{DeclaredSize: 1001},
			want: Result{
				Check: "size", Value: Fail, Reason: "declared size 1001 bytes exceeds limit 1000",
				Fields: map[string]any{"declared_size": int64(1001), "limit": int64(limit)}, Reply: reply,
			},
			wantOK: true,
		},
		{
			name: "rcpt ignores the real size", max: limit, stage: StageRcpt, txn: Txn{Size: 5000},
		},
		{
			name: "data, below", max: limit, stage: StageData, txn: Txn{Size: 10},
			want: Result{Check: "size", Value: Pass}, wantOK: true,
		},
		{
			name: "data, at the limit", max: limit, stage: StageData, txn: Txn{Size: limit},
			want: Result{Check: "size", Value: Pass}, wantOK: true,
		},
		{
			name: "data, above", max: limit, stage: StageData, txn: Txn{Size: 1001},
			want: Result{
				Check: "size", Value: Fail, Reason: "message is 1001 bytes, limit 1000",
				Fields: map[string]any{"size": int64(1001), "limit": int64(limit)}, Reply: reply,
			},
			wantOK: true,
		},
		{
			name: "data ignores the declared size", max: limit, stage: StageData, txn: Txn{DeclaredSize: 5000, Size: 10},
			want: Result{Check: "size", Value: Pass}, wantOK: true,
		},
		{name: "no limit at rcpt", max: 0, stage: StageRcpt, txn: Txn{DeclaredSize: 1 << 40}},
		{
			name: "no limit at data", max: 0, stage: StageData, txn: Txn{Size: 1 << 40},
			want: Result{Check: "size", Value: Pass}, wantOK: true,
		},
		{name: "other stages say nothing", max: limit, stage: StageMail, txn: Txn{DeclaredSize: 5000, Size: 5000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewSize(tt.max)
			got, ok := c.Run(context.Background(), tt.stage, &tt.txn)
			if ok != tt.wantOK {
				t.Fatalf("Run ok = %v, want %v (result %+v)", ok, tt.wantOK, got)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Run = %+v\nwant  %+v", got, tt.want)
			}
		})
	}
}

func TestSizeCheckIdentity(t *testing.T) {
	c := NewSize(1)
	if c.Name() != "size" {
		t.Errorf("Name = %q, want size", c.Name())
	}
	if got, want := c.Stages(), []Stage{StageRcpt, StageData}; !reflect.DeepEqual(got, want) {
		t.Errorf("Stages = %v, want %v", got, want)
	}
}

// TestSizeReplyNotShared makes sure a caller that edits one result's reply
// does not change the next one.
func TestSizeReplyNotShared(t *testing.T) {
	c := NewSize(1)
	r1, _ := c.Run(context.Background(), StageData, &Txn{Size: 2})
	r1.Reply.Text = "changed"
	r2, _ := c.Run(context.Background(), StageData, &Txn{Size: 2})
	if r2.Reply.Text != "Message size exceeds fixed limit" {
		t.Errorf("second reply text = %q", r2.Reply.Text)
	}
}
