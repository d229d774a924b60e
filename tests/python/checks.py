"""What the FHIR client scripts share: a named check that stops the script when it fails, and a
plain HTTP request to the facade with a bearer token (for what a FHIR client library hides)."""

import os
import sys
import time

import requests

BASE = os.environ.get("FHIR_BASE", "")


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def poll(condition, seconds, every=0.5):
    """`condition()`'s first truthy value within `seconds`, else None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(every)
    return None


def http(method, path, token, **kw):
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    headers.update(kw.pop("headers", {}))
    if "json" in kw:
        headers["Content-Type"] = "application/fhir+json"
    url = f"{BASE}/{path}" if path else BASE
    return requests.request(method, url, headers=headers, timeout=30, **kw)
