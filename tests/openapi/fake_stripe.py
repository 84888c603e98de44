"""A stand-in for Stripe's API on loopback, for tests/openapi/schemathesis.sh: it answers
`POST /v1/checkout/sessions` with a new open session, so a checkout runs to its answer
without the network. Usage: fake_stripe.py PORT_FILE (writes the port it listens on)."""

import itertools
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sessions = itertools.count(1)


class Stripe(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/v1/checkout/sessions":
            return self.answer(404, {"error": {"message": f"no route {self.path}"}})
        n = next(sessions)
        self.answer(200, {
            "id": f"cs_test_{n}",
            "url": f"https://checkout.stripe.com/c/pay/cs_test_{n}",
            "expires_at": int(time.time()) + 3600,
        })

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Stripe)
with open(sys.argv[1], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
