"""The engine: models, checkpoint loading, samplers and generation pipelines. No UI imports."""
