"""``corral ui``: a small web dashboard served from the job store (see :mod:`.server`)."""
