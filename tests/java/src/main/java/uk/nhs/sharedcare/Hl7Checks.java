package uk.nhs.sharedcare;

import ca.uhn.hl7v2.DefaultHapiContext;
import ca.uhn.hl7v2.HapiContext;
import ca.uhn.hl7v2.app.Connection;
import ca.uhn.hl7v2.model.Message;
import ca.uhn.hl7v2.model.v24.message.ADT_A01;
import ca.uhn.hl7v2.util.idgenerator.InMemoryIDGenerator;
import ca.uhn.hl7v2.util.Terser;
import ca.uhn.hl7v2.validation.impl.ValidationContextFactory;

/**
 * A hospital system's HL7 v2 client against the connectors: HAPI HL7v2 builds ADT^A01
 * messages with its own v2.4 model, sends them with its MLLP client (Connection, Initiator,
 * which also checks that each ACK answers its message's control id) and reads the ACKs with
 * its own parser and Terser.
 *
 * <p>Arguments: host port nhs-number bad-nhs-number visit-number. Prints one line per ACK:
 * "A01 &lt;MSA-1&gt; &lt;MSA-2&gt;" for the good admission and "BAD &lt;MSA-1&gt; &lt;ERR-1.1&gt;
 * &lt;ERR-1.3&gt; &lt;ERR-1.4.1&gt;" (segment, field, code as a v2.4 reader finds them) for the one
 * with a bad NHS number, then "hapi hl7: done".
 */
public final class Hl7Checks {
    private Hl7Checks() {}

    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        try (HapiContext context = new DefaultHapiContext()) {
            context.setValidationContext(ValidationContextFactory.noValidation());
            // HAPI's default id generator keeps its counter in ./id_file; in memory instead.
            context.getParserConfiguration().setIdGenerator(new InMemoryIDGenerator());
            Connection connection = context.newClient(host, port, false);
            try {
                Message ack = connection.getInitiator().sendAndReceive(admit(context, "HAPI-A01", args[2], args[4]));
                Terser t = new Terser(ack);
                System.out.println("A01 " + t.get("/MSA-1") + " " + t.get("/MSA-2"));
                Message refused = connection.getInitiator().sendAndReceive(admit(context, "HAPI-BAD", args[3], args[4] + "B"));
                t = new Terser(refused);
                System.out.println("BAD " + t.get("/MSA-1") + " " + t.get("/ERR-1-1") + " " + t.get("/ERR-1-3") + " " + t.get("/ERR-1-4-1"));
            } finally {
                connection.close();
            }
        }
        System.out.println("hapi hl7: done");
    }

    /** An ADT^A01 (v2.4) from the demo acute trust's PAS admitting patient `nhs` for `visit`. */
    private static ADT_A01 admit(HapiContext context, String control, String nhs, String visit) throws Exception {
        ADT_A01 m = context.newMessage(ADT_A01.class);
        m.initQuickstart("ADT", "A01", "P");
        Terser t = new Terser(m);
        t.set("/MSH-3-1", "PAS");
        t.set("/MSH-4-1", "RX1");
        t.set("/MSH-5-1", "SHAREDCARE");
        t.set("/MSH-6-1", "QN1");
        t.set("/MSH-10", control);
        t.set("/EVN-1", "A01");
        t.set("/EVN-2-1", t.get("/MSH-7-1"));
        t.set("/PID-3(0)-1", "RX9" + nhs);
        t.set("/PID-3(0)-5", "MR");
        t.set("/PID-3(1)-1", nhs);
        t.set("/PID-3(1)-4-1", "NHS");
        t.set("/PID-3(1)-5", "NH");
        t.set("/PID-5-1-1", "Okoro");
        t.set("/PID-5-2", "Ada");
        t.set("/PID-7-1", "19900215");
        t.set("/PID-8", "F");
        t.set("/PV1-2", "I");
        t.set("/PV1-3-1", "WARD3");
        t.set("/PV1-3-3", "BED9");
        t.set("/PV1-19-1", visit);
        return m;
    }
}
