"""Generation pipelines: functions over an explicit loaded model; no global state."""
