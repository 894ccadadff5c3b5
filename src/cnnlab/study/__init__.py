"""A study: the study file, planning and running its runs into the store, the progress display."""
