"""Where results live: the run directory, its journal, resume, best factors."""
