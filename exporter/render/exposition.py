"""The exposition: both formats written in one pass over a registry, byte for byte what
client_python writes (``write``), and the bytes a scrape is answered with (``Exposition``).

client_python's ``generate_latest`` (text) and ``openmetrics.generate_latest`` check every metric
and label name character by character (UTF-8 name support, 0.22 and later) and collect the
registry once each: about 50 ms of CPU per cycle for the ~1,500 series of an 8-GPU node, most of
a cycle's Python work, and time the GIL is held while scrapes wait (docs/performance.md). Names
are few and repeat every cycle: here each is checked once, against the legacy name syntax, and
remembered, and the registry is collected once for both formats.

Only what the agent emits takes the fast path: gauge, counter, info and unknown families whose
names are legacy names, without timestamps, exemplars or native histograms. Anything else
(a histogram, a UTF-8 name) makes :func:`write` hand the whole registry to client_python, so
the output is always what client_python would write. ``tests/test_exposition.py`` holds the
two to the same bytes.

Each cycle writes and gzips OpenMetrics, what Prometheus asks for; the text format (and its gzip)
is written on its first request in that cycle, from the same sample lines, and kept for the rest
of it; a cycle after one whose text was asked for writes it at once too. A node that nobody scrapes
in text pays for one format per cycle instead of two (docs/performance.md).
"""

from __future__ import annotations

import gzip
import math
import re
import threading
from itertools import chain
from typing import Callable, Iterable

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

# No ':' (legal in metric names): client_python's OpenMetrics writer turns it into '_' in sample
# lines but not in HELP/TYPE; such a name takes the fallback.
_LEGACY_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_LEGACY_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_FAST_TYPES = {"gauge", "counter", "info", "unknown"}
_TEXT_TYPE = {"gauge": "gauge", "counter": "counter", "info": "gauge", "unknown": "untyped"}
_TEXT_SUFFIX = {"counter": "_total", "info": "_info"}
_NEEDS_ESCAPE = re.compile(r'[\\\n"]')


GZIP_LEVEL = 6  # the gzip default; level 9 costs ~2x the time for ~3% fewer bytes here
TEXT_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes
OPENMETRICS_CONTENT_TYPE = openmetrics.CONTENT_TYPE_LATEST


class Exposition:
    """One rendering, in every form a scrape may ask for: OpenMetrics and its gzip at once; the
    text format and its gzip when first asked for (``text_ready`` says whether that is done; the
    first asker can do it off the event loop), then kept. Safe to share between threads."""

    __slots__ = ("openmetrics", "openmetrics_gzip", "_write_text", "_text", "_text_gzip", "_asked", "_lock")

    def __init__(self, openmetrics: bytes, write_text: Callable[[], bytes]) -> None:
        self.openmetrics = openmetrics
        self.openmetrics_gzip = _gzip(openmetrics)
        self._write_text: Callable[[], bytes] | None = write_text
        self._text: bytes | None = None
        self._text_gzip: bytes | None = None
        self._asked = {False: False, True: False}  # gzipped -> whether the text format was asked for
        self._lock = threading.Lock()

    @classmethod
    def of(cls, registry: Collector, like: Exposition | None = None) -> Exposition:
        """``registry`` rendered; ``like``: the last cycle's, whose forms asked for are written now too."""
        exposition = cls(*_render(registry))
        if like is not None and like._asked[True]:
            exposition._written_text_gzip()  # now, in the cycle's thread
        elif like is not None and like._asked[False]:
            exposition._written_text()
        return exposition

    def text_ready(self, gzipped: bool) -> bool:
        return (self._text_gzip if gzipped else self._text) is not None

    @property
    def text(self) -> bytes:
        self._asked[False] = True
        return self._written_text()

    @property
    def text_gzip(self) -> bytes:
        self._asked[True] = True
        return self._written_text_gzip()

    def _written_text(self) -> bytes:
        if self._text is None:
            with self._lock:
                if self._text is None:
                    assert self._write_text is not None
                    self._text, self._write_text = self._write_text(), None
        return self._text

    def _written_text_gzip(self) -> bytes:
        if self._text_gzip is None:
            text = self._written_text()
            with self._lock:
                if self._text_gzip is None:
                    self._text_gzip = _gzip(text)
        return self._text_gzip


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, GZIP_LEVEL, mtime=0)


