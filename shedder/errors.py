"""The one exception type for errors a user can cause (bad model id, wrong plan, empty text ...)."""


class ShedderError(Exception):
    """A problem with the user's input; the message says what to do about it."""
