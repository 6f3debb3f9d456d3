"""The installed usvc version, for metrics, spans and ``usvc.__version__``."""

from importlib.metadata import PackageNotFoundError, version

try:
    USVC_VERSION = version("usvc")
except PackageNotFoundError:  # running from a source tree
    USVC_VERSION = "0+unknown"
