"""Network definitions whose module names mirror the single-file checkpoint keys."""
