-- Units a cancelled line held go back to the SKU's queue through an
-- allocation of their own (services/core/src/stock_release.rs), and an
-- arrival's surplus waits a settle time before it reaches carts
-- (services/stock-consumer/src/allocation.rs). Both are rows of
-- stock_arrivals, allocated by the same code as a supplier's delivery.
ALTER TABLE stock_arrivals
    -- supplier: a StockArrival; release: the reserve after a cancellation;
    -- settle: what was still unallocated when the settle time ended.
    ADD COLUMN kind text NOT NULL DEFAULT 'supplier' CHECK (kind IN ('supplier', 'release', 'settle'));
