package uk.nhs.sharedcare;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.api.MethodOutcome;
import ca.uhn.fhir.rest.client.api.IGenericClient;
import ca.uhn.fhir.rest.client.interceptor.AdditionalRequestHeadersInterceptor;
import ca.uhn.fhir.rest.client.interceptor.BearerTokenAuthInterceptor;
import ca.uhn.fhir.rest.server.exceptions.ResourceGoneException;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;
import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.Enumerations;
import org.hl7.fhir.r4.model.IdType;
import org.hl7.fhir.r4.model.Patient;

/**
 * HAPI FHIR's own tools run against Sharedcare, with no network:
 *
 * <ul>
 *   <li>{@code validate DIR}: FhirInstanceValidator (base R4 structure definitions) on every
 *       {@code *.json} in DIR; prints one line per file, {@code ok NAME} or {@code error NAME:
 *       message} for each error, and exits 1 when any file has an error;
 *   <li>{@code client BASE TOKEN NHS}: HAPI's generic client writes, reads, searches and
 *       deletes a Patient through BASE as a system with TOKEN; exits 1 on any failure;
 *   <li>{@code bulk BASE TOKEN}: HAPI's generic client kicks off a system {@code $export}
 *       (Prefer: respond-async); the status URL is polled and every NDJSON file downloaded and
 *       parsed by HAPI's parser; prints {@code exported TYPE COUNT} per file.
 * </ul>
 */
public final class HapiChecks {
  private HapiChecks() {}

  public static void main(String[] args) throws Exception {
    if (args.length >= 2 && args[0].equals("validate")) {
      System.exit(validate(Path.of(args[1])));
    } else if (args.length >= 4 && args[0].equals("client")) {
      client(args[1], args[2], args[3]);
      System.out.println("hapi client: all checks passed");
    } else if (args.length >= 3 && args[0].equals("bulk")) {
      bulk(args[1], args[2]);
      System.out.println("hapi bulk: all checks passed");
    } else {
      System.err.println("usage: validate DIR | client BASE TOKEN NHS");
      System.exit(2);
    }
  }

  static int validate(Path dir) throws IOException {
    FhirContext ctx = FhirContext.forR4();
    ValidationSupportChain chain =
        new ValidationSupportChain(
            new DefaultProfileValidationSupport(ctx),
            new CommonCodeSystemsTerminologyService(ctx),
            new InMemoryTerminologyServerValidationSupport(ctx),
            new SnapshotGeneratingValidationSupport(ctx));
    FhirInstanceValidator module = new FhirInstanceValidator(chain);
    FhirValidator validator = ctx.newValidator().registerValidatorModule(module);
    List<Path> files = new ArrayList<>();
    try (Stream<Path> s = Files.list(dir)) {
      s.filter(p -> p.toString().endsWith(".json")).sorted().forEach(files::add);
    }
    int failed = 0;
    for (Path f : files) {
      String json = Files.readString(f, StandardCharsets.UTF_8);
      ValidationResult r = validator.validateWithResult(json);
      List<String> errors = new ArrayList<>();
      for (SingleValidationMessage m : r.getMessages()) {
        if (m.getSeverity().ordinal() >= ResultSeverityEnum.ERROR.ordinal()) {
          errors.add(m.getLocationString() + ": " + m.getMessage());
        }
      }
      String name = f.getFileName().toString();
      if (errors.isEmpty()) {
        System.out.println("ok " + name);
      } else {
        failed++;
        for (String e : errors) {
          System.out.println("error " + name + ": " + e.replace('\n', ' '));
        }
      }
    }
    System.out.println("validated " + files.size() + " files, " + failed + " with errors");
    return failed == 0 ? 0 : 1;
  }

  static void check(boolean ok, String what) {
    if (!ok) {
      throw new AssertionError("FAILED: " + what);
    }
    System.out.println("ok: " + what);
  }

