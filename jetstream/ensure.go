package jetstream

import (
	"context"
	"errors"
	"fmt"
	"slices"

	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Opening JetStream assets. Every process of a cluster opens the same
// buckets and streams, with settings from its own configuration; a client
// or a tool configured with one replica must not turn a cluster's R3 bucket
// into R1 (nats.go's CreateOrUpdate would). So an asset that exists is used
// as it is: only the features the code needs (per-message TTLs and their
// markers, message schedules, subjects) are added to it when missing.
// Replicas, storage, limits and retention are set when the asset is created,
// by whichever process creates it first, and changed by an operator only.

// EnsureStream returns the stream cfg.Name, creating it with cfg if it does
// not exist. An existing stream keeps its configuration, except that the
// subjects of cfg it lacks are added and AllowMsgTTL, AllowMsgSchedules,
// AllowAtomicPublish, AllowDirect and SubjectDeleteMarkerTTL are turned on
// if cfg has them and it does not.
// Mismatch, if not nil, hears about replicas or storage that differ from
// cfg's (to log them).
func EnsureStream(ctx context.Context, js natsjs.JetStream, cfg natsjs.StreamConfig, mismatch func(what string)) (natsjs.Stream, error) {
	st, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, natsjs.ErrStreamNotFound) {
		st, err = js.CreateStream(ctx, cfg)
		if errors.Is(err, natsjs.ErrStreamNameAlreadyInUse) { // created meanwhile by another process
			st, err = js.Stream(ctx, cfg.Name)
		}
		if err != nil {
			return nil, fmt.Errorf("create stream %s: %w", cfg.Name, err)
		}
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	have := st.CachedInfo().Config
	if mismatch != nil {
		if have.Replicas != cfg.Replicas && cfg.Replicas != 0 {
			mismatch(fmt.Sprintf("stream %s has %d replicas, configured %d: kept (change it with the nats CLI)", cfg.Name, have.Replicas, cfg.Replicas))
		}
		if have.Storage != cfg.Storage {
			mismatch(fmt.Sprintf("stream %s has %s storage, configured %s: kept", cfg.Name, have.Storage, cfg.Storage))
		}
	}
	want, changed := have, false
	for _, s := range cfg.Subjects {
		if !slices.Contains(want.Subjects, s) {
			want.Subjects = append(slices.Clone(want.Subjects), s)
			changed = true
		}
	}
	if cfg.AllowMsgTTL && !want.AllowMsgTTL {
		want.AllowMsgTTL, changed = true, true
	}
	if cfg.AllowMsgSchedules && !want.AllowMsgSchedules {
		want.AllowMsgSchedules, changed = true, true
	}
	if cfg.AllowAtomicPublish && !want.AllowAtomicPublish {
		want.AllowAtomicPublish, changed = true, true
	}
	if cfg.AllowDirect && !want.AllowDirect {
		want.AllowDirect, changed = true, true
	}
	if cfg.SubjectDeleteMarkerTTL > 0 && want.SubjectDeleteMarkerTTL == 0 {
		want.SubjectDeleteMarkerTTL, changed = cfg.SubjectDeleteMarkerTTL, true
	}
	if !changed {
		return st, nil
	}
	if st, err = js.UpdateStream(ctx, want); err != nil {
		return nil, fmt.Errorf("update stream %s with the features natsmesh needs: %w", cfg.Name, err)
	}
	return st, nil
}

// EnsureKeyValue returns the KV bucket cfg.Bucket, creating it with cfg if
// it does not exist. An existing bucket keeps its configuration, except
// that per-key TTLs and limit markers (LimitMarkerTTL) are turned on if cfg
// has them and it does not. Mismatch is as for EnsureStream.
func EnsureKeyValue(ctx context.Context, js natsjs.JetStream, cfg natsjs.KeyValueConfig, mismatch func(what string)) (natsjs.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, natsjs.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, natsjs.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, cfg.Bucket)
		}
		if err != nil {
			return nil, fmt.Errorf("create bucket %s: %w", cfg.Bucket, err)
		}
		return kv, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
	}
	replicas := max(cfg.Replicas, 1)
	marker := cfg.LimitMarkerTTL
	_, err = EnsureStream(ctx, js, natsjs.StreamConfig{
		Name:                   "KV_" + cfg.Bucket,
		Replicas:               replicas,
		Storage:                cfg.Storage,
		AllowMsgTTL:            marker > 0,
		SubjectDeleteMarkerTTL: marker,
	}, mismatch)
	if err != nil {
		return nil, err
	}
	return kv, nil
}

// EnsureObjectStore returns the object store cfg.Bucket, creating it with
// cfg if it does not exist; an existing one keeps its configuration.
func EnsureObjectStore(ctx context.Context, js natsjs.JetStream, cfg natsjs.ObjectStoreConfig) (natsjs.ObjectStore, error) {
	obj, err := js.ObjectStore(ctx, cfg.Bucket)
	if errors.Is(err, natsjs.ErrBucketNotFound) || errors.Is(err, natsjs.ErrStreamNotFound) {
		obj, err = js.CreateObjectStore(ctx, cfg)
		if errors.Is(err, natsjs.ErrBucketExists) || errors.Is(err, natsjs.ErrStreamNameAlreadyInUse) {
			obj, err = js.ObjectStore(ctx, cfg.Bucket)
		}
		if err != nil {
			return nil, fmt.Errorf("create object store %s: %w", cfg.Bucket, err)
		}
		return obj, nil
	}
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", cfg.Bucket, err)
	}
	return obj, nil
}
