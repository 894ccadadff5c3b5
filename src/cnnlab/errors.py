"""The one exception type for mistakes a user can fix."""


class CnnlabError(ValueError):
    """Bad input from the user: the CLI prints it as one line and exits with code 2.

    The message names what was wrong, where (file, key, line or value) and what would be valid.
    """
