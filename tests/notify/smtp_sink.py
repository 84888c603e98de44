"""A real SMTP server on loopback for tests/notify.rs (aiosmtpd).

Usage: smtp_sink.py PORT DIR. Prints "ready" once it listens; every message received is
parsed by Python's own e-mail package (an independent MIME and RFC 2047 decoder) and
saved as DIR/NNNN.json; stops when its standard input closes.
"""

import json
import os
import sys
from email import message_from_bytes, policy

from aiosmtpd.controller import Controller


class Save:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        message = message_from_bytes(raw, policy=policy.default)
        # compat32 leaves headers as sent, to show the RFC 2047 encoding on the wire.
        undecoded = message_from_bytes(raw, policy=policy.compat32)
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(message["From"]),
            "to": str(message["To"]),
            "subject": str(message["Subject"]),
            "raw_subject": str(undecoded["Subject"]),
            "message_id": str(message["Message-ID"]),
            "x_notice_id": str(message["X-Notice-Id"]),
            "content_type": message.get_content_type(),
            "text": text.get_content() if text is not None else None,
            "html": html.get_content() if html is not None else None,
        }
        self.count += 1
        path = os.path.join(self.directory, f"{self.count:04}.json")
        # Written then renamed, so the test never reads half a file.
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False)
        os.rename(path + ".tmp", path)
        return "250 OK saved"


def main():
    port, directory = int(sys.argv[1]), sys.argv[2]
    controller = Controller(Save(directory), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
