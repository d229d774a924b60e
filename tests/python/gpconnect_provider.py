"""A GP practice's GP Connect 1.2 Access Record: Structured endpoint, for the connectors' tests.

It checks every request the way NHS England's GP Connect demonstrator (nhsconnect/
gpconnect-demonstrator 1.2.7: its FhirRequestGenericIntercepter and WebTokenValidator) checks
it — the Spine headers, the unsigned JWT and its claims, the Parameters — and answers with the
demonstrator's own responses for its test patients, recorded from the demonstrator built and
run on this machine (services/connectors/tests/fixtures/gpconnect/): the structured record of
patient 2 (9658218873), and its refusal for patient 15 (9658220169, no consent to share).

Why not the demonstrator itself: its source is on GitHub only, which a fresh machine cannot
reach (only package registries are reachable), so the test command cannot build it; see the
connectors README for the steps that build and run it where the source is at hand.

Usage: gpconnect_provider.py <fixtures dir>. Prints "listening <port>", then one JSON line per
request: {"nhs_number", "status", "problem"}.
"""

import base64
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ASID = "918999198993"
INTERACTION = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
SCOPES = {"patient/*.read", "patient/*.write", "organization/*.read", "organization/*.write"}
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
SDS_USER = "https://fhir.nhs.uk/Id/sds-user-id"
LEEWAY = 600
FIXTURES = sys.argv[1]


def outcome(code, diagnostics, issue="invalid"):
    return {
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": issue,
            "details": {"coding": [{"system": "https://fhir.nhs.uk/STU3/CodeSystem/Spine-ErrorOrWarningCode-1", "code": code}]},
            "diagnostics": diagnostics,
        }],
    }


def b64(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def identifier(resource, system):
    for i in resource.get("identifier") or []:
        if i.get("system") == system and i.get("value"):
            return i["value"]
    return None


def check_token(auth):
    """The demonstrator's WebTokenValidator, restated: a reason for each refusal."""
    if not auth.startswith("Bearer "):
        return "no bearer token"
    parts = auth[len("Bearer "):].split(".")
    if len(parts) != 3:
        return "the JWT is not header.claims.signature"
    header, c = b64(parts[0]), b64(parts[1])
    if header.get("alg") != "none":
        return "GP Connect JWTs are unsigned (alg none)"
    for claim in ["aud", "exp", "iat", "iss", "sub", "reason_for_request", "requested_scope",
                  "requesting_device", "requesting_organization", "requesting_practitioner"]:
        if c.get(claim) is None:
            return f"JWT JSON entry incomplete: claim {claim} is null."
    device, org, who = c["requesting_device"], c["requesting_organization"], c["requesting_practitioner"]
    ids = device.get("identifier") or [{}]
    if not (ids[0].get("system") and ids[0].get("value") and device.get("model") and device.get("version")):
        return "requesting_device needs identifier.system, identifier.value, model and version"
    if not org.get("name") or not identifier(org, ODS):
        return "requesting_organization needs a name and an ODS code"
    names = who.get("name") or [{}]
    if not (who.get("id") and names[0].get("family") and (names[0].get("given") or [None])[0] and identifier(who, SDS_USER)):
        return "requesting_practitioner needs id, name.family, name.given and an SDS user id"
    now = int(time.time())
    if c["iat"] > now + LEEWAY:
        return "JWT Creation time is in the future"
    if c["exp"] - c["iat"] != 300:
        return "JWT expiry time is not 5 minutes after the creation time"
    if c["exp"] < now:
        return "JWT Request time has expired"
    if c["reason_for_request"] != "directcare":
        return "JWT Reason for request is not directcare"
    if (device.get("resourceType"), org.get("resourceType"), who.get("resourceType")) != ("Device", "Organization", "Practitioner"):
        return "JWT requesting_* resource types are not Device, Organization and Practitioner"
    if who["id"] != c["sub"]:
        return "JWT Practitioner ids do not match!"
    if c["requested_scope"] not in SCOPES:
        return f"JWT Bad Request Exception Invalid requested scope: {c['requested_scope']}"
    return None


class Provider(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body, nhs=None, problem=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        print(json.dumps({"nhs_number": nhs, "status": status, "problem": problem}), flush=True)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if not self.path.endswith("/Patient/$gpc.getstructuredrecord"):
            return self.answer(404, outcome("INVALID_RESOURCE", f"no operation at {self.path}"), problem="path")
        for header in ["Ssp-TraceID", "Ssp-From", "Ssp-To", "Ssp-InteractionID"]:
            if not self.headers.get(header):
                return self.answer(400, outcome("BAD_REQUEST", f"{header} header blank"), problem=header)
        if self.headers["Ssp-To"] != ASID:
            return self.answer(400, outcome("BAD_REQUEST", "Ssp-To header is not this system's ASID"), problem="Ssp-To")
        if self.headers["Ssp-InteractionID"] != INTERACTION:
            return self.answer(400, outcome("BAD_REQUEST", "wrong Ssp-InteractionID"), problem="Ssp-InteractionID")
        # WebTokenFactory: the first Content-Type and Accept must be FHIR's (else 415).
        for header in ["Content-Type", "Accept"]:
            value = (self.headers.get(header) or "").split(";")[0]
            if value not in ("application/fhir+json", "application/fhir+xml"):
                return self.answer(415, outcome("BAD_REQUEST", f"Unsupported {header} media type {value!r}"), problem=header)
        problem = check_token(self.headers.get("Authorization", ""))
        if problem:
            return self.answer(400, outcome("BAD_REQUEST", problem), problem=problem)
        params = {p.get("name"): p for p in body.get("parameter", [])}
        nhs = (params.get("patientNHSNumber") or {}).get("valueIdentifier", {}).get("value")
        if body.get("resourceType") != "Parameters" or not nhs:
            return self.answer(422, outcome("INVALID_PARAMETER", "patientNHSNumber is required"), problem="parameters")
        for name in ["structured", "no-consent"]:
            path = os.path.join(FIXTURES, f"{name}-{nhs}.json")
            if os.path.exists(path):
                with open(path) as f:
                    fixture = json.load(f)
                status = 200 if fixture["resourceType"] == "Bundle" else 403
                return self.answer(status, fixture, nhs=nhs)
        return self.answer(404, outcome("PATIENT_NOT_FOUND", f"No patient details found for patient ID: {nhs}", "not-found"), nhs=nhs)


server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
