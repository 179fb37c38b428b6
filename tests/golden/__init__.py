"""Golden schedule summaries: a fixed model set whose compiled summaries are stored and diffed."""
