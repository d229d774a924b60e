"""Sends HL7 v2 messages to the connectors' MLLP listener with python-hl7's MLLP client (the
client `mllp_send` uses) and reads each ACK with python-hl7's parser: a hospital system's
client, not Sharedcare's code.

Input (stdin, JSON): {"host": ..., "port": ..., "messages": ["MSH|...", ...]}; the messages go
in order over one connection, each after the previous ACK. With "hang": true the last message
is sent and its ACK never read: the script prints "mllp feed: sent unacknowledged" and waits
to be killed, as a sender that dies mid-stream. Output (stdout): one JSON object per
ACK with MSA-1, MSA-2 and, when present, ERR-2 (segment, sequence, field, component), ERR-3
(code) and ERR-8 (the reason), then the line "mllp feed: done".
"""

import json
import ssl
import sys
import time

import hl7
from hl7.client import CR, EB, SB, MLLPClient


def read_ack(client, message):
    if len(message) < 65536:
        return client.send_message(message)
    # A big message: python-hl7's send() makes one socket.send() call, which may send only
    # part of it; sendall() on the same client's socket sends it whole.
    client.socket.sendall(SB + message.encode("utf-8") + EB + CR)
    return client.socket.recv(65536)


def field(ack, segment, field_num, component_num=1):
    try:
        return ack.extract_field(segment, 1, field_num, 1, component_num)
    except (KeyError, IndexError):
        return ""


def main():
    spec = json.load(sys.stdin)
    messages = spec["messages"]
    hang = spec.get("hang", False)
    with MLLPClient(spec["host"], int(spec["port"])) as client:
        if spec.get("tls_ca"):
            # MLLP over TLS: the client's own socket, wrapped by Python's ssl module, which
            # checks the listener's certificate against the given CA and host name.
            context = ssl.create_default_context(cafile=spec["tls_ca"])
            client.socket = context.wrap_socket(client.socket, server_hostname=spec.get("tls_name", spec["host"]))
        if hang:
            *messages, last = messages
        for message in messages:
            raw = read_ack(client, message)
            text = raw.decode("utf-8").strip("\x0b\x1c\r")
            ack = hl7.parse(text)
            out = {
                "ack": text,
                "msa": [field(ack, "MSA", 1), field(ack, "MSA", 2)],
                "err": None,
            }
            if "\rERR|" in text:
                out["err"] = {
                    "location": [field(ack, "ERR", 2, c) for c in (1, 2, 3, 5)],
                    "code": field(ack, "ERR", 3),
                    "reason": field(ack, "ERR", 8),
                }
            print(json.dumps(out), flush=True)
        if hang:
            client.socket.sendall(SB + last.encode("utf-8") + EB + CR)
            print("mllp feed: sent unacknowledged", flush=True)
            time.sleep(600)
    print("mllp feed: done", flush=True)


if __name__ == "__main__":
    main()
