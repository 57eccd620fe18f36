"""The command line: argument parsing and printing over the library; nothing else."""

from softprompt.cli.main import main

__all__ = ["main"]