  static void bulk(String base, String token) throws Exception {
    FhirContext ctx = FhirContext.forR4();
    IGenericClient client = ctx.newRestfulGenericClient(base);
    client.setEncoding(EncodingEnum.JSON);
    client.registerInterceptor(new BearerTokenAuthInterceptor(token));
    MethodOutcome kickOff =
        client
            .operation()
            .onServer()
            .named("$export")
            .withNoParameters(org.hl7.fhir.r4.model.Parameters.class)
            .useHttpGet()
            .withAdditionalHeader("Prefer", "respond-async")
            .withAdditionalHeader("X-Purpose-Of-Use", "TREAT")
            .returnMethodOutcome()
            .execute();
    check(kickOff.getResponseStatusCode() == 202, "the kick-off is accepted (202)");
    List<String> where = kickOff.getResponseHeaders().get("content-location");
    check(where != null && where.size() == 1, "the kick-off names its status URL (Content-Location)");
    java.net.http.HttpClient http = java.net.http.HttpClient.newHttpClient();
    java.net.http.HttpRequest poll =
        java.net.http.HttpRequest.newBuilder(java.net.URI.create(where.get(0)))
            .header("Authorization", "Bearer " + token)
            .build();
    java.net.http.HttpResponse<String> status = null;
    for (int i = 0; i < 600; i++) {
      status = http.send(poll, java.net.http.HttpResponse.BodyHandlers.ofString());
      if (status.statusCode() != 202) {
        break;
      }
      Thread.sleep(100);
    }
    check(status != null && status.statusCode() == 200, "the export completes (200 with a manifest)");
    com.fasterxml.jackson.databind.JsonNode manifest =
        new com.fasterxml.jackson.databind.ObjectMapper().readTree(status.body());
    check(manifest.get("requiresAccessToken").asBoolean(), "the files need the access token");
    ca.uhn.fhir.parser.IParser parser = ctx.newJsonParser();
    int files = 0;
    for (com.fasterxml.jackson.databind.JsonNode out : manifest.get("output")) {
      java.net.http.HttpRequest get =
          java.net.http.HttpRequest.newBuilder(java.net.URI.create(out.get("url").asText()))
              .header("Authorization", "Bearer " + token)
              .build();
      java.net.http.HttpResponse<java.util.stream.Stream<String>> file =
          http.send(get, java.net.http.HttpResponse.BodyHandlers.ofLines());
      check(file.statusCode() == 200, "a file downloads");
      String type = out.get("type").asText();
      long count =
          file.body()
              .filter(line -> !line.isEmpty())
              .map(parser::parseResource)
              .peek(r -> check(r.fhirType().equals(type), "each line is a " + type))
              .count();
      check(count == out.get("count").asLong(), "the file holds the count the manifest gives");
      System.out.println("exported " + type + " " + count);
      files++;
    }
    check(files > 0, "the export wrote files");
  }

  static void client(String base, String token, String nhs) {
    FhirContext ctx = FhirContext.forR4();
    IGenericClient client = ctx.newRestfulGenericClient(base);
    client.setEncoding(EncodingEnum.JSON);
    client.registerInterceptor(new BearerTokenAuthInterceptor(token));
    AdditionalRequestHeadersInterceptor org = new AdditionalRequestHeadersInterceptor();
    org.addHeaderValue("X-Source-Organisation", "A81001");
    client.registerInterceptor(org);

    Patient p = new Patient();
    p.addIdentifier().setSystem("https://fhir.nhs.uk/Id/nhs-number").setValue(nhs);
    p.addName().setFamily("Nowak").addGiven("David");
    p.setGender(Enumerations.AdministrativeGender.MALE);
    MethodOutcome created = client.create().resource(p).execute();
    String id = created.getId().getIdPart();
    check(created.getCreated() != null && created.getCreated(), "create answers 201 Created");
    check("1".equals(created.getId().getVersionIdPart()), "the created version is 1");

    Patient read = client.read().resource(Patient.class).withId(id).execute();
    check(read.getNameFirstRep().getFamily().equals("Nowak"), "read returns what was written");

    Bundle found =
        client
            .search()
            .forResource(Patient.class)
            .where(
                Patient.IDENTIFIER
                    .exactly()
                    .systemAndIdentifier("https://fhir.nhs.uk/Id/nhs-number", nhs))
            .returnBundle(Bundle.class)
            .execute();
    check(found.getEntry().size() == 1, "search by NHS number finds the one patient");
    check(
        found.getEntryFirstRep().getResource().getIdElement().getIdPart().equals(id),
        "search finds the patient written");

    Bundle byName =
        client
            .search()
            .forResource(Patient.class)
            .where(Patient.FAMILY.matches().value("nowak"))
            .returnBundle(Bundle.class)
            .execute();
    check(byName.getEntry().size() == 1, "search by family name finds the patient");

    client.delete().resourceById(new IdType("Patient", id)).execute();
    try {
      client.read().resource(Patient.class).withId(id).execute();
      check(false, "a deleted patient reads as gone");
    } catch (ResourceGoneException e) {
      check(true, "a deleted patient reads as 410 Gone");
    }
  }
}
