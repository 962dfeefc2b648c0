"""Experiment tracking outside the training process: TensorBoard event files and MLflow runs.

The worker runs `track_job` as an asyncio task beside each job. It follows the job's own event
stream (the same events the recorder and the WebSocket see), so tracking can never fail or
slow training: a slow or broken tracker only falls behind, and an unreachable MLflow becomes a
single `JobWarning` event.

Both trackers are optional extras: `pip install heimdall-training[tensorboard]` and
`heimdall-training[mlflow]`.
"""

from __future__ import annotations

from services.tracking.settings import TrackingSettings
from services.tracking.tracker import JobTrackers, delete_tracking, track_job

__all__ = ["JobTrackers", "TrackingSettings", "delete_tracking", "track_job"]
