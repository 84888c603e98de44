"""Register N brands on `starter`, give each usage in the current period, and wait until
the read models hold every brand-period (the /projector count reaches the events)."""
import http.client
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

BATCH_ITEMS_MAX = 1000  # the API's /record/batch limit
THREADS = 16
PREFIX = "/api/v1/usage-billing"

base, token, brands = sys.argv[1], sys.argv[2], int(sys.argv[3])
host = urlparse(base)
headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def connection():
    return http.client.HTTPConnection(host.hostname, host.port, timeout=60)


def send(conn, method, path, body):
    conn.request(method, PREFIX + path, body=json.dumps(body), headers=headers)
    res = conn.getresponse()
    data = res.read()
    if res.status >= 300:
        raise SystemExit(f"{method} {path}: {res.status} {data[:300]!r}")
    return json.loads(data) if data else None


def register(chunk):
    conn = connection()
    for i in chunk:
        send(conn, "PUT", f"/brands/b{i}", {"plan": "starter"})


def record(chunk):
    conn = connection()
    events = [{"brandId": f"b{i}", "metric": "renders_3d", "value": 1} for i in chunk]
    send(conn, "POST", "/record/batch", {"events": events})


ids = list(range(brands))
parts = [ids[k::THREADS] for k in range(THREADS)]
t0 = time.time()
with ThreadPoolExecutor(THREADS) as pool:
    list(pool.map(register, parts))
batches = [ids[k:k + BATCH_ITEMS_MAX] for k in range(0, brands, BATCH_ITEMS_MAX)]
with ThreadPoolExecutor(4) as pool:
    list(pool.map(record, batches))
# Registry event, PeriodOpened and UsageRecorded per brand.
expected = 3 * brands
conn = connection()
while True:
    conn.request("GET", PREFIX + "/projector", headers=headers)
    status = json.loads(conn.getresponse().read())
    if status["eventsProjected"] >= expected:
        break
    time.sleep(0.5)
print(f"loaded {brands} brand-periods in {time.time() - t0:.1f} s; projector {status}")
