"""The ``--alertmanager.*`` flags: a repeatable-flag action and their validation (stdlib only, so
that ``exporter.config`` can import it without the push path's dependencies)."""

from __future__ import annotations

import argparse
import re
from typing import Any, Callable
from urllib.parse import urlsplit

from . import httpauth

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: Labels the agent sets itself on a pushed alert; --alertmanager.label may not override them.
OWN_LABELS = ("alertname", "severity", "node", "gpu", "uuid", "xid", "namespace", "pod")


class Repeatable(argparse.Action):
    """``--flag a --flag b`` -> ["a", "b"]. The first use on the command line replaces the default,
    which may be the environment variable's comma-separated string."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, (current if isinstance(current, list) else []) + [values])


def values(raw: str | list[str] | None) -> tuple[str, ...]:
    """A repeatable flag's values: the command line's list, or the variable's comma-separated string."""
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else raw.split(",")
    return tuple(item.strip() for item in items if item.strip())


def validate(ns: argparse.Namespace, source: Callable[[str], str], node_name: str,
             simulate: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The Config fields of the push path, and the problems with them. ``simulate``: the node is
    the scenario's, which names it (the CLI sets it unless ``--kubernetes.node-name`` does)."""
    problems: list[str] = []
    urls = values(ns.alertmanager_urls)
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"{source('--alertmanager.url')}: {url!r} is not an http(s):// URL")
        elif parts.username is not None:
            # The URL is the alertmanager label of /metrics, which needs no password, and is logged.
            shown = parts._replace(netloc="<credentials>@" + parts.netloc.rpartition("@")[2]).geturl()
            problems.append(f"{source('--alertmanager.url')}: {shown!r} holds credentials, which would show in "
                            "/metrics and the logs: put username:password in --alertmanager.basic-auth-file")
    labels: list[tuple[str, str]] = []
    for item in values(ns.alertmanager_labels):
        name, sep, value = item.partition("=")
        if not sep or not _LABEL_NAME.match(name.strip()) or not value.strip():
            problems.append(f"{source('--alertmanager.label')}: {item!r} is not name=value with a Prometheus label name")
        elif name.strip() in OWN_LABELS:
            problems.append(f"{source('--alertmanager.label')}: {name.strip()!r} is set by the agent itself")
        else:
            labels.append((name.strip(), value.strip()))
    files = {dest: getattr(ns, dest) or None for dest in
             ("alertmanager_basic_auth_file", "alertmanager_bearer_token_file", "alertmanager_tls_ca_file")}
    problems += httpauth.file_problems(("--alertmanager.basic-auth-file", files["alertmanager_basic_auth_file"]),
                                       ("--alertmanager.bearer-token-file", files["alertmanager_bearer_token_file"]),
                                       ("--alertmanager.tls-ca-file", files["alertmanager_tls_ca_file"]), source)
    if urls and not node_name and not simulate:
        problems.append(f"{source('--alertmanager.url')}: pushed alerts name the node: set --kubernetes.node-name "
                        "(or NODE_NAME)")
    return {"alertmanager_urls": urls, "alertmanager_labels": tuple(labels), **files}, problems
