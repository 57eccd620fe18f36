"""Measuring: ``eval``, ``compare`` (every method chosen on validation, tested once), ``inspect``,
task presets and reports. Builds on training and inference."""
