"""Errors the export CLI reports as one clear line and a non-zero exit."""


class ExportError(Exception):
    """A user-facing export failure: the message says what to do."""


class WeightsUnavailable(ExportError):
    """Pretrained weights could not be loaded (offline, or a bad checkpoint)."""


class ParityError(ExportError):
    """The exported model disagrees with eager torch beyond the tolerance."""


class ConfigMismatch(ExportError):
    """The committed config.pbtxt does not describe the exported model."""
