"""A third-party FHIR client against Sharedcare's FHIR R4 facade.

fhirpy (a FHIR REST client) creates, updates, reads, searches and pages; fhir.resources'
models parse every resource and Bundle that comes back, so the JSON is checked as FHIR by
code that is not ours. Environment: FHIR_BASE, SYSTEM_TOKEN (records.read records.write),
GP_TOKEN (the demo GP), NHS1 and NHS2 (demo patients registered with the GP).
Prints "fhir client: all checks passed" at the end.
"""

import os

import requests
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from checks import BASE, check, http
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome as FhirpyOutcome

SYSTEM = os.environ["SYSTEM_TOKEN"]
GP = os.environ["GP_TOKEN"]
NHS1 = os.environ["NHS1"]
NHS2 = os.environ["NHS2"]
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
SNOMED = "http://snomed.info/sct"


def outcome_of(resp):
    check(resp.headers["Content-Type"].startswith("application/fhir+json"), "errors are application/fhir+json")
    return OperationOutcome.model_validate(resp.json())


system = SyncFHIRClient(BASE, authorization=f"Bearer {SYSTEM}")
gp = SyncFHIRClient(BASE, authorization=f"Bearer {GP}")

# The CapabilityStatement (no token needed).
cap = CapabilityStatement.model_validate(requests.get(f"{BASE}/metadata", timeout=30).json())
check(cap.fhirVersion == "4.0.1", "metadata is an R4 CapabilityStatement")
check(any(r.type == "Observation" for r in cap.rest[0].resource), "Observation is listed")

# Create a Patient and an Observation; update the Observation.
patient = system.resource(
    "Patient",
    identifier=[{"system": NHS_SYSTEM, "value": NHS1}],
    name=[{"family": "Evans", "given": ["Margaret"]}],
    birthDate="1941-03-12",
)
patient.save()
check(patient.id and patient["meta"]["versionId"] == "1", "a created Patient gets an id and version 1")
Patient.model_validate(patient.serialize())

obs = system.resource(
    "Observation",
    status="final",
    code={"coding": [{"system": SNOMED, "code": "75367002", "display": "Blood pressure"}]},
    subject=patient.to_reference(),
    effectiveDateTime="2026-11-20T09:30:00Z",
    valueQuantity={"value": 128, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
)
obs.save()
obs["valueQuantity"]["value"] = 131
obs.save()
check(obs["meta"]["versionId"] == "2", "an update is version 2")

# The GP reads it back; the JSON is a valid R4 Observation.
read = gp.reference("Observation", obs.id).to_resource()
model = Observation.model_validate(read.serialize())
check(model.valueQuantity.value == 131, "the GP reads the current version")

# vread and history.
v1 = http("GET", f"Observation/{obs.id}/_history/1", GP)
check(v1.status_code == 200 and v1.json()["valueQuantity"]["value"] == 128, "vread returns version 1")
check(v1.headers.get("ETag") == 'W/"1"', "vread carries the version ETag")
hist = Bundle.model_validate(http("GET", f"Observation/{obs.id}/_history", GP).json())
check(hist.type == "history" and len(hist.entry) == 2, "history lists both versions")

# Search by patient, code and date; fhirpy follows the next links.
found = gp.resources("Observation").search(patient=patient.id, code=f"{SNOMED}|75367002").fetch_all()
check([o.id for o in found] == [obs.id], "search by patient and code")
none = gp.resources("Observation").search(patient=patient.id, date="ge2026-12-01").fetch_all()
check(len(none) == 0, "search by date range")
for i in range(5):
    system.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": SNOMED, "code": "27113001"}]},
        subject=patient.to_reference(),
        effectiveDateTime=f"2026-11-0{i + 1}",
    ).save()
