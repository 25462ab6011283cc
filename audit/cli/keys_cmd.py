"""``flopgate keygen [--out PATH]``: make an Ed25519 signing key pair.

Writes PATH (private, PEM PKCS#8, mode 0600, encrypted when FLOPGATE_KEY_PASSPHRASE is set)
and PATH.pub, never overwriting either. Prints where they are and the key's fingerprint;
never the private key.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keygen", help="create an Ed25519 signing key pair",
        description="Create an Ed25519 key pair for signing audits and approvals. The private "
                    "key is created with mode 0600 and is encrypted when the environment "
                    "variable FLOPGATE_KEY_PASSPHRASE is set. Existing files are never overwritten.")
    parser.add_argument("--out", metavar="PATH",
                        help="private key file; the public key goes to PATH.pub "
                             "(default: $FLOPGATE_HOME/keys/flopgate-ed25519, "
                             "FLOPGATE_HOME defaulting to ~/.config/flopgate)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from audit.attest.keys import (PASSPHRASE_ENV, default_key_path, generate_key, key_id,
                                   short_fingerprint)

    path = args.out or default_key_path()
    private_key, pub_path = generate_key(path)
    keyid = key_id(private_key.public_key())
    encrypted = "encrypted with $" + PASSPHRASE_ENV if os.environ.get(PASSPHRASE_ENV) else "not encrypted"
    print(f"private key  {path}  (mode 0600, {encrypted}; keep it secret)")
    print(f"public key   {pub_path}  (share this; verifiers pass it with --pubkey or --trust)")
    print(f"fingerprint  {short_fingerprint(keyid)}  (full key id {keyid})")
    return 0
