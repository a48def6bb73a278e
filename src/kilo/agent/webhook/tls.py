"""The webhook's serving certificate: ``--cert-file`` and ``--key-file``, checked at start.

Every problem is a :class:`~kilo.errors.ConfigError` naming the flag and the file.
"""

from __future__ import annotations

import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kilo.errors import ConfigError


def load_tls(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server's TLS context; :class:`ConfigError` names the flag, the file and the problem."""
    for flag, path in (("--cert-file", cert_file), ("--key-file", key_file)):
        if not path:
            raise ConfigError(f"{flag} is empty: the webhook serves HTTPS only")
    contents = {}
    for flag, path in (("--cert-file", cert_file), ("--key-file", key_file)):
        try:
            with open(path, "rb") as file:
                contents[flag] = file.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {flag} {path}: {exc.strerror or exc}") from exc
    try:
        x509.load_pem_x509_certificates(contents["--cert-file"])
    except ValueError as exc:
        raise ConfigError(f"--cert-file {cert_file} holds no PEM certificate: {exc}") from exc
    try:
        serialization.load_pem_private_key(contents["--key-file"], password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"--key-file {key_file} holds no unencrypted PEM private key: {exc}"
        ) from exc
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"the certificate in --cert-file {cert_file} does not match the key in "
            f"--key-file {key_file}: {exc}"
        ) from exc
    return context


__all__ = ["load_tls"]
