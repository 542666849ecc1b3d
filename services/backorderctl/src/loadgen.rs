//! `backorderctl loadgen`: a seeded, realistic stream of input events, for
//! load tests and `make bench`.
//!
//! The stream is a pure function of the arguments (seed, counts, shares):
//! the same arguments give the same records, byte for byte, unless
//! `--wall-clock` stamps them with the time they are sent. Records are
//! generated lazily, so a million orders need no more memory than ten.
//! They are the [`Record`]s `publish` reads from JSON lines, encoded and
//! sent by the same code.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use backorder_core::config::Settings;
use backorder_core::events::offers::{OfferChoice, OfferResponse};
use backorder_core::events::orders::{Availability, Customer, OrderLine, OrderPlaced};
use backorder_core::events::shipments::{ShipmentDelivered, ShipmentDispatched};
use backorder_core::events::stock::{DelayReasonCode, ProductUpserted, StockArrival, SupplierEtaChanged};
use backorder_core::kafka::producer::ProduceError;
use backorder_core::kafka::{OutboundRecord, Producer, Topics};
use chrono::{DateTime, Days, TimeZone, Utc};
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use futures::FutureExt;
use futures::stream::{FuturesOrdered, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::CtlError;
use crate::publish::{CHUNK_SIZE, Record};

pub(crate) const LONG_ABOUT: &str = "\
Publish a seeded, realistic mix of input events: the catalogue (products with
stock levels; every tenth product out of stock, with a supplier ETA), orders from
customers in five languages (en, de, ko, tr, id) with a share of them waiting for
an out-of-stock line, and the events that follow orders in a shop: shipments and
deliveries, ETA changes, stock arrivals and offer responses (these carry tokens
no offer issued, so the offers consumer rejects them as it rejects forged links).

The same arguments publish the same records (ids, keys and payloads), so a run
can be repeated; --wall-clock instead stamps each record with the time it is sent
(for latency measured from the event). --rate paces the records per second;
without it they go as fast as the broker takes them. --orders-only
publishes just the orders (ingest benchmarks). A progress bar shows on a
terminal; a table of what was published per record type ends the run.";

/// The five customer languages, with their country and a few given names,
/// so emails are rendered in every language the templates cover.
const LANGUAGES: &[(&str, &str, &[&str])] = &[
    ("en-GB", "GB", &["Ada", "Oliver", "Amelia", "Harry"]),
    ("de-DE", "DE", &["Jürgen", "Sophie", "Lukas", "Grete"]),
    ("ko-KR", "KR", &["민준", "서연", "지호", "하은"]),
    ("tr-TR", "TR", &["Ayşe", "Mehmet", "Zeynep", "Çağrı"]),
    ("id-ID", "ID", &["Budi", "Siti", "Agus", "Dewi"]),
];

/// Product families of the catalogue: name stem, category, the need it serves.
const FAMILIES: &[(&str, &str, &str)] = &[
    ("Desk lamp", "lighting", "light"),
    ("Espresso cup", "kitchen", "coffee"),
    ("Wool blanket", "home", "warmth"),
    ("Trail shoe", "outdoor", "walking"),
    ("Phone case", "electronics", "protection"),
];

/// The instant the seeded timeline starts; record `i` happens `i` ms later.
fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Arguments of `loadgen`.
#[derive(Debug, Clone, Args)]
pub struct LoadgenArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 10_000)]
    pub orders: u64,
    /// Seed of the generator: the same seed and arguments give the same records.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of orders (0 to 1) with a line waiting for out-of-stock goods.
    #[arg(long, default_value_t = 0.3, value_parser = parse_share)]
    pub backorder_share: f64,
    /// Lines in every order.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub lines_per_order: u32,
    /// Products in the catalogue (at least 10; every tenth is out of stock).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(10..))]
    pub skus: u32,
    /// Customers the orders are spread over.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub customers: u64,
    /// Records per second; 0 sends as fast as the broker acknowledges.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Publish only the orders: no catalogue, no follow-up events.
    #[arg(long)]
    pub orders_only: bool,
    /// Stamp each record's occurred_at with the time it is sent instead of
    /// the seeded timeline (payloads then differ between runs).
    #[arg(long)]
    pub wall_clock: bool,
    /// Prefix of every generated id (orders, customers, shipments), so runs
    /// with different prefixes into one database do not collide.
    #[arg(long, default_value = "lg")]
    pub id_prefix: String,
    /// Topic prefix; default BACKORDER_TOPIC_PREFIX.
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Generate and encode everything, print the summary, send nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Default for LoadgenArgs {
    fn default() -> Self {
        Self {
            orders: 10_000,
            seed: 1,
            backorder_share: 0.3,
            lines_per_order: 2,
            skus: 200,
            customers: 5_000,
            rate: 0,
            orders_only: false,
            wall_clock: false,
            id_prefix: "lg".into(),
            topic_prefix: None,
            dry_run: false,
        }
    }
}

