"""Compile a route's ``versions``: upstream URLs, extra headers, Host and TLS per version.

Everything that ends up on the wire to a model server is checked here, once, when the config
loads: a CR or LF in a URL, header or Host would inject into every upstream request.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .problems import Problems, join
from .registry import Registry
from .snapshot import GrpcTls, Version


def compile_versions(p: Problems, path: str, raw: Any, registry: Registry, model: str | None,
                     base: Path) -> tuple[dict[str, Version], dict[str, Any] | None]:
    """The route's compiled versions, and the ``versions`` mapping as written (None when it is
    not a mapping). A version listed but not compiled has been reported."""
    vspec = p.mapping(path, raw)
    if vspec is not None and not vspec:
        p.error(path, "must list at least one version")
    versions: dict[str, Version] = {}
    for vname, vraw in (vspec or {}).items():
        vpath = join(path, str(vname))
        if p.name(vpath, vname) is None:
            continue
        if model is not None and model in registry.models and \
                registry.version(model, vname) is None:
            p.error(vpath, f"version '{vname}' of model '{model}' is not in the registry")
        version = _version(p, vpath, vname, vraw, registry, model, base)
        if version is not None:
            versions[vname] = version
    return versions, vspec


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")      # an HTTP header name (RFC 9110)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")          # CR, LF, NUL...; tab is allowed


def _control(text: str) -> str | None:
    """The name of the first control character in ``text`` (it would end a header line or
    the request line sent upstream and start one of its own), or None."""
    found = _CONTROL.search(text)
    if found is None:
        return None
    char = found.group()
    return {"\r": "CR", "\n": "LF", "\x00": "NUL"}.get(char, f"control character {char!r}")


def _url(p: Problems, path: str, raw: Any) -> str | None:
    url = p.string(path, raw)
    if url is None:
        return None
    # urlsplit quietly drops CR, LF and tab; the URL sent upstream would still carry them.
    if (bad := _control(url)) is not None or any(c in url for c in " \t"):
        p.error(path, f"URL contains {bad or 'whitespace'}; it would inject into every "
                "upstream request")
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        p.error(path, f"invalid URL {url!r}: {exc}")
        return None
    if parts.scheme not in ("http", "https"):
        p.error(path, f"URL must be http or https, got {url!r}")
        return None
    if not parts.hostname:
        p.error(path, f"URL has no host: {url!r}")
        return None
    if port == 0:
        p.error(path, f"URL port must be 1-65535: {url!r}")
        return None
    if parts.query or parts.fragment:
        p.error(path, f"URL must not carry a query or fragment: {url!r}")
        return None
    return url.rstrip("/")


def _tls(p: Problems, path: str, raw: Any, base: Path,
         ) -> tuple[ssl.SSLContext, GrpcTls] | None:
    """The version's TLS: a context for HTTP, and the same files as PEM bytes for gRPC."""
    spec = p.mapping(path, raw, ("ca_file", "cert_file", "key_file"))
    if not spec:
        return None
    files = {k: p.string(join(path, k), v) for k, v in spec.items()}
    if bool(files.get("cert_file")) != bool(files.get("key_file")):
        p.error(path, "cert_file and key_file go together")
        return None
    ca, cert, key = files.get("ca_file"), files.get("cert_file"), files.get("key_file")
    try:
        ctx = ssl.create_default_context(cafile=str(base / ca) if ca else None)
        if cert and key:
            ctx.load_cert_chain(str(base / cert), str(base / key))
        pem = GrpcTls(*((base / f).read_bytes() if f else None for f in (ca, cert, key)))
    except (OSError, ssl.SSLError) as exc:
        p.error(path, f"cannot load TLS files: {exc}")
        return None
    return ctx, pem


def _grpc(p: Problems, path: str, raw: Any) -> str | None:
    """A gRPC address, ``host:port`` (no scheme: TLS follows the version's ``tls``)."""
    address = p.string(path, raw)
    if address is None:
        return None
    host, sep, port = address.rpartition(":")
    if (bad := _control(address)) is not None or not sep or not host or not port.isdigit() \
            or not 0 < int(port) < 65536 or any(c in address for c in " \t/?#@"):
        p.error(path, f"must be host:port, got {bad or repr(address)}")
        return None
    return address


def _grpc_model(url: str) -> tuple[str, str]:
    """The model (and version) a V2 url serves: ``.../v2/models/NAME[/versions/V]``, else
    the url's last path segment and no version."""
    parts = [s for s in urlsplit(url).path.split("/") if s]
    if len(parts) >= 2 and parts[-2] == "versions" and len(parts) >= 4 \
            and parts[-4] == "models":
        return parts[-3], parts[-1]
    return (parts[-1] if parts else ""), ""


def _version(p: Problems, path: str, name: str, raw: Any, registry: Registry,
             model: str | None, base: Path) -> Version | None:
    spec = p.mapping(path, raw, ("url", "urls", "headers", "host", "tls", "grpc"))
    if spec is None:
        return None
    urls: list[str] = []
    if ("url" in spec) == ("urls" in spec):
        p.error(path, "give exactly one of url or urls")
    elif "url" in spec:
        if (u := _url(p, join(path, "url"), spec["url"])) is not None:
            urls.append(u)
    else:
        items = p.sequence(join(path, "urls"), spec["urls"]) or []
        if not items and "urls" in spec and isinstance(spec["urls"], list):
            p.error(join(path, "urls"), "must list at least one URL")
        for i, item in enumerate(items):
            if (u := _url(p, join(join(path, "urls"), i), item)) is not None:
                urls.append(u)
    headers: list[tuple[str, str]] = []
    if "headers" in spec:
        hspec = p.mapping(join(path, "headers"), spec["headers"]) or {}
        for hname, hvalue in hspec.items():
            name_ok = isinstance(hname, str) and _TOKEN.fullmatch(hname) is not None
            # A name that is no token is shown quoted: its CR or LF must not split the error.
            hpath = join(join(path, "headers"), hname if name_ok else repr(hname))
            value = p.string(hpath, hvalue)
            if not isinstance(hname, str) or value is None:
                continue
            if not name_ok:
                p.error(hpath, "header name must be a token (letters, digits, !#$%&'*+-.^_`|~)")
            elif (bad := _control(value)) is not None:
                # The value is not shown: it may hold an expanded ${SECRET}.
                p.error(hpath, f"header value contains {bad}; it would inject into every "
                        "upstream request")
            else:
                headers.append((hname.lower(), value))
    host = p.string(join(path, "host"), spec["host"]) if "host" in spec else None
    if host is not None and ((bad := _control(host)) is not None or not host.strip()
                             or any(c in host for c in " \t/?#@")):
        p.error(join(path, "host"), f"must be a host[:port], got {bad or repr(host)}; it is "
                "sent as the Host header of every upstream request")
        host = None
    tls = _tls(p, join(path, "tls"), spec["tls"], base) if "tls" in spec else None
    grpc = _grpc(p, join(path, "grpc"), spec["grpc"]) if "grpc" in spec else None
    entry = registry.version(model, name) if model else None
    if not urls:
        return None
    return Version(name=name, urls=tuple(urls), headers=tuple(headers), host=host,
                   tls=tls[0] if tls else None,
                   model_version=entry.model_version if entry else None, grpc=grpc,
                   grpc_tls=tls[1] if tls and grpc else None, grpc_model=_grpc_model(urls[0]))


