"""The project's one exception type for user errors."""


class UserError(Exception):
    """Bad input from a user (params, data, paths, unreadable or corrupt files): stages print it as one line and
    exit 2. Anything else raised inside a stage is a bug and shows its traceback."""
