"""Hides the installed ai-edge-litert, as on a host that has only tflite-runtime 2.14."""

raise ImportError("ai_edge_litert is hidden by tests/stubs/no_litert (a tflite-runtime-only host)")