fn parse_share(raw: &str) -> Result<f64, String> {
    let share: f64 = raw.parse().map_err(|e| format!("{raw:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("{share} is not a share between 0 and 1"))
    }
}

/// One catalogue entry as the generator remembers it for the orders.
#[derive(Debug, Clone)]
struct Product {
    sku: String,
    name: String,
    category: String,
    price_minor: i64,
}

/// The seeded stream of records. An iterator so that records are made as
/// they are sent.
pub struct Generator {
    args: LoadgenArgs,
    /// Every random choice comes from here, in a fixed order: that is what
    /// makes a run repeatable.
    rng: StdRng,
    /// Products that are in stock (the ordinary lines of an order).
    in_stock: Vec<Product>,
    /// Products that are not (the backordered line of an order).
    out_of_stock: Vec<Product>,
    /// Records made but not yet handed out (catalogue first, then each
    /// order's follow-ups right after it).
    pending: VecDeque<Record>,
    /// Orders placed so far.
    placed: u64,
    /// Records handed out so far: the seeded timeline and the event ids count them.
    emitted: u64,
    /// Namespace of the event ids of this seed and id prefix.
    id_namespace: Uuid,
}

impl Generator {
    pub fn new(args: &LoadgenArgs) -> Self {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let mut in_stock = Vec::new();
        let mut out_of_stock = Vec::new();
        let mut catalogue = Vec::new();
        let today = epoch().date_naive();
        for index in 0..args.skus {
            let (stem, category, need) = FAMILIES[index as usize % FAMILIES.len()];
            let product = Product {
                sku: format!("{}-SKU-{index:05}", args.id_prefix.to_ascii_uppercase()),
                name: format!("{stem} {index}"),
                category: category.to_string(),
                price_minor: rng.random_range(5..200) * 100 - 1,
            };
            let sold_out = index % 10 == 0;
            let quantity = if sold_out { 0 } else { rng.random_range(20..500) };
            catalogue.push(Record::ProductUpserted(ProductUpserted {
                event_id: String::new(),
                occurred_at: epoch(),
                sku: product.sku.clone(),
                name: product.name.clone(),
                category: product.category.clone(),
                need: need.to_string(),
                seasons: Vec::new(),
                price_minor: product.price_minor,
                currency: "EUR".into(),
                available_quantity: quantity,
            }));
            if sold_out {
                let from = rng.random_range(14..28);
                catalogue.push(Record::SupplierEtaChanged(eta_changed(&product.sku, today, from)));
                out_of_stock.push(product);
            } else {
                in_stock.push(product);
            }
        }
        let pending = if args.orders_only {
            VecDeque::new()
        } else {
            catalogue.into()
        };
        let id_namespace = Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            format!("https://backorder.invalid/loadgen/{}/{}", args.seed, args.id_prefix).as_bytes(),
        );
        Self {
            args: args.clone(),
            rng,
            in_stock,
            out_of_stock,
            pending,
            placed: 0,
            emitted: 0,
            id_namespace,
        }
    }

    /// Orders placed so far (the progress of a run).
    pub fn orders_placed(&self) -> u64 {
        self.placed
    }

    /// Places the next order and queues what follows it.
    fn place_order(&mut self) {
        let n = self.placed;
        self.placed += 1;
        let prefix = &self.args.id_prefix;
        let customer_index = self.rng.random_range(0..self.args.customers);
        let (locale, country, names) = LANGUAGES[(customer_index % LANGUAGES.len() as u64) as usize];
        let name = names[(customer_index / LANGUAGES.len() as u64) as usize % names.len()];
        let customer = Customer {
            customer_id: format!("{prefix}-c{customer_index}"),
            email: format!("{prefix}-c{customer_index}@example.com"),
            name: name.to_string(),
            locale: locale.to_string(),
            country: Some(country.to_string()),
        };
        let order_id = format!("{prefix}-o{n}");
        let backordered = self.rng.random_bool(self.args.backorder_share);
        let mut lines = Vec::new();
        for j in 0..self.args.lines_per_order {
            let (pool, availability) = if backordered && j == 0 {
                (&self.out_of_stock, Availability::Backordered)
            } else {
                (&self.in_stock, Availability::InStock)
            };
            let product = &pool[self.rng.random_range(0..pool.len())];
            lines.push(OrderLine {
                line_id: format!("l{}", j + 1),
                sku: product.sku.clone(),
                product_name: product.name.clone(),
                category: Some(product.category.clone()),
                quantity: self.rng.random_range(1..=3),
                unit_price_minor: product.price_minor,
                availability,
            });
        }
        let total_minor = lines.iter().map(|l| l.unit_price_minor * i64::from(l.quantity)).sum();
        let shipped: Vec<String> = lines
            .iter()
            .filter(|l| l.availability == Availability::InStock)
            .map(|l| l.line_id.clone())
            .collect();
        self.pending.push_back(Record::OrderPlaced(OrderPlaced {
            event_id: String::new(),
            occurred_at: epoch(),
            order_id: order_id.clone(),
            customer,
            lines,
            currency: "EUR".into(),
            total_minor,
        }));
        if self.args.orders_only {
            return;
        }
        self.queue_follow_ups(n, &order_id, shipped);
    }

    /// What happens in a shop after an order: the in-stock lines ship
    /// (a fifth of orders here), some are delivered; now and then a
    /// supplier moves an ETA, stock arrives, a customer answers an offer.
    fn queue_follow_ups(&mut self, n: u64, order_id: &str, in_stock_lines: Vec<String>) {
        let prefix = self.args.id_prefix.clone();
        if !in_stock_lines.is_empty() && self.rng.random_bool(0.2) {
            let shipment_id = format!("{prefix}-s{n}");
            self.pending.push_back(Record::ShipmentDispatched(ShipmentDispatched {
                event_id: String::new(),
                occurred_at: epoch(),
                shipment_id: shipment_id.clone(),
                order_id: order_id.to_string(),
                line_ids: in_stock_lines,
                carrier: "DHL".into(),
                tracking_number: format!("JD{n:012}"),
                tracking_url: format!("https://tracking.example.com/JD{n:012}"),
            }));
            if self.rng.random_bool(0.5) {
                self.pending.push_back(Record::ShipmentDelivered(ShipmentDelivered {
                    event_id: String::new(),
                    occurred_at: epoch(),
                    shipment_id,
                    order_id: order_id.to_string(),
                }));
            }
        }
        if self.rng.random_bool(0.01) {
            let sku = self.out_of_stock[self.rng.random_range(0..self.out_of_stock.len())]
                .sku
                .clone();
            let from = self.rng.random_range(7..35);
            self.pending.push_back(Record::SupplierEtaChanged(eta_changed(
                &sku,
                epoch().date_naive(),
                from,
            )));
        }
        if self.rng.random_bool(0.005) {
            let sku = self.out_of_stock[self.rng.random_range(0..self.out_of_stock.len())]
                .sku
                .clone();
            self.pending.push_back(Record::StockArrival(StockArrival {
                event_id: String::new(),
                occurred_at: epoch(),
                arrival_id: format!("{prefix}-a{n}"),
                sku,
                quantity: self.rng.random_range(5..50),
                warehouse: "BER-1".into(),
            }));
        }
        if self.rng.random_bool(0.005) {
            let choices = [
                OfferChoice::SwitchToAlternative,
                OfferChoice::TakeStoreCredit,
                OfferChoice::KeepWaitingExpedited,
                OfferChoice::Cancel,
            ];
            let choice = choices[self.rng.random_range(0..choices.len())];
            let alternative_sku = (choice == OfferChoice::SwitchToAlternative)
                .then(|| self.in_stock[self.rng.random_range(0..self.in_stock.len())].sku.clone());
            self.pending.push_back(Record::OfferResponse(OfferResponse {
                event_id: String::new(),
                occurred_at: epoch(),
                offer_id: format!("{prefix}-offer{n}"),
                token: "loadgen-unsigned".into(),
                choice,
                alternative_sku,
            }));
        }
    }
}

