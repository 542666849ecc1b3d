#!/usr/bin/env bash
# demo.sh — the whole pipeline on the local stack, shown to a person.
# Run through `make demo`, which first starts the stack and the services.
#
# 1. sets the shared controlled clock to the story's day,
# 2. publishes infra/local/demo-scenario.jsonl (catalogue, a supplier ETA,
#    three orders in three languages, an abandoned cart),
# 3. waits until the sender has delivered everything the services decided,
# 4. prints the ledger (recipients masked) and saves each rendered email as
#    HTML under .stack/demo/ for a browser.
# Publishing the same file again replays the same events: no new email.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
STACK_DIR=$(realpath -m -- "${BACKORDER_STACK_DIR:-$REPO/.stack}")
CTL=$REPO/target/debug/backorderctl
OUT=$STACK_DIR/demo

log() { printf '\n==> %s\n' "$*"; }

# shellcheck disable=SC1091
source "$STACK_DIR/env"
export BACKORDER_STACK_ENV=$STACK_DIR/env

log "setting the shared clock to the story's day"
"$CTL" clock set 2026-11-24T09:00:00Z

# Topics are not ordered against each other: publish the catalogue and the
# supplier's ETA first and wait until the stock consumer stored them, so the
# confirmations can name the ship window (they would honestly say "not
# known yet" otherwise).
mkdir -p "$OUT"
grep -E '"type" *: *"(ProductUpserted|SupplierEtaChanged|StockArrival)"' "$SCRIPT_DIR/demo-scenario.jsonl" >"$OUT/stock.jsonl"
grep -vE '"type" *: *"(ProductUpserted|SupplierEtaChanged|StockArrival)"' "$SCRIPT_DIR/demo-scenario.jsonl" >"$OUT/orders.jsonl"
log "publishing the catalogue and the supplier's ETA"
"$CTL" publish "$OUT/stock.jsonl"
deadline=$((SECONDS + 60))
until [[ $("${BACKORDER_PG_BIN:-/usr/bin}/psql" -X "$DATABASE_URL" -Atc "SELECT count(*) FROM sku_eta WHERE sku = 'LAMP-01'" 2>/dev/null) == 1 ]]; do
    ((SECONDS < deadline)) || { echo "demo: the stock consumer did not store the ETA within 60 s" >&2; exit 1; }
    sleep 0.5
done
log "publishing the orders and the abandoned cart"
"$CTL" publish "$OUT/orders.jsonl"

log "waiting for the sender to deliver what the services decided"
python3 - "$CTL" <<'PY'
import json, subprocess, sys, time
ctl = sys.argv[1]
deadline = time.time() + 90
stable, last = 0, None
while True:
    rows = json.loads(subprocess.run([ctl, "emails", "--json", "--limit", "1000"],
                                     check=True, capture_output=True, text=True).stdout)
    pending = [r for r in rows if r.get("state") in ("queued", "sending")]
    done = len(rows) - len(pending)
    state = (len(rows), done)
    print(f"    {done} of {len(rows)} emails delivered", flush=True)
    stable = stable + 1 if (state == last and not pending and rows) else 0
    last = state
    if stable >= 3 and len(rows) >= 3:
        break
    if time.time() > deadline:
        sys.exit("demo: the pipeline did not settle within 90 s; see .stack/services/*.log")
    time.sleep(1)
PY

log "the sender's ledger"
"$CTL" emails

log "saving the rendered emails"
mkdir -p "$OUT"
rm -f "$OUT"/*.html
python3 - "$BACKORDER_MOTO_URL" "$OUT" "$SCRIPT_DIR/demo-scenario.jsonl" <<'PY'
import json, re, sys, urllib.request
moto, out, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
# Only the scenario's customers: the emulator may hold other emails too.
ours = set()
for line in open(scenario, encoding="utf-8"):
    line = line.strip()
    if line and not line.startswith("#"):
        email = json.loads(line).get("customer", {}).get("email")
        if email:
            ours.add(email)
data = json.load(urllib.request.urlopen(f"{moto}/moto-api/data.json"))
messages = [m for m in data.get("ses", {}).get("Message", [])
            if set(m.get("destinations", {}).get("ToAddresses", [])) & ours]
def mask(addr):
    local, _, domain = addr.partition("@")
    return f"{local[:1]}***@{domain[:1]}***.{domain.rsplit('.', 1)[-1]}"
print(f"    {'to':<22} {'subject':<70} file")
for i, m in enumerate(messages, 1):
    slug = re.sub(r"[^A-Za-z0-9]+", "-", m.get("subject", ""))[:40].strip("-").lower()
    path = f"{out}/{i:02d}-{slug}.html"
    with open(path, "w", encoding="utf-8") as f:
        f.write(m.get("body", ""))
    to = ", ".join(mask(a) for a in m.get("destinations", {}).get("ToAddresses", []))
    print(f"    {to:<22} {m.get('subject', '')[:70]:<70} {path}")
print(f"\n    Open any of them in a browser, e.g.: xdg-open {out}/01-*.html")
PY
log "done. Metrics: curl http://127.0.0.1:18085/metrics (sender); stop everything with 'make down'"
