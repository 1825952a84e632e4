"""One log line per event: `<UTC time> <level> <logger>: <event> key=value ...`."""

import logging
import time


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_UTCFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.error").setLevel(max(root.level, logging.INFO))
    logging.getLogger("httpx").setLevel(max(root.level, logging.WARNING))  # one line per request otherwise
