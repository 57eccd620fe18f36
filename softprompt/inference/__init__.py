"""Inference: the engine (many adapters of any form in one batch), one-off generation, the
OpenAI-compatible server and export to other tools. Imports core only, never training."""
