"""Errors that fmhub reports to users as one clear line (the CLI prints them without a traceback)."""


class FmhubError(Exception):
    """A problem the user can fix: bad arguments, missing files, unknown models, unsafe checkpoints."""


class TrainingDiverged(FmhubError):
    """The loss or a gradient became NaN/Inf."""
