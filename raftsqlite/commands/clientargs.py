"""The client side of TLS and auth for the commands that call a node (``shell``,
``rebalance``): rqlite shell's flags and short forms, one ``ssl`` context and one
``Authorization`` header from them.

    -u/--user USER:PASS   -c/--ca-cert PATH   -d/--client-cert PATH   -k/--client-key PATH
    -i/--insecure

A bad combination or an unreadable file is a ``ClientArgsError`` with a message naming
the flag, before any request is sent.
"""
import base64
import os
import ssl


class ClientArgsError(ValueError):
    pass


def add_flags(ap, short=True):
    """Add the flags to argparse parser ``ap`` (``short``: rqlite shell's -u -c -d -k -i)."""
    def names(s, long):
        return (s, long) if short else (long,)
    ap.add_argument(*names("-u", "--user"), default=os.environ.get("RAFTSQLITE_USER", ""),
                    help="basic-auth credentials as USER:PASSWORD (or $RAFTSQLITE_USER)")
    ap.add_argument(*names("-c", "--ca-cert"), default="",
                    help="CA certificate to verify the node's HTTPS certificate with")
    ap.add_argument(*names("-d", "--client-cert"), default="",
                    help="client certificate to present (nodes started with "
                         "-http-verify-client want one)")
    ap.add_argument(*names("-k", "--client-key"), default="", help="private key of --client-cert")
    ap.add_argument(*names("-i", "--insecure"), action="store_true",
                    help="do not verify the node's HTTPS certificate")


def wants_tls(args) -> bool:
    return bool(args.ca_cert or args.client_cert or args.client_key or args.insecure)


def ssl_context(args):
    """The context for https:// calls; raises ``ClientArgsError`` naming the flag."""
    if bool(args.client_cert) != bool(args.client_key):
        raise ClientArgsError("--client-cert and --client-key go together: give both or neither")
    for flag, path in (("--ca-cert", args.ca_cert), ("--client-cert", args.client_cert),
                       ("--client-key", args.client_key)):
        if path and not os.path.isfile(path):
            raise ClientArgsError(f"{flag} {path}: no such file")
    try:
        ctx = ssl.create_default_context(cafile=args.ca_cert or None)
    except (ssl.SSLError, OSError) as e:
        raise ClientArgsError(f"--ca-cert {args.ca_cert}: not a usable CA certificate: {e}") from None
    if args.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if args.client_cert:
        try:
            ctx.load_cert_chain(args.client_cert, args.client_key)
        except (ssl.SSLError, OSError) as e:
            raise ClientArgsError(f"--client-cert {args.client_cert} / --client-key "
                                  f"{args.client_key}: cannot load them: {e}") from None
    return ctx


def auth_header(user):
    """``USER:PASS`` -> the ``Authorization`` value (None without credentials)."""
    if not user:
        return None
    if ":" not in user:
        raise ClientArgsError("--user takes USER:PASSWORD")
    return "Basic " + base64.b64encode(user.encode()).decode()
