"""Data sets: procedural and loaded data for the experiments (``genneg.data.traffic``, ...)."""
