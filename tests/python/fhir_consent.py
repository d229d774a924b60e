"""A patient's sharing choice written as a FHIR R4 Consent by a third-party client (fhirpy),
and checked by fhir.resources' Consent model, against Sharedcare's `/fhir/R4`.

Environment: FHIR_BASE, SYSTEM_TOKEN (records.read records.write), GP_TOKEN (the demo GP),
PATIENT_TOKEN (the demo patient at P9, whose NHS number is NHS). Prints
"fhir consent: all checks passed" at the end.
"""

import os

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.consent import Consent
from checks import BASE, check, http
from fhirpy import SyncFHIRClient

SYSTEM = os.environ["SYSTEM_TOKEN"]
GP = os.environ["GP_TOKEN"]
PATIENT = os.environ["PATIENT_TOKEN"]
NHS = os.environ["NHS"]
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


system = SyncFHIRClient(BASE, authorization=f"Bearer {SYSTEM}")
gp = SyncFHIRClient(BASE, authorization=f"Bearer {GP}")
me = SyncFHIRClient(BASE, authorization=f"Bearer {PATIENT}")

patient = system.resource("Patient", identifier=[{"system": NHS_SYSTEM, "value": NHS}], name=[{"family": "Evans"}])
patient.save()
for code, label in [("44054006", None), ("105629000", "SEX")]:
    condition = system.resource(
        "Condition",
        subject=patient.to_reference(),
        code={"coding": [{"system": "http://snomed.info/sct", "code": code}]},
    )
    if label:
        condition["meta"] = {"security": [{"system": ACT_CODE, "code": label}]}
    condition.save()


def gp_sees():
    return len(gp.resources("Condition").search(patient=patient.id).fetch_all())


check(gp_sees() == 2, "the GP sees both conditions before any choice")

# The patient withholds sexual health, as a FHIR client writes a Consent.
written = {
    "status": "active",
    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
    "patient": {"identifier": {"system": NHS_SYSTEM, "value": NHS}},
    "dateTime": "2026-11-29T10:00:00Z",
    "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
    "provision": {
        "type": "permit",
        "provision": [{"type": "deny", "securityLabel": [{"system": ACT_CODE, "code": "SEX"}]}],
    },
}
Consent.model_validate({"resourceType": "Consent", **written})
consent = me.resource("Consent", **written)
consent.save()
check(consent.id and consent["meta"]["versionId"] == "1", "the Consent is created with an id and version 1")

read = http("GET", f"Consent/{consent.id}", PATIENT)
check(read.status_code == 200, "the patient reads her Consent back")
back = read.json()
Consent.model_validate(back)
check(
    {k: v for k, v in back.items() if k not in ("id", "meta", "resourceType")} == written,
    "the Consent read back is the resource that was written",
)
check(gp_sees() == 1, "the GP's next search leaves the sexual health condition out")

found = Bundle.model_validate(http("GET", f"Consent?patient:identifier={NHS_SYSTEM}|{NHS}&status=active", PATIENT).json())
check([e.resource.id for e in found.entry] == [consent.id], "search by patient and status finds it")

consent["status"] = "inactive"
consent.save()
check(consent["meta"]["versionId"] == "2", "withdrawing it is version 2")
check(gp_sees() == 2, "withdrawn: the GP sees both again")
history = Bundle.model_validate(http("GET", f"Consent/{consent.id}/_history", PATIENT).json())
check([e.resource.meta.versionId for e in history.entry] == ["2", "1"], "history keeps both versions")
first = http("GET", f"Consent/{consent.id}/_history/1", PATIENT).json()
check(first["status"] == "active", "vread returns the first version")

# The example of a label as FHIR writes it is accepted; a bare string is refused by path.
bad = dict(written, provision={"type": "deny", "securityLabel": ["SEX"]})
resp = http("POST", "Consent", PATIENT, json={"resourceType": "Consent", **bad})
check(resp.status_code == 400, "a securityLabel that is not a Coding is refused")
check(resp.json()["issue"][0]["expression"] == ["provision.securityLabel[0]"], "the refusal names the element")
data = dict(written, provision={"type": "deny", "data": [{"meaning": "instance", "reference": {"reference": "Condition/x"}}]})
resp = http("POST", "Consent", PATIENT, json={"resourceType": "Consent", **data})
check(resp.status_code == 400 and "not enforced" in resp.text, "what the policy cannot enforce is refused, not ignored")

# Staff do not read a patient's Consents.
check(http("GET", f"Consent/{consent.id}", GP).status_code == 403, "the GP may not read her Consent")
print("fhir consent: all checks passed")
