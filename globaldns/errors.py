"""The one exception root of globaldns; each docstring is the message."""


class GlobalDNSError(Exception):
    """globaldns failed."""


class ConfigError(GlobalDNSError):
    """The configuration is invalid."""


class InvalidServiceEntry(GlobalDNSError):
    """The ServiceEntry is invalid."""


class SourceError(GlobalDNSError):
    """A ServiceEntry source failed."""


class UpstreamError(GlobalDNSError):
    """No upstream answered."""