class _Fallback(Exception):
    """A family the fast path does not write exactly as client_python does."""


def write(registry: Collector) -> tuple[bytes, bytes]:
    """(text format 0.0.4, OpenMetrics 1.0.0) of ``registry``, as client_python writes them."""
    om, text = _render(registry)
    return text(), om


def _render(registry: Collector) -> tuple[bytes, Callable[[], bytes]]:
    """OpenMetrics 1.0.0 of ``registry``, and how to write the text format 0.0.4 of the same."""
    global _label_cache, _previous_label_cache
    families = list(registry.collect())
    # Label sets repeat from cycle to cycle: each rendering reuses the strings of the one before
    # and keeps only those it used, so the cache holds at most two cycles' label sets.
    _previous_label_cache, _label_cache = _label_cache, {}
    try:
        return _write(families)
    except _Fallback:
        replay = _Replay(families)
        return openmetrics.generate_latest(replay), lambda: generate_latest(replay)


class _Replay:
    """A collector that yields families already collected (a registry collected once)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _write(families: list[Metric]) -> tuple[bytes, Callable[[], bytes]]:
    """Both formats share their sample lines: OpenMetrics is joined now, the text format when asked."""
    text: list[str] = []  # each family's HELP and TYPE, then its sample lines (shared with om)
    om: list[str] = []
    for metric in families:
        mtype, name = metric.type, metric.name
        if mtype not in _FAST_TYPES or not _legacy_name(name):
            raise _Fallback
        text_name = name + _TEXT_SUFFIX.get(mtype, "")
        doc = metric.documentation
        text.append(f"# HELP {text_name} {_escape_text_help(doc)}\n# TYPE {text_name} {_TEXT_TYPE[mtype]}\n")
        om.append(f"# HELP {name} {_escape(doc)}\n# TYPE {name} {mtype}\n")
        if metric.unit:
            om.append(f"# UNIT {name} {metric.unit}\n")
        lines: list[str] = []
        for sample in metric.samples:
            if (sample.timestamp is not None or sample.exemplar or sample.native_histogram
                    or not _legacy_name(sample.name) or sample.name.endswith(("_created", "_gsum", "_gcount"))):
                raise _Fallback
            labels = sample.labels
            if labels:
                key = tuple(labels.items())
                label_str = _label_cache.get(key)
                if label_str is None:
                    label_str = _previous_label_cache.get(key) or _labels(labels)
                    _label_cache[key] = label_str
                line = f"{sample.name}{{{label_str}}} {_go_float(sample.value)}\n"
            else:
                line = f"{sample.name} {_go_float(sample.value)}\n"
            lines.append(line)
        block = "".join(lines)
        text.append(block)
        om.append(block)
    om.append("# EOF\n")
    return "".join(om).encode(), lambda: "".join(text).encode()


_label_cache: dict[tuple[tuple[str, str], ...], str] = {}
_previous_label_cache: dict[tuple[tuple[str, str], ...], str] = {}
_checked_names: dict[str, bool] = {}
_checked_labels: dict[str, bool] = {}


def _legacy_name(name: str) -> bool:
    ok = _checked_names.get(name)
    if ok is None:
        if len(_checked_names) > 10_000:  # names come from code, but stay bounded regardless
            _checked_names.clear()
        ok = _checked_names[name] = _LEGACY_NAME.match(name) is not None
    return ok


def _labels(labels: dict[str, str]) -> str:
    parts = []
    for key, value in sorted(labels.items()):
        ok = _checked_labels.get(key)
        if ok is None:
            if len(_checked_labels) > 10_000:  # pod label names are the operator's allowlist
                _checked_labels.clear()
            ok = _checked_labels[key] = _LEGACY_LABEL.match(key) is not None
        if not ok:
            raise _Fallback
        if _NEEDS_ESCAPE.search(value):
            value = _escape(value)
        parts.append(f'{key}="{value}"')
    return ",".join(parts)


def _escape_text_help(s: str) -> str:
    return s.replace("\\", r"\\").replace("\n", r"\n")


def _escape(s: str) -> str:
    return s.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _go_float(value: float) -> str:
    """prometheus_client.utils.floatToGoString."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if d != d:
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s
