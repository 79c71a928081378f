"""The one exception root of globaldns: every error of ours derives from it, and a bare one says its docstring."""


class GlobalDNSError(Exception):
    """globaldns failed."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or (self.__doc__,)))


class ConfigError(GlobalDNSError):
    """The configuration is invalid."""


class InvalidServiceEntry(GlobalDNSError):
    """The ServiceEntry is invalid."""


class SourceError(GlobalDNSError):
    """A ServiceEntry source failed."""


class UpstreamError(GlobalDNSError):
    """No upstream answered."""