paged = gp.resources("Observation").search(patient=patient.id).limit(2).fetch_all()
check(len(paged) == 6 and len({o.id for o in paged}) == 6, "pages of two, followed to the end")
raw = http("GET", f"Observation?patient={patient.id}&_count=2", GP).json()
Bundle.model_validate(raw)
check(any(l["relation"] == "next" for l in raw["link"]), "a page links to the next")

# $everything.
every = Bundle.model_validate(http("GET", f"Patient/{patient.id}/$everything", GP).json())
types = sorted({e.resource.get_resource_type() for e in every.entry})
check(types == ["Observation", "Patient"], "$everything holds the patient and their observations")

# A transaction Bundle: a new patient and a condition that refers to them by urn:uuid.
tx = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:5c7d2c1e-6f0a-4b8e-9d2a-1f3e4a5b6c7d",
            "resource": {"resourceType": "Patient", "identifier": [{"system": NHS_SYSTEM, "value": NHS2}]},
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "resource": {
                "resourceType": "Condition",
                "code": {"coding": [{"system": SNOMED, "code": "44054006"}]},
                "subject": {"reference": "urn:uuid:5c7d2c1e-6f0a-4b8e-9d2a-1f3e4a5b6c7d"},
                "recordedDate": "2026-11-21",
            },
            "request": {"method": "POST", "url": "Condition"},
        },
    ],
}
resp = http("POST", "", SYSTEM, json=tx)
check(resp.status_code == 200, f"a transaction is accepted ({resp.status_code} {resp.text[:300]})")
answer = Bundle.model_validate(resp.json())
check(answer.type == "transaction-response" and len(answer.entry) == 2, "one response entry per entry")
cond_loc = answer.entry[1].response.location
cond = http("GET", cond_loc.split("/_history")[0], GP).json()
pat_id = answer.entry[0].response.location.split("/")[1]
check(cond["subject"]["reference"] == f"Patient/{pat_id}", "the urn:uuid reference now names the created patient")

# A transaction with one bad entry stores nothing and names the element.
bad = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}, "subject": {"reference": f"Patient/{patient.id}"}},
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}, "subject": {"reference": "Patient/nobody"}},
            "request": {"method": "POST", "url": "Observation"},
        },
    ],
}
resp = http("POST", "", SYSTEM, json=bad)
check(resp.status_code == 400, "a transaction with a bad entry is refused")
oo = outcome_of(resp)
check(oo.issue[0].expression == ["entry[1].resource.subject.reference"], f"the bad element is named: {oo.issue[0].expression}")
after = gp.resources("Observation").search(patient=patient.id).fetch_all()
check(len(after) == 6, "nothing from the refused transaction was stored")

# Bad input and stale updates get OperationOutcomes.
try:
    system.resource("Observation", status="final", code={"text": "weight"}, subject={"reference": "Patient/nobody"}).save()
    check(False, "an observation about an unknown patient is refused")
except FhirpyOutcome as e:
    check("subject.reference" in str(e), "fhirpy sees the OperationOutcome naming subject.reference")
stale = http("PUT", f"Observation/{obs.id}", SYSTEM, json=obs.serialize(), headers={"If-Match": 'W/"1"'})
check(stale.status_code == 412, "an update based on an old version is refused (412)")
outcome_of(stale)
nobody = http("GET", "Observation/does-not-exist", GP)
check(nobody.status_code == 404 and outcome_of(nobody).issue[0].code == "not-found", "unknown ids are 404")
wrong_snomed = http(
    "POST",
    "Observation",
    SYSTEM,
    json={"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{patient.id}"},
          "code": {"coding": [{"system": "SNOMED", "code": "75367002"}]}},
)
check(
    wrong_snomed.status_code == 400 and outcome_of(wrong_snomed).issue[0].expression == ["code.coding[0].system"],
    "a SNOMED code under the wrong system URI is refused, naming the element",
)
unauth = requests.get(f"{BASE}/Observation/{obs.id}", timeout=30)
check(unauth.status_code == 401, "no token, no data")

print("fhir client: all checks passed")