fn eta_changed(sku: &str, today: chrono::NaiveDate, from_days: u64) -> SupplierEtaChanged {
    let eta_from = today.checked_add_days(Days::new(from_days));
    SupplierEtaChanged {
        event_id: String::new(),
        occurred_at: epoch(),
        sku: sku.to_string(),
        eta_from,
        eta_to: eta_from.and_then(|d| d.checked_add_days(Days::new(7))),
        reason: "The supplier is short of parts".into(),
        remedy: "We have ordered from a second supplier".into(),
        reason_code: Some(DelayReasonCode::SupplierShortage),
        reason_locale: Some("en".into()),
    }
}

impl Iterator for Generator {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.pending.is_empty() && self.placed < self.args.orders {
            self.place_order();
        }
        let mut record = self.pending.pop_front()?;
        // The id and the instant are given when the record is handed out,
        // from its position in the stream: the stream is then ordered in
        // time, and ids are unique without any bookkeeping.
        let index = self.emitted;
        self.emitted += 1;
        let id = Uuid::new_v5(&self.id_namespace, &index.to_be_bytes()).to_string();
        set_event_id(&mut record, id);
        let at = epoch() + chrono::Duration::milliseconds(i64::try_from(index).unwrap_or(i64::MAX));
        record.set_occurred_at(at);
        Some(record)
    }
}

