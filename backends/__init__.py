"""Codegen backends: a validated Program -> an artifact (`lpu`: the .lpu file; `text`: a listing)."""
