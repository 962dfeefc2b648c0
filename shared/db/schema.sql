-- Heimdall schema, version 1. Every statement is idempotent: migrations run at every start-up.
-- training_jobs and training_metrics follow the seed column for column (TIMESTAMP = naive UTC);
-- the extra columns at their ends are the project's.

CREATE TABLE IF NOT EXISTS training_jobs (
    id UUID PRIMARY KEY,
    job_name VARCHAR(255) NOT NULL,
    celery_task_id VARCHAR(255) UNIQUE,
    status VARCHAR(50) DEFAULT 'pending',
    created_at TIMESTAMP,
    started_at TIMESTAMP,
    completed_at TIMESTAMP,

    config JSONB NOT NULL,

    current_epoch INTEGER DEFAULT 0,
    total_epochs INTEGER NOT NULL,
    progress_percent FLOAT DEFAULT 0.0,

    train_loss FLOAT,
    val_loss FLOAT,
    train_accuracy FLOAT,
    val_accuracy FLOAT,
    learning_rate FLOAT,

    best_epoch INTEGER,
    best_val_loss FLOAT,

    checkpoint_path VARCHAR(512),
    onnx_model_path VARCHAR(512),
    mlflow_run_id VARCHAR(255),

    error_message TEXT,

    dataset_size INTEGER,
    train_samples INTEGER,
    val_samples INTEGER,
    model_architecture VARCHAR(100)
);

ALTER TABLE training_jobs ADD COLUMN IF NOT EXISTS dataset VARCHAR(100);
ALTER TABLE training_jobs ADD COLUMN IF NOT EXISTS current_batch INTEGER;
ALTER TABLE training_jobs ADD COLUMN IF NOT EXISTS total_batches INTEGER;
ALTER TABLE training_jobs ADD COLUMN IF NOT EXISTS gradient_norm FLOAT;
ALTER TABLE training_jobs ADD COLUMN IF NOT EXISTS last_event_id VARCHAR(40);
ALTER TABLE training_jobs ADD COLUMN IF NOT EXISTS updated_at TIMESTAMP;
-- Issue 15: the test set's size, and what picked the best epoch (config.monitor, or train_loss
-- without validation) with the best epoch's value of it.
ALTER TABLE training_jobs ADD COLUMN IF NOT EXISTS test_samples INTEGER;
ALTER TABLE training_jobs ADD COLUMN IF NOT EXISTS monitor VARCHAR(20);
ALTER TABLE training_jobs ADD COLUMN IF NOT EXISTS best_value FLOAT;

CREATE INDEX IF NOT EXISTS training_jobs_created_idx ON training_jobs (created_at DESC, id);
CREATE INDEX IF NOT EXISTS training_jobs_status_idx ON training_jobs (status, created_at DESC);

-- Per-epoch rows have phase 'epoch' and batch NULL; per-batch rows phase 'train' (or 'val').
CREATE TABLE IF NOT EXISTS training_metrics (
    timestamp TIMESTAMP NOT NULL,
    id UUID NOT NULL,
    training_job_id UUID REFERENCES training_jobs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    batch INTEGER,

    train_loss FLOAT,
    val_loss FLOAT,
    train_accuracy FLOAT,
    val_accuracy FLOAT,
    learning_rate FLOAT,
    gradient_norm FLOAT,

    phase VARCHAR(20),

    PRIMARY KEY (timestamp, id)
);

ALTER TABLE training_metrics ADD COLUMN IF NOT EXISTS epoch_time_s FLOAT;

CREATE INDEX IF NOT EXISTS training_metrics_job_idx
    ON training_metrics (training_job_id, phase, epoch, batch);

-- Per-class evaluations (EvaluationCompleted): validation after every epoch, the test set once
-- (epoch = the best epoch, whose weights were tested). One row per (job, phase, epoch): a
-- worker that re-runs a job's end after a crash emits the test evaluation again, and the first
-- one stays (so does its phase 'test' row in training_metrics, written only with a new row here).
CREATE TABLE IF NOT EXISTS training_evaluations (
    training_job_id UUID NOT NULL REFERENCES training_jobs(id) ON DELETE CASCADE,
    phase VARCHAR(10) NOT NULL,
    epoch INTEGER NOT NULL,
    event_id VARCHAR(40) NOT NULL,
    timestamp TIMESTAMP NOT NULL,
    classes JSONB NOT NULL,
    confusion_matrix JSONB NOT NULL,
    per_class JSONB NOT NULL,
    accuracy_by_snr JSONB NOT NULL,
    accuracy FLOAT NOT NULL,
    macro_f1 FLOAT NOT NULL,
    loss FLOAT,
    samples INTEGER NOT NULL,
    PRIMARY KEY (training_job_id, phase, epoch)
);

-- Every event a job emitted, in order, for replay and resume. event_id is the Redis stream id;
-- (id_ms, id_seq) order it numerically.
CREATE TABLE IF NOT EXISTS training_events (
    event_id VARCHAR(40) PRIMARY KEY,
    id_ms BIGINT NOT NULL,
    id_seq INTEGER NOT NULL,
    training_job_id UUID NOT NULL REFERENCES training_jobs(id) ON DELETE CASCADE,
    type VARCHAR(40) NOT NULL,
    timestamp TIMESTAMP NOT NULL,
    payload JSONB NOT NULL
);

CREATE INDEX IF NOT EXISTS training_events_job_idx
    ON training_events (training_job_id, id_ms, id_seq);

CREATE TABLE IF NOT EXISTS datasets (
    name VARCHAR(100) PRIMARY KEY,
    description TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);

CREATE TABLE IF NOT EXISTS recordings (
    id UUID PRIMARY KEY,
    dataset VARCHAR(100) NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
    path VARCHAR(1024) NOT NULL,
    label VARCHAR(100) NOT NULL,
    snr_db FLOAT,
    approved BOOLEAN NOT NULL DEFAULT TRUE,
    sample_rate INTEGER NOT NULL,
    duration_s FLOAT NOT NULL,
    channels INTEGER NOT NULL DEFAULT 1,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);

CREATE INDEX IF NOT EXISTS recordings_dataset_idx ON recordings (dataset, label);
-- SHA-256 of the recording's bytes (SigMF: metadata then data), so a worker's cached copy of
-- an object in storage is checked against what was imported. NULL on rows older than it.
ALTER TABLE recordings ADD COLUMN IF NOT EXISTS sha256 TEXT;

CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
-- The checksum of this file when it was applied: start-ups with the same file skip the DDL.
ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum TEXT;

-- The read-optimised form of every (job, phase) metric series, kept by the recorder in the
-- same transaction as the training_metrics rows (see shared/metric_series.py): packed points
-- sorted per chunk, and per-block rollups for downsampling. Points are uncompressed binary
-- (EXTERNAL: compression gains nothing on doubles and costs on every read).
CREATE TABLE IF NOT EXISTS metric_chunks (
    training_job_id UUID NOT NULL REFERENCES training_jobs(id) ON DELETE CASCADE,
    phase VARCHAR(20) NOT NULL,
    epoch INTEGER NOT NULL,
    part INTEGER NOT NULL,
    n INTEGER NOT NULL,
    points BYTEA NOT NULL,
    blocks BYTEA NOT NULL,
    PRIMARY KEY (training_job_id, phase, epoch, part)
);
ALTER TABLE metric_chunks ALTER COLUMN points SET STORAGE EXTERNAL;
ALTER TABLE metric_chunks ALTER COLUMN blocks SET STORAGE EXTERNAL;