fn set_event_id(record: &mut Record, id: String) {
    match record {
        Record::OrderPlaced(r) => r.event_id = id,
        Record::OrderCancelled(r) => r.event_id = id,
        Record::CartAbandoned(r) => r.event_id = id,
        Record::ProductUpserted(r) => r.event_id = id,
        Record::SupplierEtaChanged(r) => r.event_id = id,
        Record::StockArrival(r) => r.event_id = id,
        Record::ShipmentDispatched(r) => r.event_id = id,
        Record::ShipmentDelivered(r) => r.event_id = id,
        Record::OfferResponse(r) => r.event_id = id,
    }
}

/// What a run published, per record type, and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadgenSummary {
    /// (record type, full topic) -> records, in a stable order for the table.
    pub per_type: BTreeMap<(&'static str, String), u64>,
    pub total: u64,
    pub elapsed: Duration,
    /// Whether anything was sent (false for `--dry-run`).
    pub sent: bool,
}

impl LoadgenSummary {
    /// Records per second over the whole run.
    pub fn rate(&self) -> f64 {
        self.total as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The summary as a table.
    pub fn table(&self) -> String {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(vec!["record", "topic", "count"]);
        for ((record, topic), count) in &self.per_type {
            table.add_row(vec![record.to_string(), topic.clone(), count.to_string()]);
        }
        let verb = if self.sent { "published" } else { "generated (dry run)" };
        table.add_row(vec![
            format!("total {verb}"),
            format!("{:.1} s, {:.0} records/s", self.elapsed.as_secs_f64(), self.rate()),
            self.total.to_string(),
        ]);
        table.to_string()
    }
}

/// The progress of a run in orders placed (the other records follow them),
/// on stderr when it is a terminal.
fn orders_bar(orders: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(orders), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} orders ({per_sec}, {eta} left)") {
        bar.set_style(style);
    }
    bar
}

