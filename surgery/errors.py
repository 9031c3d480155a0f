"""The one exception type the CLI turns into a single clear error line."""


class SurgeryError(Exception):
    """A user-facing error: bad plan, bad model path, unsupported architecture, ...

    The CLI prints ``error: <message>`` on one line and exits non-zero; no traceback unless ``--debug``.
    """
