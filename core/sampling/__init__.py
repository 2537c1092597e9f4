"""Noise schedules, the denoiser wrappers and the samplers that walk a schedule."""