/// Counts an acknowledged chunk; a failed one ends the run with how many
/// records were acknowledged before it (chunks complete in order, so a
/// rerun can tell what reached the broker).
fn acknowledge(
    (count, sent): (usize, Result<Vec<(i32, i64)>, ProduceError>),
    acknowledged: &mut usize,
    total: u64,
    bootstrap: &str,
) -> Result<(), CtlError> {
    match sent {
        Ok(_) => {
            *acknowledged += count;
            Ok(())
        }
        Err(source) => Err(CtlError::Publish {
            bootstrap: bootstrap.to_string(),
            acknowledged: *acknowledged,
            total: usize::try_from(total).unwrap_or(usize::MAX),
            source: Box::new(source),
        }),
    }
}

/// Chunks handed to the producer and not yet acknowledged, at most.
const MAX_CHUNKS_IN_FLIGHT: usize = 64;

/// How many records one `send_all` carries: at a paced rate, a fiftieth of
/// a second's worth, so pacing stays smooth; otherwise the publish chunk.
fn chunk_size(rate: u32) -> usize {
    if rate == 0 {
        CHUNK_SIZE
    } else {
        (rate as usize / 50).clamp(1, CHUNK_SIZE)
    }
}

/// Runs `loadgen` with the configured settings.
pub async fn run(args: LoadgenArgs, out: &mut impl Write) -> Result<(), CtlError> {
    let settings = Settings::load()?;
    let summary = publish(&args, &settings, true).await?;
    writeln!(out, "{}", summary.table())?;
    Ok(())
}

