-- Stock: the catalog, supplier ETA changes, arrivals and their allocation
-- to backordered lines, and back-in-stock notices for abandoned carts.
-- Written by stock-consumer; segmentation reads `products`.

-- The catalog as ProductUpserted last described it, plus the stock the
-- shop can sell. Catalog fields are NULL while only arrivals (no
-- ProductUpserted yet) are known for a SKU (`cataloged_at` IS NULL).
CREATE TABLE products (
    sku                 text PRIMARY KEY,
    name                text,
    category            text,
    -- What the product is for (e.g. 'eye-protection'): alternatives fill the same need.
    need                text,
    -- Subset of SPRING, SUMMER, AUTUMN, WINTER; empty = all year.
    seasons             text[]      NOT NULL DEFAULT '{}',
    price_minor         bigint CHECK (price_minor >= 0),
    currency            text,
    -- Units free to sell: ProductUpserted sets it, surplus of arrivals
    -- (units left after every open backorder was served) raises it.
    available_quantity  integer     NOT NULL DEFAULT 0 CHECK (available_quantity >= 0),
    -- Units of past arrivals held for the backorder queue: the next line in
    -- order needed more than were left (whole lines only). The next arrival
    -- of the SKU starts with them.
    reserved_quantity   integer     NOT NULL DEFAULT 0 CHECK (reserved_quantity >= 0),
    -- The ProductUpserted last applied (a replay of it changes nothing).
    upsert_event_id     text,
    upsert_occurred_at  timestamptz,
    cataloged_at        timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_need ON products (need) WHERE cataloged_at IS NOT NULL;

-- Every SupplierEtaChanged applied, by event id (replays are no-ops), with
-- the sku_eta version it produced.
CREATE TABLE eta_changes (
    event_id    text PRIMARY KEY,
    sku         text        NOT NULL,
    eta_version bigint      NOT NULL,
    eta_from    date,
    eta_to      date,
    reason      text        NOT NULL,
    remedy      text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    applied_at  timestamptz NOT NULL
);
CREATE INDEX eta_changes_sku ON eta_changes (sku, eta_version);

-- Stock arrivals, one row per arrival_id: a replayed arrival allocates
-- nothing more. Allocation runs in chunks (one short transaction each);
-- `remaining` is what is left to allocate, so a crash resumes.
CREATE TABLE stock_arrivals (
    arrival_id        text PRIMARY KEY,
    sku               text        NOT NULL,
    quantity          integer     NOT NULL CHECK (quantity > 0),
    warehouse         text        NOT NULL,
    event_id          text        NOT NULL,
    occurred_at       timestamptz NOT NULL,
    -- Units of this arrival plus the SKU's reserve taken when it started.
    units             integer     NOT NULL,
    remaining         integer     NOT NULL CHECK (remaining >= 0),
    lines_allocated   integer     NOT NULL DEFAULT 0,
    chunks            integer     NOT NULL DEFAULT 0,
    -- Units released as available stock (no backorder left waiting).
    surplus           integer,
    -- Units kept for the queue (the next line needs more than that).
    reserved          integer,
    -- allocating -> allocated (state final; emails decided) ; outputs
    -- acknowledged by the broker once `outputs_acked_at` is set.
    state             text        NOT NULL DEFAULT 'allocating'
                      CHECK (state IN ('allocating', 'allocated')),
    received_at       timestamptz NOT NULL,
    allocated_at      timestamptz,
    outputs_acked_at  timestamptz
);
CREATE INDEX stock_arrivals_sku ON stock_arrivals (sku, received_at);

-- Which arrival served which line (the arrival notices are built from it).
CREATE TABLE stock_allocations (
    arrival_id text    NOT NULL REFERENCES stock_arrivals (arrival_id),
    order_id   text    NOT NULL,
    line_id    text    NOT NULL,
    sku        text    NOT NULL,
    quantity   integer NOT NULL CHECK (quantity > 0),
    chunk      integer NOT NULL,
    PRIMARY KEY (arrival_id, order_id, line_id),
    -- A line is served by one arrival only.
    UNIQUE (order_id, line_id)
);

-- Back in stock for abandoned carts: at most once per cart and SKU, ever.
CREATE TABLE back_in_stock_notices (
    cart_id    text        NOT NULL,
    sku        text        NOT NULL,
    arrival_id text        NOT NULL,
    decided_at timestamptz NOT NULL,
    PRIMARY KEY (cart_id, sku)
);
CREATE INDEX back_in_stock_arrival ON back_in_stock_notices (arrival_id);

-- The allocation queue: open backordered lines of a SKU by order time.
CREATE INDEX orders_placed ON orders (placed_at, order_id);
CREATE INDEX carts_skus ON carts USING gin (skus);
