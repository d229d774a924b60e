"""Verifies a passport access-log page (the JSON of GET /passport/v1/patients/{nhs}/access-log,
on stdin) independently of Sharedcare's own code: every entry's leaf hash is SHA-256(0x00 ||
leaf data), its audit path leads to the tree head's root (RFC 9162 section 2.1.3.2), the tree
head's Ed25519 signature is good, and each entry's fields match its leaf data.

Prints one line per entry and "verified N entries"; exits 1 naming the first failure.
"""

import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_path(index: int, size: int, leaf: bytes, path: list) -> bytes:
    """RFC 9162 2.1.3.2: the root an inclusion proof leads to."""
    if index >= size:
        raise ValueError(f"leaf {index} is not below tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ValueError("audit path longer than the tree")
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("audit path shorter than the tree")
    return r


def fail(why: str) -> None:
    print(f"FAIL {why}")
    sys.exit(1)


def main() -> None:
    page = json.load(sys.stdin)
    head = page["treeHead"]
    size = head["treeSize"]
    root = bytes.fromhex(head["rootHash"])
    signed = b"sharedcare-audit-sth-v1\n" + size.to_bytes(8, "big") + head["timestampUs"].to_bytes(8, "big") + root
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(head["publicKey"])).verify(
            bytes.fromhex(head["signature"]), signed
        )
    except InvalidSignature:
        fail("tree head signature")
    for e in page["entries"]:
        proof = e["proof"]
        data = proof["leafData"].encode()
        leaf = hashlib.sha256(b"\x00" + data).digest()
        if leaf.hex() != proof["leafHash"]:
            fail(f"entry {e['leafIndex']}: leaf hash")
        path = [bytes.fromhex(h) for h in proof["auditPath"]]
        try:
            got = root_from_path(e["leafIndex"], size, leaf, path)
        except ValueError as err:
            fail(f"entry {e['leafIndex']}: {err}")
        if got != root:
            fail(f"entry {e['leafIndex']}: path does not lead to the signed root")
        # The leaf is a JSON array: [leaf_index, event_id, nhs_number, actor, organisation,
        # role, action, resources, purpose, reason, outcome, time_us, trace_id, service].
        logged = json.loads(data)
        if logged[0] != e["leafIndex"]:
            fail(f"entry {e['leafIndex']}: the leaf is entry {logged[0]}")
        for field, at in (("actor", 3), ("organisation", 4), ("role", 5), ("purpose", 8), ("outcome", 10)):
            if logged[at] != e[field]:
                fail(f"entry {e['leafIndex']}: {field} shown as {e[field]!r}, logged as {logged[at]!r}")
        print(f"ok entry {e['leafIndex']} {e['organisation']} {e['purpose']} {e['outcome']}")
    print(f"verified {len(page['entries'])} entries against tree size {size}")


if __name__ == "__main__":
    main()
