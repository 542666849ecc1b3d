#!/usr/bin/env bash
# demo.sh — the whole pipeline on the local stack, shown to a person.
# Run through `make demo`, which first starts the stack and the services.
#
# 1. sets the shared controlled clock to the story's day and publishes
#    infra/local/demo-scenario.jsonl (catalogue, a supplier ETA, three
#    orders in three languages, an abandoned cart): confirmations;
# 2. moves the clock a week and publishes demo-week-later.jsonl (the
#    supplier slips three weeks, items ship, one order is delivered): one
#    delay-and-offer email per delayed order (apology plus time-limited
#    options), shipped emails; the German customer opens the offer page
#    and switches to the in-stock lamp (decision confirmation); three days
#    later on the clock, the follow-up;
# 3. publishes demo-restock.jsonl (the lamps arrive): arrival notices and a
#    back-in-stock email;
# 4. prints the ledger (recipients masked) and saves each email, as it
#    reached SES, as HTML under .stack/demo/ for a browser.
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

# Waits (with a deadline) until the ledger holds at least $1 emails and none
# is still queued or being sent.
wait_for_emails() {
    python3 - "$CTL" "$1" <<'PY'
import json, subprocess, sys, time
ctl, expected = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 90
while True:
    rows = json.loads(subprocess.run([ctl, "emails", "--json", "--limit", "1000"],
                                     check=True, capture_output=True, text=True).stdout)
    pending = [r for r in rows if r.get("state") in ("queued", "sending")]
    if len(rows) >= expected and not pending:
        print(f"    {len(rows)} emails delivered", flush=True)
        break
    if time.time() > deadline:
        sys.exit(f"demo: expected {expected} emails, the ledger has {len(rows)} "
                 f"({len(pending)} pending) after 90 s; see .stack/services/*.log")
    time.sleep(0.5)
PY
}

log "waiting for the order confirmations (en-GB, de-DE, ko-KR)"
wait_for_emails 3

log "a week later: the lamp's supplier slips, the in-stock items ship, Ada's order is delivered"
"$CTL" clock advance 7d
"$CTL" publish "$SCRIPT_DIR/demo-week-later.jsonl"
log "waiting for two delay-and-offer emails (a 3-week slip is significant: one email with the apology and the options) and two shipped emails"
wait_for_emails 7

log "Bernd opens the switch link of his offer email and confirms (GET shows the page, only the POST decides)"
link=$("${BACKORDER_PG_BIN:-/usr/bin}/psql" -X "$DATABASE_URL" -Atc \
    "SELECT data->'alternatives'->0->>'url' FROM email_ledger WHERE template = 'delay_offer' AND locale LIKE 'de%' LIMIT 1")
[[ -n $link ]] || { echo "demo: no offer with an alternative for the German customer" >&2; exit 1; }
python3 - "$link" "$OUT" <<'PY'
import html, re, sys, urllib.error, urllib.parse, urllib.request
link, out = sys.argv[1], sys.argv[2]
try:
    page = urllib.request.urlopen(link).read().decode()
except urllib.error.HTTPError as refused:
    if refused.code != 409:
        raise
    # A rerun of the demo: Bernd decided the first time; the page says so
    # and nothing is decided again.
    page = refused.read().decode()
    open(f"{out}/page-1-offer.html", "w", encoding="utf-8").write(page)
    print("    offer page: already decided in an earlier run (409); nothing decided again")
    sys.exit(0)
open(f"{out}/page-1-offer.html", "w", encoding="utf-8").write(page)
title = html.unescape(re.search(r"<h1>(.*?)</h1>", page).group(1))
fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page))
chosen = re.search(r'name="option" value="([^"]*)" checked', page).group(1)
print(f"    offer page: {title!r}, pre-selected: {html.unescape(chosen)}")
base = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(link))
action = html.unescape(re.search(r'<form method="post" action="([^"]*)"', page).group(1))
form = {k: html.unescape(v) for k, v in fields.items()} | {"option": html.unescape(chosen)}
done = urllib.request.urlopen(base + action, data=urllib.parse.urlencode(form).encode()).read().decode()
open(f"{out}/page-2-confirmed.html", "w", encoding="utf-8").write(done)
print("    after confirm: " + html.unescape(re.search(r'role="status">(.*?)</p>', done).group(1)))
print(f"    pages saved: {out}/page-1-offer.html, {out}/page-2-confirmed.html")
PY
log "waiting for the decision confirmation (the switch also went to backorder-decisions.v1 for the OMS)"
wait_for_emails 8

log "three days after the delivery: the follow-up; Jiwoo's offer expired unanswered after 72 hours: its reminder"
"$CTL" clock advance 3d
wait_for_emails 10

log "the lamps arrive"
"$CTL" publish "$SCRIPT_DIR/demo-restock.jsonl"
log "waiting for the arrival notice of the backorder still waiting (Bernd switched) and back-in-stock emails for the units left"
wait_for_emails 12

log "the sender's ledger"
"$CTL" emails

log "saving the rendered emails"
mkdir -p "$OUT"
rm -f "$OUT"/*.html
# The ledger knows which SES message carried which email; the emulator
# keeps the message as SES received it.
"${BACKORDER_PG_BIN:-/usr/bin}/psql" -X "$DATABASE_URL" -Atc \
    "SELECT ses_message_id || ' ' || dedup_key FROM email_ledger WHERE state = 'sent' ORDER BY sent_at, dedup_key" \
    >"$OUT/sent.txt"
python3 - "$BACKORDER_MOTO_URL" "$OUT" <<'PY'
import json, sys, urllib.request
moto, out = sys.argv[1], sys.argv[2]
sent = [line.split(" ", 1) for line in open(f"{out}/sent.txt", encoding="utf-8").read().split("\n") if line]
data = json.load(urllib.request.urlopen(f"{moto}/moto-api/data.json"))
by_id = {m["id"]: m for m in data.get("ses", {}).get("Message", [])}
def mask(addr):
    local, _, domain = addr.partition("@")
    return f"{local[:1]}***@{domain[:1]}***.{domain.rsplit('.', 1)[-1]}"
print(f"    {'to':<15} {'subject':<66} file")
for i, (message_id, key) in enumerate(sent, 1):
    m = by_id.get(message_id)
    if m is None:
        continue
    path = f"{out}/{i:02d}-{key}.html"
    with open(path, "w", encoding="utf-8") as f:
        f.write(m.get("body", ""))
    to = ", ".join(mask(a) for a in m.get("destinations", {}).get("ToAddresses", []))
    print(f"    {to:<15} {m.get('subject', '')[:66]:<66} {path}")
print(f"\n    Open any of them in a browser, e.g. {out}/01-*.html")
PY
log "done. Metrics: curl http://127.0.0.1:18085/metrics (sender); stop everything with 'make down'"