/// Generates, encodes and (unless `--dry-run`) publishes the stream;
/// `show_progress` draws a bar on a terminal.
pub async fn publish(args: &LoadgenArgs, settings: &Settings, show_progress: bool) -> Result<LoadgenSummary, CtlError> {
    let prefix = args
        .topic_prefix
        .clone()
        .unwrap_or_else(|| settings.topic_prefix.clone());
    let topics = Topics::new(&prefix);
    let codec = crate::publish::codec_for(settings, args.dry_run)?;
    let producer = if args.dry_run {
        None
    } else {
        let bootstrap = settings.kafka_bootstrap_servers.clone();
        Some(Producer::new(settings).map_err(|source| CtlError::Producer {
            bootstrap,
            source: Box::new(source),
        })?)
    };
    let bar = if show_progress {
        orders_bar(args.orders)
    } else {
        ProgressBar::hidden()
    };
    let mut generator = Generator::new(args);
    let mut summary = LoadgenSummary {
        per_type: BTreeMap::new(),
        total: 0,
        elapsed: Duration::ZERO,
        sent: producer.is_some(),
    };
    let chunk_size = chunk_size(args.rate);
    let started = Instant::now();
    let mut chunk: Vec<OutboundRecord> = Vec::with_capacity(chunk_size);
    let mut in_flight = FuturesOrdered::new();
    let mut acknowledged = 0usize;
    let bootstrap = settings.kafka_bootstrap_servers.as_str();
    loop {
        chunk.clear();
        for mut record in generator.by_ref().take(chunk_size) {
            if args.wall_clock {
                record.set_occurred_at(Utc::now());
            }
            let topic = topics.name(record.base_topic());
            let encoded = record.encode(&codec, &topic).await.map_err(|source| CtlError::Encode {
                line: usize::try_from(summary.total + 1).unwrap_or(usize::MAX),
                record_type: record.type_name(),
                source,
            })?;
            *summary.per_type.entry((record.type_name(), topic)).or_default() += 1;
            summary.total += 1;
            chunk.push(encoded);
        }
        if chunk.is_empty() {
            break;
        }
        if args.rate > 0 {
            // Pacing, not synchronisation: record n is due n/rate seconds
            // after the start.
            let due = started + Duration::from_secs_f64(summary.total as f64 / f64::from(args.rate));
            tokio::time::sleep_until(due.into()).await;
        }
        if let Some(producer) = &producer {
            // Chunks are not awaited one by one (a paced run would then
            // publish only as fast as the broker's round trip allows): up to
            // MAX_CHUNKS_IN_FLIGHT are, in order. Each chunk's first poll,
            // right here, hands its records to the producer behind the
            // chunks before it, so a key's records keep their order.
            let records = std::mem::replace(&mut chunk, Vec::with_capacity(chunk_size));
            in_flight.push_back(async move {
                let sent = producer.send_all(&records).await;
                (records.len(), sent)
            });
            if let Some(Some(done)) = in_flight.next().now_or_never() {
                acknowledge(done, &mut acknowledged, summary.total, bootstrap).inspect_err(|_| bar.abandon())?;
            }
            while in_flight.len() > MAX_CHUNKS_IN_FLIGHT {
                if let Some(done) = in_flight.next().await {
                    acknowledge(done, &mut acknowledged, summary.total, bootstrap).inspect_err(|_| bar.abandon())?;
                }
            }
        }
        bar.set_position(generator.orders_placed());
    }
    while let Some(done) = in_flight.next().await {
        acknowledge(done, &mut acknowledged, summary.total, bootstrap).inspect_err(|_| bar.abandon())?;
    }
    bar.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> LoadgenArgs {
        LoadgenArgs {
            orders: 2_000,
            seed: 7,
            ..LoadgenArgs::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_stream_and_another_seed_does_not() {
        let a: Vec<Record> = Generator::new(&small()).collect();
        let b: Vec<Record> = Generator::new(&small()).collect();
        assert_eq!(a, b);
        let other: Vec<Record> = Generator::new(&LoadgenArgs { seed: 8, ..small() }).collect();
        assert_ne!(a, other);
    }

    #[test]
    fn every_generated_record_is_valid_and_ids_are_unique() {
        let records: Vec<Record> = Generator::new(&small()).collect();
        let mut ids = std::collections::HashSet::new();
        for record in &records {
            if let Err(e) = record.validate() {
                panic!("{} invalid: {}: {}", record.type_name(), e.field, e.reason);
            }
            assert!(ids.insert(record.event_id().to_string()), "duplicate id");
        }
    }

    #[test]
    fn the_mix_has_every_kind_the_shares_ask_for() {
        let records: Vec<Record> = Generator::new(&small()).collect();
        let count = |name: &str| records.iter().filter(|r| r.type_name() == name).count();
        assert_eq!(count("OrderPlaced"), 2_000);
        assert_eq!(count("ProductUpserted"), 200);
        for kind in [
            "SupplierEtaChanged",
            "StockArrival",
            "ShipmentDispatched",
            "ShipmentDelivered",
            "OfferResponse",
        ] {
            assert!(count(kind) > 0, "no {kind}");
        }
        let mut locales = std::collections::BTreeSet::new();
        let mut backordered = 0;
        for record in &records {
            if let Record::OrderPlaced(order) = record {
                assert_eq!(order.lines.len(), 2);
                locales.insert(order.customer.locale.clone());
                if order.lines.iter().any(|l| l.availability == Availability::Backordered) {
                    backordered += 1;
                }
            }
        }
        assert_eq!(locales.len(), 5, "{locales:?}");
        // 30% of 2,000, give or take what a seeded coin allows.
        assert!((500..700).contains(&backordered), "{backordered}");
    }

    #[test]
    fn orders_only_is_just_the_orders_with_the_asked_shape() {
        let args = LoadgenArgs {
            orders: 300,
            orders_only: true,
            backorder_share: 1.0,
            lines_per_order: 3,
            ..small()
        };
        let records: Vec<Record> = Generator::new(&args).collect();
        assert_eq!(records.len(), 300);
        for record in &records {
            let Record::OrderPlaced(order) = record else {
                panic!("{} in an orders-only run", record.type_name())
            };
            assert_eq!(order.lines.len(), 3);
            assert_eq!(order.lines[0].availability, Availability::Backordered);
        }
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("much").is_err());
    }

    #[test]
    fn paced_chunks_are_a_fiftieth_of_a_second() {
        assert_eq!(chunk_size(0), CHUNK_SIZE);
        assert_eq!(chunk_size(500), 10);
        assert_eq!(chunk_size(10), 1);
        assert_eq!(chunk_size(1_000_000), CHUNK_SIZE);
    }
}
