"""Test doubles for what cannot run on the CPU machines that run CI (vLLM, which needs a GPU). Tests and tools
import them; production code never does (tests/test_architecture.py enforces it)."""
