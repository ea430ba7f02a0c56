"""tsmeta: anomaly detection for many time series with meta-learned forecasters per cluster."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tsmeta")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
