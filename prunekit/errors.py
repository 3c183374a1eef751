"""The one exception a user can cause."""


class PrunekitError(Exception):
    """A mistake in what the user asked for: one sentence that says what to do. The CLI exits 2."""
